//! A NATS server that goes away and comes back: the service reconnects by itself,
//! never exits, and commands stored before the outage are committed after it.
//! Runs its own `nats-server` (JetStream, file storage) on a free port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{TestApp, eventually, original_payload};

struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> Self {
        let port = crate::support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = spawn(port, dir.path());
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.child = spawn(self.port, self.dir.path());
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    let mut child = Command::new(crate::support::nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed (scripts/ensure-services.sh installs it)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nats-server did not start on {port}");
}

#[tokio::test]
async fn the_service_rides_out_a_nats_restart() {
    let mut server = NatsServer::start();
    let url = server.url();
    let app = TestApp::spawn_with(&[("MAILLEDGER_NATS_URL", &url)]).await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let subject = format!("{}.commands.create", app.iso.namespace);
    let stream = format!("{}_COMMANDS", app.iso.stream_prefix);
    eventually(Duration::from_secs(10), || async { js.get_stream(&stream).await.is_ok() }).await;
    js.publish(subject.clone(), original_payload("before").to_string().into()).await.unwrap().await.unwrap();
    eventually(Duration::from_secs(10), || async { app.email_count().await == 1 }).await;

    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness names NATS as down");
    let report: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(report["dependencies"][1]["name"], "nats");
    assert_eq!(report["dependencies"][1]["ok"], false);
    // REST intake does not depend on NATS.
    assert_eq!(app.post_json("/api/v1/emails", &original_payload("rest during outage")).await.status(), 202);

    server.restart();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    for i in 0..5 {
        js.publish(subject.clone(), original_payload(&format!("after {i}")).to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(30), || async { app.email_count().await == 7 }).await;
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
