//! The read side: one email by id (Redis, then PostgreSQL, refilling the cache), search
//! over the `emails` read model, an email's history and its state as of an instant.

pub mod cache;
pub(crate) mod params;
pub mod repository;
pub mod row;
pub mod search;
pub mod view;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use cache::Cache;
use repository::{HistoryEntry, Repository};
use search::{Page, SearchParams};
use view::{EmailSummary, EmailView};

/// What readers call.
#[derive(Clone)]
pub struct ReadSide {
    repo: Repository,
    cache: Cache,
}

impl ReadSide {
    /// Reads through `cache` into `repo`.
    pub fn new(repo: Repository, cache: Cache) -> Self {
        Self { repo, cache }
    }

    /// One email: the cache first, then the read model (and the cache is refilled).
    /// A Redis outage only costs the detour.
    pub async fn get(&self, id: Uuid) -> sqlx::Result<Option<EmailView>> {
        if let Some(view) = self.cache.get(id).await {
            return Ok(Some(view));
        }
        self.get_uncached(id).await
    }

    /// From PostgreSQL, refilling the cache.
    async fn get_uncached(&self, id: Uuid) -> sqlx::Result<Option<EmailView>> {
        let view = self.repo.get(id).await?;
        if let Some(v) = &view {
            self.cache.refill(v.clone());
        }
        Ok(view)
    }

    /// One email's current view as JSON — from the cache as stored, without decoding
    /// and encoding it again, else from PostgreSQL (refilling the cache).
    pub async fn get_json(&self, id: Uuid) -> sqlx::Result<Option<String>> {
        if let Some(json) = self.cache.get_json(id).await {
            return Ok(Some(json));
        }
        let view = self.get_uncached(id).await?;
        Ok(view.map(|v| serde_json::to_string(&v).expect("a view always serialises")))
    }

    /// The email as it was at `at`, from its events (not from the read model).
    pub async fn as_of(&self, id: Uuid, at: DateTime<Utc>) -> anyhow::Result<Option<EmailView>> {
        self.repo.as_of(id, at).await
    }

    /// A page of search results.
    pub async fn search(&self, params: &SearchParams) -> sqlx::Result<Page<EmailSummary>> {
        self.repo.search(params).await
    }

    /// An email's events, in order.
    pub async fn history(&self, id: Uuid) -> sqlx::Result<Vec<HistoryEntry>> {
        self.repo.history(id).await
    }
}
