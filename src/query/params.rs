//! Turning a reader's raw search parameters into [`SearchParams`], with an error that
//! names the parameter. Shared by REST and gRPC.

use chrono::{DateTime, Utc};

use super::search::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_WINDOW, STATUSES, SearchParams, translate};
use crate::command::{EmailAddress, FieldError};

/// Search parameters as a reader gave them.
#[derive(Debug, Clone, Default)]
pub struct RawSearch {
    /// Full-text query.
    pub q: Option<String>,
    /// Status filter.
    pub status: Option<String>,
    /// Sender filter.
    pub from: Option<String>,
    /// Recipient filter.
    pub to: Option<String>,
    /// RFC 3339 lower bound on creation time.
    pub since: Option<String>,
    /// RFC 3339 upper bound (exclusive).
    pub until: Option<String>,
    /// Page, from 1 (0 or absent: 1).
    pub page: Option<i64>,
    /// Page size (absent or 0: 10; above 100: 100).
    pub size: Option<i64>,
}

fn time(field: &str, raw: &Option<String>) -> Result<Option<DateTime<Utc>>, FieldError> {
    match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s).map(|t| Some(t.to_utc())).map_err(|e| {
            FieldError::invalid(field, format!("is not an RFC 3339 time ({e}), e.g. 2026-11-22T10:00:00Z"))
        }),
    }
}

fn address(field: &str, raw: &Option<String>) -> Result<Option<String>, FieldError> {
    match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => EmailAddress::parse(s).map(|a| Some(a.to_string())).map_err(|r| FieldError::invalid(field, r)),
    }
}

impl RawSearch {
    /// Checks every parameter.
    pub fn parse(self) -> Result<SearchParams, FieldError> {
        let page = match self.page {
            None | Some(0) => 1,
            Some(p) if p < 0 => return Err(FieldError::invalid("page", "must be 1 or more")),
            Some(p) => u32::try_from(p).map_err(|_| FieldError::invalid("page", "is too large"))?,
        };
        let size = match self.size {
            None | Some(0) => DEFAULT_PAGE_SIZE,
            Some(s) if s < 0 => return Err(FieldError::invalid("size", "must be 1 or more")),
            Some(s) => s.min(i64::from(MAX_PAGE_SIZE)) as u32,
        };
        if u64::from(page) * u64::from(size) > MAX_WINDOW {
            return Err(FieldError::invalid(
                "page",
                format!("page × size may not pass {MAX_WINDOW}; narrow the search with since/until or filters"),
            ));
        }
        let status = match self.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) if STATUSES.contains(&s) => Some(s.to_owned()),
            Some(s) => {
                return Err(FieldError::invalid(
                    "status",
                    format!("{} is not one of {}", crate::text::echo(s), STATUSES.join(", ")),
                ));
            }
        };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(a), Some(b)) = (since, until)
            && a >= b
        {
            return Err(FieldError::invalid("until", "must be later than since"));
        }
        let query = super::grammar::parse(self.q.as_deref().unwrap_or(""))
            .map_err(|e| FieldError::invalid("q", e.to_string()))?;
        let (tsquery, filters) = translate(&query);
        Ok(SearchParams {
            tsquery,
            status,
            from: address("from", &self.from)?,
            to: address("to", &self.to)?,
            since,
            until,
            page,
            size,
            body_chars: super::search::SNIPPET_CHARS,
            tenant: None,
            filters,
        })
    }
}
