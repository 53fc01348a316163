//! The `mailledger` command line: what it takes ([`Cli`]) and what each command does
//! ([`run`]). `serve` is [`Application`]; the rest are operator tools ([`crate::ops`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::access::keys::NewKey;
use crate::access::{self, Principal};
use crate::config::Settings;
use crate::ledger::Ledger;
use crate::ops::progress::Bar;
use crate::ops::reproject::{self, Target};
use crate::ops::{dlq, history, ledger, replay, status};
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
        /// Only this event type (requested, persisted, sent, failed, dead_lettered, redriven,
        /// suppressed, key_created, key_revoked, suppression_added, suppression_removed); any
        /// other is a usage error (exit 2).
        #[arg(long = "type", value_name = "KIND", value_parser = crate::ops::replay::parse_kind)]
        kind: Option<String>,
        /// Only events of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Write the proof export instead: every sealed event with its leaf and every
        /// signed checkpoint, for `mailledger ledger verify --export` (whole log only).
        #[arg(long, conflicts_with_all = ["since", "until", "email", "kind", "tenant"])]
        proofs: bool,
    },
    /// Search the emails with the search language of `q` (see the README), newest first.
    Search {
        /// The query, e.g. 'from:ann@example.com subject:"quarterly report" -is:bounced'.
        #[arg(default_value = "", allow_hyphen_values = true)]
        query: String,
        /// Only this tenant's emails (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Page, from 1.
        #[arg(long, default_value_t = 1)]
        page: i64,
        /// Emails per page (at most 100).
        #[arg(long, default_value_t = 20)]
        size: i64,
        /// One JSON summary per line instead of a table.
        #[arg(long)]
        json: bool,
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
    /// The proof log: signing keys, checkpoints, proofs and verification.
    Ledger {
        /// What to do.
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// API keys: make, list, revoke.
    Keys {
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The suppression list: list, export, add, remove.
    Suppressions {
        /// What to do.
        #[command(subcommand)]
        action: SuppressionsAction,
    },
    /// Signed status webhooks: endpoints, their delivery logs, replays.
    Webhooks {
        /// What to do.
        #[command(subcommand)]
        action: WebhooksAction,
    },
}

/// `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksAction {
    /// Endpoints (never their secrets).
    List {
        /// Only this tenant's (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Register an endpoint; its secret is the LAST line of stdout, shown this once.
    Add {
        /// `https://…` (or `http://…`).
        url: String,
        /// Kinds to hear: sent, failed, dead_lettered, suppressed (comma-separated or repeated).
        #[arg(long = "kind", required = true, value_delimiter = ',')]
        kinds: Vec<String>,
        /// The tenant (default `default`).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// Turn an endpoint on (also resumes a paused one, or one a 410 disabled).
    Enable {
        /// The endpoint.
        id: Uuid,
    },
    /// Turn an endpoint off.
    Disable {
        /// The endpoint.
        id: Uuid,
    },
    /// A new secret (the LAST line of stdout, shown this once); the old one signs too
    /// for the grace period.
    Rotate {
        /// The endpoint.
        id: Uuid,
        /// How long the old secret still signs (default `webhooks.rotation_grace`).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Remove an endpoint and its delivery log.
    Remove {
        /// The endpoint.
        id: Uuid,
    },
    /// The delivery log of an endpoint, newest first, with every attempt.
    Deliveries {
        /// The endpoint.
        id: Uuid,
        /// Only pending, delivered or failed.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        status: Option<String>,
        /// Rows at most.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send again one delivery, or every delivery of events in a time range.
    Replay {
        /// The endpoint.
        id: Uuid,
        /// One delivery, by id.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        delivery: Option<i64>,
        /// Events at or after this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339, required_unless_present = "delivery")]
        since: Option<DateTime<Utc>>,
        /// Events before this instant (RFC 3339; default now).
        #[arg(long, value_parser = rfc3339)]
        until: Option<DateTime<Utc>>,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key. Its secret is the last line of the output, shown this once.
    Create {
        /// A name for people (and the metrics).
        #[arg(long)]
        name: String,
        /// send, read, redrive, admin, webhooks — comma-separated — or all.
        #[arg(long = "scope", value_name = "SCOPES")]
        scopes: String,
        /// The tenant it acts in (default `default`).
        #[arg(long)]
        tenant: Option<String>,
        /// A domain it may send from (repeat for several; none: any).
        #[arg(long = "from-domain", value_name = "DOMAIN")]
        from_domains: Vec<String>,
        /// When it stops working: a duration (90d, 12h) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// Requests per second (default: auth.rate_per_second).
        #[arg(long = "rate")]
        rate_per_second: Option<f64>,
        /// Requests at once above the rate (default: auth.burst).
        #[arg(long)]
        burst: Option<u32>,
        /// Emails a day (default: auth.daily_quota; 0: none).
        #[arg(long)]
        daily_quota: Option<i64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: it stops working everywhere within a second.
    Revoke {
        /// The key's id.
        id: Uuid,
    },
}

/// `ledger` subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Make an Ed25519 checkpoint-signing key pair: the private key to FILE (mode 0600,
    /// for MAILLEDGER_SIGNING_KEY), the verifier key to FILE.pub and stdout.
    Keygen {
        /// The private key's file (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The key's name (default: the checkpoints' origin, mailledger/<database>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Recompute the whole log from the events and check every checkpoint; with
    /// --export, check exports offline (no database, no service). Exit 0: verified;
    /// 1: it does not verify (the reason names the position, line or signature); 2: the
    /// check could not run.
    Verify {
        /// Proof exports (`mailledger replay --proofs`), oldest first: each is checked,
        /// and against every checkpoint of the ones before it.
        #[arg(long = "export", value_name = "FILE")]
        exports: Vec<PathBuf>,
        /// A verifier key, or a file of them (one a line); again for more keys (a log
        /// whose signing key was rotated: each checkpoint must be signed by one of
        /// them). Default: the public half of MAILLEDGER_SIGNING_KEY (required with
        /// --export).
        #[arg(long = "public-key", value_name = "KEY")]
        public_keys: Vec<String>,
        /// Signed checkpoint notes kept elsewhere (from NATS, an earlier run): the log
        /// must agree with each.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
    },
    /// Every event of an email with its inclusion proof in the newest checkpoint (JSON).
    Prove {
        /// The email's id.
        id: Uuid,
    },
    /// Print the newest signed checkpoint note (to keep a copy).
    Checkpoint,
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead-lettered emails, oldest first.
    List,
    /// Queue dead-lettered emails for delivery again: these ids, or every dead letter a
    /// filter matches (a bulk run: counted first, paced, resumable).
    Redrive {
        /// The emails to redrive.
        #[arg(required_unless_present_any = ["all", "since", "until", "reason_like", "to_domain", "resume"],
              conflicts_with_all = ["all", "since", "until", "reason_like", "to_domain", "resume"])]
        ids: Vec<Uuid>,
        /// Every dead letter (a bulk run with no filter).
        #[arg(long)]
        all: bool,
        /// Dead-lettered at or after this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        since: Option<DateTime<Utc>>,
        /// Dead-lettered before this instant (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        until: Option<DateTime<Utc>>,
        /// The dead letter's reason contains this text (case-insensitive).
        #[arg(long = "reason-like", value_name = "TEXT")]
        reason_like: Option<String>,
        /// A recipient at this domain.
        #[arg(long = "to-domain", value_name = "DOMAIN")]
        to_domain: Option<String>,
        /// Only this tenant's dead letters (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Pace of a bulk run: 50/s, 3000/m, or 0 for no limit.
        #[arg(long, default_value = "50/s")]
        rate: crate::redrive::Rate,
        /// Count what a bulk run would redrive, and redrive nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Go on with an interrupted bulk run (what is done stays done).
        #[arg(long, value_name = "RUN")]
        resume: Option<Uuid>,
        /// Who asks (recorded in the ledger); default $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// Bulk redrive runs, newest first.
    Runs,
}

/// `suppressions` subcommands.
#[derive(Debug, Subcommand)]
pub enum SuppressionsAction {
    /// Suppressed recipients, newest first.
    List {
        #[command(flatten)]
        filter: SuppressionFilter,
        /// Rows at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Every suppressed recipient the filter selects, as CSV or NDJSON on stdout.
    Export {
        #[command(flatten)]
        filter: SuppressionFilter,
        /// csv or ndjson.
        #[arg(long, default_value = "csv", value_parser = ["csv", "ndjson"])]
        format: String,
    },
    /// Stop sending to an address (recorded with who and why).
    Add {
        /// The address.
        address: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// The tenant (default `default`).
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Send to an address again (recorded with who and why).
    Remove {
        /// The address.
        address: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// The tenant (default `default`).
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// Which suppressions.
#[derive(Debug, clap::Args)]
pub struct SuppressionFilter {
    /// Only this tenant's (default: every tenant).
    #[arg(long)]
    tenant: Option<String>,
    /// Only addresses at this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only reasons containing this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only those added at or after this instant (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    since: Option<DateTime<Utc>>,
    /// Only bounce or manual.
    #[arg(long, value_parser = ["bounce", "manual"])]
    source: Option<String>,
}

impl From<SuppressionFilter> for crate::suppression::Filter {
    fn from(f: SuppressionFilter) -> Self {
        Self { tenant: f.tenant, domain: f.domain, reason_like: f.reason, since: f.since, source: f.source }
    }
}

/// Runs one command to its end; the exit code says how it went (errors are the caller's
/// to print).
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    crate::transport::tls::install_default_provider();
    if let Command::Serve = command {
        Application::build(settings).await?.run_until_stopped().await?;
        return Ok(ExitCode::SUCCESS);
    }
    let command = match command {
        Command::Ledger { action } => match offline(action, &settings)? {
            Ok(code) => return Ok(code),
            Err(action) => Command::Ledger { action },
        },
        other => other,
    };
    let pool = store::connect(&settings.database).await?;
    store::migrate(&pool).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match command {
        Command::Serve => unreachable!("handled above"),
        Command::Migrate => eprintln!("mailledger: migrations applied"),
        Command::Replay { proofs: true, .. } => {
            let bar = Bar::new("export");
            let origin = settings.proof.origin(&settings.database.name());
            let (leaves, checkpoints) = ledger::export(&pool, &origin, &mut out, &bar).await?;
            bar.finish();
            eprintln!("mailledger: exported {leaves} sealed events and {checkpoints} checkpoints");
        }
        Command::Replay { since, until, email, kind, tenant, proofs: false } => {
            let bar = Bar::new("replay");
            let window = Window { since, until, email, event_type: kind, tenant };
            replay::replay(&pool, &window, &mut out, &bar).await?;
            bar.finish();
        }
        Command::Search { query, tenant, page, size, json } => {
            let raw = crate::query::params::RawSearch {
                q: Some(query),
                page: Some(page),
                size: Some(size),
                ..Default::default()
            };
            let mut params = match raw.parse() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("mailledger: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            params.tenant = tenant;
            let found = crate::query::repository::Repository::new(pool.clone()).search(&params).await?;
            for e in &found.items {
                if json {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                } else {
                    writeln!(
                        out,
                        "{}  {}  {:<13} {:<10} {} -> {}  {}",
                        e.created_at.format("%Y-%m-%d %H:%M:%S"),
                        e.id,
                        e.status,
                        e.tenant,
                        e.from,
                        e.to.join(", "),
                        crate::text::echo(&e.subject)
                    )?;
                }
            }
            let total =
                if found.total_exact { found.total_count.to_string() } else { format!("{}+", found.total_count) };
            let more = if found.has_more { format!("; more on --page {}", found.page + 1) } else { String::new() };
            eprintln!("mailledger: {total} match(es), page {} of {}{more}", found.page, found.total_pages.max(1));
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
                "mailledger: re-projected {} events in {:.1} s ({:.0} events/s; rows {:.1} s, indexes {:.1} s)",
                report.events,
                report.seconds,
                report.events as f64 / report.seconds.max(1e-9),
                report.load_seconds,
                report.index_seconds,
            );
        }
        Command::Dlq { action: DlqAction::List } => {
            let n = dlq::list(&pool, &mut out).await?;
            eprintln!("mailledger: {n} dead-lettered email(s)");
        }
        Command::Dlq { action: DlqAction::Redrive { ids, by, .. } } if !ids.is_empty() => {
            let ledger = Ledger::new(pool.clone(), settings.limits);
            let done = dlq::redrive(&ledger, &ids, &operator(), by.as_deref()).await?;
            for id in &done {
                writeln!(out, "{id}")?;
            }
            eprintln!("mailledger: redrove {} email(s)", done.len());
        }
        Command::Dlq {
            action: DlqAction::Redrive { since, until, reason_like, to_domain, tenant, rate, dry_run, resume, by, .. },
        } => {
            let filter = crate::redrive::Filter { tenant, since, until, reason_like, to_domain };
            let ledger = Ledger::new(pool.clone(), settings.limits);
            let mut by_whom = operator();
            if let Some(by) = by {
                by_whom.name = by;
            }
            return dlq::bulk(&pool, &ledger, &by_whom, filter, rate, dry_run, resume, &mut out).await;
        }
        Command::Dlq { action: DlqAction::Runs } => dlq::runs(&pool, &mut out).await?,
        Command::Suppressions { action } => suppressions(&pool, action, &mut out).await?,
        Command::Webhooks { action } => webhooks(&pool, action, &settings.webhooks, &mut out).await?,
        Command::Status => {
            let nats = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                crate::transport::nats::connect(&settings.nats),
            )
            .await
            .ok()
            .and_then(Result::ok);
            let names = settings.nats.names();
            let target = nats.as_ref().map(|c| (c, names.commands_stream.clone(), names.consumer.clone()));
            status::print(&pool, target, &mut out).await?;
            if let Some(replica) = crate::store::connect_replica(&settings.database)? {
                let replica = crate::query::replica::Replica::new(replica, pool.clone());
                let line = crate::query::replica::status_line(&replica, settings.database.read_max_lag).await;
                writeln!(out, "{line}")?;
            }
        }
        Command::Keys { action } => keys(&pool, action, &mut out).await?,
        Command::Ledger { action } => return ledger_online(&pool, action, &settings, &mut out).await,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn suppressions(pool: &sqlx::PgPool, action: SuppressionsAction, out: &mut impl Write) -> anyhow::Result<()> {
    use crate::suppression::{self as list, Change};
    let by = operator();
    let change = |tenant, address, reason| Change {
        tenant,
        address,
        reason,
        by: &by.name,
        metadata: std::collections::HashMap::from([
            ("transport".to_owned(), "cli".to_owned()),
            ("actor".to_owned(), by.name.clone()),
        ]),
    };
    match action {
        SuppressionsAction::List { filter, limit } => {
            let (rows, next) = list::list(pool, &filter.into(), None, limit).await?;
            for s in &rows {
                writeln!(
                    out,
                    "{}  {:<10} {:<40} {:<6} {} ({} by {})",
                    s.created_at.format("%Y-%m-%d %H:%M:%S"),
                    s.tenant,
                    s.address,
                    s.source,
                    s.reason,
                    s.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    s.created_by
                )?;
            }
            let more = if next.is_some() { " (more: raise --limit, or export)" } else { "" };
            eprintln!("mailledger: {} suppressed recipient(s){more}", rows.len());
        }
        SuppressionsAction::Export { filter, format } => {
            use futures::TryStreamExt;
            let mut chunks = std::pin::pin!(list::export(pool.clone(), filter.into(), format == "csv"));
            while let Some(chunk) = chunks.try_next().await? {
                out.write_all(&chunk)?;
            }
        }
        SuppressionsAction::Add { address, reason, tenant } => {
            let added = list::add(pool, change(&tenant, &address, &reason), None).await?;
            eprintln!(
                "mailledger: {address} {} in tenant {tenant}",
                if added { "suppressed" } else { "was suppressed already" }
            );
        }
        SuppressionsAction::Remove { address, reason, tenant } => {
            if !list::remove(pool, change(&tenant, &address, &reason)).await? {
                anyhow::bail!("{address} is not suppressed in tenant {tenant}");
            }
            eprintln!("mailledger: {address} is no longer suppressed in tenant {tenant}");
        }
    }
    Ok(())
}

async fn webhooks(
    pool: &sqlx::PgPool,
    action: WebhooksAction,
    settings: &crate::config::WebhookSettings,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use crate::webhooks::{self as hooks, Endpoint, EndpointChange, LogFilter, NewEndpoint, Replay};
    let by = operator();
    let show = |out: &mut dyn Write, e: &Endpoint| -> std::io::Result<()> {
        let state = match (e.enabled, &e.paused_at, &e.disabled_reason) {
            (true, Some(at), _) => format!("paused since {}", at.format("%Y-%m-%d %H:%M:%S")),
            (true, None, _) => "enabled".to_owned(),
            (false, _, Some(why)) => format!("disabled: {why}"),
            (false, _, None) => "disabled".to_owned(),
        };
        writeln!(out, "{}  {:<10} {}  [{}]  {state}", e.id, e.tenant, e.url, e.kinds.join(","))
    };
    match action {
        WebhooksAction::List { tenant } => {
            let rows = hooks::list(pool, tenant.as_deref()).await?;
            for e in &rows {
                show(out, e)?;
            }
            eprintln!("mailledger: {} webhook endpoint(s)", rows.len());
        }
        WebhooksAction::Add { url, kinds, tenant, description } => {
            let new = NewEndpoint { url: Some(url), kinds: Some(kinds), description, enabled: None, tenant: None };
            let (e, secret) = hooks::create(pool, &tenant, &new, &by.name, settings).await?;
            show(out, &e)?;
            writeln!(out, "the signing secret (shown this once):")?;
            writeln!(out, "{secret}")?;
        }
        WebhooksAction::Enable { id } | WebhooksAction::Disable { id } => {
            let enabled = matches!(action, WebhooksAction::Enable { .. });
            let change = EndpointChange { enabled: Some(enabled), ..Default::default() };
            let e = hooks::update(pool, id, None, &change, &by.name, settings.allow_private).await?;
            show(out, &e)?;
        }
        WebhooksAction::Rotate { id, grace } => {
            let (e, secret) =
                hooks::rotate(pool, id, None, grace.unwrap_or(settings.rotation_grace), &by.name, settings).await?;
            show(out, &e)?;
            if let Some(until) = e.previous_secret_until {
                writeln!(out, "the old secret signs too until {}", until.to_rfc3339())?;
            }
            writeln!(out, "the new signing secret (shown this once):")?;
            writeln!(out, "{secret}")?;
        }
        WebhooksAction::Remove { id } => {
            hooks::delete(pool, id, None, &by.name).await?;
            eprintln!("mailledger: webhook endpoint {id} removed");
        }
        WebhooksAction::Deliveries { id, status, limit } => {
            hooks::get(pool, id, None).await?;
            let filter = LogFilter { status, ..Default::default() };
            for d in hooks::deliveries(pool, id, &filter, limit.clamp(1, 500)).await? {
                writeln!(
                    out,
                    "{:>8}  {}  {:<13} {:<9} attempts {}  {}",
                    d.id,
                    d.occurred_at.format("%Y-%m-%d %H:%M:%S"),
                    d.kind,
                    d.status,
                    d.attempts,
                    d.event_id
                )?;
                for a in &d.log {
                    writeln!(
                        out,
                        "          #{} {}  {:>4} {:>6} ms  {:<9} {}",
                        a.attempt,
                        a.at.format("%H:%M:%S"),
                        a.status_code.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                        a.latency_ms,
                        a.outcome,
                        a.error.as_deref().unwrap_or(&a.excerpt).chars().take(100).collect::<String>()
                    )?;
                }
            }
        }
        WebhooksAction::Replay { id, delivery, since, until } => {
            hooks::get(pool, id, None).await?;
            let n = hooks::replay(pool, id, &Replay { delivery_id: delivery, since, until }).await?;
            eprintln!("mailledger: {n} delivery(ies) queued again");
        }
    }
    Ok(())
}

/// Prints why a check could not run; exit code 2.
fn cannot_check(e: &anyhow::Error) -> ExitCode {
    eprintln!("mailledger: cannot verify: {e:#}");
    ExitCode::from(2)
}

/// The verdict of a check: exit 0 and what was verified, or 1 and why not.
fn verdict(result: anyhow::Result<ledger::Verdict>) -> ExitCode {
    match result {
        Ok(Ok(summary)) => {
            eprintln!(
                "mailledger: verified: {} events, {} checkpoint(s); root {}",
                summary.leaves,
                summary.checkpoints,
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, summary.root)
            );
            ExitCode::SUCCESS
        }
        Ok(Err(reason)) => {
            eprintln!("mailledger: the log does NOT verify: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => cannot_check(&e),
    }
}

/// Kept checkpoint notes: (label, note) of each file.
fn kept_notes(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    files
        .iter()
        .map(|f| {
            let note = std::fs::read_to_string(f).with_context(|| format!("{}: cannot be read", f.display()))?;
            Ok((format!("checkpoint {}", f.display()), note))
        })
        .collect()
}

/// The ledger commands that need no database: `keygen` and `verify --export`. Hands
/// the others back.
fn offline(action: LedgerAction, settings: &Settings) -> anyhow::Result<Result<ExitCode, LedgerAction>> {
    match action {
        LedgerAction::Keygen { out, name } => {
            let name = name.unwrap_or_else(|| settings.proof.origin(&settings.database.name()));
            let public = ledger::keygen(&name, &out)?;
            eprintln!("mailledger: signing key written to {} (keep it secret; MAILLEDGER_SIGNING_KEY)", out.display());
            eprintln!("mailledger: verifier key (give it to auditors) in {}.pub:", out.display());
            println!("{public}");
            Ok(Ok(ExitCode::SUCCESS))
        }
        LedgerAction::Verify { exports, public_keys, checkpoints } if !exports.is_empty() => {
            if public_keys.is_empty() {
                eprintln!("mailledger: --export needs --public-key (the verifier key, or its file)");
                return Ok(Ok(ExitCode::from(2)));
            }
            let checked = (|| {
                let keys = ledger::load_verifiers(&public_keys)?;
                let kept = kept_notes(&checkpoints)?;
                let bar = Bar::new("verify");
                let result = ledger::verify_exports(&exports, &keys, &kept, &bar);
                bar.finish();
                result
            })();
            Ok(Ok(verdict(checked)))
        }
        other => Ok(Err(other)),
    }
}

/// The ledger commands that read the database.
async fn ledger_online(
    pool: &sqlx::PgPool,
    action: LedgerAction,
    settings: &Settings,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    match action {
        LedgerAction::Verify { public_keys, checkpoints, .. } => {
            let keys = if public_keys.is_empty() {
                match crate::proof::sealer::Signing::load(&settings.proof, &settings.database.name()) {
                    Ok(Some(s)) => Ok(s.verifiers()),
                    Ok(None) => Err(anyhow::anyhow!("give --public-key (no MAILLEDGER_SIGNING_KEY is set)")),
                    Err(e) => Err(e),
                }
            } else {
                ledger::load_verifiers(&public_keys)
            };
            let keys = match keys {
                Ok(k) => k,
                Err(e) => return Ok(cannot_check(&e)),
            };
            let kept = match kept_notes(&checkpoints) {
                Ok(k) => k,
                Err(e) => return Ok(cannot_check(&e)),
            };
            let bar = Bar::new("verify");
            let result = ledger::verify_store(pool, keys, &kept, &bar).await;
            bar.finish();
            Ok(verdict(result))
        }
        LedgerAction::Prove { id } => {
            let proofs = ledger::prove(pool, id, &operator()).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&proofs)?)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        LedgerAction::Checkpoint => {
            let latest =
                crate::proof::ProofLog::new(pool.clone()).checkpoint(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            write!(out, "{}", latest.note)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        LedgerAction::Keygen { .. } => unreachable!("offline"),
    }
}

/// Who runs this command: `cli:$USER`.
fn operator() -> Principal {
    Principal::operator(&std::env::var("USER").unwrap_or_else(|_| "operator".into()))
}

async fn keys(pool: &sqlx::PgPool, action: KeysAction, out: &mut impl Write) -> anyhow::Result<()> {
    let by = operator();
    match action {
        KeysAction::Create { name, scopes, tenant, from_domains, expires, rate_per_second, burst, daily_quota } => {
            let new = NewKey { name, scopes, tenant, from_domains, expires, rate_per_second, burst, daily_quota };
            let (record, key) = access::keys::create(pool, &new, &by).await?;
            writeln!(out, "key {} {:?}: tenant {}, scopes {}", record.id, record.name, record.tenant, record.scopes)?;
            if !record.from_domains.is_empty() {
                writeln!(out, "sends only from: {}", record.from_domains.join(", "))?;
            }
            if let Some(at) = record.expires_at {
                writeln!(out, "expires: {}", at.to_rfc3339())?;
            }
            writeln!(out, "the key (shown this once; give it as `Authorization: Bearer <key>`):")?;
            writeln!(out, "{key}")?;
        }
        KeysAction::List => {
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            writeln!(
                out,
                "id                                    name                 tenant       scopes                  created          last used        expires          revoked"
            )?;
            for k in access::keys::list(pool, &by).await? {
                writeln!(
                    out,
                    "{}  {:<20} {:<12} {:<23} {}  {}  {}  {}",
                    k.id,
                    k.name,
                    k.tenant,
                    k.scopes.to_string(),
                    time(Some(k.created_at)),
                    time(k.last_used_at),
                    time(k.expires_at),
                    k.revoked_at.map_or_else(
                        || "-".to_owned(),
                        |t| format!("{} by {}", time(Some(t)), k.revoked_by.unwrap_or_default())
                    ),
                )?;
            }
        }
        KeysAction::Revoke { id } => {
            let record = access::keys::revoke(pool, id, &by).await?;
            writeln!(out, "revoked {} {:?}", record.id, record.name)?;
        }
    }
    Ok(())
}
