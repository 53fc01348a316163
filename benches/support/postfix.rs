//! Postfix's `smtp-sink` and `smtp-source`, the real MTA peers the end-to-end figure is
//! measured against: found on the PATH or unpacked by `scripts/postfix-tools.sh` (no
//! Postfix daemon is installed or started).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    bin: std::path::PathBuf,
    lib: String,
}

/// A running `smtp-sink`; killed when dropped.
pub struct Sink {
    child: Child,
    pub port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Postfix {
    /// Runs `scripts/postfix-tools.sh` (which downloads and unpacks Postfix the first time).
    pub fn locate() -> Postfix {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postfix-tools.sh");
        let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("scripts/postfix-tools.sh runs");
        assert!(out.status.success(), "scripts/postfix-tools.sh could not provide smtp-sink and smtp-source");
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_owned();
        Postfix { bin: field("bin=").into(), lib: field("lib=") }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if !self.lib.is_empty() {
            cmd.env("LD_LIBRARY_PATH", &self.lib);
        }
        cmd
    }

    /// Starts `smtp-sink` on a free port (as `nobody` when run as root, as it insists).
    pub fn sink(&self) -> Sink {
        let port = super::service::free_port();
        let mut cmd = self.command("smtp-sink");
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args([&format!("127.0.0.1:{port}"), "1024"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("smtp-sink starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "smtp-sink does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sink { child, port }
    }

    /// `smtp-source -d -s sessions -m count -l size` against the sink: messages per second.
    pub fn source(&self, port: u16, sessions: usize, count: usize, size: usize) -> f64 {
        let started = Instant::now();
        let status = self
            .command("smtp-source")
            .args(["-d", "-s", &sessions.to_string(), "-m", &count.to_string(), "-l", &size.to_string()])
            .args(["-f", "bench@example.com", "-t", "rcpt@example.org", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .status()
            .expect("smtp-source runs");
        assert!(status.success(), "smtp-source failed");
        count as f64 / started.elapsed().as_secs_f64()
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
