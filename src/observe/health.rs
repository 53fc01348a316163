//! Liveness and readiness: is each dependency reachable right now?
//!
//! Ready means PostgreSQL and NATS answer: without the first nothing works, without the
//! second NATS intake and domain events stop. Redis down is **degraded**, not unready:
//! reads go to PostgreSQL, so a load balancer must not take every instance out at once
//! for it.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

/// What readiness checks.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    nats: async_nats::Client,
    cache: crate::query::cache::Cache,
}

/// One dependency's state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DependencyStatus {
    /// `postgres`, `nats` or `redis`.
    pub name: &'static str,
    /// Reachable now.
    pub ok: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReadinessReport {
    /// True when PostgreSQL and NATS are reachable.
    pub ready: bool,
    /// Dependencies that are down without making the instance unready (`redis`).
    pub degraded: Vec<&'static str>,
    /// Each dependency.
    pub dependencies: Vec<DependencyStatus>,
}

impl Readiness {
    /// Checks these dependencies.
    pub fn new(pool: PgPool, nats: async_nats::Client, cache: crate::query::cache::Cache) -> Self {
        Self { pool, nats, cache }
    }

    /// Checks every dependency (each within a second).
    pub async fn check(&self) -> ReadinessReport {
        let postgres = tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(&self.pool));
        let postgres = match postgres.await {
            Ok(Ok(_)) => DependencyStatus { name: "postgres", ok: true, error: None },
            Ok(Err(_)) => DependencyStatus { name: "postgres", ok: false, error: Some("query failed".into()) },
            Err(_) => DependencyStatus { name: "postgres", ok: false, error: Some("timed out".into()) },
        };
        let nats = match self.nats.connection_state() {
            async_nats::connection::State::Connected => DependencyStatus { name: "nats", ok: true, error: None },
            state => DependencyStatus { name: "nats", ok: false, error: Some(format!("{state:?}").to_lowercase()) },
        };
        let redis = match self.cache.ping().await {
            Ok(()) => DependencyStatus { name: "redis", ok: true, error: None },
            Err(e) => DependencyStatus { name: "redis", ok: false, error: Some(e.to_string()) },
        };
        let ready = postgres.ok && nats.ok;
        let degraded = if redis.ok { vec![] } else { vec![redis.name] };
        ReadinessReport { ready, degraded, dependencies: vec![postgres, nats, redis] }
    }
}
