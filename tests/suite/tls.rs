//! The service's own TLS on REST and gRPC: HTTP/1.1 and HTTP/2 (ALPN) over HTTPS, gRPC
//! over TLS, nothing for plain HTTP or a client that never says hello (and neither holds
//! up anyone else), a new certificate served after a reload and the old one kept when the
//! new files are bad, client certificates when a client CA is set, and start-up errors
//! that name the file. Certificates are made here, by a CA of each test's own.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::pki::{Ca, Issued};
use crate::support::{Isolation, TestApp, original_payload};
use mailledger::startup::Application;
use mailledger::transport::grpc::proto::email_service_client::EmailServiceClient;
use mailledger::transport::grpc::proto::{CreateReq, GetByIdReq};
use mailledger::transport::tls::PemFile;
use reqwest::Version;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Well within the 10 s a handshake may take: what "not held up" means here.
const PROMPT: Duration = Duration::from_secs(5);

/// The PEM files the service is pointed at.
struct Files(tempfile::TempDir);

impl Files {
    fn new(server: &Issued) -> Self {
        let files = Self(tempfile::tempdir().unwrap());
        files.install(server);
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes a certificate and key where the service reads them.
    fn install(&self, server: &Issued) {
        std::fs::write(self.path("cert.pem"), &server.cert).unwrap();
        std::fs::write(self.path("key.pem"), &server.key).unwrap();
    }

    /// Settings for these files, with the client CA when one has been written.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("MAILLEDGER_TLS_CERT", "cert.pem"), ("MAILLEDGER_TLS_KEY", "key.pem")];
        if self.path("client-ca.pem").exists() {
            env.push(("MAILLEDGER_TLS_CLIENT_CA", "client-ca.pem"));
        }
        env.into_iter().map(|(var, name)| (var.to_owned(), self.path(name).display().to_string())).collect()
    }

    /// Spawns the application on these files; its client trusts `ca` (only).
    async fn spawn(&self, ca: &Ca) -> TestApp {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut app = TestApp::spawn_with(&env).await;
        app.client = trusting(ca).default_headers(app.auth_headers()).build().unwrap();
        app
    }
}

/// A REST client that trusts `ca` and nothing else.
fn trusting(ca: &Ca) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
}

/// `GET /health` on a new connection: its status, or the error.
async fn health(app: &TestApp, client: reqwest::ClientBuilder) -> reqwest::Result<reqwest::StatusCode> {
    Ok(client.build()?.get(app.url("/health")).send().await?.status())
}

/// The certificate the REST listener presents to a new connection.
async fn served_certificate(app: &TestApp, ca: &Ca) -> Vec<u8> {
    let client = trusting(ca).tls_info(true).build().unwrap();
    let response = client.get(app.url("/health")).send().await.unwrap();
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a server certificate").to_vec()
}

/// A gRPC client over TLS that trusts `ca`, presenting `identity` when given.
async fn grpc(
    app: &TestApp,
    ca: &Ca,
    identity: Option<&Issued>,
) -> Result<crate::support::Grpc, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let channel = Channel::from_shared(app.grpc.clone()).unwrap().tls_config(tls)?.connect().await?;
    Ok(crate::support::grpc_with_key(channel, &app.key))
}

fn create_request(subject: &str) -> CreateReq {
    CreateReq {
        from: "sender@example.com".into(),
        to: "rcpt@example.org".into(),
        subject: subject.into(),
        message: "hello over gRPC and TLS".into(),
        ..Default::default()
    }
}

/// `mailledger_tls_handshake_failures_total{listener}`, scraped from the plain metrics port.
async fn handshake_failures(app: &TestApp, listener: &str) -> f64 {
    let scrape = reqwest::get(&app.metrics).await.unwrap().text().await.unwrap();
    let series = format!("mailledger_tls_handshake_failures_total{{listener=\"{listener}\"}} ");
    scrape.lines().find_map(|l| l.strip_prefix(&series)).map_or(0.0, |v| v.parse().unwrap())
}

/// The peer address the handler saw (in the event's metadata) is the test's own.
async fn assert_came_from_loopback(app: &TestApp, id: &str) {
    let requested = app.stored(id, 1).await;
    let caller = requested.metadata["caller"].as_str().unwrap_or_default();
    assert!(caller.starts_with("127.0.0.1:"), "{caller}");
}

fn host_port(url: &str) -> &str {
    url.split_once("://").unwrap().1
}

#[tokio::test]
async fn rest_over_https_with_http1_and_http2() {
    let ca = Ca::new("rest CA");
    let files = Files::new(&ca.server("mailledger"));
    let app = files.spawn(&ca).await;
    assert!(app.http.starts_with("https://"));

    for (n, (client, version)) in [
        (trusting(&ca).http1_only().default_headers(app.auth_headers()).build().unwrap(), Version::HTTP_11),
        (trusting(&ca).default_headers(app.auth_headers()).build().unwrap(), Version::HTTP_2), // h2 chosen by ALPN
    ]
    .into_iter()
    .enumerate()
    {
        let subject = format!("over {version:?}");
        let created = client.post(app.url("/api/v1/emails")).json(&original_payload(&subject)).send().await.unwrap();
        assert_eq!((created.status().as_u16(), created.version()), (202, version));
        let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        app.wait_projected(n as i64 + 1).await;
        let read = client.get(app.url(&format!("/api/v1/emails/{id}"))).send().await.unwrap();
        assert_eq!((read.status().as_u16(), read.version()), (200, version));
        assert_eq!(read.json::<Value>().await.unwrap()["subject"], subject.as_str());
        // The peer address still reaches the handlers through TLS.
        assert_came_from_loopback(&app, &id).await;
    }

    let scrape = reqwest::get(&app.metrics).await.unwrap();
    assert_eq!(scrape.status(), 200, "the metrics listener stays plain");
}

#[tokio::test]
async fn grpc_over_tls_creates_and_reads() {
    let ca = Ca::new("gRPC CA");
    let files = Files::new(&ca.server("mailledger"));
    let app = files.spawn(&ca).await;

    let mut client = grpc(&app, &ca, None).await.unwrap();
    let created = client.create(create_request("gRPC over TLS")).await.unwrap().into_inner();
    assert_eq!(created.status, "accepted");
    app.wait_projected(1).await;
    let email = client
        .get_by_id(GetByIdReq { email_id: created.email_id.clone(), as_of: None })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(email.subject, "gRPC over TLS");
    assert_came_from_loopback(&app, &created.email_id).await;

    // Plaintext gRPC (h2c) gets nowhere.
    let plain = format!("http://{}", host_port(&app.grpc));
    let refused = match EmailServiceClient::connect(plain).await {
        Ok(mut client) => client.create(create_request("in the clear")).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext gRPC was answered");
}

#[tokio::test]
async fn plain_http_and_silent_clients_get_nothing_and_hold_up_no_one() {
    let ca = Ca::new("patience CA");
    let files = Files::new(&ca.server("mailledger"));
    let app = files.spawn(&ca).await;
    let rest = host_port(&app.http).to_owned();
    let failures_before = handshake_failures(&app, "rest").await;

    // Clients that connect and never say hello, on both listeners.
    let _silent = [TcpStream::connect(&rest).await.unwrap(), TcpStream::connect(host_port(&app.grpc)).await.unwrap()];
    let answered = tokio::time::timeout(PROMPT, app.client.get(app.url("/health")).send()).await;
    assert_eq!(answered.expect("REST held up by a silent client").unwrap().status(), 200);
    let called = tokio::time::timeout(PROMPT, async {
        grpc(&app, &ca, None).await.unwrap().create(create_request("not held up")).await
    })
    .await;
    assert_eq!(called.expect("gRPC held up by a silent client").unwrap().into_inner().status, "accepted");

    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    let mut plain = TcpStream::connect(&rest).await.unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PROMPT, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was left open");
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    let response = reqwest::Client::new().get(format!("http://{rest}/health")).send().await;
    assert!(response.is_err(), "plain HTTP was answered: {response:?}");

    crate::support::eventually(PROMPT, || async { handshake_failures(&app, "rest").await >= failures_before + 2.0 })
        .await;
    assert_eq!(health(&app, trusting(&ca)).await.unwrap(), 200, "still serving");
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_keeps_the_old_one_when_the_new_files_are_bad() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let first = old_ca.server("first");
    let files = Files::new(&first);
    let app = files.spawn(&old_ca).await;
    let tls = app.tls.clone().expect("TLS is on");
    assert_eq!(served_certificate(&app, &old_ca).await, first.der);

    let second = new_ca.server("second");
    files.install(&second);
    assert_eq!(served_certificate(&app, &old_ca).await, first.der, "nothing changes before the reload");
    tls.reload().unwrap();
    assert_eq!(served_certificate(&app, &new_ca).await, second.der);
    assert!(health(&app, trusting(&old_ca)).await.is_err(), "a client of the old CA only is refused");
    let mut client = grpc(&app, &new_ca, None).await.expect("gRPC serves the new certificate");
    client.create(create_request("after the reload")).await.unwrap();

    // A key that is not a key: the reload fails naming it, and "second" stays.
    std::fs::write(files.path("key.pem"), "not a key\n").unwrap();
    let e = tls.reload().unwrap_err();
    assert_eq!(e.file, PemFile::Key);
    assert!(e.to_string().contains(&files.path("key.pem").display().to_string()), "{e}");
    assert!(e.to_string().contains("no private key"), "{e}");
    assert_eq!(served_certificate(&app, &new_ca).await, second.der);

    // A certificate with another certificate's key.
    let (third, fourth) = (new_ca.server("third"), new_ca.server("fourth"));
    files.install(&Issued { key: fourth.key, ..third });
    let e = tls.reload().unwrap_err();
    assert!(e.to_string().contains("does not match the certificate"), "{e}");
    assert_eq!(served_certificate(&app, &new_ca).await, second.der);
}

#[tokio::test]
async fn a_client_ca_asks_every_client_for_a_certificate_it_signed() {
    let (ca, clients, strangers) = (Ca::new("server CA"), Ca::new("client CA"), Ca::new("stranger CA"));
    let files = Files::new(&ca.server("mailledger"));
    std::fs::write(files.path("client-ca.pem"), clients.pem()).unwrap();
    let app = files.spawn(&ca).await;
    let with = |id: &Issued| {
        let pem = format!("{}{}", id.cert, id.key);
        trusting(&ca).identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
    };

    assert!(health(&app, trusting(&ca)).await.is_err(), "no certificate");
    assert!(health(&app, with(&strangers.client("stranger"))).await.is_err(), "a certificate of another CA");
    let member = clients.client("member");
    assert_eq!(health(&app, with(&member)).await.unwrap(), 200);

    let refused = match grpc(&app, &ca, None).await {
        Ok(mut client) => client.create(create_request("anonymous")).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "gRPC without a certificate was answered");
    let mut client = grpc(&app, &ca, Some(&member)).await.unwrap();
    assert_eq!(client.create(create_request("with a certificate")).await.unwrap().into_inner().status, "accepted");
}

#[tokio::test]
async fn start_up_names_the_file_that_cannot_be_used() {
    let ca = Ca::new("start-up CA");
    let (good, other) = (ca.server("good"), ca.server("other"));
    let files = Files::new(&good);
    let iso = Isolation::new();
    let fails = |extra: Vec<(String, String)>| {
        let mut env = files.env();
        env.extend(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let settings = iso.settings(&env);
        async move {
            match Application::build(settings).await {
                Ok(_) => panic!("started"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let path = |name: &str| files.path(name).display().to_string();

    let missing = path("missing.pem");
    let e = fails(vec![("MAILLEDGER_TLS_CERT".into(), missing.clone())]).await;
    assert!(e.contains("MAILLEDGER_TLS_CERT") && e.contains(&missing) && e.contains("cannot be read"), "{e}");

    std::fs::write(files.path("other.key"), &other.key).unwrap();
    let e = fails(vec![("MAILLEDGER_TLS_KEY".into(), path("other.key"))]).await;
    assert!(e.contains(&path("other.key")) && e.contains("does not match the certificate"), "{e}");

    let e = fails(vec![("MAILLEDGER_TLS_CERT".into(), path("key.pem"))]).await;
    assert!(e.contains(&path("key.pem")) && e.contains("no certificate"), "{e}");

    let e = fails(vec![("MAILLEDGER_TLS_CLIENT_CA".into(), path("key.pem"))]).await;
    assert!(e.contains("MAILLEDGER_TLS_CLIENT_CA") && e.contains("no certificate"), "{e}");
}
