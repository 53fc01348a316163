//! What real senders need beyond sending: outcomes per recipient, the suppression list,
//! and traffic shaping per recipient domain (limits held across two instances, a
//! throttling domain paused while others flow, limits reloaded at run time) — against
//! the in-process SMTP server, scripted per recipient.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::smtp::SmtpSink;
use crate::support::{TestApp, db, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn app_with(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    TestApp::sending_to(sink, extra).await
}

fn email(subject: &str, to: &[&str]) -> Value {
    json!({"from": "sender@example.com", "to": to, "subject": subject, "message": format!("body of {subject}")})
}

async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    app.history(id).await
}

async fn types(app: &TestApp, id: &str) -> Vec<String> {
    app.types(id).await
}

async fn wait_types(app: &TestApp, id: &str, want: &[&str]) {
    app.wait_types(id, want).await
}

/// The email's view once the read model shows `status`.
async fn settled(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(WAIT, || async { app.get_json(&format!("/api/v1/emails/{id}")).await.1["status"] == status }).await;
    app.get_json(&format!("/api/v1/emails/{id}")).await.1
}

fn at(e: &Value, field: &str) -> DateTime<Utc> {
    e["payload"][field].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_recipient_has_its_own_outcome_and_retries_go_only_to_those_refused_for_now() {
    let sink = SmtpSink::start().await;
    sink.refuse("gone@example.org", 550, "5.1.1 no such user", None);
    sink.refuse("full@example.org", 452, "4.2.2 mailbox full", Some(1));
    let app = app_with(&sink, &[]).await;
    let id = app.create(&email("three", &["ok@example.org", "gone@example.org", "full@example.org"])).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Sent", "Failed", "Failed", "Sent"]).await;

    let h = history(&app, &id).await;
    assert_eq!(h[2]["payload"]["recipients"], json!(["ok@example.org"]));
    assert_eq!(h[3]["payload"]["recipients"], json!(["gone@example.org"]));
    assert_eq!(h[3]["payload"]["permanent"], true);
    assert_eq!(h[3]["payload"]["reply_code"], 550);
    assert_eq!(h[4]["payload"]["recipients"], json!(["full@example.org"]));
    assert_eq!(h[4]["payload"]["permanent"], false);
    assert!(h[4]["payload"]["next_attempt_at"].is_string(), "the one refused for now is retried");
    assert_eq!(h[5]["payload"]["attempt"], 2);

    // The server saw the message twice: to the two it took, then to the one left.
    let got = sink.delivered();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpt_to, ["ok@example.org"]);
    assert_eq!(got[1].rcpt_to, ["full@example.org"]);
    assert_eq!(got[0].header("Message-ID"), got[1].header("Message-ID"));
    assert!(got[1].header("To").unwrap().contains("gone@example.org"), "headers name every recipient");

    let view = settled(&app, &id, "sent").await;
    let state = |address: &str| {
        view["deliveries"].as_array().unwrap().iter().find(|d| d["address"] == address).cloned().unwrap()
    };
    assert_eq!((&state("ok@example.org")["status"], &state("ok@example.org")["attempt"]), (&json!("sent"), &json!(1)));
    assert_eq!(state("gone@example.org")["status"], "refused");
    assert_eq!(state("gone@example.org")["code"], 550);
    assert_eq!(
        (&state("full@example.org")["status"], &state("full@example.org")["attempt"]),
        (&json!("sent"), &json!(2))
    );

    // The address refused for good is on the tenant's suppression list, and the change is
    // an event naming who made it.
    let listed = db::suppressions(&app.pool).await;
    assert_eq!(listed.len(), 1);
    let (tenant, address, source, code, email_id) = &listed[0];
    assert_eq!(
        (tenant.as_str(), address.as_str(), source.as_str(), *code),
        ("default", "gone@example.org", "bounce", Some(550))
    );
    assert_eq!(email_id.map(|i| i.to_string()), Some(id.clone()));
    let events = db::suppression_events(&app.pool).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "SuppressionAdded");
    assert!(events[0].metadata["actor"].as_str().unwrap().starts_with("saga:"));
}

#[tokio::test]
async fn a_recipient_refused_at_rcpt_for_good_is_suppressed_in_its_tenant_only() {
    let sink = SmtpSink::start().await;
    // Refused once only: what stops later attempts is the list, not the server.
    sink.refuse("gone@example.org", 550, "5.1.1 no such user", Some(1));
    let app = app_with(&sink, &[]).await;
    let first = app.create(&email("first", &["gone@example.org"])).await;
    wait_types(&app, &first, &["Requested", "Persisted", "Failed", "DeadLettered"]).await;
    assert!(sink.received().is_empty(), "no message went out: its only recipient was refused");

    let second = app.create(&email("second", &["Gone@Example.org", "ok@example.org"])).await;
    wait_types(&app, &second, &["Requested", "Persisted", "Suppressed", "Sent"]).await;
    let h = history(&app, &second).await;
    assert_eq!(h[2]["payload"]["recipients"], json!(["Gone@example.org"]), "matched without regard to case");
    assert!(h[2]["payload"]["reason"].as_str().unwrap().contains("5.1.1"), "{}", h[2]);
    assert_eq!(h[3]["payload"]["recipients"], json!(["ok@example.org"]));
    assert_eq!(sink.delivered().iter().map(|r| r.rcpt_to.clone()).collect::<Vec<_>>(), [vec!["ok@example.org"]]);

    // Everyone suppressed: no attempt at all, and the dead letter says why.
    let third = app.create(&email("third", &["gone@example.org"])).await;
    wait_types(&app, &third, &["Requested", "Persisted", "Suppressed", "DeadLettered"]).await;
    let h = history(&app, &third).await;
    assert!(h[3]["payload"]["reason"].as_str().unwrap().contains("suppress"), "{}", h[3]);
    let view = settled(&app, &third, "dead_lettered").await;
    assert_eq!(view["attempts"], 0);
    assert_eq!(view["deliveries"][0]["status"], "suppressed");

    // Another tenant's list is its own.
    let other = crate::support::client_with_key(
        &app.new_key(json!({"name": "other", "scopes": "send,read", "tenant": "other"})).await,
    );
    let r =
        other.post(app.url("/api/v1/emails")).json(&email("other tenant", &["gone@example.org"])).send().await.unwrap();
    assert_eq!(r.status(), 202);
    eventually(WAIT, || async { sink.delivered().iter().any(|m| m.rcpt_to == ["gone@example.org"]) }).await;
}

/// Emails to `domain`, each to its own recipient there.
async fn send_to(app: &TestApp, domain: &str, n: usize) -> Vec<String> {
    let mut ids = vec![];
    for i in 0..n {
        ids.push(app.create(&email(&format!("{domain} {i}"), &[&format!("r{i}@{domain}")])).await);
    }
    ids
}

fn times_for(sink: &SmtpSink, domain: &str) -> Vec<std::time::Instant> {
    let mut at: Vec<_> =
        sink.delivered().iter().filter(|r| r.rcpt_to.iter().all(|t| t.ends_with(domain))).map(|r| r.at).collect();
    at.sort();
    at
}

#[tokio::test]
async fn domain_limits_hold_across_two_instances_and_are_reloaded_at_run_time() {
    let sink = SmtpSink::start().await;
    sink.hold(Duration::from_millis(300));
    // Two deliveries at once per instance, three at once for the domain: only with both
    // instances sending could it see four, and the cap holds it to three.
    let each = [("MAILLEDGER__DELIVERY__CONCURRENCY", "2")];
    let a = app_with(&sink, &each).await;
    let url = sink.url();
    let b = a
        .sibling(&[
            ("MAILLEDGER_SMTP_URL", url.as_str()),
            ("MAILLEDGER__DELIVERY__ENABLED", "true"),
            ("MAILLEDGER__DELIVERY__POLL_INTERVAL", "100ms"),
            ("MAILLEDGER__DELIVERY__CONCURRENCY", "2"),
        ])
        .await;
    // Both start without limits; the limits come as SIGHUP brings them.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(&file, "delivery:\n  domains:\n    slow.example: { connections: 3, per_second: 4 }\n").unwrap();
    let limited = a.iso.settings(&[("MAILLEDGER_CONFIG", file.to_str().unwrap())]).delivery;
    assert!(limited.limits_any());
    a.reloader.reload_delivery(limited.clone());
    b.reloader.reload_delivery(limited);

    let slow = send_to(&a, "slow.example", 12).await;
    eventually(WAIT, || async { times_for(&sink, "slow.example").len() == 12 }).await;
    let slow_at = times_for(&sink, "slow.example");
    let peak = sink.peak_in_flight("slow.example");
    assert!(peak <= 3, "at most 3 at once across both instances, saw {peak}");
    // 4 a second: 12 deliveries start in three one-second windows, so the last starts at
    // least two seconds after the first.
    let span = slow_at[11] - slow_at[0];
    assert!(span >= Duration::from_millis(1800), "12 deliveries at 4/s took only {span:?}");
    let workers: std::collections::HashSet<String> = db::events(&a.pool)
        .await
        .into_iter()
        .filter(|e| e.event_type == "Sent" && slow.contains(&e.aggregate_id))
        .filter_map(|e| e.metadata["worker"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(workers.len(), 2, "both instances delivered to slow.example: {workers:?}");
    drop(b);
}

#[tokio::test]
async fn a_domain_that_throttles_is_paused_and_the_others_keep_flowing() {
    let sink = SmtpSink::start().await;
    sink.refuse("@busy.example", 421, "4.7.0 too many connections, slow down", Some(1));
    let app = app_with(&sink, &[("MAILLEDGER__DELIVERY__THROTTLE_BACKOFF", "2s")]).await;
    let busy = app.create(&email("busy", &["a@busy.example"])).await;
    wait_types(&app, &busy, &["Requested", "Persisted", "Failed"]).await;
    let (backoff, held) = db::domain_pause(&app.pool, "busy.example").await.expect("the domain is paused");
    assert_eq!(backoff, 2.0);
    assert!(held.is_some());
    // Other domains are not held back while busy.example waits.
    let other = app.create(&email("other", &["b@calm.example"])).await;
    wait_types(&app, &other, &["Requested", "Persisted", "Sent"]).await;
    assert_eq!(types(&app, &busy).await.len(), 3, "busy.example is still paused");

    // The email's own retry is due after 100 ms; the domain's pause holds it for 2 s.
    wait_types(&app, &busy, &["Requested", "Persisted", "Failed", "Sent"]).await;
    let h = history(&app, &busy).await;
    let waited = at(&h[3], "sent_at") - at(&h[2], "failed_at");
    assert!(waited >= chrono::Duration::milliseconds(1800), "retried after {waited} despite the pause");
    // Its success lifts the pause.
    eventually(WAIT, || async { db::domain_pause(&app.pool, "busy.example").await.is_some_and(|(b, _)| b == 0.0) })
        .await;
    let metrics = app.client.get(&app.metrics).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("mailledger_domain_throttled_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

async fn post(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/api/v1/suppressions", &body).await
}

#[tokio::test]
async fn the_suppression_list_over_rest_grpc_and_the_command_line() {
    use mailledger::transport::grpc::proto::{ListSuppressionsReq, SuppressionChangeReq};
    let app = TestApp::spawn().await;
    // Added, with who and why; the same address again changes nothing.
    let r = post(&app, json!({"address": "Ann@Example.org", "reason": "asked us to stop"})).await;
    assert_eq!(r.status(), 201);
    let added: Value = r.json().await.unwrap();
    assert_eq!(
        (&added["address"], &added["source"], &added["created_by"]),
        (&json!("ann@example.org"), &json!("manual"), &json!("tests"))
    );
    assert_eq!(post(&app, json!({"address": "ann@example.org", "reason": "again"})).await.status(), 200);
    assert_eq!(db::suppression_events(&app.pool).await.len(), 1, "a repeat records nothing");
    // Bad input: named, nothing stored.
    for (body, status, says) in [
        (json!({"address": "not an address", "reason": "r"}), 422, "address"),
        (json!({"address": "a\u{0}b@example.org", "reason": "r"}), 422, "address"),
        (json!({"address": "b@example.org", "reason": ""}), 422, "reason"),
        (json!({"address": "b@example.org", "reason": "x".repeat(501)}), 422, "500"),
        (json!({"address": "b@example.org", "reason": "a\u{1b}[31m red"}), 422, "control"),
        (json!({"address": "b@example.org", "reason": "r", "extra": 1}), 400, "extra"),
        (json!({"address": "b@example.org", "reason": "r", "tenant": "globex"}), 201, ""),
    ] {
        let r = post(&app, body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        assert!(r.text().await.unwrap().contains(says), "{body}");
    }
    let malformed =
        app.client.post(app.url("/api/v1/suppressions")).body("{").header("content-type", "application/json");
    assert_eq!(malformed.send().await.unwrap().status(), 400);

    // A tenant's key sees and changes only its tenant's list.
    let acme = crate::support::client_with_key(
        &app.new_key(json!({"name": "acme ops", "scopes": "read,redrive", "tenant": "acme"})).await,
    );
    let r = acme.post(app.url("/api/v1/suppressions")).json(&json!({"address": "c@example.org", "reason": "r"})).send();
    assert_eq!(r.await.unwrap().status(), 201);
    let r = acme
        .post(app.url("/api/v1/suppressions"))
        .json(&json!({"address": "d@example.org", "reason": "r", "tenant": "default"}));
    assert_eq!(r.send().await.unwrap().status(), 403);
    let page: Value = acme.get(app.url("/api/v1/suppressions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["tenant"], "acme");
    // The admin key sees every tenant's, a page at a time, and filters.
    let (_, all) = app.get_json("/api/v1/suppressions?limit=2").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let next = all["next_cursor"].as_str().unwrap();
    let (_, rest) = app.get_json(&format!("/api/v1/suppressions?limit=2&cursor={next}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let (_, only) = app.get_json("/api/v1/suppressions?tenant=globex&domain=example.org&reason=R").await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=1001", "cursor=garbage", "since=yesterday", "source=spam"] {
        let r = app.client.get(app.url(&format!("/api/v1/suppressions?{bad}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    // Exported whole, as CSV or NDJSON.
    let csv = app.client.get(app.url("/api/v1/suppressions/export")).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("tenant,address,domain,reason,code,source,email_id,created_at,created_by\n"), "{csv}");
    assert_eq!(csv.lines().count(), 4);
    let nd = app.client.get(app.url("/api/v1/suppressions/export?format=ndjson&tenant=acme")).send().await.unwrap();
    let lines: Vec<Value> = nd.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["address"], "c@example.org");
    assert_eq!(app.client.get(app.url("/api/v1/suppressions/export?format=xml")).send().await.unwrap().status(), 400);

    // Removed with a reason, once.
    let delete = |q: &str| app.client.delete(app.url(&format!("/api/v1/suppressions/ANN@example.org{q}"))).send();
    assert_eq!(delete("").await.unwrap().status(), 422, "a removal says why");
    assert_eq!(delete("?reason=resubscribed").await.unwrap().status(), 200);
    assert_eq!(delete("?reason=resubscribed").await.unwrap().status(), 404);
    let events = db::suppression_events(&app.pool).await;
    let removed = events.iter().find(|e| e.event_type == "SuppressionRemoved").unwrap();
    assert_eq!(removed.fields()["reason"], "resubscribed");
    assert_eq!(removed.metadata["actor"], "tests");

    // gRPC: the same list.
    let mut grpc = app.grpc_client().await;
    let change = |address: &str, reason: &str| SuppressionChangeReq {
        address: address.into(),
        reason: reason.into(),
        tenant: String::new(),
    };
    let added = grpc.add_suppression(change("e@example.org", "by gRPC")).await.unwrap().into_inner();
    assert!(added.added);
    assert_eq!(added.suppression.unwrap().address, "e@example.org");
    let err = grpc.add_suppression(change("e@example.org", "")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("Reason"), "{err:?}");
    let page = grpc.list_suppressions(ListSuppressionsReq { tenant: "default".into(), ..Default::default() }).await;
    assert_eq!(
        page.unwrap().into_inner().items.iter().map(|s| s.address.as_str()).collect::<Vec<_>>(),
        ["e@example.org"]
    );
    assert!(grpc.remove_suppression(change("e@example.org", "done")).await.unwrap().into_inner().removed);
    assert_eq!(
        grpc.remove_suppression(change("e@example.org", "done")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // The command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .args(args)
            .envs(app.iso.env())
            .env("USER", "ops")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, _, err) = cli(&["suppressions", "add", "F@example.org", "--reason", "from the shell"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = cli(&["suppressions", "list", "--domain", "example.org", "--tenant", "default"]);
    assert!(out.contains("f@example.org") && out.contains("from the shell") && out.contains("cli:ops"), "{out}");
    let (_, out, _) = cli(&["suppressions", "export", "--format", "ndjson", "--tenant", "default"]);
    assert_eq!(out.lines().count(), 1);
    let (code, _, err) = cli(&["suppressions", "remove", "f@example.org", "--reason", "done"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["suppressions", "remove", "f@example.org", "--reason", "done"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("not suppressed"), "{err}");

    // Every change, on the domain event stream: five added, three removed.
    let stream = format!("{}_EVENTS", app.iso.stream_prefix);
    let subject = |kind: &str| format!("{}.events.suppression_{kind}", app.iso.namespace);
    eventually(WAIT, || async {
        let Ok(mut s) = app.js.get_stream(&stream).await else { return false };
        let last = s.info().await.unwrap().state.last_sequence;
        let mut seen: Vec<(String, Value)> = vec![];
        for seq in 1..=last {
            if let Ok(m) = s.get_raw_message(seq).await {
                seen.push((m.subject.to_string(), serde_json::from_slice(&m.payload).unwrap_or_default()));
            }
        }
        let count = |kind: &str| seen.iter().filter(|(s, _)| *s == subject(kind)).count();
        let first = seen.iter().find(|(s, _)| *s == subject("added"));
        (count("added"), count("removed")) == (5, 3)
            && first.is_some_and(|(_, body)| body["address"] == "ann@example.org" && body["by"] == "tests")
    })
    .await;
}

#[tokio::test]
async fn a_bulk_redrive_counts_first_paces_itself_and_resumes_without_redriving_twice() {
    let sink = SmtpSink::start().await;
    sink.always(554, "5.7.1 refused by policy");
    let app = app_with(&sink, &[("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "1")]).await;
    let mut ids = vec![];
    for (i, domain) in ["a.example", "a.example", "a.example", "a.example", "b.example", "b.example"].iter().enumerate()
    {
        ids.push(app.create(&email(&format!("outage {i}"), &[&format!("r{i}@{domain}")])).await);
    }
    for id in &ids {
        wait_types(&app, id, &["Requested", "Persisted", "Failed", "DeadLettered"]).await;
    }
    for id in &ids {
        settled(&app, id, "dead_lettered").await;
    }
    // Counted first.
    let r = app.post_json("/api/v1/redrives", &json!({"to_domain": "a.example", "dry_run": true})).await;
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    assert_eq!(preview["matched"], 4);
    for bad in
        [json!({"rate": "fast"}), json!({"rate": "5/week"}), json!({"since": "yesterday"}), json!({"colour": "red"})]
    {
        assert_eq!(app.post_json("/api/v1/redrives", &bad).await.status(), 400, "{bad}");
    }

    // The command line, at 2 a second, stopped by Ctrl-C after the first.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .args(["dlq", "redrive", "--to-domain", "A.example", "--reason-like", "REFUSED BY", "--rate", "2/s"])
        .envs(app.iso.env())
        .env("USER", "ops")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(WAIT, || async { db::count_of_type(&app.pool, "Redriven").await >= 1 }).await;
    nix_interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("4 dead letter(s) match"), "{stderr}");
    let run = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(stderr.contains(&format!("--resume {run}")), "{stderr}");
    let first = db::count_of_type(&app.pool, "Redriven").await;
    assert!(first < 4, "stopped part way: {first}");
    // The redriven ones fail and are dead letters again; resuming goes on with the rest only.
    let (_, before) = app.get_json(&format!("/api/v1/redrives/{run}")).await;
    assert!(before["finished_at"].is_null());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .args(["dlq", "redrive", "--resume", &run, "--rate", "0"])
        .envs(app.iso.env())
        .env("USER", "night-shift")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let redriven: Vec<db::Stored> =
        db::events(&app.pool).await.into_iter().filter(|e| e.event_type == "Redriven").collect();
    assert_eq!(redriven.len(), 4, "each of the four once");
    let by = |who: &str| redriven.iter().filter(|e| e.fields()["by"] == who).count();
    assert_eq!(
        (by("cli:ops"), by("cli:night-shift")),
        (first as usize, 4 - first as usize),
        "who redrove each is recorded"
    );
    for e in &redriven {
        assert_eq!(e.fields()["run"], run.as_str());
        assert!(ids[..4].contains(&e.aggregate_id), "only a.example was redriven");
    }
    let (_, after) = app.get_json(&format!("/api/v1/redrives/{run}")).await;
    assert_eq!((&after["total"], &after["done"], &after["redriven"]), (&json!(4), &json!(4), &json!(4)));
    assert!(after["finished_at"].is_string());
    // Resuming a finished run does nothing.
    assert_eq!(app.client.post(app.url(&format!("/api/v1/redrives/{run}/resume"))).send().await.unwrap().status(), 200);

    // Over REST: the rest, in the background.
    let r = app.post_json("/api/v1/redrives", &json!({"to_domain": "b.example", "rate": "0"})).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    eventually(WAIT, || async { app.get_json(&location).await.1["finished_at"].is_string() }).await;
    let (_, done) = app.get_json(&location).await;
    assert_eq!((&done["total"], &done["redriven"]), (&json!(2), &json!(2)));
    assert_eq!(db::count_of_type(&app.pool, "Redriven").await, 6);
    // A tenant's key sees neither the default tenant's runs nor may it redrive another tenant's mail.
    let acme = crate::support::client_with_key(
        &app.new_key(json!({"name": "acme ops", "scopes": "redrive", "tenant": "acme"})).await,
    );
    assert_eq!(acme.get(app.url(&location)).send().await.unwrap().status(), 404);
    let r = acme.post(app.url("/api/v1/redrives")).json(&json!({"tenant": "default", "dry_run": true})).send();
    assert_eq!(r.await.unwrap().status(), 403);
    let (_, runs) = app.get_json("/api/v1/redrives").await;
    assert_eq!(runs.as_array().unwrap().len(), 2);
}

/// SIGINT, as Ctrl-C sends it.
fn nix_interrupt(pid: u32) {
    let status = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}
