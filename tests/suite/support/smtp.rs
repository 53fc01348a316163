//! A real SMTP server for tests and the benchmark (shared: tests include it by path):
//! speaks enough RFC 5321 for a client (EHLO with PIPELINING, MAIL, RCPT, DATA with
//! dot-unstuffing, RSET, NOOP, QUIT) over TCP, answers the end of each DATA with the
//! next scripted reply (250 when the script is empty), and records every transaction it
//! saw. Recipients can be refused by address or domain ([`SmtpSink::refuse`]); it keeps
//! the most transactions it saw in flight at once per recipient domain. Like a strict
//! real server, it refuses a message with a line over RFC 5322's 998 octets (`500 5.5.2
//! line too long`) and DATA with no accepted recipient (`554`). It can be stopped and
//! started again on the same port.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One DATA transaction.
#[derive(Debug, Clone)]
pub struct Received {
    /// When the DATA ended.
    pub at: std::time::Instant,
    pub mail_from: String,
    /// The recipients it accepted.
    pub rcpt_to: Vec<String>,
    pub data: String,
    /// The code the sink answered with.
    pub code: u16,
}

impl Received {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<(u16, String)>,
    /// Reply used when the script is empty.
    default: Option<(u16, String)>,
    received: Vec<Received>,
    /// RCPT refusals by address or `@domain`: the reply, and how many more times
    /// (`None`: always).
    refusals: Vec<(String, u16, String, Option<usize>)>,
    /// How long each DATA is held before its reply.
    hold: std::time::Duration,
    /// Transactions in flight per recipient domain, now and at most.
    in_flight: HashMap<String, (usize, usize)>,
}

impl State {
    fn refusal(&mut self, rcpt: &str) -> Option<(u16, String)> {
        let domain = rcpt.rsplit_once('@').map(|(_, d)| format!("@{}", d.to_ascii_lowercase()));
        let i = self.refusals.iter().position(|(who, _, _, times)| {
            times != &Some(0) && (who.eq_ignore_ascii_case(rcpt) || Some(who) == domain.as_ref())
        })?;
        let (_, code, text, times) = &mut self.refusals[i];
        if let Some(n) = times {
            *n -= 1;
        }
        Some((*code, text.clone()))
    }
}

fn domains(rcpt: &[String]) -> Vec<String> {
    let mut d: Vec<String> =
        rcpt.iter().filter_map(|r| r.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase()).collect();
    d.sort();
    d.dedup();
    d
}

pub struct SmtpSink {
    pub port: u16,
    state: Arc<Mutex<State>>,
    tasks: Option<JoinSet<()>>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut sink = Self { port, state: Arc::default(), tasks: None };
        sink.serve(listener);
        sink
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Replies for the next DATA transactions, in order.
    pub fn script(&self, replies: &[(u16, &str)]) {
        let mut s = self.state.lock().unwrap();
        s.script.extend(replies.iter().map(|(c, t)| (*c, t.to_string())));
    }

    /// The reply when the script runs out (250 unless set).
    pub fn always(&self, code: u16, text: &str) {
        self.state.lock().unwrap().default = Some((code, text.to_owned()));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Refuses `RCPT TO` for `who` (an address, or `@domain`) with `code text`, `times`
    /// times (`None`: always).
    pub fn refuse(&self, who: &str, code: u16, text: &str, times: Option<usize>) {
        self.state.lock().unwrap().refusals.push((who.to_owned(), code, text.to_owned(), times));
    }

    /// Holds every message this long before answering it (to see concurrency).
    pub fn hold(&self, wait: std::time::Duration) {
        self.state.lock().unwrap().hold = wait;
    }

    /// The most transactions it had in flight at once with a recipient in `domain`.
    pub fn peak_in_flight(&self, domain: &str) -> usize {
        self.state.lock().unwrap().in_flight.get(domain).map_or(0, |(_, peak)| *peak)
    }

    /// How many DATA transactions it has seen (cheaper than `received`).
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Forgets what it has seen.
    pub fn clear(&self) {
        self.state.lock().unwrap().received.clear();
    }

    /// Transactions it accepted (2xx).
    pub fn delivered(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| (200..300).contains(&r.code)).collect()
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let state = self.state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { break };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let _ = session(stream, state).await;
                });
            }
        });
        self.tasks = Some(tasks);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn session(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let (mut from, mut rcpt) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into()
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK\r\n".into()
        } else if upper.starts_with("RSET") {
            (from, rcpt) = (String::new(), Vec::new());
            "250 OK\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&cmd[10..]);
            rcpt.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = address(&cmd[8..]);
            match state.lock().unwrap().refusal(&to) {
                Some((code, text)) => format!("{code} {text}\r\n"),
                None => {
                    rcpt.push(to);
                    "250 OK\r\n".into()
                }
            }
        } else if upper == "DATA" && rcpt.is_empty() {
            "554 5.5.1 no valid recipients\r\n".into()
        } else if upper == "DATA" {
            let (hold, flying) = {
                let mut s = state.lock().unwrap();
                let flying = domains(&rcpt);
                for d in &flying {
                    let (now, peak) = s.in_flight.entry(d.clone()).or_default();
                    *now += 1;
                    *peak = (*peak).max(*now);
                }
                (s.hold, flying)
            };
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            let mut too_long = false;
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                too_long |= line.trim_end_matches(['\r', '\n']).len() > 998;
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            let (code, text) = {
                let mut s = state.lock().unwrap();
                for d in &flying {
                    if let Some((now, _)) = s.in_flight.get_mut(d) {
                        *now -= 1;
                    }
                }
                let (code, text) = if too_long {
                    (500, "5.5.2 line too long".to_owned())
                } else {
                    s.script.pop_front().or_else(|| s.default.clone()).unwrap_or((250, "2.0.0 queued".into()))
                };
                s.received.push(Received {
                    at: std::time::Instant::now(),
                    mail_from: from.clone(),
                    rcpt_to: rcpt.clone(),
                    data,
                    code,
                });
                (code, text)
            };
            rcpt.clear();
            format!("{code} {text}\r\n")
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 command not implemented\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg.strip_prefix('<').and_then(|a| a.split_once('>')).map_or(arg, |(a, _)| a);
    inner.to_owned()
}
