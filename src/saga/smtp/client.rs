//! One SMTP client connection (RFC 5321): greeting, EHLO, STARTTLS or implicit TLS,
//! AUTH PLAIN, and mail transactions that tell each recipient's fate apart.
//!
//! Written for throughput against a relay: the socket has `TCP_NODELAY` (lettre's did
//! not, and a message's last five bytes then waited on the peer's delayed ACK, 40 ms a
//! message), a transaction is sent PIPELINED (RFC 2920) when the server offers it —
//! `MAIL FROM`, every `RCPT TO` and `DATA` in one write, their replies read after — and
//! the message goes out with its terminating dot in one write. A refused recipient does
//! not end the transaction: the message goes to the others, and each recipient's reply
//! is reported.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted, and the most lines in one reply.
const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 64;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text.
    None,
    /// STARTTLS when the server offers it, plain text otherwise.
    Opportunistic,
    /// STARTTLS, or no connection.
    Required,
    /// TLS from the first byte (`smtps://`, port 465).
    Implicit,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS.
    pub security: Security,
    /// AUTH PLAIN credentials.
    pub credentials: Option<(String, String)>,
    /// The name given in EHLO.
    pub helo: String,
    /// Longest wait for a connection or any one reply.
    pub timeout: Duration,
    /// TLS configuration (roots, ring provider).
    pub tls: Arc<rustls::ClientConfig>,
}

/// One reply: its code and text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx: the same request will never succeed.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The text, lines joined by spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// What went wrong outside a transaction's replies.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// The network failed (refused, reset, closed).
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The server said something that is not SMTP.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the session (greeting, EHLO, STARTTLS, AUTH) or `MAIL FROM`.
    #[error("{stage}: {reply}")]
    Refused {
        /// Which step.
        stage: &'static str,
        /// Its reply.
        reply: Reply,
    },
    /// TLS was required and the server does not offer it, or the handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
}

impl SmtpError {
    /// The server's code, when it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            SmtpError::Refused { reply, .. } => Some(reply.code),
            _ => None,
        }
    }

    /// Whether trying again can help: 4xx and trouble on the way are transient, 5xx not.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpError::Refused { reply, .. } => reply.is_permanent(),
            SmtpError::Tls(_) => true,
            _ => false,
        }
    }
}

/// What one transaction came to.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Each recipient's reply to `RCPT TO`, in the order given.
    pub recipients: Vec<Reply>,
    /// The reply after the message, when any recipient was accepted (it applies to each
    /// of them).
    pub data: Option<Reply>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection.
pub struct Connection {
    stream: BufReader<Box<dyn Io>>,
    pipelining: bool,
    timeout: Duration,
    /// Transactions made on it.
    pub transactions: usize,
    /// Whether the last transaction got as far as sending its message (then a failure
    /// may have delivered it: it is not tried again at once).
    pub message_sent: bool,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, upgrades to TLS and authenticates as
    /// `endpoint` says.
    pub async fn open(endpoint: &Endpoint) -> Result<Self, SmtpError> {
        let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
        let tcp = tokio::time::timeout(endpoint.timeout, connect)
            .await
            .map_err(|_| SmtpError::Timeout(endpoint.timeout))??;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> =
            if endpoint.security == Security::Implicit { Box::new(tls(endpoint, tcp).await?) } else { Box::new(tcp) };
        let mut conn = Self {
            stream: BufReader::new(stream),
            pipelining: false,
            timeout: endpoint.timeout,
            transactions: 0,
            message_sent: false,
        };
        conn.expect("greeting").await?;
        let mut extensions = conn.ehlo(&endpoint.helo).await?;
        let offers_tls = extensions.iter().any(|e| e.eq_ignore_ascii_case("STARTTLS"));
        match endpoint.security {
            Security::Required if !offers_tls => {
                return Err(SmtpError::Tls("the server does not offer STARTTLS, and TLS is required".into()));
            }
            Security::Required | Security::Opportunistic if offers_tls => {
                conn.command("STARTTLS\r\n").await?;
                conn.expect("STARTTLS").await?;
                // Nothing may be buffered past the server's reply (RFC 3207).
                if !conn.stream.buffer().is_empty() {
                    return Err(SmtpError::Protocol("data after the STARTTLS reply".into()));
                }
                let plain = conn.stream.into_inner();
                let upgraded = tls(endpoint, plain).await?;
                conn.stream = BufReader::new(Box::new(upgraded));
                extensions = conn.ehlo(&endpoint.helo).await?;
            }
            _ => {}
        }
        conn.pipelining = extensions.iter().any(|e| e.eq_ignore_ascii_case("PIPELINING"));
        if let Some((user, password)) = &endpoint.credentials {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            conn.command(&format!("AUTH PLAIN {token}\r\n")).await?;
            conn.expect("AUTH").await?;
        }
        Ok(conn)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<Vec<String>, SmtpError> {
        self.command(&format!("EHLO {helo}\r\n")).await?;
        let reply = self.expect("EHLO").await?;
        Ok(reply.lines.iter().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
    }

    async fn command(&mut self, line: &str) -> Result<(), SmtpError> {
        let stream = self.stream.get_mut();
        stream.write_all(line.as_bytes()).await?;
        stream.flush().await?;
        Ok(())
    }

    /// Reads a reply and fails unless it is positive (or 354 for DATA).
    async fn expect(&mut self, stage: &'static str) -> Result<Reply, SmtpError> {
        let reply = self.reply().await?;
        if reply.is_positive() || reply.code == 354 { Ok(reply) } else { Err(SmtpError::Refused { stage, reply }) }
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let read = async {
            let mut lines = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                let n = (&mut self.stream).take(MAX_LINE as u64 + 2).read_line(&mut line).await?;
                if n == 0 {
                    return Err(SmtpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                let text = line.trim_end_matches(['\r', '\n']);
                let code = text.get(..3).and_then(|c| c.parse::<u16>().ok()).filter(|c| (200..600).contains(c));
                let (Some(code), sep) = (code, text.as_bytes().get(3).copied()) else {
                    return Err(SmtpError::Protocol(format!("not a reply: {}", crate::text::echo(text))));
                };
                lines.push(text.get(4..).unwrap_or_default().to_owned());
                match sep {
                    None | Some(b' ') => return Ok(Reply { code, lines }),
                    Some(b'-') if lines.len() < MAX_LINES => {}
                    _ => return Err(SmtpError::Protocol(format!("not a reply: {}", crate::text::echo(text)))),
                }
            }
        };
        tokio::time::timeout(self.timeout, read).await.map_err(|_| SmtpError::Timeout(self.timeout))?
    }

    /// One mail transaction: `from`, each of `recipients`, and the message `data` (RFC
    /// 5322 bytes with CRLF line ends). A refused `MAIL FROM` is an error; a refused
    /// recipient is in [`Transaction::recipients`] and the others still get the message.
    pub async fn send(&mut self, from: &str, recipients: &[String], data: &[u8]) -> Result<Transaction, SmtpError> {
        self.transactions += 1;
        self.message_sent = false;
        let mut replies = Vec::with_capacity(recipients.len());
        let accepted;
        if self.pipelining {
            let mut batch = format!("MAIL FROM:<{from}>\r\n");
            for r in recipients {
                batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            self.command(&batch).await?;
            let mail = self.reply().await?;
            for _ in recipients {
                replies.push(self.reply().await?);
            }
            let data_reply = self.reply().await?;
            accepted = mail.is_positive() && replies.iter().any(Reply::is_positive);
            if data_reply.code == 354 && !accepted {
                // A server that opens DATA with nobody to deliver to: send it nothing.
                self.command(".\r\n").await?;
                let _ = self.reply().await?;
            }
            if !mail.is_positive() {
                self.abandon().await;
                return Err(SmtpError::Refused { stage: "MAIL FROM", reply: mail });
            }
            if data_reply.code != 354 || !accepted {
                // No recipient taken (the server refuses DATA), or DATA itself refused.
                self.abandon().await;
                let data = accepted.then_some(data_reply);
                return Ok(Transaction { recipients: replies, data });
            }
        } else {
            self.command(&format!("MAIL FROM:<{from}>\r\n")).await?;
            let mail = self.reply().await?;
            if !mail.is_positive() {
                self.abandon().await;
                return Err(SmtpError::Refused { stage: "MAIL FROM", reply: mail });
            }
            for r in recipients {
                self.command(&format!("RCPT TO:<{r}>\r\n")).await?;
                replies.push(self.reply().await?);
            }
            accepted = replies.iter().any(Reply::is_positive);
            if !accepted {
                self.abandon().await;
                return Ok(Transaction { recipients: replies, data: None });
            }
            self.command("DATA\r\n").await?;
            let data_reply = self.reply().await?;
            if data_reply.code != 354 {
                self.abandon().await;
                return Ok(Transaction { recipients: replies, data: Some(data_reply) });
            }
        }
        self.message_sent = true;
        let stream = self.stream.get_mut();
        stream.write_all(&dot_stuffed(data)).await?;
        stream.flush().await?;
        let end = self.reply().await?;
        Ok(Transaction { recipients: replies, data: Some(end) })
    }

    /// Ends a transaction that did not reach its message (RSET); errors are ignored:
    /// a connection that cannot be reset is dropped by the pool at its next use.
    async fn abandon(&mut self) {
        if self.command("RSET\r\n").await.is_ok() {
            let _ = self.reply().await;
        }
    }

    /// Says goodbye (best effort).
    pub async fn quit(mut self) {
        if self.command("QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.reply()).await;
        }
    }
}

async fn tls<S>(endpoint: &Endpoint, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, SmtpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
        .map_err(|e| SmtpError::Tls(format!("{}: {e}", endpoint.host)))?;
    let connector = tokio_rustls::TlsConnector::from(endpoint.tls.clone());
    tokio::time::timeout(endpoint.timeout, connector.connect(name, stream))
        .await
        .map_err(|_| SmtpError::Timeout(endpoint.timeout))?
        .map_err(|e| SmtpError::Tls(e.to_string()))
}

/// The message as DATA carries it: a `.` doubled at the start of a line, CRLF at the
/// end, and the terminating `.` line.
fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut line_start = true;
    for &b in data {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_doubled_at_line_starts_only() {
        assert_eq!(dot_stuffed(b"a\r\n.b\r\nc.d\r\n"), b"a\r\n..b\r\nc.d\r\n.\r\n");
        assert_eq!(dot_stuffed(b".x"), b"..x\r\n.\r\n");
    }

    #[test]
    fn replies_know_their_class() {
        let r = Reply { code: 550, lines: vec!["5.1.1 no such user".into()] };
        assert!(r.is_permanent() && !r.is_positive());
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
    }
}
