//! One LISTEN connection per process, shared by every projection and the sender:
//! `NOTIFY mailledger_events` (an event was committed) and `NOTIFY
//! mailledger_deliveries` (a delivery was scheduled) become ticks on watch channels.
//! A lost connection is re-established; after it, every waiter is woken once, since
//! notifications sent meanwhile are gone.
//!
//! Writers announce their own commits with an [`Announcer`]: local waiters wake at once,
//! and other instances get one `NOTIFY mailledger_events`, sent outside any transaction
//! and at most every 20 ms. (A NOTIFY inside the writing transaction would hold a
//! cluster-wide lock through its commit and serialise every writer.) Its payload names
//! the process, which skips its own when they come back: its waiters were woken at the
//! commit, and a second tick woke every projection again to find nothing.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Channel on which the event store announces commits.
pub const EVENTS: &str = "mailledger_events";
/// Channel on which the schedule announces due deliveries.
pub const DELIVERIES: &str = "mailledger_deliveries";

/// Receivers for the two channels.
#[derive(Clone)]
pub struct Notifier {
    events: watch::Receiver<u64>,
    deliveries: watch::Receiver<u64>,
    announcer: Announcer,
}

/// Tells local projections and other instances that events were committed.
#[derive(Clone)]
pub struct Announcer {
    local: Arc<watch::Sender<u64>>,
    remote: Arc<Notify>,
}

impl Announcer {
    /// Events were committed just now.
    pub fn committed(&self) {
        self.local.send_modify(|n| *n = n.wrapping_add(1));
        self.remote.notify_one();
    }
}

impl Notifier {
    /// Starts listening on a connection of its own (outside `pool`'s limit).
    pub fn start(pool: &PgPool, shutdown: CancellationToken) -> Self {
        let (events_tx, events) = watch::channel(0u64);
        let events_tx = Arc::new(events_tx);
        let (deliveries_tx, deliveries) = watch::channel(0u64);
        let own = PgPoolOptions::new().max_connections(1).connect_lazy_with((*pool.connect_options()).clone());
        let announcer = Announcer { local: events_tx.clone(), remote: Arc::new(Notify::new()) };
        let (remote, writer_pool, stop) = (announcer.remote.clone(), pool.clone(), shutdown.clone());
        let me = uuid::Uuid::new_v4().simple().to_string();
        let mine = me.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = remote.notified() => {}
                }
                if let Err(e) =
                    sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS).bind(&mine).execute(&writer_pool).await
                {
                    tracing::debug!(error = %e, "cannot announce commits; other instances will poll");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        tokio::spawn(async move {
            let tick = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
            'connect: while !shutdown.is_cancelled() {
                let listener = async {
                    let mut l = PgListener::connect_with(&own).await?;
                    l.listen_all([EVENTS, DELIVERIES]).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                let mut listener = match listener.await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN; projections fall back to polling");
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'connect,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'connect,
                        }
                    }
                };
                // Anything may have been missed while not listening.
                tick(&events_tx);
                tick(&deliveries_tx);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => break 'connect,
                        n = listener.try_recv() => n,
                    };
                    match next {
                        // Our own announcement, back: our waiters were woken at the commit.
                        Ok(Some(n)) if n.channel() == EVENTS && n.payload() == me => {}
                        Ok(Some(n)) if n.channel() == EVENTS => tick(&events_tx),
                        Ok(Some(_)) => tick(&deliveries_tx),
                        // The connection dropped; PgListener reconnects on the next call.
                        Ok(None) => {
                            tick(&events_tx);
                            tick(&deliveries_tx);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                            continue 'connect;
                        }
                    }
                }
            }
        });
        Self { events, deliveries, announcer }
    }

    /// What writers call after a commit.
    pub fn announcer(&self) -> Announcer {
        self.announcer.clone()
    }

    /// Ticks when events are committed.
    pub fn events(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    /// Ticks when deliveries are scheduled.
    pub fn deliveries(&self) -> watch::Receiver<u64> {
        self.deliveries.clone()
    }
}

/// Waits for a tick on `wake` (if any) or `timeout`, whichever comes first.
pub async fn wait(wake: &mut Option<watch::Receiver<u64>>, timeout: Duration) {
    match wake {
        Some(rx) => {
            let _ = tokio::time::timeout(timeout, rx.changed()).await;
        }
        None => tokio::time::sleep(timeout).await,
    }
}
