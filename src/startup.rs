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
use axum::serve::ListenerExt;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, redact};
use crate::health::Readiness;
use crate::ledger::Ledger;
use crate::projections::Projection;
use crate::projections::cache::CacheProjection;
use crate::projections::emails::EmailsProjection;
use crate::projections::notify::Notifier;
use crate::projections::publisher::EventPublisher;
use crate::projections::runner::{Runner, RunnerOptions};
use crate::query::ReadSide;
use crate::query::cache::Cache;
use crate::query::repository::Repository;
use crate::saga::Sender;
use crate::saga::mailer::Mailer;
use crate::saga::schedule::ScheduleProjection;
use crate::transport::http::{HttpState, max_request_bytes};
use crate::transport::nats::intake::NatsIntake;
use crate::transport::tls::{Protocol, ServerTls};
use crate::{metrics, store, transport};

/// A running mailledger.
pub struct Application {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    nats: async_nats::Client,
    pool: PgPool,
    grace: Duration,
}

impl Application {
    /// Connects, migrates, binds and spawns. Fails if a TLS file cannot be used,
    /// PostgreSQL is unreachable or a port cannot be bound; NATS may come later (the
    /// intake waits for it).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        metrics::init();
        let tls = ServerTls::load(&settings.tls)?;
        let pool = store::connect(&settings.database).await?;
        store::migrate(&pool).await?;
        let nats = transport::nats::connect(&settings.nats).await?;
        let shutdown = CancellationToken::new();
        let notifier = Notifier::start(&pool, shutdown.clone());
        let ledger = Ledger::new(pool.clone(), settings.limits).with_announcer(notifier.announcer());
        let tracker = TaskTracker::new();

        let http_listener = bind(settings.http.addr, "MAILLEDGER_HTTP_ADDR").await?;
        let grpc_listener = bind(settings.grpc.addr, "MAILLEDGER_GRPC_ADDR").await?;
        let metrics_listener = bind(settings.metrics.addr, "MAILLEDGER_METRICS_ADDR").await?;
        let (http_addr, grpc_addr, metrics_addr) =
            (http_listener.local_addr()?, grpc_listener.local_addr()?, metrics_listener.local_addr()?);

        let cache = Cache::new(&settings.redis);
        let reads = ReadSide::new(Repository::new(pool.clone()), cache.clone());
        let projections: Vec<Arc<dyn Projection>> = vec![
            Arc::new(EmailsProjection::new()),
            Arc::new(CacheProjection::new(cache.clone())),
            Arc::new(ScheduleProjection::new()),
        ];
        for projection in projections {
            let runner = Runner::new(pool.clone(), projection, RunnerOptions::default()).wake_on(notifier.events());
            tracker.spawn(runner.run(shutdown.clone()));
        }

        if settings.delivery.enabled {
            let mailer = Mailer::new(&settings.smtp)?;
            let sender = Sender::new(pool.clone(), ledger.clone(), mailer, settings.delivery.clone());
            tracker.spawn(sender.run(shutdown.clone(), Some(notifier.deliveries())));
        }

        let state = HttpState {
            ledger: ledger.clone(),
            reads: reads.clone(),
            readiness: Readiness::new(pool.clone(), nats.clone(), cache.clone()),
            max_request_bytes: max_request_bytes(settings.limits.max_body_bytes),
        };
        let router = transport::http::router(state);
        let (routes, health) = transport::grpc::routes(ledger.clone(), reads)?;
        match &tls {
            Some(tls) => {
                // A tapped listener is what gives axum's `ConnectInfo<SocketAddr>` for a
                // listener other than `TcpListener`; the tap itself does nothing.
                let rest = tls.listener(http_listener, Protocol::Rest).tap_io(|_| ());
                tracker.spawn(transport::http::serve(rest, router, shutdown.clone()));
                let grpc = tls.listener(grpc_listener, Protocol::Grpc).into_incoming();
                tracker.spawn(transport::grpc::serve(grpc, routes, health, shutdown.clone()));
                #[cfg(unix)]
                tracker.spawn(reload_on_hangup(tls.clone(), shutdown.clone())?);
            }
            None => {
                tracker.spawn(transport::http::serve(http_listener, router, shutdown.clone()));
                let grpc = tonic::transport::server::TcpIncoming::from(grpc_listener);
                tracker.spawn(transport::grpc::serve(grpc, routes, health, shutdown.clone()));
            }
        }

        let stop = shutdown.clone();
        tracker.spawn(async move {
            let served =
                axum::serve(metrics_listener, metrics::router()).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        });

        tracker.spawn(crate::observe::monitor::run(
            pool.clone(),
            nats.clone(),
            crate::transport::nats::Names::new(&settings.nats),
            shutdown.clone(),
        ));

        let js = jetstream::new(nats.clone());
        let stop = shutdown.clone();
        let nats_settings = settings.nats.clone();
        let pool_for_nats = pool.clone();
        let events = notifier.events();
        tracker.spawn(async move {
            let mut attempt = 0u32;
            let publisher = EventPublisher::new(js.clone(), &nats_settings);
            let intake = loop {
                let ready = async {
                    transport::nats::ensure_streams(&js, &nats_settings).await?;
                    publisher.ensure_stream(&nats_settings).await?;
                    NatsIntake::setup(js.clone(), &nats_settings, ledger.clone()).await
                };
                match ready.await {
                    Ok(intake) => break intake,
                    Err(e) => {
                        attempt += 1;
                        let wait = Duration::from_secs(u64::from(attempt.min(5)));
                        tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "NATS intake not ready");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            };
            tracing::info!("NATS command intake running");
            let runner = Runner::new(pool_for_nats, Arc::new(publisher), RunnerOptions::default()).wake_on(events);
            tokio::join!(intake.run(stop.clone()), runner.run(stop));
        });
        tracker.close();

        tracing::info!(
            http = %http_addr, grpc = %grpc_addr, metrics = %metrics_addr, tls = tls.is_some(),
            database = %redact(&settings.database.url), nats = %redact(&settings.nats.url),
            "mailledger started"
        );
        Ok(Self {
            http_addr,
            grpc_addr,
            metrics_addr,
            tls,
            shutdown,
            tracker,
            nats,
            pool,
            grace: settings.shutdown_grace,
        })
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

    /// A token that stops the application when cancelled (for tests and embedders).
    pub fn stopper(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until SIGINT, SIGTERM or the stopper; then shuts down in order.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down");
                self.shutdown.cancel();
            }
        }
        if tokio::time::timeout(self.grace, self.tracker.wait()).await.is_err() {
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

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({name})"))
}

/// Reloads the TLS files on every SIGHUP until `stop` (a bad file keeps the old ones).
#[cfg(unix)]
fn reload_on_hangup(
    tls: ServerTls,
    stop: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    // The outcome is logged by `reload`; a failure keeps the old certificate.
                    let _ = tls.reload();
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
