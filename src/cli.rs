//! The `mailledger` command line: what it takes ([`Cli`]) and what each command does
//! ([`run`]). `serve` is [`Application`]; the rest are operator tools ([`crate::ops`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::config::Settings;
use crate::ledger::Ledger;
use crate::ops::progress::Bar;
use crate::ops::reproject::{self, Target};
use crate::ops::{dlq, history, replay, status};
use crate::query::cache::Cache;
use crate::startup::Application;
use crate::store;
use crate::store::replay::Window;

/// mailledger: an event-sourced mail ledger.
#[derive(Debug, Parser)]
#[command(name = "mailledger", version, about, long_about = None)]
pub struct Cli {
    /// A YAML settings file laid over the defaults (environment variables still win).
    #[arg(long, global = true, env = "MAILLEDGER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

fn rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| format!("{e} (want RFC 3339, e.g. 2026-11-22T10:00:00Z)"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve REST, gRPC, metrics, the NATS intake, the projections
    /// and the sender until SIGINT/SIGTERM.
    Serve,
    /// Create the database if needed and apply the migrations, then exit.
    Migrate,
    /// Stream events in commit order as NDJSON on stdout (progress on stderr when it is a terminal).
    Replay {
        /// Only events recorded at or after this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        since: Option<DateTime<Utc>>,
        /// Only events recorded before this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        until: Option<DateTime<Utc>>,
        /// Only this email's events.
        #[arg(long)]
        email: Option<Uuid>,
        /// Only this event type (requested, persisted, sent, failed, dead_lettered, redriven).
        #[arg(long = "type", value_name = "KIND")]
        kind: Option<String>,
    },
    /// Print one email's timeline.
    History {
        /// The email's id.
        id: Uuid,
    },
    /// Rebuild a projection from the start into a shadow table while the live one
    /// serves, then swap them (emails, schedule or cache).
    Reproject {
        /// emails, schedule or cache.
        name: Target,
        /// Events per batch.
        #[arg(long, default_value_t = 5000)]
        batch: i64,
    },
    /// Dead-lettered emails.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Projection lag, waiting commands and the delivery queue.
    Status,
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead-lettered emails, oldest first.
    List,
    /// Queue dead-lettered emails for delivery again.
    Redrive {
        /// The emails to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<Uuid>,
        /// Redrive every dead-lettered email.
        #[arg(long)]
        all: bool,
        /// Who asks (recorded in the ledger); default $USER.
        #[arg(long)]
        by: Option<String>,
    },
}

/// Runs one command to its end; the exit code says how it went (errors are the caller's
/// to print).
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    if let Command::Serve = command {
        Application::build(settings).await?.run_until_stopped().await?;
        return Ok(ExitCode::SUCCESS);
    }
    let pool = store::connect(&settings.database).await?;
    store::migrate(&pool).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match command {
        Command::Serve => unreachable!("handled above"),
        Command::Migrate => eprintln!("mailledger: migrations applied"),
        Command::Replay { since, until, email, kind } => {
            let bar = Bar::new("replay");
            let window = Window { since, until, email, event_type: kind.as_deref().map(replay::event_type_name) };
            replay::replay(&pool, &window, &mut out, &bar).await?;
            bar.finish();
        }
        Command::History { id } => {
            if !history::print(&pool, id, &mut out).await? {
                eprintln!("mailledger: no email {id}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Reproject { name, batch } => {
            let bar = Bar::new(&format!("reproject {name:?}").to_lowercase());
            let cache = Cache::new(&settings.redis);
            let report =
                reproject::reproject(&pool, name, Some(cache), batch.max(1), crate::store::upcast::UPCASTERS, &bar)
                    .await?;
            bar.finish();
            eprintln!(
                "mailledger: re-projected {} events in {:.1} s ({:.0} events/s)",
                report.events,
                report.seconds,
                report.events as f64 / report.seconds.max(1e-9)
            );
        }
        Command::Dlq { action: DlqAction::List } => {
            let n = dlq::list(&pool, &mut out).await?;
            eprintln!("mailledger: {n} dead-lettered email(s)");
        }
        Command::Dlq { action: DlqAction::Redrive { ids, all: _, by } } => {
            let by = by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
            let ledger = Ledger::new(pool.clone(), settings.limits);
            let done = dlq::redrive(&pool, &ledger, &ids, &by).await?;
            for id in &done {
                writeln!(out, "{id}")?;
            }
            eprintln!("mailledger: redrove {} email(s)", done.len());
        }
        Command::Status => {
            let nats = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                async_nats::connect(settings.nats.url.as_str()),
            )
            .await
            .ok()
            .and_then(Result::ok);
            let names = settings.nats.names();
            let target = nats.as_ref().map(|c| (c, names.commands_stream.clone(), names.consumer.clone()));
            status::print(&pool, target, &mut out).await?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
