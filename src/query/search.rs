//! Search parameters and the safe translation of user text into a `tsquery`.
//!
//! User text never reaches `to_tsquery` as written: it is split into words (runs of
//! letters and digits), each becomes a prefix term `word:*`, and the terms are joined
//! with `&`. So `& | ! ( ) : * ' \` and friends are separators, never operators, and no
//! input can make the query fail.

use chrono::{DateTime, Utc};

use super::grammar::{Party, Query, TermKind};

/// Most words taken from one query.
pub const MAX_TERMS: usize = 16;
/// Longest word kept (longer ones are cut).
pub const MAX_TERM_CHARS: usize = 64;
/// Largest page size; larger requests are capped to it.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Deepest result reachable by paging (`page × size`); narrow the search to go further.
pub const MAX_WINDOW: u64 = 10_000;
/// Matches counted exactly; past this `total_count` is a lower bound.
pub const COUNT_CAP: i64 = 10_000;

/// Characters of the text body a search result carries by default.
pub const SNIPPET_CHARS: u32 = 200;

/// Statuses an email can be in (the `status` filter).
pub const STATUSES: &[&str] = &["requested", "queued", "failed", "sent", "dead_lettered"];

/// A search, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    /// The `tsquery` built from the user's text, if any. `Some("")` when the text had no
    /// word in it (nothing can match).
    pub tsquery: Option<String>,
    /// Only emails in this status.
    pub status: Option<String>,
    /// Only emails from this address.
    pub from: Option<String>,
    /// Only emails to this address (to, cc or bcc).
    pub to: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Page number, from 1.
    pub page: u32,
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub size: u32,
    /// Characters of the text body each result carries ([`SNIPPET_CHARS`] unless a
    /// caller needs more).
    pub body_chars: u32,
    /// Only this tenant's emails (set from the caller's key; `None` for an admin).
    pub tenant: Option<String>,
    /// The field terms of the query (`from:`, `is:`, …), each to hold (or, negated, not).
    pub filters: Vec<Filter>,
}

/// A field term of a query, as SQL will test it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Must not hold.
    pub negated: bool,
    /// What to test.
    pub kind: FilterKind,
}

/// What a [`Filter`] tests.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterKind {
    /// `status = …`.
    Status(String),
    /// `from_address = …`.
    FromAddress(String),
    /// The sender's domain (the `from_domain` column).
    FromDomain(String),
    /// A recipient's address.
    ToAddress(String),
    /// A recipient's domain (the `recipient_domains` column).
    ToDomain(String),
    /// `created_at < …`.
    Before(DateTime<Utc>),
    /// `created_at >= …`.
    After(DateTime<Utc>),
    /// `html IS NOT NULL`.
    HasHtml,
    /// A recipient refused for good.
    Bounced,
    /// A recipient suppressed.
    Suppressed,
}

impl FilterKind {
    /// Whether the filter narrows by something other than creation time (so an index
    /// other than the newest-first one may serve it).
    pub fn narrows(&self) -> bool {
        !matches!(self, FilterKind::Before(_) | FilterKind::After(_))
    }
}

/// The `tsquery` and the filters a parsed query asks for: every text term joined with
/// `&` (`None` when there is none; `Some("")` when the text had no word in it, which
/// matches nothing), every field term a filter.
pub fn translate(q: &Query) -> (Option<String>, Vec<Filter>) {
    if q.only_wordless_text {
        return (Some(String::new()), vec![]);
    }
    let mut text = Vec::new();
    let mut filters = Vec::new();
    for t in &q.terms {
        let join = |words: &[String], suffix: &str, op: &str| {
            words.iter().map(|w| format!("{w}{suffix}")).collect::<Vec<_>>().join(op)
        };
        let part = match &t.kind {
            TermKind::Words(w) => Some(join(w, ":*", " & ")),
            TermKind::Phrase(w) => Some(join(w, "", " <-> ")),
            TermKind::SubjectWords(w) => Some(join(w, ":*A", " & ")),
            TermKind::SubjectPhrase(w) => Some(join(w, ":A", " <-> ")),
            _ => None,
        };
        if let Some(part) = part {
            text.push(if t.negated { format!("!({part})") } else { format!("({part})") });
            continue;
        }
        let kind = match &t.kind {
            TermKind::From(Party::Address(a)) => FilterKind::FromAddress(a.clone()),
            TermKind::From(Party::Domain(d)) => FilterKind::FromDomain(d.clone()),
            TermKind::To(Party::Address(a)) => FilterKind::ToAddress(a.clone()),
            TermKind::To(Party::Domain(d)) => FilterKind::ToDomain(d.clone()),
            TermKind::Status(s) => FilterKind::Status(s.clone()),
            TermKind::Before(at) => FilterKind::Before(*at),
            TermKind::After(at) => FilterKind::After(*at),
            TermKind::HasHtml => FilterKind::HasHtml,
            TermKind::Bounced => FilterKind::Bounced,
            TermKind::Suppressed => FilterKind::Suppressed,
            TermKind::Words(_) | TermKind::Phrase(_) | TermKind::SubjectWords(_) | TermKind::SubjectPhrase(_) => {
                unreachable!("text terms are handled above")
            }
        };
        filters.push(Filter { negated: t.negated, kind });
    }
    ((!text.is_empty()).then(|| text.join(" & ")), filters)
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            tsquery: None,
            status: None,
            from: None,
            to: None,
            since: None,
            until: None,
            page: 1,
            size: DEFAULT_PAGE_SIZE,
            body_chars: SNIPPET_CHARS,
            tenant: None,
            filters: vec![],
        }
    }
}

impl SearchParams {
    /// Rows before this page, newest first.
    pub fn offset(&self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.size)
    }
}

/// Builds the `tsquery` text for `q`: `None` for no text, `Some("")` for text without words.
pub fn to_tsquery(q: &str) -> Option<String> {
    if q.trim().is_empty() {
        return None;
    }
    let terms: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_TERMS)
        .map(|w| format!("{}:*", w.chars().take(MAX_TERM_CHARS).collect::<String>().to_lowercase()))
        .collect();
    Some(terms.join(" & "))
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The results.
    pub items: Vec<T>,
    /// Matches, exactly when `total_exact`, else at least this many.
    pub total_count: i64,
    /// Whether `total_count` is exact.
    pub total_exact: bool,
    /// Pages (from `total_count`).
    pub total_pages: i64,
    /// This page.
    pub page: u32,
    /// Page size.
    pub size: u32,
    /// Whether another page follows.
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_become_prefix_terms() {
        assert_eq!(to_tsquery("Quarterly Report"), Some("quarterly:* & report:*".into()));
        assert_eq!(to_tsquery("ann@example.com"), Some("ann:* & example:* & com:*".into()));
        assert_eq!(to_tsquery("  "), None);
        assert_eq!(to_tsquery("& | ! ( ) : * ' \\"), Some(String::new()));
        assert_eq!(to_tsquery("o'brien:*"), Some("o:* & brien:*".into()));
        assert_eq!(to_tsquery("Grüße"), Some("grüße:*".into()));
    }

    #[test]
    fn queries_become_a_tsquery_and_filters() {
        let q = super::super::grammar::parse(
            r#"subject:"quarterly report" -draft "exact phrase" subject:rep from:example.org -has:html"#,
        )
        .unwrap();
        let (ts, filters) = translate(&q);
        assert_eq!(ts.as_deref(), Some("(quarterly:A <-> report:A) & !(draft:*) & (exact <-> phrase) & (rep:*A)"));
        assert_eq!(
            filters,
            vec![
                Filter { negated: false, kind: FilterKind::FromDomain("example.org".into()) },
                Filter { negated: true, kind: FilterKind::HasHtml },
            ]
        );
        let (ts, filters) = translate(&super::super::grammar::parse("&|!").unwrap());
        assert_eq!((ts.as_deref(), filters.len()), (Some(""), 0));
    }

    proptest! {
        #[test]
        fn any_text_gives_only_words_and_operators(q in ".{0,200}") {
            if let Some(t) = to_tsquery(&q) {
                for term in t.split(" & ").filter(|s| !s.is_empty()) {
                    let word = term.strip_suffix(":*").unwrap();
                    prop_assert!(!word.is_empty());
                    prop_assert!(word.chars().all(char::is_alphanumeric), "{term:?}");
                }
            }
        }
    }
}
