//! Connections to the relay, kept open and reused: at most `smtp.pool_size` at once,
//! each used for at most `smtp.messages_per_connection` transactions and dropped after
//! `smtp.idle_timeout` unused. A connection that failed is never reused.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::client::{Connection, Endpoint, SmtpError, Transaction};

/// The pool.
pub struct Pool {
    endpoint: Endpoint,
    idle: Mutex<Vec<(Connection, Instant)>>,
    slots: Semaphore,
    per_connection: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// A pool of at most `size` connections to `endpoint`.
    pub fn new(endpoint: Endpoint, size: usize, per_connection: usize, idle_timeout: Duration) -> Self {
        Self {
            endpoint,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1)),
            per_connection: per_connection.max(1),
            idle_timeout,
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Runs one transaction on a pooled connection (opening one when none is idle).
    pub async fn send(&self, from: &str, recipients: &[String], data: &[u8]) -> Result<Transaction, SmtpError> {
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (Connection::open(&self.endpoint).await?, false),
        };
        let mut result = conn.send(from, recipients, data).await;
        if reused && !conn.message_sent && matches!(result, Err(SmtpError::Io(_) | SmtpError::Protocol(_))) {
            // An idle connection the server had closed: nothing was sent, so once more
            // on a fresh one.
            conn = Connection::open(&self.endpoint).await?;
            result = conn.send(from, recipients, data).await;
        }
        match &result {
            Ok(_) if conn.transactions < self.per_connection => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).push((conn, Instant::now()));
            }
            Ok(_) => conn.quit().await,
            // A refused MAIL FROM leaves the connection usable; anything else does not.
            Err(SmtpError::Refused { .. }) => {
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).push((conn, Instant::now()));
            }
            Err(_) => {}
        }
        result
    }
}
