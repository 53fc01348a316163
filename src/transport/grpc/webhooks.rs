//! The webhook calls of `EmailService` (scope `webhooks`, tenant-scoped as over REST):
//! the service's methods hand their requests here.

use prost_types::Timestamp;
use tonic::Status;
use uuid::Uuid;

use super::proto::{
    CreateWebhookReq, DeleteWebhookRes, ListWebhookDeliveriesReq, ListWebhookDeliveriesRes, ListWebhooksReq,
    ListWebhooksRes, ReplayWebhookReq, ReplayWebhookRes, RotateWebhookReq, UpdateWebhookReq, WebhookAttempt,
    WebhookDelivery, WebhookEndpoint, WebhookSecretRes,
};
use crate::access::{Principal, Scope};
use crate::config::WebhookSettings;
use crate::webhooks::{self, Endpoint, EndpointChange, LogFilter, NewEndpoint, Replay, WebhookError};

impl From<WebhookError> for Status {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid { field, reason } => {
                Status::invalid_argument(format!("{}: {reason}", proto_name(field)))
            }
            WebhookError::Conflict(m) => Status::already_exists(m),
            WebhookError::NotFound(id) => Status::not_found(format!("no webhook endpoint {id}")),
            WebhookError::Store(e) => super::service::internal(e),
            WebhookError::Sealing(m) => super::service::internal(anyhow::anyhow!(m)),
        }
    }
}

/// The proto's name of a field the webhooks module names.
fn proto_name(field: &str) -> &str {
    match field {
        "url" => "URL",
        "kinds" => "Kinds",
        "description" => "Description",
        "grace" => "Grace",
        "since" => "Since",
        "until" => "Until",
        "delivery_id" => "DeliveryID",
        other => other,
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn endpoint(e: Endpoint) -> WebhookEndpoint {
    WebhookEndpoint {
        id: e.id.to_string(),
        tenant: e.tenant,
        url: e.url,
        kinds: e.kinds,
        description: e.description,
        enabled: e.enabled,
        paused_at: e.paused_at.map(ts),
        disabled_reason: e.disabled_reason.unwrap_or_default(),
        consecutive_failures: e.consecutive_failures,
        previous_secret_until: e.previous_secret_until.map(ts),
        created_at: Some(ts(e.created_at)),
        created_by: e.created_by,
    }
}

fn id(raw: &str) -> Result<Uuid, Status> {
    raw.parse().map_err(|_| Status::not_found(format!("no webhook endpoint {}", crate::text::echo(raw))))
}

fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) async fn create(
    pool: &sqlx::PgPool,
    settings: &WebhookSettings,
    by: &Principal,
    req: CreateWebhookReq,
) -> Result<WebhookSecretRes, Status> {
    by.require(Scope::Webhooks)?;
    let tenant = by.acting_tenant(Some(&req.tenant))?;
    let new = NewEndpoint {
        url: Some(req.url),
        kinds: Some(req.kinds),
        description: present(req.description),
        enabled: req.enabled,
        tenant: None,
    };
    let (e, secret) = webhooks::create(pool, &tenant, &new, &by.name, settings).await?;
    Ok(WebhookSecretRes { endpoint: Some(endpoint(e)), secret })
}

pub(super) async fn list(pool: &sqlx::PgPool, by: &Principal, req: ListWebhooksReq) -> Result<ListWebhooksRes, Status> {
    by.require(Scope::Webhooks)?;
    let tenant = by.reading_tenant(Some(&req.tenant))?;
    let items = webhooks::list(pool, tenant.as_deref()).await?;
    Ok(ListWebhooksRes { items: items.into_iter().map(endpoint).collect() })
}

pub(super) async fn get(pool: &sqlx::PgPool, by: &Principal, raw: &str) -> Result<WebhookEndpoint, Status> {
    by.require(Scope::Webhooks)?;
    Ok(endpoint(webhooks::get(pool, id(raw)?, by.tenant_filter()).await?))
}

pub(super) async fn update(
    pool: &sqlx::PgPool,
    settings: &WebhookSettings,
    by: &Principal,
    req: UpdateWebhookReq,
) -> Result<WebhookEndpoint, Status> {
    by.require(Scope::Webhooks)?;
    let change = EndpointChange {
        url: req.url,
        kinds: (!req.kinds.is_empty()).then_some(req.kinds),
        description: req.description,
        enabled: req.enabled,
    };
    let e = webhooks::update(pool, id(&req.id)?, by.tenant_filter(), &change, &by.name, settings.allow_private).await?;
    Ok(endpoint(e))
}

pub(super) async fn delete(pool: &sqlx::PgPool, by: &Principal, raw: &str) -> Result<DeleteWebhookRes, Status> {
    by.require(Scope::Webhooks)?;
    webhooks::delete(pool, id(raw)?, by.tenant_filter(), &by.name).await?;
    Ok(DeleteWebhookRes { deleted: true })
}

pub(super) async fn rotate(
    pool: &sqlx::PgPool,
    settings: &WebhookSettings,
    by: &Principal,
    req: RotateWebhookReq,
) -> Result<WebhookSecretRes, Status> {
    by.require(Scope::Webhooks)?;
    let grace = match present(req.grace) {
        None => settings.rotation_grace,
        Some(g) => humantime::parse_duration(&g).map_err(|e| {
            Status::invalid_argument(format!("Grace: {} is not a duration: {e}", crate::text::echo(&g)))
        })?,
    };
    if grace > std::time::Duration::from_secs(30 * 24 * 3600) {
        return Err(Status::invalid_argument("Grace: is longer than 30 days"));
    }
    let (e, secret) = webhooks::rotate(pool, id(&req.id)?, by.tenant_filter(), grace, &by.name, settings).await?;
    Ok(WebhookSecretRes { endpoint: Some(endpoint(e)), secret })
}

pub(super) async fn deliveries(
    pool: &sqlx::PgPool,
    by: &Principal,
    req: ListWebhookDeliveriesReq,
) -> Result<ListWebhookDeliveriesRes, Status> {
    by.require(Scope::Webhooks)?;
    let endpoint_id = id(&req.id)?;
    let status = present(req.status);
    if status.as_deref().is_some_and(|s| !matches!(s, "pending" | "delivered" | "failed")) {
        return Err(Status::invalid_argument("Status: pending, delivered, failed or empty"));
    }
    let limit = if req.limit == 0 { 50 } else { i64::from(req.limit) };
    if !(1..=500).contains(&limit) {
        return Err(Status::invalid_argument("Limit: 1 to 500"));
    }
    webhooks::get(pool, endpoint_id, by.tenant_filter()).await?;
    let filter = LogFilter {
        status,
        since: super::service::from_timestamp("Since", req.since)?,
        until: super::service::from_timestamp("Until", req.until)?,
        before: (req.before != 0).then_some(req.before),
    };
    let items = webhooks::deliveries(pool, endpoint_id, &filter, limit).await?;
    let next_before = if items.len() as i64 == limit { items.last().map_or(0, |d| d.id) } else { 0 };
    let items = items
        .into_iter()
        .map(|d| WebhookDelivery {
            id: d.id,
            event_id: d.event_id,
            email_id: d.email_id.to_string(),
            kind: d.kind,
            occurred_at: Some(ts(d.occurred_at)),
            status: d.status,
            attempts: d.attempts,
            log: d
                .log
                .into_iter()
                .map(|a| WebhookAttempt {
                    attempt: a.attempt,
                    at: Some(ts(a.at)),
                    status_code: a.status_code.unwrap_or(0),
                    latency_ms: a.latency_ms,
                    outcome: a.outcome,
                    error: a.error.unwrap_or_default(),
                    excerpt: a.excerpt,
                })
                .collect(),
        })
        .collect();
    Ok(ListWebhookDeliveriesRes { items, next_before })
}

pub(super) async fn replay(
    pool: &sqlx::PgPool,
    by: &Principal,
    req: ReplayWebhookReq,
) -> Result<ReplayWebhookRes, Status> {
    by.require(Scope::Webhooks)?;
    let endpoint_id = id(&req.id)?;
    webhooks::get(pool, endpoint_id, by.tenant_filter()).await?;
    let what = Replay {
        delivery_id: req.delivery_id,
        since: super::service::from_timestamp("Since", req.since)?,
        until: super::service::from_timestamp("Until", req.until)?,
    };
    Ok(ReplayWebhookRes { queued: webhooks::replay(pool, endpoint_id, &what).await? })
}
