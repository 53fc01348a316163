//! `emailService.EmailService`: Create (the write side); GetByID, Search and History
//! (the read side).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::proto::email_service_server::EmailService;
use super::proto::{
    AddSuppressionRes, CheckpointReq, CheckpointRes, ConsistencyReq, ConsistencyRes, CreateReq, CreateRes, Email,
    Event, GetByIdReq, GetByIdRes, HistoryReq, HistoryRes, Inclusion, InclusionReq, InclusionRes, ListSuppressionsReq,
    ListSuppressionsRes, RedriveReq, RedriveRes, RemoveSuppressionRes, SearchReq, SearchRes, Suppression,
    SuppressionChangeReq,
};
use super::proto::{
    CreateWebhookReq, DeleteWebhookRes, ListWebhookDeliveriesReq, ListWebhookDeliveriesRes, ListWebhooksReq,
    ListWebhooksRes, ReplayWebhookReq, ReplayWebhookRes, RotateWebhookReq, UpdateWebhookReq, WebhookEndpoint,
    WebhookReq, WebhookSecretRes,
};
use crate::access::Scope;
use crate::access::keyring::Authenticated;
use crate::command::{EmailDraft, Source, address::split_list};
use crate::ledger::{CreateEmail, Ledger};
use crate::proof::{InclusionProof, ProofLog, StoredCheckpoint};
use crate::query::ReadSide;
use crate::query::params::RawSearch;
use crate::query::view::{EmailSummary, EmailView};

/// The gRPC face of the ledger.
pub struct EmailGrpc {
    ledger: Ledger,
    reads: ReadSide,
    pool: sqlx::PgPool,
    proofs: ProofLog,
    webhooks: crate::config::WebhookSettings,
}

impl EmailGrpc {
    /// Serves `ledger`, `reads`, the suppression lists and webhook endpoints in `pool`,
    /// and `proofs`.
    pub fn new(
        ledger: Ledger,
        reads: ReadSide,
        pool: sqlx::PgPool,
        proofs: ProofLog,
        webhooks: crate::config::WebhookSettings,
    ) -> Self {
        Self { ledger, reads, pool, proofs, webhooks }
    }
}

fn checkpoint_res(c: &StoredCheckpoint) -> CheckpointRes {
    CheckpointRes { size: c.size, root: c.root.to_vec(), note: c.note.clone(), signed_at: Some(timestamp(c.signed_at)) }
}

fn inclusion(p: &InclusionProof) -> Inclusion {
    Inclusion {
        leaf_index: p.leaf_index,
        tree_size: p.tree_size,
        position: p.event.position(),
        aggregate_type: p.event.aggregate_type.clone(),
        aggregate_id: p.event.aggregate_id.clone(),
        sequence: p.event.sequence,
        r#type: p.event.event_type.clone(),
        leaf_hash: p.leaf_hash.to_vec(),
        canonical: crate::proof::canonical::bytes(&p.event),
        hashes: p.hashes.iter().map(|h| h.to_vec()).collect(),
    }
}

fn suppression_to_proto(s: crate::suppression::Suppression) -> Suppression {
    Suppression {
        tenant: s.tenant,
        address: s.address,
        domain: s.domain,
        reason: s.reason,
        code: s.code.unwrap_or(0),
        source: s.source,
        email_id: s.email_id.map(|i| i.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(s.created_at)),
        created_by: s.created_by,
    }
}

impl From<crate::suppression::SuppressionError> for Status {
    fn from(e: crate::suppression::SuppressionError) -> Self {
        match e {
            crate::suppression::SuppressionError::Invalid { field, reason } => {
                super::error::invalid_field(if field == "address" { "Address" } else { "Reason" }, reason)
            }
            crate::suppression::SuppressionError::Store(e) => internal(e),
        }
    }
}

/// A change request's caller (with the `redrive` scope), its fields, the tenant it may
/// act in, and its peer.
fn change_request(
    request: Request<SuppressionChangeReq>,
) -> Result<(crate::access::Principal, SuppressionChangeReq, String, Option<std::net::SocketAddr>), Status> {
    let peer = request.remote_addr();
    let by = caller(&request).principal;
    by.require(Scope::Redrive)?;
    let req = request.into_inner();
    let tenant = by.acting_tenant(Some(&req.tenant))?;
    Ok((by, req, tenant, peer))
}

/// The change a request asks for (the suppression list checks its address and reason).
fn change_of<'a>(
    principal: &'a crate::access::Principal,
    req: &'a SuppressionChangeReq,
    tenant: &'a str,
    peer: Option<std::net::SocketAddr>,
) -> crate::suppression::Change<'a> {
    let mut metadata = HashMap::from([("transport".to_owned(), "grpc".to_owned())]);
    if let Some(p) = peer {
        metadata.insert("caller".into(), p.to_string());
    }
    principal.stamp(&mut metadata);
    crate::suppression::Change { tenant, address: &req.address, reason: &req.reason, by: &principal.name, metadata }
}

/// Proto3 cannot tell "absent" from "empty": an empty string is absent.
fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Who the call acts as (put there by [`super::auth`]; anonymous when the layer was not
/// in front, which only tests do).
fn caller<T>(request: &Request<T>) -> Authenticated {
    request
        .extensions()
        .get::<Authenticated>()
        .cloned()
        .unwrap_or(Authenticated { principal: crate::access::Principal::anonymous(), key: None })
}

fn metadata_str<'a, T>(request: &'a Request<T>, key: &str) -> Option<&'a str> {
    request.metadata().get(key).and_then(|v| v.to_str().ok())
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A timestamp from a request: a real instant between the years 1 and 9999 (what the
/// store and RFC 3339 can hold), else `INVALID_ARGUMENT` naming the field.
pub(super) fn from_timestamp(field: &str, t: Option<Timestamp>) -> Result<Option<DateTime<Utc>>, Status> {
    use chrono::Datelike;
    t.map(|t| {
        u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .filter(|at| (1..=9999).contains(&at.year()))
            .ok_or_else(|| super::error::invalid_field(field, "out of range (years 1 to 9999)"))
    })
    .transpose()
}

fn parse_id(raw: &str) -> Result<Uuid, Status> {
    raw.parse().map_err(|_| {
        super::error::invalid_field("EmailID", format!("{} is not an email id (a UUID)", crate::text::echo(raw)))
    })
}

pub(super) fn internal<E: Into<anyhow::Error>>(e: E) -> Status {
    let e: anyhow::Error = e.into();
    let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
    if crate::store::is_unavailable(boxed.as_ref()) {
        tracing::warn!(error = %boxed, "gRPC read failed: dependency unavailable");
        Status::unavailable("temporarily unavailable; retry later")
    } else {
        tracing::error!(error = %boxed, "gRPC read failed: internal error");
        Status::internal("internal error")
    }
}

/// The proto `Email`: `To` lists every visible recipient, `Message` is the body.
fn to_proto(v: EmailView) -> Email {
    let to = v.to.iter().chain(&v.cc).cloned().collect::<Vec<_>>().join(", ");
    Email {
        email_id: v.id.to_string(),
        from: v.from,
        to,
        subject: v.subject,
        message: v.body,
        created_at: Some(timestamp(v.created_at)),
        status: v.status,
        attempts: v.attempts,
        last_error: v.last_error.unwrap_or_default(),
        updated_at: Some(timestamp(v.updated_at)),
        sent_at: v.sent_at.map(timestamp),
        html: v.html.unwrap_or_default(),
    }
}

/// A search result as a proto `Email`: `Message` holds the start of the body (the
/// whole email is one `GetByID` away), `Html` is empty.
fn summary_to_proto(v: EmailSummary) -> Email {
    let to = v.to.iter().chain(&v.cc).cloned().collect::<Vec<_>>().join(", ");
    Email {
        email_id: v.id.to_string(),
        from: v.from,
        to,
        subject: v.subject,
        message: v.snippet,
        created_at: Some(timestamp(v.created_at)),
        status: v.status,
        attempts: v.attempts,
        last_error: v.last_error.unwrap_or_default(),
        updated_at: Some(timestamp(v.updated_at)),
        sent_at: v.sent_at.map(timestamp),
        html: String::new(),
    }
}

#[tonic::async_trait]
impl EmailService for EmailGrpc {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateRes>, Status> {
        let mut metadata = HashMap::new();
        metadata.insert("transport".to_owned(), "grpc".to_owned());
        let correlation = crate::transport::request_id::of(request.metadata().as_ref());
        metadata.insert("correlation_id".into(), correlation);
        if let Some(peer) = request.remote_addr() {
            metadata.insert("caller".into(), peer.to_string());
        }
        let header_key = metadata_str(&request, "idempotency-key").map(str::to_owned);
        let by = caller(&request);
        let req = request.into_inner();
        let body_key = present(req.idempotency_key);
        let idempotency_key = crate::transport::idempotency_key(header_key, body_key).map_err(|_| {
            crate::metrics::invalid_command("grpc");
            super::error::invalid_field(
                "IdempotencyKey",
                "the idempotency-key metadata and the IdempotencyKey field disagree",
            )
        })?;
        let draft = EmailDraft {
            from: present(req.from),
            to: split_list(&req.to),
            cc: req.cc,
            bcc: req.bcc,
            reply_to: req.reply_to,
            subject: Some(req.subject),
            text: present(req.message),
            html: present(req.html),
            headers: req.headers.into_iter().collect(),
        };
        let accepted =
            self.ledger.create(CreateEmail { draft, source: Source::Grpc, idempotency_key, metadata, by }).await?;
        Ok(Response::new(CreateRes { status: "accepted".into(), email_id: accepted.id.to_string() }))
    }

    async fn get_by_id(&self, request: Request<GetByIdReq>) -> Result<Response<GetByIdRes>, Status> {
        let by = caller(&request).principal;
        by.require(Scope::Read)?;
        let req = request.into_inner();
        let id = parse_id(&req.email_id)?;
        let view = match from_timestamp("AsOf", req.as_of)? {
            None => self.reads.get(id, &by).await.map_err(internal)?,
            Some(at) => self.reads.as_of(id, at, &by).await.map_err(internal)?,
        };
        let view = view.ok_or_else(|| Status::not_found(format!("no email {id}")))?;
        Ok(Response::new(GetByIdRes { email: Some(to_proto(view)) }))
    }

    async fn search(&self, request: Request<SearchReq>) -> Result<Response<SearchRes>, Status> {
        let by = caller(&request).principal;
        by.require(Scope::Read)?;
        let req = request.into_inner();
        let raw = RawSearch {
            q: present(req.search),
            status: present(req.status),
            from: present(req.from),
            to: present(req.to),
            since: from_timestamp("Since", req.since)?.map(|t| t.to_rfc3339()),
            until: from_timestamp("Until", req.until)?.map(|t| t.to_rfc3339()),
            page: Some(req.page),
            size: Some(req.size),
        };
        let params =
            raw.parse().map_err(|e| super::error::invalid_field(&super::error::proto_field(&e.field), e.reason))?;
        let page = self.reads.search(&params, &by).await.map_err(internal)?;
        Ok(Response::new(SearchRes {
            total_count: page.total_count,
            total_pages: page.total_pages,
            page: i64::from(page.page),
            size: i64::from(page.size),
            has_more: page.has_more,
            emails: page.items.into_iter().map(summary_to_proto).collect(),
            total_count_exact: page.total_exact,
        }))
    }

    async fn history(&self, request: Request<HistoryReq>) -> Result<Response<HistoryRes>, Status> {
        let by = caller(&request).principal;
        by.require(Scope::Read)?;
        let id = parse_id(&request.into_inner().email_id)?;
        let entries = self.reads.history(id, &by).await.map_err(internal)?;
        if entries.is_empty() {
            return Err(Status::not_found(format!("no email {id}")));
        }
        let events = entries
            .into_iter()
            .map(|e| Event {
                r#type: e.event_type,
                sequence: e.sequence,
                position: e.position,
                version: e.version,
                recorded_at: Some(timestamp(e.recorded_at)),
                payload_json: e.payload.to_string(),
                metadata_json: e.metadata.to_string(),
            })
            .collect();
        Ok(Response::new(HistoryRes { events }))
    }

    async fn redrive(&self, request: Request<RedriveReq>) -> Result<Response<RedriveRes>, Status> {
        let peer = request.remote_addr();
        let principal = caller(&request).principal;
        let req = request.into_inner();
        let id = parse_id(&req.email_id)?;
        let by = present(req.by);
        if by.as_deref().is_some_and(|by| by.len() > 256 || by.chars().any(char::is_control)) {
            return Err(super::error::invalid_field("By", "give 1 to 256 printable characters"));
        }
        let mut metadata = HashMap::from([("transport".to_owned(), "grpc".to_owned())]);
        if let Some(p) = peer {
            metadata.insert("caller".into(), p.to_string());
        }
        match self.ledger.redrive(id, &principal, by.as_deref(), None, metadata).await {
            Ok(()) => Ok(Response::new(RedriveRes { status: "queued".into() })),
            Err(crate::ledger::LedgerError::Refused(crate::command::EmailError::NotFound)) => {
                Err(Status::not_found(format!("no email {id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn list_suppressions(
        &self,
        request: Request<ListSuppressionsReq>,
    ) -> Result<Response<ListSuppressionsRes>, Status> {
        let by = caller(&request).principal;
        by.require(Scope::Read)?;
        let req = request.into_inner();
        let source = present(req.source);
        if source.as_deref().is_some_and(|s| !matches!(s, "bounce" | "manual")) {
            return Err(super::error::invalid_field("Source", "bounce, manual or empty"));
        }
        let limit = if req.limit == 0 { 100 } else { i64::from(req.limit) };
        if !(1..=1000).contains(&limit) {
            return Err(super::error::invalid_field("Limit", "1 to 1000"));
        }
        let cursor = match present(req.cursor) {
            Some(c) => Some(
                crate::suppression::Cursor::decode(&c)
                    .ok_or_else(|| super::error::invalid_field("Cursor", "not one this service gave"))?,
            ),
            None => None,
        };
        let filter = crate::suppression::Filter {
            tenant: by.reading_tenant(present(req.tenant).as_deref())?,
            domain: present(req.domain),
            reason_like: present(req.reason),
            since: from_timestamp("Since", req.since)?,
            source,
        };
        let (items, next) =
            crate::suppression::list(&self.pool, &filter, cursor.as_ref(), limit).await.map_err(internal)?;
        Ok(Response::new(ListSuppressionsRes {
            items: items.into_iter().map(suppression_to_proto).collect(),
            next_cursor: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn add_suppression(
        &self,
        request: Request<SuppressionChangeReq>,
    ) -> Result<Response<AddSuppressionRes>, Status> {
        let (by, req, tenant, peer) = change_request(request)?;
        let change = change_of(&by, &req, &tenant, peer);
        let added = crate::suppression::add(&self.pool, change, None).await?;
        let row = crate::suppression::get(&self.pool, &tenant, &req.address)
            .await?
            .ok_or_else(|| Status::aborted("the suppression was removed as it was added"))?;
        Ok(Response::new(AddSuppressionRes { suppression: Some(suppression_to_proto(row)), added }))
    }

    async fn remove_suppression(
        &self,
        request: Request<SuppressionChangeReq>,
    ) -> Result<Response<RemoveSuppressionRes>, Status> {
        let (by, req, tenant, peer) = change_request(request)?;
        let change = change_of(&by, &req, &tenant, peer);
        if !crate::suppression::remove(&self.pool, change).await? {
            return Err(Status::not_found(format!(
                "{} is not suppressed in tenant {tenant}",
                crate::text::echo(&req.address)
            )));
        }
        Ok(Response::new(RemoveSuppressionRes { removed: true }))
    }

    async fn checkpoint(&self, request: Request<CheckpointReq>) -> Result<Response<CheckpointRes>, Status> {
        caller(&request).principal.require(Scope::Read)?;
        let size = request.into_inner().size;
        let c = self.proofs.checkpoint((size != 0).then_some(size)).await?;
        Ok(Response::new(checkpoint_res(&c)))
    }

    async fn inclusion_proof(&self, request: Request<InclusionReq>) -> Result<Response<InclusionRes>, Status> {
        let by = caller(&request).principal;
        by.require(Scope::Read)?;
        let req = request.into_inner();
        let size = (req.tree_size != 0).then_some(req.tree_size);
        let (checkpoint, proofs) = match (present(req.email_id), req.position) {
            (Some(email), None) => self.proofs.prove_email(parse_id(&email)?, &by, size).await?,
            (None, Some(position)) => {
                by.require(Scope::Admin)?;
                let (c, p) = self.proofs.prove_position(position, size).await?;
                (c, vec![p])
            }
            _ => return Err(Status::invalid_argument("give one of EmailID or Position")),
        };
        Ok(Response::new(InclusionRes {
            checkpoint: Some(checkpoint_res(&checkpoint)),
            proofs: proofs.iter().map(inclusion).collect(),
        }))
    }

    async fn consistency_proof(&self, request: Request<ConsistencyReq>) -> Result<Response<ConsistencyRes>, Status> {
        caller(&request).principal.require(Scope::Read)?;
        let req = request.into_inner();
        let p = self.proofs.consistency(req.first, (req.second != 0).then_some(req.second)).await?;
        Ok(Response::new(ConsistencyRes {
            first: p.first,
            second: p.second,
            first_root: p.first_root.to_vec(),
            second_root: p.second_root.to_vec(),
            hashes: p.hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }
    async fn create_webhook(&self, request: Request<CreateWebhookReq>) -> Result<Response<WebhookSecretRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::create(&self.pool, &self.webhooks, &by, request.into_inner()).await?))
    }

    async fn list_webhooks(&self, request: Request<ListWebhooksReq>) -> Result<Response<ListWebhooksRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::list(&self.pool, &by, request.into_inner()).await?))
    }

    async fn get_webhook(&self, request: Request<WebhookReq>) -> Result<Response<WebhookEndpoint>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::get(&self.pool, &by, &request.into_inner().id).await?))
    }

    async fn update_webhook(&self, request: Request<UpdateWebhookReq>) -> Result<Response<WebhookEndpoint>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::update(&self.pool, &self.webhooks, &by, request.into_inner()).await?))
    }

    async fn delete_webhook(&self, request: Request<WebhookReq>) -> Result<Response<DeleteWebhookRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::delete(&self.pool, &by, &request.into_inner().id).await?))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookReq>,
    ) -> Result<Response<WebhookSecretRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::rotate(&self.pool, &self.webhooks, &by, request.into_inner()).await?))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesReq>,
    ) -> Result<Response<ListWebhookDeliveriesRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::deliveries(&self.pool, &by, request.into_inner()).await?))
    }

    async fn replay_webhook(&self, request: Request<ReplayWebhookReq>) -> Result<Response<ReplayWebhookRes>, Status> {
        let by = caller(&request).principal;
        Ok(Response::new(super::webhooks::replay(&self.pool, &by, request.into_inner()).await?))
    }
}
