//! The search language (`q` on REST, `Search` on gRPC, `mailledger search`): every field
//! kind against real emails, the same answers on the three interfaces, malformed
//! queries refused with the position named, and the tenant filter kept.

use crate::support::{TestApp, client_with_key};
use mailledger::transport::grpc::proto::SearchReq;
use serde_json::{Value, json};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mailledger");

/// Three emails: (1) html, to example.org; (2) the phrase in its body, to other.org;
/// (3) from example.net to example.org with a cc at rare.test.
async fn seeded() -> (TestApp, [String; 3]) {
    let app = TestApp::spawn().await;
    let one = app
        .create(&json!({"from": "ann@example.com", "to": "bob@example.org", "subject": "Quarterly report",
                        "text": "numbers attached", "html": "<p>numbers attached</p>"}))
        .await;
    let two = app
        .create(&json!({"from": "ann@example.com", "to": "carol@other.org", "subject": "Report, quarterly",
                        "text": "the quarterly report is late"}))
        .await;
    let three = app
        .create(&json!({"from": "dan@example.net", "to": "bob@example.org", "cc": ["erin@rare.test"],
                        "subject": "Lunch", "text": "re:meeting at 12:30"}))
        .await;
    app.wait_projected(3).await;
    (app, [one, two, three])
}

async fn ids(app: &TestApp, q: &str) -> Vec<String> {
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", q)]).send().await.unwrap();
    assert_eq!(r.status(), 200, "q={q:?}");
    let body: Value = r.json().await.unwrap();
    body["emails"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_field_kind_on_rest_grpc_and_the_cli() {
    let (app, [one, two, three]) = seeded().await;
    let cases: Vec<(&str, Vec<&String>)> = vec![
        (r#"subject:"quarterly report""#, vec![&one]),
        (r#""quarterly report""#, vec![&two, &one]),
        ("subject:quarterly", vec![&two, &one]),
        ("quarterly -late", vec![&one]),
        (r#"-"quarterly report""#, vec![&three]),
        ("from:example.com", vec![&two, &one]),
        ("from:@EXAMPLE.com", vec![&two, &one]),
        ("from:dan@example.net", vec![&three]),
        ("-from:example.com", vec![&three]),
        ("to:example.org", vec![&three, &one]),
        ("to:rare.test", vec![&three]),
        ("to:carol@other.org", vec![&two]),
        ("-to:example.org", vec![&two]),
        ("has:html", vec![&one]),
        ("-has:html", vec![&three, &two]),
        ("is:queued", vec![&three, &two, &one]),
        ("status:sent", vec![]),
        ("is:bounced", vec![]),
        ("-is:suppressed", vec![&three, &two, &one]),
        ("before:2000-01-01", vec![]),
        ("after:2000-01-01 before:2999-01-01", vec![&three, &two, &one]),
        (r#""re:meeting""#, vec![&three]),
        ("12:30", vec![&three]),
        ("from:example.com to:example.org has:html is:queued after:2000-01-01 numbers -late", vec![&one]),
    ];
    let mut grpc = app.grpc_client().await;
    let env = app.iso.env();
    for (q, want) in &cases {
        let want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
        assert_eq!(ids(&app, q).await, want, "REST q={q:?}");
        let res = grpc.search(SearchReq { search: (*q).into(), ..Default::default() }).await.unwrap().into_inner();
        let got: Vec<String> = res.emails.iter().map(|e| e.email_id.clone()).collect();
        assert_eq!(got, want, "gRPC Search={q:?}");
        let out =
            std::process::Command::new(BIN).args(["search", q, "--json"]).envs(env.iter().cloned()).output().unwrap();
        assert!(out.status.success(), "CLI {q:?}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "CLI search {q:?}");
    }
    // The original search path takes the same language.
    let r = app.client.get(app.url("/api/v1/email/search")).query(&[("search", "has:html")]).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["totalCount"], 1, "{body}");
}

#[tokio::test]
async fn malformed_queries_are_refused_naming_the_position() {
    let (app, _) = seeded().await;
    let mut grpc = app.grpc_client().await;
    let env = app.iso.env();
    for (q, position, says) in [
        ("hello before:2026-13-01", 14, "before:"),
        ("a foo:bar", 3, "unknown field \"foo\""),
        ("re:meeting", 1, "unknown field \"re\""),
        ("x \"unclosed phrase", 3, "never closed"),
        ("subject:\"open", 9, "never closed"),
        ("is:happy", 4, "is:"),
        ("has:attachment", 5, "attachments"),
        ("from:ann", 6, "from:"),
        ("status:lost", 8, "status:"),
    ] {
        let at = format!("at position {position}:");
        for (path, param) in [("/api/v1/emails", "q"), ("/api/v1/email/search", "search")] {
            let r = app.client.get(app.url(path)).query(&[(param, q)]).send().await.unwrap();
            assert_eq!(r.status(), 400, "{path} {q:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "bad_request");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(&at) && message.contains(says), "{q:?}: {message}");
        }
        let status = grpc.search(SearchReq { search: q.into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{q:?}");
        assert!(status.message().contains(&at) && status.message().contains(says), "{q:?}: {}", status.message());
        let out = std::process::Command::new(BIN).args(["search", q]).envs(env.iter().cloned()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "CLI {q:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&at) && stderr.contains(says), "CLI {q:?}: {stderr}");
    }
    let long = "x".repeat(1_001);
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", &long)]).send().await.unwrap();
    assert_eq!(r.status(), 400, "an oversized query");
}

#[tokio::test]
async fn field_searches_stay_within_the_tenant() {
    let (app, _) = seeded().await;
    let acme = client_with_key(&app.new_key(json!({"name": "acme", "scopes": "send,read", "tenant": "acme"})).await);
    let r = acme
        .post(app.url("/api/v1/emails"))
        .json(&json!({"from": "ann@example.com", "to": "bob@example.org", "subject": "Quarterly report", "html": "<p>x</p>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let own: Value = r.json().await.unwrap();
    app.wait_projected(4).await;
    for q in ["from:example.com", "to:example.org has:html", r#"subject:"quarterly report""#, "-is:bounced"] {
        let r = acme.get(app.url("/api/v1/emails")).query(&[("q", q)]).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        let got: Vec<&str> = body["emails"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(got, [own["id"].as_str().unwrap()], "acme q={q:?}");
    }
    assert_eq!(ids(&app, "from:example.com has:html").await.len(), 2, "the admin key sees both tenants");
}
