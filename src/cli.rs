//! The `mailledger` command line.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::projections::reproject::Target;

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
