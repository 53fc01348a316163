//! TLS on every hop the service opens: PostgreSQL (`sslmode=verify-full`), Redis
//! (`rediss://`) and NATS (`tls://`). Each refuses a server whose certificate does not
//! chain to the CA it was given, and works with the right one. Servers and certificates
//! are the test's own.

use std::time::Duration;

use crate::support::pki::Ca;
use crate::support::servers::{OwnPostgres, OwnServer};
use crate::support::{Cleanup, Isolation, eventually};
use mailledger::startup::Application;
use serde_json::Value;

/// Runs the application; returns its base URL and the stopper.
async fn run(app: Application) -> (String, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let base = format!("http://{}", app.http_addr());
    let stop = app.stopper();
    let handle = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    (base, stop, handle)
}

async fn ready(base: &str) -> Value {
    reqwest::get(format!("{base}/ready")).await.unwrap().json().await.unwrap()
}

fn dependency<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["dependencies"].as_array().unwrap().iter().find(|d| d["name"] == name).unwrap()
}

fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[tokio::test]
async fn postgres_is_reached_only_over_tls_it_can_verify() {
    let ca = Ca::new("postgres CA");
    let pg = OwnPostgres::start(&ca.server("postgres"));
    let files = tempfile::tempdir().unwrap();
    let (right, wrong) = (files.path().join("ca.pem"), files.path().join("other.pem"));
    std::fs::write(&right, ca.pem()).unwrap();
    std::fs::write(&wrong, Ca::new("someone else").pem()).unwrap();
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let url = |root: Option<&std::path::Path>| {
        let mut url = format!("postgres://postgres@127.0.0.1:{}/mailledger?sslmode=verify-full", pg.port);
        if let Some(r) = root {
            url.push_str(&format!("&sslrootcert={}", r.display()));
        }
        url
    };
    for root in [None, Some(wrong.as_path())] {
        let settings = iso.settings(&[("MAILLEDGER_DATABASE_URL", &url(root)), ("MAILLEDGER_AUTH", "off")]);
        let err = Application::build(settings).await.err().expect("an untrusted server is refused");
        let text = chain(&err);
        assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
        assert!(text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"), "{text}");
    }
    let settings = iso.settings(&[("MAILLEDGER_DATABASE_URL", &url(Some(&right))), ("MAILLEDGER_AUTH", "off")]);
    let app = Application::build(settings).await.expect("a server the CA vouches for is used");
    let (base, stop, handle) = run(app).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/emails"))
        .json(&crate::support::original_payload("over TLS"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Every connection of the service to its database is encrypted.
    let pool = sqlx::PgPool::connect(&url(Some(&right))).await.unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = 'mailledger' AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(all > 0 && all == encrypted, "{encrypted} of {all} connections are TLS");
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn redis_is_reached_only_over_tls_it_can_verify() {
    let ca = Ca::new("redis CA");
    let redis = OwnServer::redis_tls(&ca, &ca.server("redis"));
    let files = tempfile::tempdir().unwrap();
    let right = files.path().join("ca.pem");
    std::fs::write(&right, ca.pem()).unwrap();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());

    let untrusted =
        Application::build(iso.settings(&[("MAILLEDGER_REDIS_URL", &url), ("MAILLEDGER_AUTH", "off")])).await.unwrap();
    let (base, stop, handle) = run(untrusted).await;
    let report = ready(&base).await;
    assert_eq!(dependency(&report, "redis")["ok"], false, "{report}");
    assert_eq!(report["degraded"], serde_json::json!(["redis"]));
    stop.cancel();
    handle.await.unwrap();

    let ca_path = right.display().to_string();
    let trusted = Application::build(iso.settings(&[
        ("MAILLEDGER_REDIS_URL", &url),
        ("MAILLEDGER_REDIS_CA", &ca_path),
        ("MAILLEDGER_AUTH", "off"),
    ]))
    .await
    .unwrap();
    let (base, stop, handle) = run(trusted).await;
    eventually(Duration::from_secs(10), || async { dependency(&ready(&base).await, "redis")["ok"] == true }).await;
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn nats_is_reached_only_over_tls_it_can_verify() {
    let ca = Ca::new("nats CA");
    let nats = OwnServer::nats_tls(&ca, &ca.server("nats"));
    let files = tempfile::tempdir().unwrap();
    let right = files.path().join("ca.pem");
    std::fs::write(&right, ca.pem()).unwrap();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());

    let untrusted =
        Application::build(iso.settings(&[("MAILLEDGER_NATS_URL", &url), ("MAILLEDGER_AUTH", "off")])).await.unwrap();
    let (base, stop, handle) = run(untrusted).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = ready(&base).await;
    assert_eq!(dependency(&report, "nats")["ok"], false, "never connected to an unverified server: {report}");
    assert_eq!(report["ready"], false);
    stop.cancel();
    handle.await.unwrap();

    let ca_path = right.display().to_string();
    let trusted = Application::build(iso.settings(&[
        ("MAILLEDGER_NATS_URL", &url),
        ("MAILLEDGER_NATS_CA", &ca_path),
        ("MAILLEDGER_AUTH", "off"),
    ]))
    .await
    .unwrap();
    let (base, stop, handle) = run(trusted).await;
    eventually(Duration::from_secs(10), || async { ready(&base).await["ready"] == true }).await;
    stop.cancel();
    handle.await.unwrap();
}

/// A nats-server of the test's own with this configuration file; killed when dropped.
fn nats_with_config(config: &str) -> (crate::support::Killed, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{config}",
            dir.path().join("js").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (crate::support::Killed(child), port, dir)
}

/// Builds and runs the service against NATS at `url` (plus `extra`); true when it got
/// ready within a few seconds.
async fn gets_ready(iso: &Isolation, url: &str, extra: &[(&str, &str)]) -> bool {
    let mut env = vec![("MAILLEDGER_NATS_URL", url), ("MAILLEDGER_AUTH", "off")];
    env.extend_from_slice(extra);
    let app = Application::build(iso.settings(&env)).await.unwrap();
    let (base, stop, handle) = run(app).await;
    let mut ok = false;
    for _ in 0..40 {
        let report = ready(&base).await;
        if report["ready"] == true {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    ok
}

#[tokio::test]
async fn the_services_own_nats_connection_takes_a_password_a_token_or_an_nkey() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let (_server, port, _dir) = nats_with_config("authorization { user: mailledger, password: \"s3+cr@t\" }");
    assert!(gets_ready(&iso, &format!("nats://mailledger:s3+cr%40t@127.0.0.1:{port}"), &[]).await);
    assert!(!gets_ready(&iso, &format!("nats://mailledger:wrong@127.0.0.1:{port}"), &[]).await, "a wrong password");

    let (_server, port, _dir) = nats_with_config("authorization { token: t0ken-abc }");
    assert!(gets_ready(&iso, &format!("nats://t0ken-abc@127.0.0.1:{port}"), &[]).await);

    let user = nkeys::KeyPair::new_user();
    let (_server, port, dir) =
        nats_with_config(&format!("authorization {{ users: [{{ nkey: {} }}] }}", user.public_key()));
    let seed = dir.path().join("mailledger.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    assert!(!gets_ready(&iso, &url, &[]).await, "no credentials");
    assert!(gets_ready(&iso, &url, &[("MAILLEDGER_NATS_CREDS", &seed.display().to_string())]).await);
}
