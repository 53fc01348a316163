//! The `mailledger` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve REST, gRPC, metrics and the NATS intake until SIGINT/SIGTERM.
    Serve,
    /// Create the database if needed and apply the migrations, then exit.
    Migrate,
}
