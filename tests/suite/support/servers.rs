//! Servers of a test's own that speak TLS with its own certificates: a PostgreSQL
//! cluster (initdb into a temporary directory), a Redis and a NATS with JetStream. Each
//! is stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;
use super::pg::{as_postgres, initdb, pg_bin, pg_start, pg_stop};
use super::pki::{Ca, Issued};

fn wait_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start on {port}");
}

/// Writes the CA, a server certificate and its key into `dir`; returns their paths.
pub fn write_pki(dir: &Path, ca: &Ca, server: &Issued) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_path, cert, key) = (dir.join("ca.pem"), dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &server.key).unwrap();
    (ca_path, cert, key)
}

/// How long a cluster the suite starts may take to listen.
const PG_WAIT: Duration = Duration::from_secs(10);

/// A PostgreSQL cluster of a test's own, serving TLS with `server`'s certificate.
pub struct OwnPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    pub fn start(server: &Issued) -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-pg").tempdir().unwrap();
        initdb(dir.path(), false);
        let data = dir.path().join("data");
        std::fs::write(data.join("server.crt"), &server.cert).unwrap();
        std::fs::write(data.join("server.key"), &server.key).unwrap();
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let _ = Command::new("chmod").args(["600"]).arg(data.join("server.key")).status();
        let port = free_port();
        pg_start(
            dir.path(),
            port,
            "-c fsync=off -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key",
            PG_WAIT,
        );
        Self { port, dir }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        pg_stop(self.dir.path(), "immediate");
    }
}

/// A child process killed (and reaped) when dropped, with what it needs on disk.
pub struct OwnServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnServer {
    /// A Redis that speaks only TLS, with `server`'s certificate.
    pub fn redis_tls(ca: &Ca, server: &Issued) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_path, cert, key) = write_pki(dir.path(), ca, server);
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-auth-clients", "no", "--tls-cert-file"])
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca_path)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_port(port, "redis-server (TLS)");
        Self { port, child, _dir: dir }
    }

    /// A NATS server with JetStream that speaks only TLS, with `server`'s certificate.
    pub fn nats_tls(ca: &Ca, server: &Issued) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = write_pki(dir.path(), ca, server);
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .arg("--tls")
            .arg("--tlscert")
            .arg(cert)
            .arg("--tlskey")
            .arg(key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        wait_port(port, "nats-server (TLS)");
        Self { port, child, _dir: dir }
    }
}

/// A plain PostgreSQL cluster of a test's own (trust authentication, replication allowed
/// from loopback), or a streaming replica of one.
pub struct PgCluster {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// A fresh primary.
    pub fn primary() -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-pg").tempdir().unwrap();
        initdb(dir.path(), false);
        let cluster = Self { port: free_port(), dir };
        cluster.start();
        cluster
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started.
    pub fn replica_of(primary: &PgCluster) -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-pg-replica").tempdir().unwrap();
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let status = as_postgres(&pg_bin("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-R", "-X", "stream", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_basebackup");
        assert!(status.success(), "pg_basebackup failed");
        let cluster = Self { port: free_port(), dir };
        cluster.start();
        cluster
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn start(&self) {
        pg_start(self.dir.path(), self.port, "-c fsync=off", PG_WAIT);
    }

    /// Stops it the fast way (connections cut, a clean shutdown).
    pub fn stop(&self) {
        pg_stop(self.dir.path(), "fast");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        pg_stop(self.dir.path(), "immediate");
    }
}
