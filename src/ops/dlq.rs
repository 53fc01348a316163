//! `mailledger dlq list`, `mailledger dlq redrive ID…` and bulk runs
//! (`mailledger dlq redrive --since … --rate …`, `mailledger dlq runs`).

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::ledger::Ledger;
use crate::ops::progress::Bar;
use crate::query::row;
use crate::redrive;

/// Prints every dead-lettered email (from the read model), oldest first.
pub async fn list(pool: &PgPool, out: &mut impl Write) -> anyhow::Result<usize> {
    let rows = row::dead_letters(pool).await?;
    for d in &rows {
        writeln!(
            out,
            "{}  {}  {} → {}  {:?}  {} attempt(s): {}",
            d.id,
            d.updated_at.format("%Y-%m-%d %H:%M:%S"),
            d.from,
            d.to.join(", "),
            d.subject,
            d.attempts,
            d.last_error.as_deref().unwrap_or_default()
        )?;
    }
    Ok(rows.len())
}

/// Redrives `ids` one by one; returns the ids redriven.
pub async fn redrive(
    ledger: &Ledger,
    ids: &[Uuid],
    operator: &Principal,
    by: Option<&str>,
) -> anyhow::Result<Vec<Uuid>> {
    let mut done = Vec::new();
    for &id in ids {
        let metadata = HashMap::from([("transport".to_owned(), "cli".to_owned())]);
        ledger.redrive(id, operator, by, None, metadata).await.map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        done.push(id);
    }
    Ok(done)
}

/// `mailledger dlq redrive --since … [--dry-run] [--resume RUN]`: counts the dead
/// letters `filter` matches, then redrives them as a bulk run at `rate` (Ctrl-C stops it
/// resumably); with `resume`, goes on with that run instead.
#[allow(clippy::too_many_arguments)]
pub async fn bulk(
    pool: &PgPool,
    ledger: &Ledger,
    operator: &Principal,
    filter: redrive::Filter,
    rate: redrive::Rate,
    dry_run: bool,
    resume: Option<Uuid>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let run = match resume {
        Some(id) => redrive::get(pool, id, None).await?.ok_or(redrive::RedriveError::NotFound(id))?,
        None => {
            let preview = redrive::preview(pool, &filter).await?;
            if dry_run {
                for id in &preview.sample {
                    writeln!(out, "{id}")?;
                }
                eprintln!("mailledger: {} dead letter(s) match; nothing redriven (--dry-run)", preview.matched);
                return Ok(ExitCode::SUCCESS);
            }
            let run = redrive::start(pool, &filter, rate, operator).await?;
            let pace = if rate.0 > 0.0 { format!("{:.1}/s", rate.0) } else { "no limit".into() };
            eprintln!("mailledger: {} dead letter(s) match; redriving at {pace} as run {}", run.total, run.id);
            run
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_interrupt = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let bar = Bar::counting("redrive", "emails");
    let result = redrive::execute(pool, ledger, run.id, operator, &bar, stop).await;
    bar.finish();
    let done = result?;
    writeln!(out, "{}", done.id)?;
    let skipped = done.done - done.redriven;
    if done.finished_at.is_some() {
        eprintln!(
            "mailledger: run {} redrove {} of {} ({skipped} no longer dead letters)",
            done.id, done.redriven, done.total
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "mailledger: run {} stopped after {} of {}; go on with: mailledger dlq redrive --resume {}",
            done.id, done.done, done.total, done.id
        );
        Ok(ExitCode::from(130))
    }
}

/// `mailledger dlq runs`: the latest bulk runs.
pub async fn runs(pool: &PgPool, out: &mut impl Write) -> anyhow::Result<()> {
    for r in redrive::list(pool, None, 50).await? {
        let state = match (&r.finished_at, &r.worker) {
            (Some(at), _) => format!("finished {}", at.format("%Y-%m-%d %H:%M:%S")),
            (None, Some(w)) => format!("running on {w}"),
            (None, None) => "interrupted (resumable)".into(),
        };
        writeln!(
            out,
            "{}  {}  {}/{} done, {} redriven  {state}  by {}  {}",
            r.id,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            r.done,
            r.total,
            r.redriven,
            r.started_by,
            serde_json::to_string(&r.filter.0).unwrap_or_default()
        )?;
    }
    Ok(())
}
