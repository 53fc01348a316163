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

/// `(path, method)` of every route the REST router holds, read from the router itself
/// (its `Debug` form names each path and the methods it allows), HEAD left out.
fn router_routes() -> Vec<(String, String)> {
    let debug = mailledger::transport::rest_routes_debug();
    // The path router comes first; the fallback router after it is not a route.
    let routes = debug.split("fallback_router").next().unwrap();
    let (methods_part, paths_part) = routes.split_once("node: Node { paths: {").expect("the router's paths");
    let mut methods = std::collections::HashMap::new();
    for chunk in methods_part.split("RouteId(").skip(1) {
        let (id, rest) = chunk.split_once(')').unwrap();
        if let Some(allow) = rest.split("allow_header: Bytes(b\"").nth(1) {
            methods.insert(id.to_owned(), allow.split('"').next().unwrap().to_owned());
        }
    }
    let mut found = vec![];
    for chunk in paths_part.split("RouteId(").skip(1) {
        let (id, rest) = chunk.split_once(')').unwrap();
        let path = rest.split('"').nth(1).unwrap().to_owned();
        let allow = methods.get(id).unwrap_or_else(|| panic!("no methods for {path}"));
        for method in allow.split(',').filter(|m| *m != "HEAD") {
            found.push((path.clone(), method.to_ascii_lowercase()));
        }
    }
    found.sort();
    assert!(found.len() >= 20, "the router's Debug form changed? {found:?}");
    found
}

#[tokio::test]
async fn every_route_in_the_router_is_in_the_openapi_document() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get_json("/api-docs/openapi.json").await;
    assert_eq!(status, 200);
    let routes = router_routes();
    for (path, method) in &routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{} {path} is routed but not in the OpenAPI document", method.to_uppercase());
        let responses = op["responses"].as_object().unwrap();
        let mut expected = vec!["500"];
        if path.starts_with("/api/") {
            expected.extend(["401", "403", "408", "429", "503"]);
            let security = &op["security"];
            assert!(
                security.is_null() || security.to_string().contains("bearer"),
                "{path}: the bearer scheme applies ({security})"
            );
        }
        for status in expected {
            if path.starts_with("/api/") || status != "500" {
                assert!(responses.contains_key(status), "{method} {path} does not document {status}");
            }
        }
        if path.contains('{') {
            assert!(
                responses.contains_key("404") || responses.contains_key("400"),
                "{method} {path}: a path with an id documents what an unknown or malformed one gets"
            );
        }
        for (status, response) in responses {
            assert!(response["headers"]["X-Request-Id"].is_object(), "{method} {path} {status}: X-Request-Id");
        }
        let params = op["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "X-Request-Id" && p["in"] == "header"), "{method} {path}");
    }
    // Nothing documented that the router lacks.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|k| *k != "parameters") {
            assert!(routes.contains(&(path.clone(), method.clone())), "{method} {path} is documented but not routed");
        }
    }
    for path in ["/api/v1/emails", "/api/v1/email"] {
        let created = &doc["paths"][path]["post"]["responses"]["202"];
        assert!(created["headers"]["Location"].is_object(), "{path}: Location on 202");
        for status in ["400", "409", "413", "415", "422"] {
            assert!(doc["paths"][path]["post"]["responses"][status].is_object(), "{path}: {status}");
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let payload = &doc["components"]["schemas"]["CreateEmailPayload"];
    let required: Vec<&str> = payload["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for field in ["from", "to", "subject"] {
        assert!(required.contains(&field), "{field} is required: {required:?}");
    }
    let one_or_many = serde_json::to_string(&payload["properties"]["to"]).unwrap();
    let resolved = if one_or_many.contains("$ref") {
        serde_json::to_string(&doc["components"]["schemas"]["OneOrMany"]).unwrap()
    } else {
        one_or_many
    };
    assert!(resolved.contains("oneOf"), "to is one string or a list: {resolved}");
}

/// A validator for the schema the document gives `status` of `method path`, its
/// `$ref`s resolved within the document's components.
fn validator(doc: &Value, path: &str, method: &str, status: u16) -> jsonschema::Validator {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(response.is_object(), "{method} {path} answered {status}, which the document does not list");
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status}: no JSON schema");
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{method} {path} {status}: {e}"))
}

#[tokio::test]
async fn real_answers_match_the_documents_schemas() {
    let app = TestApp::spawn_with(&[("MAILLEDGER__LIMITS__MAX_BODY_BYTES", "2000")]).await;
    let (_, doc) = app.get_json("/api-docs/openapi.json").await;
    let id = app
        .create(&json!({"from": "ann@example.com", "to": ["bob@example.org"], "cc": "c@example.org",
                                "subject": "Quarterly report", "text": "t", "html": "<p>t</p>"}))
        .await;
    app.wait_projected(1).await;
    let reader = crate::support::client_with_key(&app.new_key(json!({"name": "reader", "scopes": "read"})).await);
    let anonymous = reqwest::Client::new();
    let nil = uuid::Uuid::nil();
    let c = &app.client;
    let url = |p: &str| app.url(p);
    let cases: Vec<(&str, &str, reqwest::RequestBuilder)> = vec![
        ("/api/v1/emails", "post", c.post(url("/api/v1/emails")).json(&original_payload("a"))),
        ("/api/v1/email", "post", c.post(url("/api/v1/email")).json(&original_payload("b"))),
        ("/api/v1/emails", "post", c.post(url("/api/v1/emails")).header("content-type", "application/json").body("{")),
        ("/api/v1/emails", "post", c.post(url("/api/v1/emails")).json(&json!({"to": "x"}))),
        ("/api/v1/emails", "post", c.post(url("/api/v1/emails")).header("content-type", "text/plain").body("hi")),
        ("/api/v1/email", "post", c.post(url("/api/v1/email")).json(&json!({"message": "x".repeat(5000)}))),
        (
            "/api/v1/emails",
            "post",
            c.post(url("/api/v1/emails")).header("idempotency-key", "k1").json(&original_payload("c")),
        ),
        (
            "/api/v1/emails",
            "post",
            c.post(url("/api/v1/emails")).header("idempotency-key", "k1").json(&original_payload("d")),
        ),
        ("/api/v1/emails", "post", reader.post(url("/api/v1/emails")).json(&original_payload("e"))),
        ("/api/v1/emails", "get", anonymous.get(url("/api/v1/emails"))),
        ("/api/v1/emails", "get", c.get(url("/api/v1/emails?q=quarterly&size=5"))),
        ("/api/v1/emails", "get", c.get(url("/api/v1/emails?q=before:someday"))),
        ("/api/v1/emails/{id}", "get", c.get(url(&format!("/api/v1/emails/{id}")))),
        ("/api/v1/emails/{id}", "get", c.get(url(&format!("/api/v1/emails/{nil}")))),
        ("/api/v1/emails/{id}", "get", c.get(url("/api/v1/emails/not-an-id"))),
        ("/api/v1/emails/{id}/events", "get", c.get(url(&format!("/api/v1/emails/{id}/events")))),
        ("/api/v1/emails/{id}/redrive", "post", c.post(url(&format!("/api/v1/emails/{id}/redrive")))),
        ("/api/v1/email/{id}", "get", c.get(url(&format!("/api/v1/email/{id}")))),
        ("/api/v1/email/search", "get", c.get(url("/api/v1/email/search?search=quarterly"))),
        ("/api/v1/keys", "get", c.get(url("/api/v1/keys"))),
        ("/api/v1/keys", "post", c.post(url("/api/v1/keys")).json(&json!({"name": "k", "scopes": "read"}))),
        ("/api/v1/suppressions", "get", c.get(url("/api/v1/suppressions"))),
        ("/api/v1/redrives", "get", c.get(url("/api/v1/redrives"))),
        ("/ready", "get", c.get(url("/ready"))),
    ];
    // The validators do refuse what the schemas do not allow.
    let search = validator(&doc, "/api/v1/emails", "get", 200);
    assert!(!search.is_valid(&json!({"emails": 5})), "a wrong type is refused");
    let original = validator(&doc, "/api/v1/email/{id}", "get", 200);
    assert!(!original.is_valid(&json!({"emailID": "x", "from": "a"})), "missing required fields are refused");
    let mut statuses = std::collections::BTreeSet::new();
    for (path, method, request) in cases {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        assert!(r.headers().contains_key("x-request-id"), "{method} {path} {status}: X-Request-Id");
        let body: Value = r.json().await.unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON: {e}"));
        let v = validator(&doc, path, method, status);
        let errors: Vec<String> = v.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{method} {path} {status}: {errors:?}\n{body}");
        statuses.insert(status);
    }
    for status in [200, 201, 202, 400, 401, 403, 404, 409, 413, 415, 422] {
        assert!(statuses.contains(&status), "the cases cover {status}: {statuses:?}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors_with_a_request_id() {
    let app = TestApp::spawn().await;
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/nope", 404, "not_found"),
        (reqwest::Method::GET, "/api/v1/nope", 404, "not_found"),
        (reqwest::Method::DELETE, "/api/v1/emails", 405, "method_not_allowed"),
        (reqwest::Method::PUT, "/api/v1/email/search", 405, "method_not_allowed"),
        (reqwest::Method::POST, "/health", 405, "method_not_allowed"),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .header("x-request-id", "contract-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        assert_eq!(r.headers()["x-request-id"], "contract-1", "{method} {path}");
        if status == 405 {
            assert!(r.headers().contains_key("allow"), "{method} {path}: Allow");
        }
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    }
    // Made when absent, on errors too (401 here).
    let r = reqwest::Client::new().get(app.url("/api/v1/emails")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-request-id"].len(), 36, "a UUID");
}

mod grpc {
    use super::*;
    use mailledger::transport::grpc::proto::{CreateReq, SearchReq};
    use tonic::Code;
    use tonic_types::StatusExt;

    #[tokio::test]
    async fn field_errors_are_bad_request_details() {
        let app = TestApp::spawn().await;
        let mut client = app.grpc_client().await;
        let mut req = tonic::Request::new(CreateReq {
            to: "bob@example.org, not an address".into(),
            subject: "s".into(),
            message: "m".into(),
            ..Default::default()
        });
        req.metadata_mut().insert("x-request-id", "grpc-contract-1".parse().unwrap());
        let status = client.create(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get("x-request-id").unwrap(), "grpc-contract-1");
        let bad = status.get_details_bad_request().expect("google.rpc.BadRequest in the details");
        let fields: Vec<&str> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["From", "To[1]"], "{bad:?}");
        assert!(bad.field_violations.iter().all(|v| !v.description.is_empty()));

        let status =
            client.search(SearchReq { search: "after:2026-02-30".into(), ..Default::default() }).await.unwrap_err();
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "Search");
        assert!(bad.field_violations[0].description.contains("at position 7"), "{bad:?}");
        let status = client.search(SearchReq { status: "lost".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "Status");
    }

    #[tokio::test]
    async fn reflection_answers_v1_and_v1alpha() {
        use futures::StreamExt;
        let app = TestApp::spawn().await;
        let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
        {
            use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
            use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
            let mut client = ServerReflectionClient::new(channel.clone());
            let requests = futures::stream::iter(vec![
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol("emailService.EmailService".into())),
                },
            ]);
            let mut answers = client.server_reflection_info(requests).await.unwrap().into_inner();
            let Some(MessageResponse::ListServicesResponse(list)) =
                answers.next().await.unwrap().unwrap().message_response
            else {
                panic!("v1alpha: a list of services");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.contains(&"emailService.EmailService".to_owned()), "{names:?}");
            let Some(MessageResponse::FileDescriptorResponse(files)) =
                answers.next().await.unwrap().unwrap().message_response
            else {
                panic!("v1alpha: the file declaring the service");
            };
            assert!(!files.file_descriptor_proto.is_empty());
        }
        {
            use tonic_reflection::pb::v1::ServerReflectionRequest;
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
            let mut client = ServerReflectionClient::new(channel);
            let requests = futures::stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]);
            let mut answers = client.server_reflection_info(requests).await.unwrap().into_inner();
            let Some(MessageResponse::ListServicesResponse(list)) =
                answers.next().await.unwrap().unwrap().message_response
            else {
                panic!("v1: a list of services");
            };
            assert!(list.service.iter().any(|s| s.name == "emailService.EmailService"));
        }
    }
}
