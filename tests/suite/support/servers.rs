//! Servers of a test's own that speak TLS with its own certificates: a PostgreSQL
//! cluster (initdb into a temporary directory), a Redis and a NATS with JetStream. Each
//! is stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;
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

/// `cmd` as the `postgres` user when this process is root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
}

/// A PostgreSQL cluster of a test's own, serving TLS with `server`'s certificate.
pub struct OwnPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    pub fn start(server: &Issued) -> Self {
        let dir = tempfile::Builder::new().prefix("mailledger-pg").tempdir().unwrap();
        let data = dir.path().join("data");
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let status = as_postgres(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        std::fs::write(data.join("server.crt"), &server.cert).unwrap();
        std::fs::write(data.join("server.key"), &server.key).unwrap();
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        let _ = Command::new("chmod").args(["600"]).arg(data.join("server.key")).status();
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt \
             -c ssl_key_file=server.key -c fsync=off",
            dir.path().display()
        );
        let status = as_postgres(&pg_bin("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.path().join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(
            status.success(),
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        wait_port(port, "PostgreSQL");
        Self { port, dir }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&pg_bin("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
