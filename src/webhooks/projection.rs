//! The `webhooks` projection (transactional): for each `Sent`, `Failed`, `DeadLettered`
//! and `Suppressed` event, one `webhook_deliveries` row per enabled endpoint of the
//! email's tenant that hears that kind and was registered by the time of the event,
//! written in the transaction of the projection's checkpoint and idempotent on
//! (endpoint, event id): each event is queued exactly once per endpoint. Sending is the
//! dispatcher's ([`super::dispatch`]): this never waits on an endpoint.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::command::EmailEvent;
use crate::projections::{Projection, ProjectionKind};
use crate::store::feed::FeedEvent;

/// The projection.
#[derive(Debug, Default)]
pub struct WebhookProjection;

/// The kind a webhook names an event by, for the events webhooks carry.
pub fn kind_of(event: &EmailEvent) -> Option<&'static str> {
    match event {
        EmailEvent::Sent(_) => Some("sent"),
        EmailEvent::Failed(_) => Some("failed"),
        EmailEvent::DeadLettered(_) => Some("dead_lettered"),
        EmailEvent::Suppressed(_) => Some("suppressed"),
        _ => None,
    }
}

/// The stable id of an event: `<email id>:<sequence>` (as on NATS).
pub fn event_id(email_id: Uuid, sequence: i64) -> String {
    format!("{email_id}:{sequence}")
}

/// The JSON a delivery carries: `{id, type, email_id, occurred_at, data}`, `data` being
/// the event's own fields and the tenant.
pub fn body(e: &FeedEvent, kind: &str, tenant: &str) -> anyhow::Result<String> {
    let mut data = match serde_json::to_value(&e.event)? {
        Value::Object(mut m) if m.len() == 1 => m.remove(&e.event_type).unwrap_or_default(),
        other => other,
    };
    if let Some(fields) = data.as_object_mut() {
        fields.insert("tenant".into(), json!(tenant));
    }
    Ok(serde_json::to_string(&json!({
        "id": event_id(e.email_id, e.sequence),
        "type": kind,
        "email_id": e.email_id,
        "occurred_at": e.recorded_at,
        "data": data,
    }))?)
}

#[derive(sqlx::FromRow)]
struct Target {
    id: Uuid,
    tenant: String,
    kinds: Vec<String>,
    created_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for WebhookProjection {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        let wanted: Vec<(&FeedEvent, &str)> = events.iter().filter_map(|e| kind_of(&e.event).map(|k| (e, k))).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let targets: Vec<Target> =
            sqlx::query_as("SELECT id, tenant, kinds, created_at FROM webhook_endpoints WHERE enabled")
                .fetch_all(&mut *tx)
                .await?;
        if targets.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<Uuid> = wanted.iter().map(|(e, _)| e.email_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let tenants: HashMap<Uuid, String> = crate::store::feed::tenants_of(tx, &ids).await?;
        let (mut endpoint, mut event, mut email, mut sequence, mut kind, mut at, mut bodies) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (e, k) in wanted {
            let tenant = tenants.get(&e.email_id).map_or(crate::access::DEFAULT_TENANT, String::as_str);
            let mut body_of = None;
            for t in targets.iter().filter(|t| t.tenant == tenant && t.kinds.iter().any(|x| x == k)) {
                if e.recorded_at < t.created_at {
                    continue;
                }
                let b = match &body_of {
                    Some(b) => String::clone(b),
                    None => body_of.insert(body(e, k, tenant)?).clone(),
                };
                endpoint.push(t.id);
                event.push(event_id(e.email_id, e.sequence));
                email.push(e.email_id);
                sequence.push(e.sequence);
                kind.push(k.to_owned());
                at.push(e.recorded_at);
                bodies.push(b);
            }
        }
        if endpoint.is_empty() {
            return Ok(());
        }
        let queued = sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, email_id, sequence, kind, occurred_at, body, \
               queued_at, next_attempt_at) \
             SELECT u.*, now(), now() FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], \
               $6::timestamptz[], $7::text[]) AS u \
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(&endpoint)
        .bind(&event)
        .bind(&email)
        .bind(&sequence)
        .bind(&kind)
        .bind(&at)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        crate::metrics::WEBHOOKS_QUEUED.inc_by(queued.rows_affected());
        Ok(())
    }
}
