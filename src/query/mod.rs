//! The read side: one email by id (Redis, then PostgreSQL, refilling the cache), search
//! over the `emails` read model, an email's history and its state as of an instant.

pub mod cache;
pub mod grammar;
pub mod near;
pub(crate) mod params;
pub mod replica;
pub mod repository;
pub mod row;
pub mod search;
pub mod view;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::access::Principal;

use cache::Cache;
use near::{Kept, NearCache};
use replica::Replica;
use repository::{HistoryEntry, Repository};
use search::{Page, SearchParams};
use view::{EmailSummary, EmailView};

/// What readers call.
#[derive(Clone)]
pub struct ReadSide {
    repo: Repository,
    replica: Option<Replica>,
    cache: Cache,
    near: NearCache,
}

impl ReadSide {
    /// Reads through `cache` into `repo`.
    pub fn new(repo: Repository, cache: Cache) -> Self {
        Self { repo, replica: None, cache, near: NearCache::new(0) }
    }

    /// Keeps views in memory too, in front of Redis (see [`near`]).
    pub fn with_near_cache(self, near: NearCache) -> Self {
        Self { near, ..self }
    }

    /// Reads from `replica` when it serves (see [`replica`]), else from the primary.
    pub fn with_replica(self, replica: Replica) -> Self {
        Self { replica: Some(replica), ..self }
    }

    /// The repository this read goes to: the replica when it serves the request's
    /// `X-Min-Position`, else the primary; and whether it is the replica.
    fn reader(&self) -> (&Repository, bool) {
        match &self.replica {
            Some(r) if r.serves(replica::min_position()) => {
                crate::metrics::READS.with_label_values(&["replica"]).inc();
                (&r.repo, true)
            }
            _ => {
                crate::metrics::READS.with_label_values(&["primary"]).inc();
                (&self.repo, false)
            }
        }
    }

    /// One email, when `by` may see it: the cache first, then the read model (and the
    /// cache is refilled). A Redis outage only costs the detour. Another tenant's email
    /// is not found, exactly as an unknown one.
    pub async fn get(&self, id: Uuid, by: &Principal) -> sqlx::Result<Option<EmailView>> {
        if let Some(view) = self.cache.get(id).await {
            return Ok(Some(view).filter(|v| by.sees(&v.tenant)));
        }
        Ok(self.get_uncached(id).await?.filter(|v| by.sees(&v.tenant)))
    }

    /// From PostgreSQL, refilling the cache.
    async fn get_uncached(&self, id: Uuid) -> sqlx::Result<Option<EmailView>> {
        let view = match self.reader() {
            // Not on the replica (yet): the primary is the one to say it is unknown.
            (repo, true) => match repo.get(id).await? {
                None => {
                    crate::metrics::READS.with_label_values(&["primary"]).inc();
                    self.repo.get(id).await?
                }
                found => found,
            },
            (repo, false) => repo.get(id).await?,
        };
        if let Some(v) = &view {
            self.cache.refill(v.clone());
        }
        Ok(view)
    }

    /// One email's current view as JSON — from the cache as stored, without decoding
    /// and encoding it again, else from PostgreSQL (refilling the cache) — when `by` may
    /// see it.
    ///
    /// The instance's memory comes first ([`near`]), unless the request asks to read its
    /// own writes (`X-Min-Position`); what Redis or PostgreSQL return is kept there when
    /// it is as new as the store.
    pub async fn get_json(&self, id: Uuid, by: &Principal) -> sqlx::Result<Option<bytes::Bytes>> {
        let near = replica::min_position().is_none();
        if near && let Some(kept) = self.near.get(id) {
            crate::metrics::CACHE.with_label_values(&["memory"]).inc();
            return Ok(Some(kept.json).filter(|_| by.sees(&kept.tenant)));
        }
        let ticket = self.near.ticket();
        let kept = match self.cache.get_json(id).await {
            Some((json, tenant, version)) => Kept { json: json.into_bytes().into(), tenant: tenant.into(), version },
            None => match self.get_uncached(id).await? {
                Some(v) => Kept {
                    json: serde_json::to_vec(&v).expect("a view always serialises").into(),
                    tenant: v.tenant.into(),
                    version: v.version,
                },
                None => return Ok(None),
            },
        };
        if near {
            self.near.keep(id, kept.clone(), ticket);
        }
        Ok(Some(kept.json).filter(|_| by.sees(&kept.tenant)))
    }

    /// The email as it was at `at`, from its events (not from the read model).
    pub async fn as_of(&self, id: Uuid, at: DateTime<Utc>, by: &Principal) -> anyhow::Result<Option<EmailView>> {
        Ok(self.reader().0.as_of(id, at).await?.filter(|v| by.sees(&v.tenant)))
    }

    /// A page of search results, in `by`'s tenant (every tenant for an admin).
    pub async fn search(&self, params: &SearchParams, by: &Principal) -> sqlx::Result<Page<EmailSummary>> {
        let params = SearchParams { tenant: by.tenant_filter().map(str::to_owned), ..params.clone() };
        self.reader().0.search(&params).await
    }

    /// An email's events, in order (none for another tenant's email).
    pub async fn history(&self, id: Uuid, by: &Principal) -> sqlx::Result<Vec<HistoryEntry>> {
        let events = match self.reader() {
            (repo, true) => match repo.history(id).await? {
                events if events.is_empty() => self.repo.history(id).await?,
                events => events,
            },
            (repo, false) => repo.history(id).await?,
        };
        let tenant = events.first().map(|e| crate::query::view::tenant_in(&e.metadata));
        Ok(if tenant.is_some_and(|t| by.sees(&t)) { events } else { vec![] })
    }
}
