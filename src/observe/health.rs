//! Liveness and readiness: is each dependency reachable right now?

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
    /// True when every dependency is reachable.
    pub ready: bool,
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
        let dependencies = vec![postgres, nats, redis];
        ReadinessReport { ready: dependencies.iter().all(|d| d.ok), dependencies }
    }
}
