//! The `mailledger` binary: parse the command line, load settings, call the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use mailledger::cli::{Cli, Command, DlqAction};
use mailledger::config::Settings;
use mailledger::ledger::Ledger;
use mailledger::ops::progress::Bar;
use mailledger::ops::{dlq, history, replay, status};
use mailledger::projections::reproject;
use mailledger::query::cache::Cache;
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
    telemetry::init(&settings.log, matches!(cli.command, Command::Serve));
    match run(cli.command, settings).await {
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

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
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
            let filter = replay::Filter { since, until, email, kind };
            replay::replay(&pool, &filter, &mut out, &bar).await?;
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
            let report = reproject::reproject(
                &pool,
                name,
                Some(cache),
                batch.max(1),
                mailledger::store::upcast::UPCASTERS,
                &bar,
            )
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
            let names = mailledger::transport::nats::Names::new(&settings.nats);
            let target = nats.as_ref().map(|c| (c, names.commands_stream.clone(), names.consumer.clone()));
            status::print(&pool, target, &mut out).await?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
