//! The search language of `q` (REST), `Search` (gRPC) and `mailledger search` (CLI):
//!
//! ```text
//! from:ann@example.com to:example.org subject:"quarterly report" status:dead_lettered
//! before:2026-11-01 after:2026-10-01 has:html is:bounced -word "exact phrase"
//! ```
//!
//! Terms are separated by white space and all must hold; `-` before a term negates it.
//! A pure function of the text: no I/O, no SQL. [`parse`] gives the terms or a
//! [`SyntaxError`] naming the character position (from 1) where the query goes wrong.
//!
//! The rules, as the README states them:
//! - a bare word matches as a prefix over sender, recipients, subject and body; its
//!   punctuation separates words (`ann@example.com` is `ann example com`), and a word
//!   with no letter or digit in it is ignored;
//! - `"…"` is a phrase: its words, in that order, next to each other;
//! - `name:value` is a field when `name` is two or more ASCII letters and `value` starts
//!   with a letter, a digit, `"` or `@`; an unknown name is an error (quote the term,
//!   `"re:meeting"`, to search for the text). Anything else with a colon is text
//!   (`C:\path`, `12:30`, `https://…`, `note: x`);
//! - a `"` opens a phrase only at the start of a term or of a field's value; an
//!   unclosed one is an error at the opening quote.

use chrono::{DateTime, NaiveDate, Utc};

use super::search::STATUSES;

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// Most terms in one query.
pub const MAX_QUERY_TERMS: usize = 32;

/// The fields a query may name.
pub const FIELDS: &[&str] = &["from", "to", "subject", "status", "before", "after", "has", "is"];

/// A malformed query: where (the character position, from 1) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Position of the offending character, counted in characters from 1.
    pub position: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

/// One term of a query: what it asks, whether it is negated, and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// `-` before it.
    pub negated: bool,
    /// What it matches.
    pub kind: TermKind,
    /// Character position of the term (its `-` included), from 1.
    pub position: usize,
}

/// An address or a whole domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    /// `ann@example.com`.
    Address(String),
    /// `example.com` or `@example.com` (an IDN as its A-label, lower case).
    Domain(String),
}

/// What a term matches.
#[derive(Debug, Clone, PartialEq)]
pub enum TermKind {
    /// Words, each as a prefix, anywhere (sender, recipients, subject, body).
    Words(Vec<String>),
    /// Words next to each other in this order, anywhere.
    Phrase(Vec<String>),
    /// Words (as prefixes) in the subject.
    SubjectWords(Vec<String>),
    /// A phrase in the subject.
    SubjectPhrase(Vec<String>),
    /// The sender is this address or in this domain.
    From(Party),
    /// A recipient (to, cc or bcc) is this address or in this domain.
    To(Party),
    /// The email is in this status.
    Status(String),
    /// Created before this instant.
    Before(DateTime<Utc>),
    /// Created at or after this instant.
    After(DateTime<Utc>),
    /// It has an HTML body.
    HasHtml,
    /// A recipient refused it for good (a 5xx for the address, or `is:bounced`).
    Bounced,
    /// A recipient was not attempted: it is on the suppression list.
    Suppressed,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Every term with words or a filter, in order.
    pub terms: Vec<Term>,
    /// A term without terms left: text with no word in it (`&|!`), which matches nothing.
    pub only_wordless_text: bool,
}

/// Splits text into the words the search document holds: runs of letters and digits,
/// lower case, each cut to [`super::search::MAX_TERM_CHARS`].
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(super::search::MAX_TERM_CHARS).collect::<String>().to_lowercase())
        .collect()
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }
    fn error(&self, index: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError { position: index + 1, message: message.into() }
    }
    /// A quoted string starting at the `"` under the cursor; the cursor ends after the
    /// closing quote.
    fn quoted(&mut self) -> Result<String, SyntaxError> {
        let open = self.at;
        self.at += 1;
        let start = self.at;
        while let Some(c) = self.peek() {
            if c == '"' {
                let s: String = self.chars[start..self.at].iter().collect();
                self.at += 1;
                if self.peek().is_some_and(|c| !c.is_whitespace()) {
                    return Err(self.error(self.at, "a closing quote must be followed by a space or the end"));
                }
                return Ok(s);
            }
            self.at += 1;
        }
        Err(self.error(open, "this quote is never closed"))
    }
    /// Characters up to the next white space.
    fn bare(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(|c| !c.is_whitespace()) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }
}

/// Parses a query.
pub fn parse(text: &str) -> Result<Query, SyntaxError> {
    let mut lx = Lexer { chars: text.chars().collect(), at: 0 };
    if lx.chars.len() > MAX_QUERY_CHARS {
        return Err(lx.error(MAX_QUERY_CHARS, format!("a query may be at most {MAX_QUERY_CHARS} characters long")));
    }
    let mut query = Query::default();
    let mut wordless_positive = false;
    loop {
        while lx.peek().is_some_and(char::is_whitespace) {
            lx.at += 1;
        }
        let Some(first) = lx.peek() else { break };
        let start = lx.at;
        let negated = first == '-' && lx.chars.get(lx.at + 1).is_some_and(|c| !c.is_whitespace() && *c != '-');
        if negated {
            lx.at += 1;
        }
        let kind = term(&mut lx)?;
        let kind = match kind {
            Some(k) => k,
            None => {
                wordless_positive |= !negated;
                continue;
            }
        };
        if query.terms.len() == MAX_QUERY_TERMS {
            return Err(lx.error(start, format!("a query may have at most {MAX_QUERY_TERMS} terms")));
        }
        query.terms.push(Term { negated, kind, position: start + 1 });
    }
    query.only_wordless_text = query.terms.is_empty() && wordless_positive;
    let word_count: usize = query.terms.iter().map(|t| t.kind.word_count()).sum();
    if word_count > super::search::MAX_TERMS {
        let at = query.terms.iter().scan(0, |n, t| {
            *n += t.kind.word_count();
            Some((*n, t.position))
        });
        let position = at.filter(|(n, _)| *n > super::search::MAX_TERMS).map(|(_, p)| p).next().unwrap_or(1);
        return Err(SyntaxError {
            position,
            message: format!("a query may hold at most {} words; narrow it with fields", super::search::MAX_TERMS),
        });
    }
    Ok(query)
}

impl TermKind {
    fn word_count(&self) -> usize {
        match self {
            TermKind::Words(w) | TermKind::Phrase(w) | TermKind::SubjectWords(w) | TermKind::SubjectPhrase(w) => {
                w.len()
            }
            _ => 0,
        }
    }
}

/// One term after its `-`: `None` for text with no word in it.
fn term(lx: &mut Lexer) -> Result<Option<TermKind>, SyntaxError> {
    if lx.peek() == Some('"') {
        let w = words(&lx.quoted()?);
        return Ok((!w.is_empty()).then_some(TermKind::Phrase(w)));
    }
    // A field: two or more ASCII letters, a colon, then a letter, digit, quote or `@`.
    let start = lx.at;
    let mut end = start;
    while lx.chars.get(end).is_some_and(char::is_ascii_alphabetic) {
        end += 1;
    }
    let looks_like_field = end - start >= 2
        && lx.chars.get(end) == Some(&':')
        && lx.chars.get(end + 1).is_some_and(|c| c.is_alphanumeric() || *c == '"' || *c == '@');
    if !looks_like_field {
        let w = words(&lx.bare());
        return Ok((!w.is_empty()).then_some(TermKind::Words(w)));
    }
    let name: String = lx.chars[start..end].iter().collect::<String>().to_ascii_lowercase();
    if !FIELDS.contains(&name.as_str()) {
        return Err(lx.error(
            start,
            format!(
                "unknown field {name:?} (fields: {}); put the term in quotes to search for the text",
                FIELDS.join(", ")
            ),
        ));
    }
    lx.at = end + 1;
    let value_at = lx.at;
    let quoted = lx.peek() == Some('"');
    let value = if quoted { lx.quoted()? } else { lx.bare() };
    let bad = |message: String| SyntaxError { position: value_at + 1, message: format!("{name}: {message}") };
    Ok(Some(match name.as_str() {
        "subject" => {
            let w = words(&value);
            if w.is_empty() {
                return Err(bad("give a word or a quoted phrase".into()));
            }
            if quoted { TermKind::SubjectPhrase(w) } else { TermKind::SubjectWords(w) }
        }
        "from" => TermKind::From(party(&value).map_err(bad)?),
        "to" => TermKind::To(party(&value).map_err(bad)?),
        "status" => TermKind::Status(status(&value).map_err(bad)?),
        "before" => TermKind::Before(date(&value).map_err(bad)?),
        "after" => TermKind::After(date(&value).map_err(bad)?),
        "has" => match value.to_ascii_lowercase().as_str() {
            "html" => TermKind::HasHtml,
            "attachment" | "attachments" => {
                return Err(bad("mailledger emails carry no attachments; has:html is the one has: there is".into()));
            }
            _ => return Err(bad(format!("{} is not html", crate::text::echo(&value)))),
        },
        "is" => match value.to_ascii_lowercase().as_str() {
            "bounced" => TermKind::Bounced,
            "suppressed" => TermKind::Suppressed,
            other => TermKind::Status(status(other).map_err(|_| {
                bad(format!(
                    "{} is not bounced, suppressed or a status ({})",
                    crate::text::echo(&value),
                    STATUSES.join(", ")
                ))
            })?),
        },
        _ => unreachable!("every name in FIELDS is handled"),
    }))
}

fn status(value: &str) -> Result<String, String> {
    let lower = value.to_ascii_lowercase();
    if STATUSES.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!("{} is not one of {}", crate::text::echo(value), STATUSES.join(", ")))
    }
}

/// `ann@example.com`, `example.com` or `@example.com`.
fn party(value: &str) -> Result<Party, String> {
    let hint = "give an address (ann@example.com) or a domain (example.com)";
    if let Some(domain) = value.strip_prefix('@') {
        return domain_of(domain)
            .map(Party::Domain)
            .ok_or_else(|| format!("{} is not a domain", crate::text::echo(domain)));
    }
    if value.contains('@') {
        return crate::command::EmailAddress::parse(value)
            .map(|a| Party::Address(a.to_string()))
            .map_err(|reason| format!("{} {reason}; {hint}", crate::text::echo(value)));
    }
    domain_of(value).map(Party::Domain).ok_or_else(|| format!("{} is not a domain; {hint}", crate::text::echo(value)))
}

/// A domain as stored (A-label, lower case), when `raw` is one: labels of letters,
/// digits and hyphens, at least two of them.
fn domain_of(raw: &str) -> Option<String> {
    let ascii = idna::domain_to_ascii(raw).ok()?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let ok = ascii.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    ok.then_some(ascii)
}

/// `2026-11-01` (midnight UTC) or an RFC 3339 time.
fn date(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).ok_or_else(|| "is not a date".to_owned());
    }
    DateTime::parse_from_rfc3339(value).map(|t| t.to_utc()).map_err(|_| {
        format!("{} is not a date (2026-11-01) or an RFC 3339 time (2026-11-01T10:00:00Z)", crate::text::echo(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(q: &str) -> Vec<(bool, TermKind)> {
        parse(q).unwrap().terms.into_iter().map(|t| (t.negated, t.kind)).collect()
    }

    fn w(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| (*s).to_owned()).collect()
    }

    fn day(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn the_example_of_the_issue() {
        let q = r#"from:ann@example.com to:example.org subject:"quarterly report" status:dead_lettered before:2026-11-01 after:2026-10-01 has:html is:bounced -word "exact phrase""#;
        assert_eq!(
            kinds(q),
            vec![
                (false, TermKind::From(Party::Address("ann@example.com".into()))),
                (false, TermKind::To(Party::Domain("example.org".into()))),
                (false, TermKind::SubjectPhrase(w(&["quarterly", "report"]))),
                (false, TermKind::Status("dead_lettered".into())),
                (false, TermKind::Before(day("2026-11-01T00:00:00Z"))),
                (false, TermKind::After(day("2026-10-01T00:00:00Z"))),
                (false, TermKind::HasHtml),
                (false, TermKind::Bounced),
                (true, TermKind::Words(w(&["word"]))),
                (false, TermKind::Phrase(w(&["exact", "phrase"]))),
            ]
        );
    }

    #[test]
    fn plain_text_stays_text() {
        assert_eq!(
            kinds("Quarterly Report"),
            vec![(false, TermKind::Words(w(&["quarterly"]))), (false, TermKind::Words(w(&["report"])))]
        );
        assert_eq!(kinds("ann@example.com"), vec![(false, TermKind::Words(w(&["ann", "example", "com"])))]);
        for text in
            ["C:\\path\\invoice", "12:30", "a:b:c", "quarterly:*", "https://example.com/x", "note: x", "o'brien"]
        {
            let q = parse(text).unwrap();
            assert!(q.terms.iter().all(|t| matches!(t.kind, TermKind::Words(_))), "{text}: {q:?}");
        }
        let q = parse("& | ! ( ) : * ' \\").unwrap();
        assert!(q.terms.is_empty() && q.only_wordless_text);
        let q = parse("  ").unwrap();
        assert!(q.terms.is_empty() && !q.only_wordless_text);
        // A lone or doubled dash is text, not a negation.
        assert_eq!(kinds("a - b"), vec![(false, TermKind::Words(w(&["a"]))), (false, TermKind::Words(w(&["b"])))]);
        let q = parse("-- -&").unwrap();
        assert!(q.terms.is_empty() && q.only_wordless_text, "{q:?}");
    }

    #[test]
    fn fields_and_their_values() {
        assert_eq!(kinds("FROM:@Example.COM"), vec![(false, TermKind::From(Party::Domain("example.com".into())))]);
        assert_eq!(kinds("to:bücher.de"), vec![(false, TermKind::To(Party::Domain("xn--bcher-kva.de".into())))]);
        assert_eq!(
            kinds("is:sent -is:suppressed"),
            vec![(false, TermKind::Status("sent".into())), (true, TermKind::Suppressed)]
        );
        assert_eq!(kinds("subject:Quarterly"), vec![(false, TermKind::SubjectWords(w(&["quarterly"])))]);
        assert_eq!(
            kinds("after:2026-10-01T12:00:00+02:00"),
            vec![(false, TermKind::After(day("2026-10-01T10:00:00Z")))]
        );
        assert_eq!(kinds("-\"a b\""), vec![(true, TermKind::Phrase(w(&["a", "b"])))]);
        assert_eq!(kinds("-has:html"), vec![(true, TermKind::HasHtml)]);
    }

    #[test]
    fn errors_name_the_position() {
        let e = |q: &str| parse(q).unwrap_err();
        assert_eq!(e("hello before:2026-13-01").position, 14);
        assert!(e("hello before:2026-13-01").message.contains("before:"));
        assert_eq!(e("a foo:bar").position, 3);
        assert!(e("a foo:bar").message.contains("unknown field \"foo\""));
        assert_eq!(e("x \"unclosed phrase").position, 3);
        assert_eq!(e("subject:\"open").position, 9);
        assert_eq!(e("status:lost").position, 8);
        assert_eq!(e("is:happy").position, 4);
        assert_eq!(e("has:attachment").position, 5);
        assert_eq!(e("from:ann").position, 6);
        assert_eq!(e("to:a@").position, 4);
        assert_eq!(e("\"a\"b").position, 4);
        assert_eq!(e(&"x".repeat(MAX_QUERY_CHARS + 1)).position, MAX_QUERY_CHARS + 1);
        let many = (0..=MAX_QUERY_TERMS).map(|_| "is:sent").collect::<Vec<_>>().join(" ");
        assert_eq!(e(&many).position, MAX_QUERY_TERMS * 8 + 1);
        let words = (0..20).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(e(&words).position, words.find("w16").unwrap() + 1, "the 17th word");
        // Positions count characters, not bytes.
        assert_eq!(e("é foo:x").position, 3);
    }

    proptest! {
        #[test]
        fn no_input_panics_and_every_error_points_into_it(q in ".{0,300}") {
            if let Err(e) = parse(&q) {
                prop_assert!(e.position >= 1 && e.position <= q.chars().count().max(1), "{e:?} for {q:?}");
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn structured_input_parses_or_names_a_position(
            parts in proptest::collection::vec(
                prop_oneof![
                    "[a-z]{1,8}",
                    "-[a-z]{1,8}",
                    "\"[a-z ]{0,12}\"?",
                    "(from|to|subject|status|before|after|has|is|foo)(:)[a-z@.\"0-9-]{0,14}",
                ],
                0..12,
            )
        ) {
            let q = parts.join(" ");
            match parse(&q) {
                Ok(parsed) => {
                    for t in parsed.terms {
                        prop_assert!(t.position >= 1 && t.position <= q.chars().count());
                    }
                }
                Err(e) => prop_assert!(e.position >= 1 && e.position <= q.chars().count(), "{e:?} for {q:?}"),
            }
        }
    }
}
