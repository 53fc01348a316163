//! What a fault and hostile-input probe found, each with the test that failed before
//! its fix: NUL characters, a poison row in a group commit, poison NATS commands,
//! events too large for NATS, lines too long to deliver, gRPC edges, slow clients,
//! search answers that grew with the bodies, secrets in logs, echoed inputs, a frozen
//! Redis, and readiness with Redis down.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::smtp::SmtpSink;
use crate::support::{RedisServer, TestApp, db, eventually, free_port, original_payload};
use futures::StreamExt;
use mailledger::transport::grpc::proto::{CreateReq, GetByIdReq};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

fn grpc_request(to: &str, message: &str) -> CreateReq {
    CreateReq {
        from: "sender@example.com".into(),
        to: to.into(),
        subject: "hi".into(),
        message: message.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_nul_is_refused_by_name_on_every_transport_and_never_a_500() {
    let app = TestApp::spawn().await;
    for (field, body) in [
        ("message", json!({"from": "a@example.com", "to": "b@example.org", "subject": "s", "message": "a\u{0}b"})),
        ("html", json!({"from": "a@example.com", "to": "b@example.org", "subject": "s", "html": "<p>\u{0}</p>"})),
        ("subject", json!({"from": "a@example.com", "to": "b@example.org", "subject": "\u{0}", "message": "m"})),
    ] {
        let r = app.post_json("/api/v1/emails", &body).await;
        assert_eq!(r.status(), 422, "{field}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["fields"][0]["field"], field, "{answer}");
    }
    let mut grpc = app.grpc_client().await;
    let err = grpc.create(grpc_request("b@example.org", "nul\u{0}here")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Message"), "{}", err.message());

    // NATS: a NUL body is dead-lettered naming the field; NUL and ESC in the headers a
    // producer sends are not stored as they came (the command itself is fine).
    let subject = format!("{}.commands.create", app.iso.namespace);
    let mut nul_body = original_payload("nul body");
    nul_body["message"] = json!("x\u{0}y");
    app.js.publish(subject.clone(), nul_body.to_string().into()).await.unwrap().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Request-Id", "req\u{0}id");
    headers.insert("Correlation-Id", "corr\u{1b}[31m");
    app.js
        .publish_with_headers(subject, headers, original_payload("odd headers").to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    let letters = app.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers.get("Mailledger-Error-Field").unwrap().as_str(), "message");
    let events = db::events(&app.pool).await;
    assert_eq!(events.len(), 2, "the command with odd headers is committed");
    let correlation = events[0].metadata["correlation_id"].as_str().unwrap();
    assert!(!correlation.contains('\u{0}') && !correlation.contains('\u{1b}'), "{correlation:?}");
    for e in &events {
        let text = e.metadata.to_string();
        assert!(!text.contains("\\u0000") && !text.contains("\\u001b"), "{text}");
    }
}

#[tokio::test]
async fn a_row_the_store_refuses_fails_alone_and_its_batch_is_committed() {
    let app = TestApp::spawn().await;
    db::refuse_requests_mentioning(&app.pool, "POISONED").await;
    let bodies: Vec<Value> = (0..300)
        .map(|i| original_payload(&if i % 3 == 0 { format!("POISONED {i}") } else { format!("innocent {i}") }))
        .collect();
    let posts = bodies.iter().map(|b| app.post_json("/api/v1/emails", b));
    let mut innocent_ok = 0;
    for (i, r) in futures::future::join_all(posts).await.into_iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(r.status(), 500, "the poisoned request itself fails");
        } else {
            assert_eq!(r.status(), 202, "request {i} was innocent: {:?}", r.text().await);
            innocent_ok += 1;
        }
    }
    assert_eq!(innocent_ok, 200);
    assert_eq!(app.email_count().await, 200, "every innocent email stored, no poisoned one");
}

#[tokio::test]
async fn poison_commands_are_dead_lettered_and_valid_ones_flow_beside_them() {
    let app = TestApp::spawn_with(&[("MAILLEDGER__NATS__MAX_ACK_PENDING", "16")]).await;
    db::refuse_requests_mentioning(&app.pool, "POISONED").await;
    let subject = format!("{}.commands.create", app.iso.namespace);
    // More poison than the consumer may have in flight: before, they filled it for good.
    for i in 0..40 {
        let body = if i % 2 == 0 { original_payload(&format!("POISONED {i}")) } else { json!({"message": "\u{0}"}) };
        app.js.publish(subject.clone(), body.to_string().into()).await.unwrap().await.unwrap();
    }
    for i in 0..100 {
        app.js.publish(subject.clone(), original_payload(&format!("valid {i}")).to_string().into()).await.unwrap();
    }
    eventually(WAIT, || async { app.email_count().await == 100 }).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    let letters = app.dead_letters().await;
    assert_eq!(letters.len(), 40);
    let refused = letters
        .iter()
        .filter(|l| l.headers.get("Mailledger-Error").unwrap().as_str().starts_with("refused twice by the event store"))
        .count();
    assert_eq!(refused, 20, "each poisoned command was tried twice, then dead-lettered with the store's reason");
}

#[tokio::test]
async fn an_event_too_large_for_nats_goes_by_reference_and_the_stream_goes_on() {
    let app = TestApp::spawn().await;
    let mut big = original_payload("two megabytes");
    big["message"] = json!("b".repeat(2 * 1024 * 1024));
    let big_id = app.create(&big).await;
    let small_id = app.create(&original_payload("after the big one")).await;
    let stream = format!("{}_EVENTS", app.iso.stream_prefix);
    let consumer = app
        .js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = vec![];
    while seen.len() < 4 {
        let m = tokio::time::timeout(WAIT, messages.next()).await.expect("events keep flowing").unwrap().unwrap();
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        let omitted = m.headers.as_ref().and_then(|h| h.get("Mailledger-Omitted")).map(|v| v.as_str().to_owned());
        seen.push((body["email_id"].as_str().unwrap().to_owned(), body["type"].as_str().unwrap().to_owned(), omitted));
        m.ack().await.unwrap();
    }
    assert!(seen.contains(&(big_id.clone(), "Requested".into(), Some("body".into()))), "{seen:?}");
    assert!(seen.contains(&(big_id, "Persisted".into(), None)), "{seen:?}");
    assert!(seen.contains(&(small_id, "Requested".into(), None)), "{seen:?}");
}

#[tokio::test]
async fn every_accepted_email_renders_deliverable_lines() {
    let sink = SmtpSink::start().await;
    let app = TestApp::delivering_to(&sink.url(), &[]).await;
    let long_word = "w".repeat(998);
    let cases = [
        json!({"from": "a@example.com", "subject": "hundred", "message": "m",
               "to": (0..100).map(|i| format!("recipient-{i:03}@example.org")).collect::<Vec<_>>()}),
        json!({"from": "a@example.com", "to": "b@example.org", "subject": "header", "message": "m",
               "headers": {"X-Long": long_word}}),
        json!({"from": "a@example.com", "to": "b@example.org", "subject": "s".repeat(998), "message": "m"}),
        json!({"from": format!("{} <a@example.com>", "Ü".repeat(200)), "to": "b@example.org", "subject": "name",
               "message": format!("{long_word}{long_word}")}),
        json!({"from": "a@example.com", "to": "ann@Bücher.example", "subject": "idn", "message": "m"}),
    ];
    for case in &cases {
        app.create(case).await;
    }
    eventually(WAIT, || async { sink.count() == cases.len() }).await;
    for r in sink.received() {
        assert_eq!(r.code, 250, "refused: {}", &r.data[..r.data.len().min(600)]);
    }
    let idn = sink.received().into_iter().find(|r| r.rcpt_to == ["ann@xn--bcher-kva.example"]);
    assert!(idn.is_some(), "the international domain goes on the wire as its A-label");

    // Refused up front: too many reply-to addresses, a non-ASCII local part.
    let many_replies = json!({"from": "a@example.com", "to": "b@example.org", "subject": "s", "message": "m",
        "reply_to": (0..11).map(|i| format!("r{i}@example.org")).collect::<Vec<_>>()});
    let r = app.post_json("/api/v1/emails", &many_replies).await;
    assert_eq!(r.status(), 413);
    let r = app
        .post_json(
            "/api/v1/emails",
            &json!({"from": "a@example.com", "to": "jörg@example.org",
        "subject": "s", "message": "m"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("SMTPUTF8"));
}

/// A codec that sends and receives raw bytes, to put malformed protobuf on the wire.
#[derive(Default, Clone)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self {
        RawCodec
    }
    fn decoder(&mut self) -> Self {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn grpc_answers_invalid_argument_for_bad_times_and_bytes_and_takes_what_rest_takes() {
    let app = TestApp::spawn().await;
    let mut grpc = app.grpc_client().await.max_encoding_message_size(32 << 20);
    let id = grpc.create(grpc_request("b@example.org", "hello")).await.unwrap().into_inner().email_id;
    for (seconds, nanos) in
        [(-100_000_000_000_000, 0), (i64::MAX, 0), (253_402_300_800, 0), (0, -1), (0, 2_000_000_000)]
    {
        let as_of = Some(prost_types::Timestamp { seconds, nanos });
        let err = grpc.get_by_id(GetByIdReq { email_id: id.clone(), as_of }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{seconds}.{nanos}: {err:?}");
    }
    // 6 MiB: over tonic's default 4 MiB, within the 10 MiB REST takes.
    let big = grpc.create(grpc_request("b@example.org", &"x".repeat(6 << 20))).await.unwrap();
    assert_eq!(big.into_inner().status, "accepted");

    // Bytes that are not a protobuf message at all.
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/emailService.EmailService/Create");
    let mut garbage = tonic::Request::new(vec![0xff, 0xff, 0xff, 0x0f]);
    garbage.metadata_mut().insert("authorization", format!("Bearer {}", app.key).parse().unwrap());
    let err = raw.unary(garbage, path, RawCodec).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A 100 KB id is not echoed back whole (it would overflow the client's metadata).
    let err = grpc.get_by_id(GetByIdReq { email_id: "z".repeat(100_000), as_of: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{}", err.message().len());
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_never_starve_the_others() {
    let app = TestApp::spawn_with(&[
        ("MAILLEDGER__HTTP__HEADER_TIMEOUT", "1s"),
        ("MAILLEDGER__HTTP__REQUEST_TIMEOUT", "1s"),
        ("MAILLEDGER__HTTP__MAX_CONNECTIONS", "64"),
    ])
    .await;
    let addr = app.http.trim_start_matches("http://").to_owned();
    // More half-sent requests than the service takes connections.
    let mut slow = vec![];
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(s);
    }
    // Another client still gets its answer (it waits at most for the header timeout).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let r = client.get(app.url("/health")).send().await.expect("answered despite the slow clients");
    assert_eq!(r.status(), 200);
    // The slow ones are closed by the service.
    for mut s in slow.drain(..64) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed").unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // A body promised and never sent: 408 with the JSON error shape.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/emails HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{",
        app.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![];
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
}

#[tokio::test]
async fn search_answers_hold_summaries_not_bodies() {
    let app = TestApp::spawn().await;
    let mut big = original_payload("summarised");
    big["message"] = json!(format!("start of the body {}", "z".repeat(1 << 20)));
    big["html"] = json!("<p>html</p>");
    let id = app.create(&big).await;
    app.wait_projected(1).await;
    let (status, body) = app.get_json("/api/v1/emails?q=summarised").await;
    assert_eq!(status, 200);
    let hit = &body["emails"][0];
    assert_eq!(hit["id"], id.as_str());
    assert!(hit.get("body").is_none() && hit.get("html").is_none(), "{hit}");
    let snippet = hit["snippet"].as_str().unwrap();
    assert!(snippet.starts_with("start of the body") && snippet.chars().count() == 200, "{snippet}");
    assert_eq!((hit["snippet_truncated"].as_bool(), hit["has_html"].as_bool()), (Some(true), Some(true)));
    assert!(body.to_string().len() < 10_000);
    // The whole email is one GET away.
    let (_, whole) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(whole["body"].as_str().unwrap().len(), "start of the body ".len() + (1 << 20));
}

#[tokio::test]
async fn answers_never_echo_an_input_whole() {
    let app = TestApp::spawn().await;
    let huge = "q".repeat(50_000);
    let r = app.client.get(app.url(&format!("/api/v1/emails/{huge}"))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.len() < 400, "{} bytes", text.len());
    assert!(text.contains("(50000 bytes)"), "{text}");
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("status", &*huge)]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().len() < 400);
}

#[tokio::test]
async fn a_request_without_content_type_is_read_as_json() {
    let app = TestApp::spawn().await;
    let r =
        app.client.post(app.url("/api/v1/emails")).body(original_payload("no type").to_string()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = app
        .client
        .post(app.url("/api/v1/emails"))
        .header("content-type", "text/plain")
        .body(original_payload("wrong type").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn a_frozen_redis_costs_one_read_half_a_second_and_readiness_says_degraded() {
    let server = RedisServer::start(free_port());
    let app = TestApp::spawn_with(&[("MAILLEDGER_REDIS_URL", &server.url())]).await;
    let id = app.create(&original_payload("frozen")).await;
    app.wait_projected(1).await;
    let (status, _) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(status, 200);
    // SIGSTOP: connections stay open, nothing answers.
    std::process::Command::new("kill").args(["-STOP", &server.child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    let (status, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    let first = started.elapsed();
    assert_eq!((status, body["subject"].as_str()), (200, Some("frozen")));
    assert!(first < Duration::from_millis(950), "the first read waited {first:?} for Redis");
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(app.get_json(&format!("/api/v1/emails/{id}")).await.0, 200);
    }
    assert!(started.elapsed() < Duration::from_millis(950), "later reads skip the frozen Redis");
    std::process::Command::new("kill").args(["-CONT", &server.child.id().to_string()]).status().unwrap();

    drop(server);
    let (status, report) = app.get_json("/ready").await;
    assert_eq!(status, 200, "Redis down is degraded, not unready: {report}");
    assert_eq!(report["ready"], true);
    assert_eq!(report["degraded"], json!(["redis"]));
}

#[tokio::test]
async fn secrets_in_urls_never_reach_the_logs() {
    let iso = crate::support::Isolation::new();
    let _cleanup = crate::support::Cleanup(iso.clone());
    let mut env = iso.env();
    for (k, v) in env.iter_mut() {
        if k == "MAILLEDGER_DATABASE_URL" {
            *v = format!("{v}?password=hunter2-in-a-query");
        }
        if k == "MAILLEDGER_NATS_URL" {
            *v = v.replace("nats://", "nats://sekrit-token-42@");
        }
    }
    env.push(("MAILLEDGER__LOG__FORMAT".into(), "text".into()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .arg("serve")
        .envs(env)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert!(lines.iter().any(|l| l.contains("mailledger started")), "{lines:#?}");
    assert!(lines.len() > 20, "debug logs were on: {} lines", lines.len());
    for l in &lines {
        assert!(!l.contains("hunter2") && !l.contains("sekrit-token"), "a secret in the log: {l}");
    }
}

#[tokio::test]
async fn metadata_values_are_cut_to_size() {
    let app = TestApp::spawn().await;
    let agent = "A".repeat(5_000);
    let r = app
        .client
        .post(app.url("/api/v1/emails"))
        .header("user-agent", &agent)
        .json(&original_payload("long agent"))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let stored = app.stored(&id, 1).await;
    assert!(stored.metadata["user_agent"].as_str().unwrap().len() <= 512);
    let keys: HashSet<&str> = stored.metadata.as_object().unwrap().keys().map(String::as_str).collect();
    assert!(keys.contains("correlation_id") && keys.contains("transport"));
}
