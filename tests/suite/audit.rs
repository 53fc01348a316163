//! Auditors: replay (every event of a window once, in commit order, with filters),
//! history, and the state of an email as of each instant of its life.

use std::process::Command;
use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::{TestApp, db, eventually, original_payload};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailledger");

fn mailledger(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).envs(app.iso.env()).env_remove("RUST_LOG").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect()
}

#[tokio::test]
async fn replay_gives_every_event_of_a_window_once_in_commit_order() {
    let app = TestApp::spawn().await;
    let before = chrono::Utc::now();
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(app.create(&original_payload(&format!("replayed {i}"))).await);
    }
    let middle = chrono::Utc::now();
    for i in 5..8 {
        ids.push(app.create(&original_payload(&format!("replayed {i}"))).await);
    }
    let expected: Vec<(String, i64)> =
        db::events(&app.pool).await.into_iter().map(|e| (e.aggregate_id, e.position)).collect();

    let (code, out, _) = mailledger(&app, &["replay"]);
    assert_eq!(code, 0);
    let every = lines(&out);
    // The test's own API key was made first: its `KeyCreated` leads the replay.
    assert_eq!((every[0]["aggregate"].as_str(), every[0]["type"].as_str()), (Some("ApiKey"), Some("KeyCreated")));
    assert_eq!(every[0]["metadata"]["actor"], "cli:tests");
    let all: Vec<Value> = every.into_iter().filter(|v| v.get("email_id").is_some()).collect();
    let got: Vec<(String, i64)> =
        all.iter().map(|v| (v["email_id"].as_str().unwrap().to_owned(), v["position"].as_i64().unwrap())).collect();
    assert_eq!(got, expected, "every event once, in commit order");
    let first = &all[0];
    for key in ["email_id", "sequence", "position", "type", "version", "recorded_at", "payload", "metadata"] {
        assert!(!first[key].is_null(), "{key} in {first}");
    }
    assert_eq!(first["type"], "Requested");
    assert_eq!(first["payload"]["request"]["subject"], "replayed 0");
    assert_eq!(first["metadata"]["transport"], "rest");
    assert_eq!(first["metadata"]["actor"], "tests", "the key that asked");
    assert_eq!(first["metadata"]["tenant"], "default");

    let rfc = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (_, out, _) = mailledger(&app, &["replay", "--since", &rfc(middle)]);
    assert_eq!(lines(&out).len(), 6, "three emails after the middle mark");
    let (_, out, _) = mailledger(&app, &["replay", "--since", &rfc(before), "--until", &rfc(middle)]);
    assert_eq!(lines(&out).len(), 10);
    let (_, out, _) = mailledger(&app, &["replay", "--type", "persisted"]);
    let persisted = lines(&out);
    assert_eq!(persisted.len(), 8);
    assert!(persisted.iter().all(|v| v["type"] == "Persisted"));
    let (_, out, _) = mailledger(&app, &["replay", "--email", &ids[3]]);
    assert_eq!(lines(&out).iter().map(|v| v["sequence"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2]);

    let (code, out, err) =
        mailledger(&app, &["replay", "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z"]);
    assert_eq!((code, out.as_str()), (0, ""), "an empty window prints nothing: {err}");
    let (code, _, err) = mailledger(&app, &["replay", "--since", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = mailledger(&app, &["replay", "--type", "bogus"]);
    assert_eq!(code, 2, "an unknown kind is a usage error");
    assert!(err.contains("dead_lettered"), "{err}");
}

#[tokio::test]
async fn history_of_a_known_and_an_unknown_email() {
    let app = TestApp::spawn().await;
    let id = app.create(&original_payload("for the record")).await;
    let (code, out, _) = mailledger(&app, &["history", &id]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("email {id}")), "{out}");
    assert!(out.contains("Requested") && out.contains("requested via rest") && out.contains("for the record"), "{out}");
    assert!(out.contains("Persisted") && out.contains("Message-ID <"), "{out}");
    let (code, out, err) = mailledger(&app, &["history", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.trim(), "mailledger: no email 00000000-0000-0000-0000-000000000000");
    let (code, _, err) = mailledger(&app, &["history", "not-an-id"]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn as_of_each_step_of_a_failed_then_sent_timeline() {
    use mailledger::transport::grpc::proto::GetByIdReq;
    let sink = SmtpSink::start().await;
    sink.script(&[(451, "4.3.0 later")]);
    let app = TestApp::delivering_to(
        &sink.url(),
        &[("MAILLEDGER_DELIVERY_BACKOFF", "300ms"), ("MAILLEDGER__DELIVERY__JITTER", "0")],
    )
    .await;
    let id = app.create(&original_payload("timeline")).await;
    eventually(Duration::from_secs(20), || async { app.event_count(Some(&id)).await == 4 }).await;
    let history = app.get_json(&format!("/api/v1/emails/{id}/events")).await.1;
    let steps: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["recorded_at"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(steps.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["Requested", "Persisted", "Failed", "Sent"]);
    let mut grpc = app.grpc_client().await;
    for ((_, at), (status, attempts)) in steps.iter().skip(1).zip([("queued", 0), ("failed", 1), ("sent", 2)]) {
        let r = app.client.get(app.url(&format!("/api/v1/emails/{id}"))).query(&[("as_of", at)]).send().await.unwrap();
        let view: Value = r.json().await.unwrap();
        assert_eq!((view["status"].as_str(), view["attempts"].as_u64()), (Some(status), Some(attempts)), "as of {at}");
        let t = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        let ts = prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 };
        let email = grpc
            .get_by_id(GetByIdReq { email_id: id.clone(), as_of: Some(ts) })
            .await
            .unwrap()
            .into_inner()
            .email
            .unwrap();
        assert_eq!(email.status, status);
    }
    let failed_at = chrono::DateTime::parse_from_rfc3339(&steps[2].1).unwrap();
    let just_before =
        (failed_at - chrono::Duration::microseconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r = app
        .client
        .get(app.url(&format!("/api/v1/emails/{id}")))
        .query(&[("as_of", &just_before)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
}
