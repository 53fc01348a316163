//! Search parameters and the safe translation of user text into a `tsquery`.
//!
//! User text never reaches `to_tsquery` as written: it is split into words (runs of
//! letters and digits), each becomes a prefix term `word:*`, and the terms are joined
//! with `&`. So `& | ! ( ) : * ' \` and friends are separators, never operators, and no
//! input can make the query fail.

use chrono::{DateTime, Utc};

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
