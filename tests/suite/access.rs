//! Who may do what: API keys on every transport (every wrong kind of key on every
//! endpoint and RPC), scopes, tenants, `--from-domain`, rate and quota, revocation on a
//! second instance, accountable events, the key CLI, and authentication switched off.
//! No 5xx, nothing stored, nothing leaked.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Grpc, TestApp, client_with_key, db, eventually, grpc_with_key, original_payload};
use mailledger::transport::grpc::proto::{
    CreateReq, GetByIdReq, HistoryReq, ListSuppressionsReq, RedriveReq, SearchReq, SuppressionChangeReq,
};

fn change(address: &str) -> SuppressionChangeReq {
    SuppressionChangeReq { address: address.into(), reason: "a reason".into(), tenant: String::new() }
}
use serde_json::{Value, json};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_mailledger");

/// Every REST route behind a key: (method, path, body).
fn protected_routes(id: &str) -> Vec<(reqwest::Method, String, Option<Value>)> {
    use reqwest::Method;
    vec![
        (Method::POST, "/api/v1/emails".into(), Some(original_payload("keyless"))),
        (Method::POST, "/api/v1/email".into(), Some(original_payload("keyless"))),
        (Method::GET, "/api/v1/emails?q=x".into(), None),
        (Method::GET, format!("/api/v1/emails/{id}"), None),
        (Method::GET, format!("/api/v1/emails/{id}?as_of=2030-01-01T00:00:00Z"), None),
        (Method::GET, format!("/api/v1/emails/{id}/events"), None),
        (Method::POST, format!("/api/v1/emails/{id}/redrive"), Some(json!({}))),
        (Method::GET, "/api/v1/email/search?search=x".into(), None),
        (Method::GET, format!("/api/v1/email/{id}"), None),
        (Method::GET, "/api/v1/keys".into(), None),
        (Method::POST, "/api/v1/keys".into(), Some(json!({"name": "k", "scopes": "all"}))),
        (Method::DELETE, format!("/api/v1/keys/{id}"), None),
        (Method::GET, "/api/v1/suppressions".into(), None),
        (Method::GET, "/api/v1/suppressions/export".into(), None),
        (Method::POST, "/api/v1/suppressions".into(), Some(json!({"address": "a@example.org", "reason": "r"}))),
        (Method::DELETE, "/api/v1/suppressions/a@example.org?reason=r".into(), None),
        (Method::GET, "/api/v1/redrives".into(), None),
        (Method::POST, "/api/v1/redrives".into(), Some(json!({}))),
        (Method::GET, format!("/api/v1/redrives/{id}"), None),
        (Method::POST, format!("/api/v1/redrives/{id}/resume"), None),
        (Method::GET, "/api/v1/webhooks".into(), None),
        (Method::POST, "/api/v1/webhooks".into(), Some(json!({"url": "https://example.com/", "kinds": ["sent"]}))),
        (Method::GET, format!("/api/v1/webhooks/{id}"), None),
        (Method::PATCH, format!("/api/v1/webhooks/{id}"), Some(json!({"enabled": false}))),
        (Method::DELETE, format!("/api/v1/webhooks/{id}"), None),
        (Method::POST, format!("/api/v1/webhooks/{id}/rotate"), Some(json!({}))),
        (Method::GET, format!("/api/v1/webhooks/{id}/deliveries"), None),
        (Method::POST, format!("/api/v1/webhooks/{id}/replay"), Some(json!({"since": "2020-01-01T00:00:00Z"}))),
    ]
}

async fn call(
    app: &TestApp,
    client: &reqwest::Client,
    route: &(reqwest::Method, String, Option<Value>),
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = client.request(route.0.clone(), app.url(&route.1));
    if let Some(body) = &route.2 {
        r = r.json(body);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.headers().clone(), r.text().await.unwrap())
}

#[tokio::test]
async fn every_route_refuses_every_wrong_kind_of_key() {
    let app = TestApp::spawn().await;
    let id = app.create(&original_payload("already there")).await;
    let revoked = app.new_key(json!({"name": "to revoke", "scopes": "all"})).await;
    let keys: Vec<Value> = app.client.get(app.url("/api/v1/keys")).send().await.unwrap().json().await.unwrap();
    let revoked_id = keys.iter().find(|k| k["name"] == "to revoke").unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.client.delete(app.url(&format!("/api/v1/keys/{revoked_id}"))).send().await.unwrap().status(), 200);
    let expired = app.new_key(json!({"name": "short-lived", "scopes": "all", "expires": "1s"})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let unknown = {
        // A key of the right shape and checksum that was never made.
        let other = TestApp::spawn().await;
        other.key.clone()
    };
    let mut typo = app.key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let events_before = app.event_count(None).await;

    let forms: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("no scheme", Some(app.key.clone())),
        ("another scheme", Some(format!("Basic {}", app.key))),
        ("not a key", Some("Bearer hunter2".into())),
        ("a typo", Some(format!("Bearer {typo}"))),
        ("never made", Some(format!("Bearer {unknown}"))),
        ("revoked", Some(format!("Bearer {revoked}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        ("10 KB", Some(format!("Bearer {}", "k".repeat(10_000)))),
    ];
    for (what, header) in &forms {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(h) = header {
            headers.insert(reqwest::header::AUTHORIZATION, h.parse().unwrap());
        }
        let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
        for route in protected_routes(&id) {
            let (status, headers, body) = call(&app, &client, &route).await;
            assert_eq!(status, 401, "{what}: {} {} → {body}", route.0, route.1);
            assert_eq!(headers["www-authenticate"], "Bearer realm=\"mailledger\"", "{what}");
            assert!(body.contains("\"code\":\"unauthenticated\""), "{what}: {body}");
            for secret in [&app.key, &revoked, &expired, &unknown, &typo] {
                assert!(!body.contains(secret.as_str()), "{what}: the key is echoed: {body}");
            }
        }
    }
    // The answers say what was wrong (without the key).
    let said = |h: &str| {
        let client = reqwest::Client::new();
        let url = app.url("/api/v1/emails");
        let h = h.to_owned();
        async move { client.get(url).header("authorization", h).send().await.unwrap().text().await.unwrap() }
    };
    assert!(said(&format!("Bearer {revoked}")).await.contains("revoked"));
    assert!(said(&format!("Bearer {expired}")).await.contains("expired"));
    // Two headers, even two good ones, are one too many; a non-ASCII one is malformed.
    let two = reqwest::Client::new()
        .get(app.url("/api/v1/emails"))
        .header("authorization", format!("Bearer {}", app.key))
        .header("authorization", format!("Bearer {}", app.key))
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 401);
    let raw = reqwest::header::HeaderValue::from_bytes("Bearer ключ".as_bytes()).unwrap();
    let r = reqwest::Client::new().get(app.url("/api/v1/emails")).header("authorization", raw).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The scheme in any case, spaces around the key: accepted.
    for h in [format!("bearer {}", app.key), format!("BEARER    {}  ", app.key)] {
        let r = reqwest::Client::new().get(app.url("/api/v1/emails")).header("authorization", h).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(app.event_count(None).await, events_before, "nothing was stored");

    // gRPC: every RPC, without a key and with a wrong one.
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut keyless =
        mailledger::transport::grpc::proto::email_service_client::EmailServiceClient::new(channel.clone());
    let mut wrong = grpc_with_key(channel, &revoked);
    for status in [
        keyless.create(create_request("b@example.org")).await.unwrap_err(),
        keyless.get_by_id(GetByIdReq { email_id: id.clone(), as_of: None }).await.unwrap_err(),
        keyless.search(SearchReq::default()).await.unwrap_err(),
        keyless.history(HistoryReq { email_id: id.clone() }).await.unwrap_err(),
        keyless.redrive(RedriveReq { email_id: id.clone(), by: String::new() }).await.unwrap_err(),
        keyless.list_suppressions(ListSuppressionsReq::default()).await.unwrap_err(),
        keyless.add_suppression(change("a@example.org")).await.unwrap_err(),
        keyless.remove_suppression(change("a@example.org")).await.unwrap_err(),
        wrong.list_suppressions(ListSuppressionsReq::default()).await.unwrap_err(),
        wrong.add_suppression(change("a@example.org")).await.unwrap_err(),
        wrong.create(create_request("b@example.org")).await.unwrap_err(),
        wrong.get_by_id(GetByIdReq { email_id: id.clone(), as_of: None }).await.unwrap_err(),
        wrong.search(SearchReq::default()).await.unwrap_err(),
        wrong.history(HistoryReq { email_id: id.clone() }).await.unwrap_err(),
        wrong.redrive(RedriveReq { email_id: id.clone(), by: String::new() }).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().contains(&revoked));
    }
    assert_eq!(app.event_count(None).await, events_before, "nothing was stored");
    // The open ones stay open.
    for path in ["/health", "/ready", "/api-docs/openapi.json", "/swagger-ui/"] {
        assert_eq!(reqwest::get(app.url(path)).await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(reqwest::get(&app.metrics).await.unwrap().status(), 200);
    let doc: Value = reqwest::get(app.url("/api-docs/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

fn create_request(to: &str) -> CreateReq {
    CreateReq {
        from: "sender@example.com".into(),
        to: to.into(),
        subject: "hi".into(),
        message: "hello".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn scopes_decide_what_a_key_may_do() {
    let app = TestApp::spawn().await;
    let id = app.create(&original_payload("scoped")).await;
    app.wait_projected(1).await;
    let reader = client_with_key(&app.new_key(json!({"name": "reader", "scopes": "read"})).await);
    let sender = client_with_key(&app.new_key(json!({"name": "sender", "scopes": "send"})).await);
    let r = reader.post(app.url("/api/v1/emails")).json(&original_payload("no")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("`send`"));
    assert_eq!(reader.get(app.url(&format!("/api/v1/emails/{id}"))).send().await.unwrap().status(), 200);
    assert_eq!(reader.get(app.url("/api/v1/keys")).send().await.unwrap().status(), 403);
    let r = reader.post(app.url(&format!("/api/v1/emails/{id}/redrive"))).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(sender.get(app.url(&format!("/api/v1/emails/{id}"))).send().await.unwrap().status(), 403);
    assert_eq!(sender.get(app.url("/api/v1/emails?q=scoped")).send().await.unwrap().status(), 403);
    assert_eq!(
        sender.post(app.url("/api/v1/emails")).json(&original_payload("yes")).send().await.unwrap().status(),
        202
    );
    assert_eq!(app.email_count().await, 2, "only the sender's email was stored");
    let reader_key = app.new_key(json!({"name": "grpc reader", "scopes": "read"})).await;
    let mut grpc = grpc_with_key(
        tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap(),
        &reader_key,
    );
    assert_eq!(grpc.create(create_request("b@example.org")).await.unwrap_err().code(), Code::PermissionDenied);
    assert!(grpc.get_by_id(GetByIdReq { email_id: id, as_of: None }).await.is_ok());
}

#[tokio::test]
async fn tenants_never_see_each_others_emails() {
    let app = TestApp::spawn().await;
    let acme_key = app.new_key(json!({"name": "acme", "scopes": "send,read,redrive", "tenant": "acme"})).await;
    let globex_key = app.new_key(json!({"name": "globex", "scopes": "send,read,redrive", "tenant": "globex"})).await;
    let (acme, globex) = (client_with_key(&acme_key), client_with_key(&globex_key));
    let mut body = original_payload("acme quarterly");
    body["idempotency_key"] = json!("invoice-7");
    let r = acme.post(app.url("/api/v1/emails")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let acme_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // The same idempotency key in another tenant is another email, not a conflict.
    body["subject"] = json!("globex quarterly");
    let r = globex.post(app.url("/api/v1/emails")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let globex_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_ne!(acme_id, globex_id);
    app.wait_projected(2).await;

    for path in [
        format!("/api/v1/emails/{acme_id}"),
        format!("/api/v1/email/{acme_id}"),
        format!("/api/v1/emails/{acme_id}/events"),
        format!("/api/v1/emails/{acme_id}?as_of=2100-01-01T00:00:00Z"),
    ] {
        let r = globex.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("acme"), "{path}: {text}");
        assert_eq!(acme.get(app.url(&path)).send().await.unwrap().status(), 200, "{path}");
    }
    let r = globex.post(app.url(&format!("/api/v1/emails/{acme_id}/redrive"))).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Search: each tenant finds its own; the admin finds both.
    let found = |client: &reqwest::Client| {
        let url = app.url("/api/v1/emails?q=quarterly");
        let client = client.clone();
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            body["emails"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["subject"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found(&acme).await, ["acme quarterly"]);
    assert_eq!(found(&globex).await, ["globex quarterly"]);
    assert_eq!(found(&app.client).await.len(), 2);
    // The read model and the events say whose each email is.
    let (_, view) = app.get_json(&format!("/api/v1/emails/{acme_id}")).await;
    assert_eq!(view["tenant"], "acme");
    let requested = app.stored(&acme_id, 1).await;
    assert_eq!(
        (requested.metadata["tenant"].as_str(), requested.metadata["actor"].as_str()),
        (Some("acme"), Some("acme"))
    );
    // Over gRPC too.
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut grpc: Grpc = grpc_with_key(channel, &globex_key);
    let err = grpc.get_by_id(GetByIdReq { email_id: acme_id.clone(), as_of: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = grpc.history(HistoryReq { email_id: acme_id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let page = grpc.search(SearchReq { search: "quarterly".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(page.emails.len(), 1);
    assert_eq!(page.emails[0].email_id, globex_id);
}

#[tokio::test]
async fn a_key_sends_only_from_its_domains_whatever_the_display_name_says() {
    let app = TestApp::spawn().await;
    let key = app
        .new_key(json!({"name": "finance", "scopes": "send", "from_domains": ["Finance.Example", "billing.example"]}))
        .await;
    let client = client_with_key(&key);
    let send = |from: &str| {
        let mut body = original_payload("payment");
        body["from"] = json!(from);
        let client = client.clone();
        let url = app.url("/api/v1/emails");
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    for ok in ["pay@finance.example", "Pay Desk <PAY@FINANCE.EXAMPLE>", "x@billing.example"] {
        assert_eq!(send(ok).await.status(), 202, "{ok}");
    }
    for spoof in [
        "\"pay@finance.example\" <thief@evil.example>",
        "pay@finance.example.evil.example",
        "pay@sub.finance.example",
        "Finance <pay@financeexample.com>",
    ] {
        let r = send(spoof).await;
        assert_eq!(r.status(), 403, "{spoof}");
        assert!(r.text().await.unwrap().contains("@finance.example"));
    }
    assert_eq!(app.email_count().await, 3);
}

#[tokio::test]
async fn rates_and_daily_quotas_answer_429_and_resource_exhausted() {
    let app = TestApp::spawn().await;
    let slow = client_with_key(
        &app.new_key(json!({"name": "slow", "scopes": "read", "rate_per_second": 0.5, "burst": 2})).await,
    );
    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..4 {
        let r = slow.get(app.url("/api/v1/emails")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(retry_after.is_some_and(|s| (1..=2).contains(&s)), "{retry_after:?}");

    let capped_key = app.new_key(json!({"name": "capped", "scopes": "send", "daily_quota": 3})).await;
    let capped = client_with_key(&capped_key);
    for i in 0..3 {
        let r =
            capped.post(app.url("/api/v1/emails")).json(&original_payload(&format!("quota {i}"))).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = capped.post(app.url("/api/v1/emails")).json(&original_payload("over")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "until midnight UTC: {wait}");
    assert!(r.text().await.unwrap().contains("daily send quota"));
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let err = grpc_with_key(channel, &capped_key).create(create_request("b@example.org")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(app.email_count().await, 3);
    // Counted by key name in Prometheus (never by key).
    let scrape = reqwest::get(&app.metrics).await.unwrap().text().await.unwrap();
    assert!(scrape.contains(r#"mailledger_key_requests_total{key="slow",outcome="rate_limited"} 2"#), "{scrape}");
    assert!(scrape.contains(r#"mailledger_key_requests_total{key="capped",outcome="quota_exceeded"}"#));
    assert!(!scrape.contains(&capped_key));
}

/// What each request with a key touches is made once per key when the keys are read
/// (its rate bucket, its counter): a reload keeps the bucket (a rate is not refilled by
/// someone making a key), an expiry holds without a reload, every allowed request is
/// counted by key name, and use is still recorded in `last_used_at` (noted at most once
/// a second per key, written every ten).
#[tokio::test]
async fn a_key_keeps_its_rate_across_reloads_expires_on_time_and_is_counted() {
    let app = TestApp::spawn().await;
    let slow = client_with_key(
        &app.new_key(json!({"name": "slow-reload", "scopes": "read", "rate_per_second": 0.1, "burst": 2})).await,
    );
    for _ in 0..2 {
        assert_eq!(slow.get(app.url("/api/v1/emails")).send().await.unwrap().status(), 200);
    }
    // Making a key reads this instance's keys again at once.
    app.new_key(json!({"name": "another", "scopes": "read"})).await;
    let r = slow.get(app.url("/api/v1/emails")).send().await.unwrap();
    assert_eq!(r.status(), 429, "a reload does not refill the key's bucket");
    let scrape = reqwest::get(&app.metrics).await.unwrap().text().await.unwrap();
    assert!(scrape.contains(r#"mailledger_key_requests_total{key="slow-reload",outcome="allowed"} 2"#), "{scrape}");
    assert!(scrape.contains(r#"mailledger_key_requests_total{key="slow-reload",outcome="rate_limited"} 1"#));

    let brief = client_with_key(&app.new_key(json!({"name": "brief", "scopes": "read", "expires": "2s"})).await);
    let made = Instant::now();
    assert_eq!(brief.get(app.url("/api/v1/emails")).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(made.elapsed())).await;
    let r = brief.get(app.url("/api/v1/emails")).send().await.unwrap();
    assert_eq!(r.status(), 401, "expired without any reload");
    assert!(r.text().await.unwrap().contains("expired"));

    eventually(Duration::from_secs(15), || async {
        let keys: Vec<Value> = app.client.get(app.url("/api/v1/keys")).send().await.unwrap().json().await.unwrap();
        keys.iter().any(|k| k["name"] == "slow-reload" && k["last_used_at"].is_string())
    })
    .await;
}

/// A key made elsewhere (another instance, or `mailledger keys create`, as in the README's
/// first lines: `KEY=$(make -s key | tail -n 1); curl … $KEY`) works on its first REST
/// request, not only after the next periodic reload; an unknown key is still a 401.
#[tokio::test]
async fn a_key_made_elsewhere_works_on_its_first_request() {
    let a = TestApp::spawn().await;
    let b = a.sibling(&[]).await;
    for n in 0..3 {
        let key = a.new_key(json!({"name": format!("fresh-{n}"), "scopes": "read"})).await;
        let r = client_with_key(&key).get(b.url("/api/v1/emails")).send().await.unwrap();
        assert_eq!(r.status(), 200, "key {n} on the other instance at once: {:?}", r.text().await);
    }
    let unknown = client_with_key(&mailledger::access::key::generate());
    let r = unknown.get(b.url("/api/v1/emails")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("unknown API key"));
    drop(b);
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_stops_working_on_another_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.sibling(&[]).await;
    let key = a.new_key(json!({"name": "shared", "scopes": "read"})).await;
    let on_b = client_with_key(&key);
    eventually(Duration::from_secs(5), || async {
        on_b.get(b.url("/api/v1/emails")).send().await.unwrap().status() == 200
    })
    .await;
    let keys: Vec<Value> = a.client.get(a.url("/api/v1/keys")).send().await.unwrap().json().await.unwrap();
    let id = keys.iter().find(|k| k["name"] == "shared").unwrap()["id"].as_str().unwrap().to_owned();
    let revoked_at = Instant::now();
    let r = a.client.delete(a.url(&format!("/api/v1/keys/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["revoked_at"].is_string());
    eventually(Duration::from_secs(5), || async {
        on_b.get(b.url("/api/v1/emails")).send().await.unwrap().status() == 401
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_millis(1500), "refused on the other instance after {took:?}");
    drop(b);
}

#[tokio::test]
async fn every_event_names_its_actor_and_key_changes_are_in_the_ledger() {
    let sink = crate::support::smtp::SmtpSink::start().await;
    let app = TestApp::delivering_to(&sink.url(), &[]).await;
    let id = app.create(&original_payload("accountable")).await;
    eventually(Duration::from_secs(15), || async { app.event_count(Some(&id)).await == 3 }).await;
    let events = db::events_of(&app.pool, &id).await;
    for e in &events[..2] {
        assert_eq!(e.metadata["actor"], "tests");
        assert_eq!(e.metadata["tenant"], "default");
        assert!(e.metadata["key_id"].as_str().is_some_and(|k| k.parse::<uuid::Uuid>().is_ok()));
    }
    assert!(events[2].metadata["actor"].as_str().unwrap().starts_with("saga:"), "{:?}", events[2].metadata);
    assert_eq!(events[2].metadata["tenant"], "default");
    // /events shows the actor too.
    let (_, history) = app.get_json(&format!("/api/v1/emails/{id}/events")).await;
    assert_eq!(history[0]["metadata"]["actor"], "tests");

    let key = app.new_key(json!({"name": "ci", "scopes": "send", "from_domains": ["finance.example"]})).await;
    let keys: Vec<Value> = app.client.get(app.url("/api/v1/keys")).send().await.unwrap().json().await.unwrap();
    let ci = keys.iter().find(|k| k["name"] == "ci").unwrap();
    assert!(ci.get("key").is_none() && !serde_json::to_string(&keys).unwrap().contains(&key), "never the secret");
    app.client.delete(app.url(&format!("/api/v1/keys/{}", ci["id"].as_str().unwrap()))).send().await.unwrap();
    let changes = db::key_events(&app.pool).await;
    let ci_changes: Vec<_> = changes.iter().filter(|e| e.aggregate_id == ci["id"].as_str().unwrap()).collect();
    assert_eq!(ci_changes.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["KeyCreated", "KeyRevoked"]);
    let created = ci_changes[0].fields();
    assert_eq!(created["from_domains"], json!(["finance.example"]));
    assert_eq!(created["scopes"], json!(["send"]));
    assert_eq!(ci_changes[0].metadata["actor"], "tests", "who made it");
    assert_eq!(ci_changes[1].metadata["actor"], "tests", "who revoked it");
    assert!(!ci_changes[0].payload.to_string().contains(&key), "the key itself is nowhere in the ledger");
}

fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).envs(app.iso.env()).env("USER", "ops-ann").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn the_key_cli_shows_a_secret_once_and_revokes() {
    let app = TestApp::spawn().await;
    let (code, out, err) = cli(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "billing",
            "--scope",
            "send,read",
            "--tenant",
            "acme",
            "--from-domain",
            "Billing.Example",
            "--expires",
            "90d",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let key = out.lines().last().unwrap().to_owned();
    assert!(key.starts_with("mlk_") && key.len() == 53, "the last line is the key: {out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let client = client_with_key(&key);
    eventually(Duration::from_secs(5), || async {
        client.get(app.url("/api/v1/emails")).send().await.unwrap().status() == 200
    })
    .await;
    let (code, list, _) = cli(&app, &["keys", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains(&id) && list.contains("billing") && list.contains("acme") && list.contains("send,read"));
    assert!(!list.contains(&key), "never the secret");
    let (code, out, _) = cli(&app, &["keys", "revoke", &id]);
    assert_eq!(code, 0, "{out}");
    eventually(Duration::from_secs(5), || async {
        client.get(app.url("/api/v1/emails")).send().await.unwrap().status() == 401
    })
    .await;
    let (_, list, _) = cli(&app, &["keys", "list"]);
    assert!(list.contains("by cli:ops-ann"), "{list}");
    // Bad input: an unknown scope, a past expiry, a bad domain — each named, exit 1.
    for (args, says) in [
        (vec!["keys", "create", "--name", "x", "--scope", "root"], "scopes"),
        (vec!["keys", "create", "--name", "x", "--scope", "all", "--expires", "2001-01-01T00:00:00Z"], "expires"),
        (vec!["keys", "create", "--name", "x", "--scope", "all", "--from-domain", "not a domain"], "from_domains"),
    ] {
        let (code, _, err) = cli(&app, &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn nats_commands_carry_their_key_and_require_one_when_told() {
    let app = TestApp::spawn_with(&[("MAILLEDGER__NATS__REQUIRE_KEY", "true")]).await;
    let key = app.new_key(json!({"name": "producer", "scopes": "send", "tenant": "acme"})).await;
    let subject = format!("{}.commands.create", app.iso.namespace);
    let publish = |auth: Option<String>, what: &str| {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert("Authorization", a.as_str());
        }
        let (js, subject, body) = (app.js.clone(), subject.clone(), original_payload(what).to_string());
        async move { js.publish_with_headers(subject, headers, body.into()).await.unwrap().await.unwrap() }
    };
    publish(None, "keyless").await;
    publish(Some("Bearer mlk_not_a_key".into()), "bad key").await;
    publish(Some(format!("Bearer {key}")), "keyed").await;
    eventually(Duration::from_secs(15), || async { app.commands_left().await == 0 }).await;
    let letters = app.dead_letters().await;
    let reasons: Vec<String> =
        letters.iter().map(|l| l.headers.get("Mailledger-Error").unwrap().as_str().to_owned()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("nats.require_key")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("malformed")), "{reasons:?}");
    let events = db::events(&app.pool).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].metadata["actor"].as_str(), events[0].metadata["tenant"].as_str()),
        (Some("producer"), Some("acme"))
    );

    // Without require_key a keyless command acts as the subject, in the default tenant.
    let open = TestApp::spawn().await;
    open.publish(original_payload("keyless").to_string(), None).await;
    eventually(Duration::from_secs(15), || async { open.event_count(None).await == 2 }).await;
    let first = db::events(&open.pool).await.remove(0);
    assert_eq!(first.metadata["actor"], format!("nats:{}.commands.create", open.iso.namespace));
    assert_eq!(first.metadata["tenant"], "default");
}

#[tokio::test]
async fn with_auth_off_everyone_acts_with_every_scope_and_with_no_key_yet_the_answer_says_how() {
    let off = TestApp::spawn_with(&[("MAILLEDGER_AUTH", "off")]).await;
    let r =
        reqwest::Client::new().post(off.url("/api/v1/emails")).json(&original_payload("open")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(off.stored(&id, 1).await.metadata["actor"], "anonymous");

    // A brand-new store with auth on: no key yet, and the 401 names the command to run.
    let iso = crate::support::Isolation::new();
    let _cleanup = crate::support::Cleanup(iso.clone());
    let app = mailledger::startup::Application::build(iso.settings(&[])).await.unwrap();
    let url = format!("http://{}/api/v1/emails", app.http_addr());
    let stop = app.stopper();
    let running = tokio::spawn(app.run_until_stopped());
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("mailledger keys create"));
    stop.cancel();
    running.await.unwrap().unwrap();
}
