//! The API contract: the original service's REST shapes on its paths (decoded strictly,
//! as its clients do), the OpenAPI document against the router and against real
//! answers, JSON errors for unknown routes and methods, `X-Request-Id` on every answer,
//! gRPC reflection (v1 and v1alpha) and field errors as `google.rpc.BadRequest`.

use crate::support::{TestApp, original_payload};
use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use serde_json::{Value, json};

/// The original service's Swagger `models.Email`, every field required, nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OriginalEmail {
    #[serde(rename = "emailID")]
    email_id: String,
    from: String,
    to: String,
    subject: String,
    message: String,
    #[serde(rename = "createdAt")]
    created_at: String,
}

/// Its `models.EmailsList`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct OriginalEmailsList {
    #[serde(rename = "totalCount")]
    total_count: i64,
    #[serde(rename = "totalPages")]
    total_pages: i64,
    page: i64,
    size: i64,
    #[serde(rename = "hasMore")]
    has_more: bool,
    emails: Vec<OriginalEmail>,
}

fn rfc3339(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("createdAt {s:?} is not RFC 3339: {e}"))
}

#[tokio::test]
async fn the_original_paths_answer_the_original_shapes() {
    let app = TestApp::spawn().await;
    // POST /api/v1/email takes models.Email and answers 2xx.
    let r = app.post_json("/api/v1/email", &original_payload("Quarterly report")).await;
    assert!(r.status().is_success(), "{:?}", r.status());
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = app
        .post_json(
            "/api/v1/email",
            &json!({"from": "ann@example.com", "to": "bob@example.org, carol@example.org",
                    "subject": "Second", "message": "two recipients"}),
        )
        .await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let second = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.wait_projected(2).await;

    let r = app.client.get(app.url(&format!("/api/v1/email/{second}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let email: OriginalEmail = serde_json::from_str(&r.text().await.unwrap()).expect("models.Email, strictly");
    assert_eq!(email.email_id, second);
    assert_eq!(email.to, "bob@example.org, carol@example.org");
    assert_eq!(email.message, "two recipients");
    assert_eq!(email.subject, "Second");
    rfc3339(&email.created_at);

    let r = app.client.get(app.url("/api/v1/email/search?search=&page=1&size=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list: OriginalEmailsList = serde_json::from_str(&r.text().await.unwrap()).expect("models.EmailsList, strictly");
    assert_eq!((list.total_count, list.total_pages, list.page, list.size, list.has_more), (2, 2, 1, 1, true));
    assert_eq!(list.emails[0].email_id, second, "newest first");
    let r = app.client.get(app.url("/api/v1/email/search?search=quarterly&page=1&size=10")).send().await.unwrap();
    let list: OriginalEmailsList = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(list.emails.iter().map(|e| e.email_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    rfc3339(&list.emails[0].created_at);

    // The new paths keep mailledger's shapes.
    let (_, view) = app.get_json(&format!("/api/v1/emails/{second}")).await;
    assert_eq!(view["to"], json!(["bob@example.org", "carol@example.org"]));
    assert_eq!(view["id"], second.as_str());
    let (_, page) = app.get_json("/api/v1/emails?size=1").await;
    assert_eq!(page["total_count"], 2);
}
