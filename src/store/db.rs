//! The database itself: connecting (creating the database when allowed), the embedded
//! migrations, and telling an outage from a bug.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::{DatabaseSettings, redact};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool on the configured database, creating the database first when allowed.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(settings.url.as_str())
        .with_context(|| format!("MAILLEDGER_DATABASE_URL {} is not usable", redact(&settings.url)))?
        .log_statements(tracing::log::LevelFilter::Trace)
        // Every statement here is short; compiling one with JIT (20-30 ms, chosen by
        // cost estimates that grow with the tables) would take longer than running it.
        .options([("jit", "off")]);
    if settings.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&settings.url)))
}

/// A pool on the read replica when one is configured. It connects lazily: a replica that
/// is down at start-up only means reads go to the primary until it answers.
pub fn connect_replica(settings: &DatabaseSettings) -> anyhow::Result<Option<PgPool>> {
    let Some(url) = &settings.read_url else { return Ok(None) };
    let options = PgConnectOptions::from_str(url.as_str())
        .with_context(|| format!("MAILLEDGER_DATABASE_READ_URL {} is not usable", redact(url)))?
        .log_statements(tracing::log::LevelFilter::Trace)
        .options([("jit", "off")]);
    Ok(Some(
        PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(options),
    ))
}

/// Runs the embedded migrations (idempotent; serialised by sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("database migration failed")
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else { return Ok(()) };
    let admin = options.clone().database("postgres");
    let mut conn = admin.connect().await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {}:{} (maintenance database `postgres`)",
            options.get_host(),
            options.get_port()
        )
    })?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}")).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create database {name}")),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// True when `error` means the database could not be reached (worth retrying), as
/// opposed to a bug or a refused statement.
pub fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(sqlx_error) = e.downcast_ref::<sqlx::Error>() {
            return match sqlx_error {
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
                sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
                sqlx::Error::Database(db) => {
                    matches!(
                        db.code().as_deref(),
                        Some("57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003" | "08006")
                    )
                }
                _ => false,
            };
        }
        current = e.source();
    }
    false
}
