//! A PostgreSQL cluster in a directory of a test's own (`DIR/data`, logging to `DIR/log`,
//! its socket in `DIR`): initdb, pg_ctl start and stop, as the `postgres` user when this
//! process is root. Shared by the suite's servers and `make chaos` (tests/chaos includes
//! this file), so it depends on the standard library alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `program` as the `postgres` user when this process is root (initdb refuses root).
pub fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL program from the newest installed version (`/usr/lib/postgresql/*/bin`),
/// else from PATH.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
}

/// `initdb` (trust authentication, superuser `postgres`) of a new cluster in `dir`/data,
/// owned by postgres; `durable: false` skips initdb's own fsync.
pub fn initdb(dir: &Path, durable: bool) {
    let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
    let mut initdb = as_postgres(&pg_bin("initdb"));
    initdb.args(["-A", "trust", "-U", "postgres"]);
    if !durable {
        initdb.arg("--no-sync");
    }
    let status = initdb
        .arg("-D")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("initdb (PostgreSQL's server package) is installed");
    assert!(status.success(), "initdb failed");
}

/// Starts the cluster in `dir`/data on 127.0.0.1:`port` with `extra` server options
/// (`-c name=value …`), and waits up to `wait` for the port.
pub fn pg_start(dir: &Path, port: u16, extra: &str, wait: Duration) {
    let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 {extra}", dir.display());
    let status = as_postgres(&pg_bin("pg_ctl"))
        .args(["-w", "-D"])
        .arg(dir.join("data"))
        .args(["-o", &options, "-l"])
        .arg(dir.join("log"))
        .arg("start")
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(
        status.success(),
        "PostgreSQL did not start: {}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < wait, "PostgreSQL did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the cluster in `dir`/data: `mode` fast (a clean shutdown) or immediate (a
/// crash: recovery from the WAL at the next start).
pub fn pg_stop(dir: &Path, mode: &str) {
    let _ = as_postgres(&pg_bin("pg_ctl"))
        .args(["-w", "-m", mode, "-D"])
        .arg(dir.join("data"))
        .arg("stop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
