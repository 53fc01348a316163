//! The application object: [`Application::build`] connects, migrates, binds every
//! listener (port 0 picks a free one) and starts every worker;
//! [`Application::run_until_stopped`] waits for SIGINT/SIGTERM (or [`Application::stopper`])
//! and shuts everything down in order: stop taking work, finish what is in flight,
//! drain NATS, close the pool. With TLS configured, REST and gRPC serve TLS only and
//! SIGHUP reloads the certificate ([`Application::tls`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::keyring::Keyring;
use crate::config::{DeliverySettings, NatsSettings, Settings, redact};
use crate::ledger::Ledger;
use crate::observe::health::Readiness;
use crate::projections::Projection;
use crate::projections::cache::CacheProjection;
use crate::projections::emails::EmailsProjection;
use crate::projections::events::{EventPublisher, SuppressionPublisher};
use crate::projections::runner::{Runner, RunnerOptions};
use crate::proof::ProofLog;
use crate::proof::publish::Publisher as CheckpointPublisher;
use crate::proof::sealer::{Sealer, Signing};
use crate::query::ReadSide;
use crate::query::cache::Cache;
use crate::query::near::{Invalidator, NearCache};
use crate::query::replica::Replica;
use crate::query::repository::Repository;
use crate::saga::Sender;
use crate::saga::mailer::Mailer;
use crate::saga::schedule::ScheduleProjection;
use crate::store::notify::Notifier;
use crate::store::tail::{Tail, TailLimits};
use crate::transport::consistency::ConsistencyLayer;
use crate::transport::http::{HttpState, Shared, max_request_bytes};
use crate::transport::nats::intake::NatsIntake;
use crate::transport::tls::{Protocol, ServerTls};
use crate::{metrics, store, transport};

/// A running mailledger.
pub struct Application {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    tls: Option<ServerTls>,
    sender: Option<Sender>,
    work: Work,
    nats: async_nats::Client,
    pool: PgPool,
    grace: Duration,
}

/// Gives a running application new delivery settings.
#[derive(Clone)]
pub struct Reloader(Option<Sender>);

impl Reloader {
    /// New domain limits, back-off and retry settings for the deliveries claimed from
    /// now on, as SIGHUP does with the settings file (`concurrency` is read at start-up
    /// only); nothing when this instance sends nothing.
    pub fn reload_delivery(&self, delivery: DeliverySettings) {
        if let Some(sender) = &self.0 {
            sender.reload(delivery);
        }
    }
}

/// Every long-running task, and the one signal that stops them all.
#[derive(Clone)]
struct Work {
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Work {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }
}

/// The three listeners, bound before anything is served (so a taken port fails start-up).
struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
    metrics: TcpListener,
}

impl Application {
    /// Connects, migrates, binds and spawns. Fails if a TLS file cannot be used,
    /// PostgreSQL is unreachable or a port cannot be bound; NATS may come later (the
    /// intake waits for it).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        metrics::init();
        transport::http::metrics_at_zero();
        transport::grpc::metrics_at_zero();
        transport::tls::install_default_provider();
        let tls = ServerTls::load(&settings.tls)?;
        // A key file that cannot be used stops start-up before anything runs.
        let signing = Signing::load(&settings.proof, &settings.database.name())?;
        let webhook_secrets = crate::webhooks::sealed::SecretBox::load(settings.webhooks.encryption_key.as_deref())?;
        if !webhook_secrets.sealing() {
            tracing::info!("webhook secrets are stored as issued (no webhooks.encryption_key)");
        }
        let pool = store::connect(&settings.database).await?;
        store::migrate(&pool).await?;
        let nats = transport::nats::connect(&settings.nats).await?;
        let listeners = Listeners::bind(&settings).await?;
        let addrs = listeners.addrs()?;

        let work = Work { shutdown: CancellationToken::new(), tracker: TaskTracker::new() };
        let keyring = Keyring::load(pool.clone(), &settings.auth).await.context("cannot load the API keys")?;
        if !keyring.enforced() {
            tracing::warn!(
                "authentication is OFF (MAILLEDGER_AUTH=off): anyone who reaches a port acts with every scope"
            );
        }
        work.spawn(keyring.clone().run(work.shutdown.clone()));
        let notifier = Notifier::start(&pool, work.shutdown.clone());
        let ledger = Ledger::new(pool.clone(), settings.limits)
            .with_announcer(notifier.announcer())
            .with_keyring(keyring.clone());
        let cache = Cache::new(&settings.redis);
        // The email feed, read once for every projection of this instance.
        let tail = Tail::new(TailLimits::default());

        spawn_projections(&work, &pool, &notifier, &cache, &tail);
        if settings.webhooks.enabled {
            let dispatcher = crate::webhooks::dispatch::Dispatcher::new(pool.clone(), settings.webhooks.clone())?;
            work.spawn(dispatcher.run(work.shutdown.clone()));
        }
        let signing = spawn_sealer(&work, &settings, signing, &pool, &notifier);
        let sender = spawn_sender(&work, &settings, &pool, &ledger, &notifier)?;
        let near = NearCache::new(settings.redis.local_views);
        work.spawn(Invalidator::new(pool.clone(), near.clone()).run(Some(notifier.events()), work.shutdown.clone()));
        let mut reads = ReadSide::new(Repository::new(pool.clone()), cache.clone()).with_near_cache(near);
        let replica = crate::store::connect_replica(&settings.database)?.map(|r| Replica::new(r, pool.clone()));
        if let Some(replica) = &replica {
            work.spawn(replica.clone().monitor(settings.database.read_max_lag, work.shutdown.clone()));
            reads = reads.with_replica(replica.clone());
        }
        let readiness = Readiness::new(pool.clone(), nats.clone(), cache);
        let proofs = ProofLog::new(pool.clone());
        let edge = Edge {
            ledger: ledger.clone(),
            reads,
            readiness,
            keyring: keyring.clone(),
            pool: pool.clone(),
            proofs,
            consistency: ConsistencyLayer::new(replica),
        };
        serve(&work, &settings, listeners, tls.as_ref(), edge)?;
        #[cfg(unix)]
        work.spawn(reload_on_hangup(tls.clone(), sender.clone(), settings.file.clone(), work.shutdown.clone())?);
        work.spawn(crate::observe::monitor::run(
            pool.clone(),
            nats.clone(),
            settings.nats.names(),
            settings.delivery.domains.keys().filter(|d| *d != "default").cloned().collect(),
            work.shutdown.clone(),
        ));
        work.spawn(run_nats(
            nats.clone(),
            settings.nats.clone(),
            ledger,
            keyring,
            pool.clone(),
            notifier,
            tail,
            signing.is_some(),
            work.shutdown.clone(),
        ));
        work.tracker.close();

        let (http_addr, grpc_addr, metrics_addr) = addrs;
        tracing::info!(
            http = %http_addr, grpc = %grpc_addr, metrics = %metrics_addr, tls = tls.is_some(),
            database = %redact(&settings.database.url), nats = %settings.nats.url.redacted(),
            "mailledger started"
        );
        Ok(Self { http_addr, grpc_addr, metrics_addr, tls, sender, work, nats, pool, grace: settings.shutdown_grace })
    }

    /// The REST address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The TLS configuration of the REST and gRPC listeners (`None` when they are plain);
    /// its [`ServerTls::reload`] is what SIGHUP does.
    pub fn tls(&self) -> Option<ServerTls> {
        self.tls.clone()
    }

    /// What SIGHUP does to the delivery settings, as a handle (for tests and embedders).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.sender.clone())
    }

    /// A token that stops the application when cancelled (for tests and embedders).
    pub fn stopper(&self) -> CancellationToken {
        self.work.shutdown.clone()
    }

    /// Runs until SIGINT, SIGTERM or the stopper; then shuts down in order.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.work.shutdown.cancelled() => {}
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down");
                self.work.shutdown.cancel();
            }
        }
        if tokio::time::timeout(self.grace, self.work.tracker.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "shutdown grace period over; leaving unfinished work to redelivery");
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), self.nats.drain()).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "NATS drain failed");
        }
        self.pool.close().await;
        tracing::info!("mailledger stopped");
        crate::telemetry::shutdown();
        Ok(())
    }
}

impl Listeners {
    async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            http: bind(settings.http.addr, "MAILLEDGER_HTTP_ADDR").await?,
            grpc: bind(settings.grpc.addr, "MAILLEDGER_GRPC_ADDR").await?,
            metrics: bind(settings.metrics.addr, "MAILLEDGER_METRICS_ADDR").await?,
        })
    }

    fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((self.http.local_addr()?, self.grpc.local_addr()?, self.metrics.local_addr()?))
    }
}

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({name})"))
}

/// The projections kept in PostgreSQL and Redis, each on the instance that wins its lock.
/// (The NATS one starts with the NATS intake: see [`run_nats`].)
fn spawn_projections(work: &Work, pool: &PgPool, notifier: &Notifier, cache: &Cache, tail: &Tail) {
    let projections: [Arc<dyn Projection>; 4] = [
        Arc::new(EmailsProjection::new()),
        Arc::new(CacheProjection::new(cache.clone()).with_tail(tail.clone())),
        Arc::new(ScheduleProjection::new()),
        Arc::new(crate::webhooks::projection::WebhookProjection),
    ];
    for projection in projections {
        let runner = Runner::new(pool.clone(), projection, RunnerOptions::default())
            .wake_on(notifier.events())
            .with_tail(tail.clone());
        work.spawn(runner.run(work.shutdown.clone()));
    }
}

/// The proof log's sealer (a projection over every aggregate) and, with a signing key,
/// the signer of checkpoints no batch signed. Returns the signing in use.
fn spawn_sealer(
    work: &Work,
    settings: &Settings,
    signing: Option<Signing>,
    pool: &PgPool,
    notifier: &Notifier,
) -> Option<Signing> {
    if !settings.proof.enabled {
        tracing::warn!("the proof log is OFF (proof.enabled: false): events are not sealed");
        return None;
    }
    match &signing {
        Some(s) => {
            let verifiers =
                s.verifiers().iter().map(crate::proof::note::VerifierKey::encode).collect::<Vec<_>>().join(" ");
            tracing::info!(origin = %s.origin, verifier_keys = %verifiers, "proof log: signing checkpoints")
        }
        None => tracing::warn!(
            "proof log: NO SIGNING KEY (MAILLEDGER_SIGNING_KEY): events are sealed but no checkpoint is signed, so \
             nothing can be proved to an auditor; make one with `mailledger ledger keygen --out FILE`"
        ),
    }
    // Fewer, larger batches than the read model's: a checkpoint is due only every
    // interval anyway, and each batch costs its own statements on the tree.
    let options = RunnerOptions { batch_size: 2000, coalesce: Duration::from_millis(100), ..RunnerOptions::default() };
    let runner = Runner::new(pool.clone(), Arc::new(Sealer::new(signing.clone())), options).wake_on(notifier.events());
    work.spawn(runner.run(work.shutdown.clone()));
    if let Some(s) = &signing {
        work.spawn(crate::proof::sealer::run_signer(pool.clone(), s.clone(), work.shutdown.clone()));
    }
    signing
}

/// The sender, unless `delivery.enabled` is off on this instance.
fn spawn_sender(
    work: &Work,
    settings: &Settings,
    pool: &PgPool,
    ledger: &Ledger,
    notifier: &Notifier,
) -> anyhow::Result<Option<Sender>> {
    if !settings.delivery.enabled {
        return Ok(None);
    }
    let mailer = Mailer::new(&settings.smtp)?;
    let sender = Sender::new(pool.clone(), ledger.clone(), mailer, settings.delivery.clone());
    work.spawn(sender.clone().run(work.shutdown.clone(), Some(notifier.deliveries())));
    Ok(Some(sender))
}

/// What the listeners serve.
struct Edge {
    ledger: Ledger,
    reads: ReadSide,
    readiness: Readiness,
    keyring: Keyring,
    pool: PgPool,
    proofs: ProofLog,
    /// `X-Min-Position` (read-your-writes with a read replica).
    consistency: ConsistencyLayer,
}

/// REST, gRPC (TLS when configured, with SIGHUP reloading it) and metrics.
fn serve(
    work: &Work,
    settings: &Settings,
    listeners: Listeners,
    tls: Option<&ServerTls>,
    edge: Edge,
) -> anyhow::Result<()> {
    let stop = &work.shutdown;
    let state = HttpState::new(Shared {
        ledger: edge.ledger.clone(),
        reads: edge.reads.clone(),
        readiness: edge.readiness,
        max_request_bytes: max_request_bytes(settings.limits.max_body_bytes),
        request_timeout: settings.http.request_timeout,
        keyring: edge.keyring.clone(),
        pool: edge.pool.clone(),
        proofs: edge.proofs.clone(),
        webhooks: settings.webhooks.clone(),
    });
    let router = transport::http::service(state, edge.consistency.clone());
    let (routes, health) = transport::grpc::routes(
        edge.ledger,
        edge.reads,
        edge.pool,
        edge.proofs,
        settings.webhooks.clone(),
        max_request_bytes(settings.limits.max_body_bytes),
    )?;
    let grpc_served = transport::grpc::Served {
        routes,
        health,
        keyring: edge.keyring,
        timeout: settings.grpc.request_timeout,
        consistency: edge.consistency,
    };
    match tls {
        Some(tls) => {
            let rest = tls.listener(listeners.http, Protocol::Rest);
            work.spawn(transport::http::server::serve(rest, router, settings.http.clone(), stop.clone()));
            let grpc = tls.listener(listeners.grpc, Protocol::Grpc).into_incoming();
            work.spawn(transport::grpc::serve(grpc, grpc_served, stop.clone()));
        }
        None => {
            work.spawn(transport::http::server::serve(listeners.http, router, settings.http.clone(), stop.clone()));
            let grpc = tonic::transport::server::TcpIncoming::from(listeners.grpc);
            work.spawn(transport::grpc::serve(grpc, grpc_served, stop.clone()));
        }
    }
    let stop = stop.clone();
    work.spawn(async move {
        let served =
            axum::serve(listeners.metrics, metrics::router()).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(())
}

/// Everything on NATS: once the streams and the consumer exist (retried until NATS
/// answers), the command intake, the projection publishing domain events and (when
/// checkpoints are signed) the copies of checkpoints.
#[allow(clippy::too_many_arguments)]
async fn run_nats(
    nats: async_nats::Client,
    settings: NatsSettings,
    ledger: Ledger,
    keyring: Keyring,
    pool: PgPool,
    notifier: Notifier,
    tail: Tail,
    signing: bool,
    stop: CancellationToken,
) {
    let js = jetstream::new(nats);
    let publisher = EventPublisher::new(js.clone(), &settings);
    let suppressions = SuppressionPublisher::new(js.clone(), &settings);
    let checkpoints = CheckpointPublisher::new(js.clone(), &settings.names(), settings.duplicate_window);
    let setup = || async {
        transport::nats::ensure_streams(&js, &settings).await?;
        publisher.ensure_stream(settings.replicas).await?;
        if signing {
            checkpoints.ensure_stream(settings.replicas).await?;
        }
        NatsIntake::setup(js.clone(), &settings, ledger.clone(), keyring.clone()).await
    };
    let ready = setup
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .notify(|e: &anyhow::Error, wait| tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "NATS intake not ready"));
    let intake = tokio::select! {
        _ = stop.cancelled() => return,
        ready = ready => match ready {
            Ok(intake) => intake,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "NATS intake cannot start");
                return;
            }
        },
    };
    tracing::info!("NATS command intake running");
    let runner = Runner::new(pool.clone(), Arc::new(publisher), RunnerOptions::default())
        .wake_on(notifier.events())
        .with_tail(tail);
    let suppressions =
        Runner::new(pool.clone(), Arc::new(suppressions), RunnerOptions::default()).wake_on(notifier.events());
    let copies = async {
        if signing {
            checkpoints.run(pool, stop.clone()).await;
        }
    };
    tokio::join!(intake.run(stop.clone()), runner.run(stop.clone()), suppressions.run(stop.clone()), copies);
}

/// On every SIGHUP until `stop`: reloads the TLS files (a bad file keeps the old ones)
/// and the delivery settings from the settings file and environment (bad settings keep
/// the old ones).
#[cfg(unix)]
fn reload_on_hangup(
    tls: Option<ServerTls>,
    sender: Option<Sender>,
    file: Option<std::path::PathBuf>,
    stop: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = hangup.recv() => {
                    if let Some(tls) = &tls {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        // The outcome is logged by `reload`; a failure keeps the old certificate.
                        let _ = tls.reload();
                    }
                    if let Some(sender) = &sender {
                        match Settings::load(file.as_deref()) {
                            Ok(settings) => {
                                tracing::info!(domains = settings.delivery.domains.len(),
                                    "SIGHUP: delivery settings reloaded");
                                sender.reload(settings.delivery);
                            }
                            Err(e) => tracing::error!(error = %e, "SIGHUP: settings not reloaded; keeping the old ones"),
                        }
                    }
                }
            }
        }
    })
}

async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
        "SIGTERM"
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&'static str>();
    tokio::select! {
        s = ctrl_c => s,
        s = term => s,
    }
}
