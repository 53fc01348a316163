//! The `mailledger` binary: parse the command line, load settings, call the library.

use std::process::ExitCode;

use clap::Parser;
use mailledger::cli::{Cli, Command};
use mailledger::config::Settings;
use mailledger::startup::Application;
use mailledger::{store, telemetry};

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
    telemetry::init(&settings.log);
    let result = match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    Application::build(settings).await?.run_until_stopped().await
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    store::migrate(&pool).await?;
    eprintln!("mailledger: migrations applied");
    Ok(())
}
