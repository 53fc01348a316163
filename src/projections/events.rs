//! Domain events out to NATS (side-effecting, at-least-once, idempotent by message id):
//! every event goes to `<ns>.events.<kind>` (`mail.events.sent`, …) in the
//! `<prefix>_EVENTS` stream with `Nats-Msg-Id: <email id>:<sequence>`, so a republish
//! within the duplicate window is dropped by JetStream. A `DeadLettered` event is also
//! published to `<ns>.dlq.emails` with the email id and the reason.
//!
//! An event too large for the server's `max_payload` (a request with a big body) is
//! published by reference: without the request's bodies, or without its payload, and a
//! `Mailledger-Omitted` header; the stream never stops on one event.
//!
//! Outside subscribers replay the stream with an ordinary JetStream consumer: from the
//! start (`DeliverPolicy::All`), from a sequence (`ByStartSequence`), from a time
//! (`ByStartTime`) or the last event of each kind (`LastPerSubject`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::{Projection, ProjectionKind};
use crate::command::EmailEvent;
use crate::config::{NatsNames, NatsSettings};
use crate::store::feed::FeedEvent;

/// The publisher.
pub struct EventPublisher {
    js: jetstream::Context,
    names: NatsNames,
    max_age: Duration,
}

/// `Sent` → `sent`, `DeadLettered` → `dead_lettered`.
pub fn subject_kind(event_type: &str) -> String {
    let mut out = String::new();
    for (i, c) in event_type.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl EventPublisher {
    /// Publishes with `js` under the settings' names.
    pub fn new(js: jetstream::Context, settings: &NatsSettings) -> Self {
        Self { js, names: settings.names(), max_age: settings.events_max_age }
    }

    /// Creates the events stream with `replicas` copies, or brings an existing one to the
    /// configured retention (`nats.events_max_age`: a stream made before it had no bound)
    /// and replication.
    pub async fn ensure_stream(&self, replicas: usize) -> anyhow::Result<()> {
        self.js
            .create_or_update_stream(stream::Config {
                name: self.names.events_stream.clone(),
                description: Some("mailledger domain events".into()),
                subjects: vec![self.names.events_filter.clone()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                max_age: self.max_age,
                num_replicas: replicas,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for EventPublisher {
    fn name(&self) -> &'static str {
        "nats_events"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::SideEffecting
    }

    async fn apply(&self, _conn: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        let room = self.js.client().server_info().max_payload.saturating_sub(HEADER_ROOM);
        // Publish the whole batch, then wait for every ack: pipelined, not one by one.
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let (body, omitted) = event_body(e, room)?;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}:{}", e.email_id, e.sequence).as_str());
            headers.insert("Mailledger-Email-Id", e.email_id.to_string().as_str());
            headers.insert("Mailledger-Event-Type", e.event_type.as_str());
            if let Some(what) = omitted {
                headers.insert("Mailledger-Omitted", what);
                crate::metrics::EVENTS_BY_REFERENCE.inc();
            }
            for key in ["traceparent", "tracestate"] {
                if let Some(v) = e.metadata.get(key).and_then(|v| v.as_str()) {
                    headers.insert(key, crate::text::header_safe(v).as_str());
                }
            }
            let subject = self.names.event_subject(&subject_kind(&e.event_type));
            acks.push((e, self.js.publish_with_headers(subject, headers, body.into()).await));
            if let EmailEvent::DeadLettered(d) = &e.event {
                let letter = json!({
                    "email_id": e.email_id,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "dead_lettered_at": d.dead_lettered_at,
                });
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{}:{}:dlq", e.email_id, e.sequence).as_str());
                headers.insert("Mailledger-Email-Id", e.email_id.to_string().as_str());
                headers.insert("Mailledger-Error", crate::text::header_safe(&d.reason).as_str());
                let subject = self.names.dlq_emails_subject.clone();
                acks.push((
                    e,
                    self.js.publish_with_headers(subject, headers, serde_json::to_vec(&letter)?.into()).await,
                ));
            }
        }
        for (e, ack) in acks {
            let outcome = match ack {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(_) => {}
                // One event that can never be published must not hold back every later
                // one: it is logged and counted, and the stream goes on.
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    tracing::error!(email_id = %e.email_id, sequence = e.sequence, error = %error,
                        "event cannot be published; skipped");
                    crate::metrics::EVENTS_UNPUBLISHABLE.inc();
                }
                // Anything else (NATS away, a timeout) is retried with the whole batch.
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// Room for headers under the server's `max_payload`.
const HEADER_ROOM: usize = 8 * 1024;

/// The JSON of one event as published, within `room` bytes: whole when it fits; else
/// without the request's bodies (`"omitted": "body"`); else without its payload
/// (`"omitted": "payload"`). A subscriber fetches what was left out by email id
/// (`GET /api/v1/emails/{id}/events`).
fn event_body(e: &FeedEvent, room: usize) -> anyhow::Result<(Vec<u8>, Option<&'static str>)> {
    // Whole: written straight from the event (no intermediate JSON tree).
    let bytes = serde_json::to_vec(&Body {
        email_id: e.email_id,
        metadata: &e.metadata,
        payload: Payload(&e.event),
        position: e.checkpoint.position,
        recorded_at: e.recorded_at,
        sequence: e.sequence,
        r#type: &e.event_type,
        version: &e.event_version,
    })?;
    if bytes.len() <= room {
        return Ok((bytes, None));
    }
    let payload = match serde_json::to_value(&e.event)? {
        Value::Object(mut m) if m.len() == 1 => m.remove(&e.event_type).unwrap_or_default(),
        other => other,
    };
    let mut body = json!({
        "email_id": e.email_id,
        "sequence": e.sequence,
        "position": e.checkpoint.position,
        "type": e.event_type,
        "version": e.event_version,
        "recorded_at": e.recorded_at,
        "payload": payload,
        "metadata": e.metadata,
    });
    if let Some(request) = body["payload"].get_mut("request").and_then(Value::as_object_mut) {
        request.remove("text");
        request.remove("html");
        body["omitted"] = json!("body");
        let bytes = serde_json::to_vec(&body)?;
        if bytes.len() <= room {
            return Ok((bytes, Some("body")));
        }
    }
    body["payload"] = Value::Null;
    body["omitted"] = json!("payload");
    Ok((serde_json::to_vec(&body)?, Some("payload")))
}

/// An event as published whole (the keys in the order the cut-down forms have them).
#[derive(serde::Serialize)]
struct Body<'a> {
    email_id: uuid::Uuid,
    metadata: &'a Value,
    payload: Payload<'a>,
    position: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    sequence: i64,
    r#type: &'a str,
    version: &'a str,
}

/// An event's own fields, without the variant's name around them.
struct Payload<'a>(&'a EmailEvent);

impl serde::Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            EmailEvent::Requested(e) => e.serialize(s),
            EmailEvent::Persisted(e) => e.serialize(s),
            EmailEvent::Sent(e) => e.serialize(s),
            EmailEvent::Failed(e) => e.serialize(s),
            EmailEvent::DeadLettered(e) => e.serialize(s),
            EmailEvent::Redriven(e) => e.serialize(s),
            EmailEvent::Suppressed(e) => e.serialize(s),
        }
    }
}

/// Changes to suppression lists out to NATS (side-effecting, at-least-once, idempotent
/// by message id): `SuppressionAdded` to `<ns>.events.suppression_added` and
/// `SuppressionRemoved` to `<ns>.events.suppression_removed`, in the same stream as the
/// email events, with `Nats-Msg-Id: suppression:<tenant>/<address>:<sequence>`. It
/// reads only the events of aggregate `Suppression` ([`super::Feed::Aggregate`]).
pub struct SuppressionPublisher {
    js: jetstream::Context,
    names: NatsNames,
}

impl SuppressionPublisher {
    /// Publishes with `js` under the settings' names (the events stream must exist:
    /// [`EventPublisher::ensure_stream`]).
    pub fn new(js: jetstream::Context, settings: &NatsSettings) -> Self {
        Self { js, names: settings.names() }
    }
}

#[async_trait]
impl Projection for SuppressionPublisher {
    fn name(&self) -> &'static str {
        "nats_suppressions"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::SideEffecting
    }

    fn feed(&self) -> super::Feed {
        super::Feed::Aggregate(crate::suppression::AGGREGATE)
    }

    async fn apply(&self, _conn: &mut PgConnection, _events: &[FeedEvent]) -> anyhow::Result<()> {
        Ok(())
    }

    async fn apply_raw(&self, _conn: &mut PgConnection, events: &[crate::store::raw::RawEvent]) -> anyhow::Result<()> {
        let mut acks = Vec::new();
        for e in events {
            let payload: Value = serde_json::from_str(&e.payload)?;
            let mut body = payload.get(&e.event_type).cloned().unwrap_or(payload);
            if let Some(fields) = body.as_object_mut() {
                fields.insert("type".into(), json!(e.event_type));
                fields.insert("position".into(), json!(e.position()));
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("suppression:{}:{}", e.aggregate_id, e.sequence).as_str());
            headers.insert("Mailledger-Event-Type", e.event_type.as_str());
            let subject = self.names.event_subject(&subject_kind(&e.event_type));
            acks.push(self.js.publish_with_headers(subject, headers, serde_json::to_vec(&body)?.into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::command::EmailEvent;
    use crate::store::feed::{Checkpoint, FeedEvent};

    #[test]
    fn an_event_published_whole_is_its_fields_under_payload() {
        let e = FeedEvent {
            checkpoint: Checkpoint { txid: 7, position: 42 },
            email_id: uuid::Uuid::now_v7(),
            sequence: 4,
            event_type: "Redriven".into(),
            event_version: "1.0".into(),
            recorded_at: chrono::Utc::now(),
            event: EmailEvent::Redriven(crate::command::events::Redriven {
                by: "ops".into(),
                redriven_at: chrono::Utc::now(),
                run: Some(uuid::Uuid::now_v7()),
            }),
            metadata: json!({"actor": "ops", "tenant": "default"}),
        };
        let (bytes, omitted) = super::event_body(&e, 1 << 20).unwrap();
        let EmailEvent::Redriven(r) = &e.event else { unreachable!() };
        let want = json!({
            "email_id": e.email_id,
            "sequence": 4,
            "position": 42,
            "type": "Redriven",
            "version": "1.0",
            "recorded_at": e.recorded_at,
            "payload": {"by": "ops", "redriven_at": r.redriven_at, "run": r.run},
            "metadata": {"actor": "ops", "tenant": "default"},
        });
        assert_eq!((serde_json::from_slice::<Value>(&bytes).unwrap(), omitted), (want, None));
        // Too large whole: cut down, and said so.
        let (cut, omitted) = super::event_body(&e, 100).unwrap();
        assert_eq!(omitted, Some("payload"));
        assert_eq!(serde_json::from_slice::<Value>(&cut).unwrap()["payload"], Value::Null);
    }

    #[test]
    fn kinds_are_snake_case() {
        assert_eq!(super::subject_kind("Sent"), "sent");
        assert_eq!(super::subject_kind("DeadLettered"), "dead_lettered");
    }
}
