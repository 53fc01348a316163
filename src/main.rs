//! The `mailledger` binary: parse the command line, load settings, call the library.

use std::process::ExitCode;

use clap::Parser;
use mailledger::cli::{self, Cli, Command};
use mailledger::config::Settings;
use mailledger::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailledger: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log, matches!(cli.command, Command::Serve));
    match cli::run(cli.command, settings).await {
        Ok(code) => code,
        // `mailledger replay | head`: the reader has gone; that is not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}
