//! The servers `make chaos` and `make soak` start, stop, kill and freeze: a PostgreSQL
//! cluster of their own (initdb into a temporary directory, on a free port), a
//! nats-server with JetStream on file storage, a redis-server without persistence, and
//! the real `mailledger serve` binary as child processes. Everything is killed and
//! removed when dropped.

use std::path::{Path, PathBuf};

use crate::pg::{initdb, pg_start, pg_stop};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

/// A PostgreSQL cluster of the run's own, with PostgreSQL's durable defaults (fsync on,
/// synchronous_commit on): stopping it fast or crashing it is part of the matrix.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-chaos-pg").tempdir().unwrap();
        initdb(dir.path(), true);
        let pg = Self { port: free_port(), dir };
        pg.restart();
        pg
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl stop -m fast` (a clean shutdown) or `-m immediate` (a crash: recovery from
    /// the WAL at the next start).
    pub fn stop(&self, mode: &str) {
        pg_stop(self.dir.path(), mode);
    }

    /// Starts it (again) on its port.
    pub fn restart(&self) {
        pg_start(self.dir.path(), self.port, "-c max_connections=200", Duration::from_secs(30));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

/// A nats-server with JetStream on file storage in a directory of its own; killed and
/// started again on the same port and store.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-chaos-nats").tempdir().unwrap();
        let mut nats = Self { port: free_port(), child: None, dir };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        // `sync_interval: always` where the server knows it (2.10+): every write fsynced
        // before its ack, as scripts/ensure-services.sh and compose configure it.
        let config = self.dir.path().join("nats.conf");
        let mut text = format!("jetstream {{ store_dir: \"{}\"", self.dir.path().join("js").display());
        if nats_knows_sync_interval() {
            text.push_str(", sync_interval: always");
        }
        text.push_str(" }\n");
        std::fs::write(&config, text).unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/ensure-services.sh installs it)");
        self.child = Some(child);
        wait_port(self.port, "nats-server");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Bytes in the JetStream store directory.
    pub fn store_bytes(&self) -> u64 {
        dir_bytes(&self.dir.path().join("js"))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this nats-server takes `jetstream { sync_interval: always }` (2.10 and later).
pub fn nats_knows_sync_interval() -> bool {
    let out = Command::new("nats-server").arg("--version").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let version = text.trim().trim_start_matches("nats-server: v");
    let mut parts = version.split('.').filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if major > 2 || (major == 2 && minor >= 10))
}

pub fn nats_version() -> String {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A redis-server without persistence (as the service expects of its cache).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Self { port: free_port(), child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services.sh installs it)");
        self.child = Some(child);
        wait_port(self.port, "redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Started again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server holds its connections open and answers nothing.
    pub fn freeze(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "STOP");
        }
    }

    pub fn thaw(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "CONT");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// Where a service instance finds everything.
#[derive(Clone)]
pub struct Wiring {
    pub database_url: String,
    pub nats_url: String,
    pub redis_url: String,
    pub smtp_url: String,
    pub logs: PathBuf,
    /// Settings of the run (`MAILLEDGER__…`).
    pub extra: Vec<(String, String)>,
}

/// One `mailledger serve` process.
pub struct Instance {
    child: Child,
    pub name: String,
    pub http: String,
}

pub fn binary() -> PathBuf {
    std::env::var_os("CHAOS_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mailledger")))
}

/// `mailledger keys create --scope all` against the wiring's database: the key (shown once).
pub fn make_key(w: &Wiring, name: &str) -> String {
    let made = Command::new(binary())
        .args(["keys", "create", "--name", name, "--scope", "all", "--rate", "1000000", "--burst", "1000000"])
        .env("MAILLEDGER_DATABASE_URL", &w.database_url)
        .env_remove("RUST_LOG")
        .output()
        .expect("the mailledger binary runs");
    assert!(made.status.success(), "keys create: {}", String::from_utf8_lossy(&made.stderr));
    String::from_utf8(made.stdout).unwrap().lines().last().unwrap().to_owned()
}

impl Instance {
    /// Starts `mailledger serve` and waits until `/ready` answers 200.
    pub async fn start(w: &Wiring, name: &str) -> Instance {
        let (http, grpc, metrics) = (free_port(), free_port(), free_port());
        std::fs::create_dir_all(&w.logs).unwrap();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(w.logs.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("MAILLEDGER_DATABASE_URL", &w.database_url)
            .env("MAILLEDGER_NATS_URL", &w.nats_url)
            .env("MAILLEDGER_REDIS_URL", &w.redis_url)
            .env("MAILLEDGER_SMTP_URL", &w.smtp_url)
            .env("MAILLEDGER_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("MAILLEDGER_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("MAILLEDGER_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .env("MAILLEDGER__LOG__FILTER", "warn")
            .env_remove("RUST_LOG")
            .env_remove("MAILLEDGER_AUTH")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &w.extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the mailledger binary runs");
        let instance = Instance { child, name: name.to_owned(), http: format!("http://127.0.0.1:{http}") };
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/ready", instance.http)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{name} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        instance
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, nothing handed back.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s).
    pub fn stop(mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Resident set size now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        proc_status_kib(self.pid(), "VmRSS:") / 1024.0
    }

    /// Open file descriptors, and how many of them are sockets.
    pub fn fds(&self) -> (usize, usize) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else { return (0, 0) };
        let (mut all, mut sockets) = (0, 0);
        for e in entries.filter_map(|e| e.ok()) {
            all += 1;
            if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
                sockets += 1;
            }
        }
        (all, sockets)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}
