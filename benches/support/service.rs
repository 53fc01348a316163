//! The service under test: the release `mailledger` binary in a process of its own,
//! on free ports, in a benchmark namespace.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Service {
    child: Child,
    pub http: String,
    pub grpc: String,
    pub metrics: String,
    /// An API key with every scope and no practical rate limit (the bench measures the
    /// service, not its limits).
    pub key: String,
    database_url: String,
}

/// `mailledger keys create` on `database_url`: a key of tenant `default` with `scopes`
/// and no practical rate limit; returns the key.
fn make_key(database_url: &str, name: &str, scopes: &str) -> String {
    let made = Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .args(["keys", "create", "--name", name, "--scope", scopes, "--rate", "1000000", "--burst", "1000000"])
        .env("MAILLEDGER_DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .expect("mailledger keys create runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    String::from_utf8(made.stdout).unwrap().lines().last().unwrap().to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Service {
    /// Starts `mailledger serve` with `env` on top of the given database and namespace.
    pub async fn start(database_url: &str, extra: &[(&str, String)]) -> Service {
        let (http, grpc, metrics) = (free_port(), free_port(), free_port());
        let key = make_key(database_url, "bench", "all");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailledger"));
        cmd.arg("serve")
            .env("MAILLEDGER_DATABASE_URL", database_url)
            .env("MAILLEDGER_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("MAILLEDGER_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
            .env("MAILLEDGER_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .env("MAILLEDGER__NATS__NAMESPACE", "bench.mail")
            .env("MAILLEDGER__NATS__STREAM_PREFIX", "BENCH")
            .env("MAILLEDGER__NATS__CONSUMER", "bench-intake")
            .env("MAILLEDGER__REDIS__KEY_PREFIX", "bench:")
            .env("MAILLEDGER__LOG__FILTER", "warn")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the mailledger binary runs");
        let service = Service {
            child,
            http: format!("http://127.0.0.1:{http}"),
            grpc: format!("http://127.0.0.1:{grpc}"),
            metrics: format!("http://127.0.0.1:{metrics}/metrics"),
            key,
            database_url: database_url.to_owned(),
        };
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/ready", service.http)).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the service did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        service
    }

    /// A REST client that sends the key.
    pub fn client(&self) -> reqwest::Client {
        self.client_with(&self.key)
    }

    /// A REST client that sends `key`.
    pub fn client_with(&self, key: &str) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        reqwest::Client::builder().default_headers(headers).build().unwrap()
    }

    /// Makes another key (tenant `default`) with `scopes`, and no practical rate limit.
    pub fn make_key(&self, name: &str, scopes: &str) -> String {
        make_key(&self.database_url, name, scopes)
    }

    /// `authorization: Bearer <key>` for gRPC calls.
    pub fn bearer(&self) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        format!("Bearer {}", self.key).parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far, in MiB (VmHWM).
    pub fn rss_peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// A counter's value (summed over its label sets matching `filter`).
    pub async fn counter(&self, name: &str, filter: &str) -> f64 {
        let text = reqwest::get(&self.metrics).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
