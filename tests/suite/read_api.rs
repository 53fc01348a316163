//! The read side over REST (both sets of paths) and gRPC: lookup, search (paging edges,
//! filters, hostile text), history, as-of; and the OpenAPI document with Swagger UI.

use crate::support::{TestApp, db};
use mailledger::transport::grpc::proto::{GetByIdReq, HistoryReq, SearchReq};
use serde_json::{Value, json};
use tonic::Code;

fn email(from: &str, to: &str, subject: &str, body: &str) -> Value {
    json!({"from": from, "to": to, "subject": subject, "message": body})
}

/// Five emails with known words, created in order.
async fn seeded() -> (TestApp, Vec<String>) {
    let app = TestApp::spawn().await;
    let mut ids = vec![];
    for (from, to, subject, body) in [
        ("ann@example.com", "bob@example.org", "Quarterly report", "Numbers for Q3 attached."),
        ("ann@example.com", "carol@example.org", "Lunch on Friday?", "Pizza or sushi, o'brien asks."),
        ("dan@example.net", "bob@example.org", "Quarterly planning", "Agenda: budgets & hiring (draft)."),
        ("erin@example.net", "frank@example.org", "Invoice 2026-11", "Total due: 42 EUR. C:\\path\\invoice.pdf"),
        ("ann@example.com", "gus@example.org", "Grüße aus Köln", "Schöne Grüße und bis bald."),
    ] {
        ids.push(app.create(&email(from, to, subject, body)).await);
    }
    app.wait_projected(5).await;
    (app, ids)
}

fn subjects(body: &Value) -> Vec<String> {
    body["emails"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn lookup_on_both_paths_and_errors() {
    let (app, ids) = seeded().await;
    {
        let path = format!("/api/v1/emails/{}", ids[0]);
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["id"], ids[0].as_str());
        assert_eq!(body["subject"], "Quarterly report");
        assert_eq!(body["body"], "Numbers for Q3 attached.");
        assert_eq!(body["from"], "ann@example.com");
        assert_eq!(body["to"], json!(["bob@example.org"]));
        assert_eq!(body["status"], "queued");
        assert_eq!(body["version"], 2);
    }
    let (status, body) = app.get_json("/api/v1/emails/00000000-0000-0000-0000-000000000000").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = app.get_json("/api/v1/emails/not-a-uuid").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    let (status, _) = app.get_json("/api/v1/email/12345").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn search_full_text_with_prefixes_filters_and_both_paths() {
    let (app, _) = seeded().await;
    let (_, body) = app.get_json("/api/v1/emails?q=quarterly").await;
    assert_eq!(subjects(&body), ["Quarterly planning", "Quarterly report"], "newest first");
    assert_eq!(body["total_count"], 2);
    assert_eq!(body["total_count_exact"], true);
    let (_, body) = app.get_json("/api/v1/email/search?search=quart").await;
    assert_eq!(body["totalCount"], 2, "prefix match on the original path");
    let (_, body) = app.get_json("/api/v1/emails?q=QUARTERLY%20rep").await;
    assert_eq!(subjects(&body), ["Quarterly report"], "every word must match");
    let (_, body) = app.get_json("/api/v1/emails?q=bob").await;
    assert_eq!(body["total_count"], 2, "recipients are searchable");
    let (_, body) = app.get_json("/api/v1/emails?q=gr%C3%BC%C3%9Fe").await;
    assert_eq!(subjects(&body), ["Grüße aus Köln"]);
    let (_, body) = app.get_json("/api/v1/emails?q=sushi").await;
    assert_eq!(subjects(&body), ["Lunch on Friday?"], "the body is searchable");

    let (_, body) = app.get_json("/api/v1/emails?from=ann@example.com").await;
    assert_eq!(body["total_count"], 3);
    let (_, body) = app.get_json("/api/v1/emails?to=bob@example.org&q=planning").await;
    assert_eq!(subjects(&body), ["Quarterly planning"]);
    let (_, body) = app.get_json("/api/v1/emails?status=queued").await;
    assert_eq!(body["total_count"], 5);
    let (_, body) = app.get_json("/api/v1/emails?status=sent").await;
    assert_eq!(body["total_count"], 0);
    let (_, body) = app.get_json("/api/v1/emails?until=2000-01-01T00:00:00Z").await;
    assert_eq!(body["total_count"], 0);
    let (_, body) = app.get_json("/api/v1/emails?since=2000-01-01T00:00:00Z").await;
    assert_eq!(body["total_count"], 5);

    for (bad, field) in [
        ("status=bogus", "status"),
        ("since=yesterday", "since"),
        ("from=not-an-address", "from"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=101&size=100", "page"),
        ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ] {
        let (status, body) = app.get_json(&format!("/api/v1/emails?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{bad}: {body}");
    }
}

#[tokio::test]
async fn paging_edges() {
    let (app, _) = seeded().await;
    let (_, p1) = app.get_json("/api/v1/emails?size=2&page=1").await;
    let (_, p2) = app.get_json("/api/v1/emails?size=2&page=2").await;
    let (_, p3) = app.get_json("/api/v1/emails?size=2&page=3").await;
    let (_, p4) = app.get_json("/api/v1/emails?size=2&page=4").await;
    assert_eq!(
        (p1["has_more"].as_bool(), p2["has_more"].as_bool(), p3["has_more"].as_bool()),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!([&p1, &p2, &p3].map(|p| p["emails"].as_array().unwrap().len()), [2, 2, 1]);
    assert_eq!(p1["total_pages"], 3);
    assert_eq!(p3["total_count"], 5);
    assert!(p4["emails"].as_array().unwrap().is_empty(), "past the end: empty, not an error");
    assert_eq!(p4["has_more"], false);
    let mut all: Vec<String> = [&p1, &p2, &p3].iter().flat_map(|p| subjects(p)).collect();
    all.dedup();
    assert_eq!(all.len(), 5, "no email on two pages");
    let (_, big) = app.get_json("/api/v1/emails?size=100000").await;
    assert_eq!(big["size"], 100, "size is capped");
    let (_, default) = app.get_json("/api/v1/emails").await;
    assert_eq!((default["page"].as_u64(), default["size"].as_u64()), (Some(1), Some(10)));
    let (_, exact) = app.get_json("/api/v1/emails?size=5").await;
    assert_eq!(exact["has_more"], false, "exactly one full page");
}

#[tokio::test]
async fn hostile_queries_are_queries_never_errors() {
    let (app, _) = seeded().await;
    for q in [
        "&",
        "|",
        "!",
        "(",
        ")",
        ":",
        "*",
        "'",
        "\\",
        "&|!():*'\\",
        "quarterly & | report",
        "!quarterly",
        "(quarterly",
        "quarterly:*",
        "'quarterly'",
        "quarterly\\",
        "a:b:c",
        "''''",
        "%",
        "%25",
        "null",
        "\u{0}",
        "1=1; DROP TABLE emails; --",
        "<script>alert(1)</script>",
        "o'brien",
        "C:\\path",
    ] {
        let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", q)]).send().await.unwrap();
        assert_eq!(r.status(), 200, "q={q:?}");
        let r = app.client.get(app.url("/api/v1/email/search")).query(&[("search", q)]).send().await.unwrap();
        assert_eq!(r.status(), 200, "search={q:?}");
    }
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", "o'brien")]).send().await.unwrap();
    assert_eq!(subjects(&r.json().await.unwrap()), ["Lunch on Friday?"]);
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", "C:\\path\\invoice")]).send().await.unwrap();
    assert_eq!(subjects(&r.json().await.unwrap()), ["Invoice 2026-11"]);
    let r = app.client.get(app.url("/api/v1/emails")).query(&[("q", "&|!")]).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["total_count"], 0, "no words: nothing matches");
    assert_eq!(db::read_model_state(&app.pool).await.0, 5, "hostile text left the table as it was");
}

#[tokio::test]
async fn history_lists_every_event_in_order() {
    let (app, ids) = seeded().await;
    let (status, body) = app.get_json(&format!("/api/v1/emails/{}/events", ids[1])).await;
    assert_eq!(status, 200);
    let events = body.as_array().unwrap();
    assert_eq!(events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(), ["Requested", "Persisted"]);
    assert_eq!(events.iter().map(|e| e["sequence"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(events[0]["payload"]["request"]["subject"], "Lunch on Friday?");
    assert_eq!(events[1]["payload"]["to"][0]["address"], "carol@example.org");
    assert_eq!(events[0]["metadata"]["transport"], "rest");
    assert!(events[0]["recorded_at"].as_str().is_some());
    let (status, _) = app.get_json("/api/v1/emails/00000000-0000-0000-0000-000000000000/events").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn as_of_folds_the_events_up_to_an_instant() {
    let (app, ids) = seeded().await;
    let (_, body) = app.get_json(&format!("/api/v1/emails/{}?as_of=2000-01-01T00:00:00Z", ids[0])).await;
    assert_eq!(body["error"]["code"], "not_found", "it did not exist then");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r =
        app.client.get(app.url(&format!("/api/v1/emails/{}", ids[0]))).query(&[("as_of", &now)]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
    let (status, _) = app.get_json(&format!("/api/v1/emails/{}?as_of=soon", ids[0])).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn grpc_get_search_and_history() {
    let (app, ids) = seeded().await;
    let mut client = app.grpc_client().await;
    let email = client
        .get_by_id(GetByIdReq { email_id: ids[1].clone(), as_of: None })
        .await
        .unwrap()
        .into_inner()
        .email
        .unwrap();
    assert_eq!(email.subject, "Lunch on Friday?");
    assert_eq!(email.message, "Pizza or sushi, o'brien asks.", "Message is the body, not the subject");
    assert_eq!(email.to, "carol@example.org");
    assert_eq!(email.status, "queued");
    let missing =
        client.get_by_id(GetByIdReq { email_id: uuid::Uuid::nil().to_string(), as_of: None }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = client.get_by_id(GetByIdReq { email_id: "x".into(), as_of: None }).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);

    let res = client
        .search(SearchReq { search: "quarterly".into(), page: 1, size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((res.total_count, res.total_pages, res.page, res.size, res.has_more), (2, 2, 1, 1, true));
    assert_eq!(res.emails[0].subject, "Quarterly planning");
    let hostile =
        client.search(SearchReq { search: "&|!():*'\\".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(hostile.total_count, 0);
    let bad = client.search(SearchReq { status: "bogus".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let history = client.history(HistoryReq { email_id: ids[0].clone() }).await.unwrap().into_inner();
    assert_eq!(history.events.iter().map(|e| e.r#type.as_str()).collect::<Vec<_>>(), ["Requested", "Persisted"]);
    let payload: Value = serde_json::from_str(&history.events[1].payload_json).unwrap();
    assert_eq!(payload["subject"], "Quarterly report");
    assert_eq!(
        client.history(HistoryReq { email_id: uuid::Uuid::nil().to_string() }).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get_json("/api-docs/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/emails",
        "/api/v1/emails/{id}",
        "/api/v1/emails/{id}/events",
        "/api/v1/email/{id}",
        "/api/v1/email/search",
        "/health",
        "/ready",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["paths"]["/api/v1/emails"]["post"]["requestBody"].is_object());
    let r = app.client.get(app.url("/swagger-ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let r = app.client.get(app.url("/swagger-ui/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the UI's assets are embedded, not fetched");
    assert!(r.bytes().await.unwrap().len() > 100_000);
}
