//! The `mailledger` binary as an operator runs it: help, bad settings, migrate, and a
//! SIGTERM in the middle of a burst of commands.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Cleanup, Isolation, db, eventually, original_payload};

const BIN: &str = env!("CARGO_BIN_EXE_mailledger");

fn run(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(BIN).args(args).envs(env.iter().cloned()).env_remove("RUST_LOG").output().expect("runs")
}

#[test]
fn every_subcommand_has_help() {
    for args in [&["--help"][..], &["serve", "--help"], &["migrate", "--help"], &["help", "serve"]] {
        let out = run(args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: mailledger"), "{args:?}");
    }
}

#[test]
fn a_bad_setting_fails_with_one_line_naming_it() {
    for (var, value) in [
        ("MAILLEDGER_HTTP_ADDR", "localhost"),
        ("MAILLEDGER_DATABASE_URL", "mysql://db/x"),
        ("MAILLEDGER_SMTP_URL", "smtp://"),
        ("MAILLEDGER_METRICS_ADDR", "127.0.0.1:http"),
    ] {
        let out = run(&["serve"], &[(var.to_owned(), value.to_owned())]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("mailledger: invalid setting {var}: ")), "{stderr}");
    }
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    for _ in 0..2 {
        let out = run(&["migrate"], &iso.env());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let pool = sqlx::PgPool::connect(&iso.database_url()).await.unwrap();
    let columns = db::event_columns(&pool).await;
    for c in ["aggregate_type", "aggregate_id", "sequence", "event_type", "payload", "metadata", "position", "txid"] {
        assert!(columns.iter().any(|x| x == c), "events.{c} missing: {columns:?}");
    }
    pool.close().await;
}

#[tokio::test]
async fn sigterm_mid_burst_exits_zero_quickly_and_loses_nothing() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let mut child = Command::new(BIN)
        .arg("serve")
        .envs(iso.env())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Learn the bound HTTP address from the start-up log line.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let http = loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("start-up log line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "mailledger started" {
            break v["http"].as_str().unwrap().to_owned();
        }
    };
    let health = reqwest::get(format!("http://{http}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    let nats = async_nats::connect(crate::support::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let subject = format!("{}.commands.create", iso.namespace);
    let stream_name = format!("{}_COMMANDS", iso.stream_prefix);
    eventually(Duration::from_secs(10), || async { js.get_stream(&stream_name).await.is_ok() }).await;
    const N: usize = 300;
    for i in 0..N {
        let body = original_payload(&format!("burst {i}")).to_string();
        js.publish(subject.clone(), body.into()).await.unwrap().await.unwrap();
    }
    let pool = sqlx::PgPool::connect(&iso.database_url()).await.unwrap();
    // Stop while the burst is being worked through.
    eventually(Duration::from_secs(10), || async { db::event_count(&pool, None).await > 0 }).await;
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());

    // Every command is either committed (both events) or still waiting in the stream.
    let (emails, events) = (db::email_count(&pool).await, db::event_count(&pool, None).await);
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let waiting = stream.info().await.unwrap().state.messages as i64;
    assert_eq!(events, emails * 2, "no half-recorded email");
    assert_eq!(emails + waiting, N as i64, "{emails} committed + {waiting} waiting");
    pool.close().await;
}

/// Text logs written to a file (not a terminal) carry no ANSI colour codes.
#[tokio::test]
async fn text_logs_to_a_file_are_plain() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let logs = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .envs(iso.env())
        .env("MAILLEDGER__LOG__FORMAT", "text")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(logs.reopen().unwrap())
        .spawn()
        .unwrap();
    let _service = crate::support::Killed(child);
    eventually(Duration::from_secs(30), || async {
        std::fs::read_to_string(logs.path()).unwrap().contains("NATS command intake running")
    })
    .await;
    let text = std::fs::read_to_string(logs.path()).unwrap();
    assert!(text.contains(" INFO "), "a text log: {text}");
    assert!(!text.contains('\u{1b}'), "ANSI escape codes in a log file: {text:?}");
}

/// The README's runnable examples (```sh blocks without `# needs:`; scripts/readme-examples.sh
/// runs them against `make run`) hold no placeholder a person would have to replace, use
/// only commands this repository brings or installs, and name `mailledger` subcommands
/// that exist.
#[test]
fn readme_examples_are_pasteable_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (n, line) in readme.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((n + 2, Vec::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, lines)), _) => lines.push(line),
            _ => {}
        }
    }
    let runnable: Vec<_> =
        blocks.iter().filter(|(_, lines)| !lines.first().is_some_and(|l| l.starts_with("# needs:"))).collect();
    assert!(runnable.len() >= 10, "{} runnable blocks", runnable.len());
    let tools = ["KEY=", "ID=", "SENT_AT=", "SIZE=", "curl", "grpcurl", "mailledger", "make", "scripts/", "psql", "jq"];
    let mut subcommands = std::collections::BTreeSet::new();
    for (at, lines) in &runnable {
        let mut continuation = false;
        for line in lines.iter().map(|l| l.trim()) {
            let continues = line.ends_with('\\');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A placeholder (`4b0e5a43-…`, `0193…`) is for the reader to replace: not in a runnable block.
            let code = line.split(" # ").next().unwrap();
            assert!(!code.contains('…'), "README.md:{at}: a placeholder in a runnable example: {line}");
            assert!(!code.contains("pgrep"), "README.md:{at}: pgrep names every process of that name: {line}");
            if !continuation {
                assert!(
                    tools.iter().any(|t| line.starts_with(t)),
                    "README.md:{at}: a command this repository neither brings nor installs: {line}"
                );
            }
            continuation = continues;
            if let Some(rest) = line.strip_prefix("mailledger ") {
                let words: Vec<&str> = rest.split_whitespace().take_while(|w| !w.starts_with('-')).take(2).collect();
                subcommands.insert(words.join(" "));
            }
        }
    }
    assert!(subcommands.len() >= 5, "{subcommands:?}");
    for sub in &subcommands {
        let mut args: Vec<&str> = sub.split(' ').filter(|w| !w.contains('$') && !w.contains('@')).collect();
        args.push("--help");
        let out = run(&args, &[]);
        assert!(out.status.success(), "`mailledger {sub}` in the README is not a command: {out:?}");
    }
}
