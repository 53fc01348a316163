//! `emailService.EmailService`: Create (the write side), GetByID and Search (the read side).

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::proto::email_service_server::EmailService;
use super::proto::{CreateReq, CreateRes, GetByIdReq, GetByIdRes, SearchReq, SearchRes};
use crate::command::{EmailDraft, Source, address::split_list};
use crate::ledger::{CreateEmail, Ledger};

/// The gRPC face of the ledger.
pub struct EmailGrpc {
    ledger: Ledger,
}

impl EmailGrpc {
    /// Serves `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

/// Proto3 cannot tell "absent" from "empty": an empty string is absent.
fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn metadata_str<'a>(request: &'a Request<CreateReq>, key: &str) -> Option<&'a str> {
    request.metadata().get(key).and_then(|v| v.to_str().ok())
}

#[tonic::async_trait]
impl EmailService for EmailGrpc {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateRes>, Status> {
        let mut metadata = HashMap::new();
        metadata.insert("transport".to_owned(), "grpc".to_owned());
        let correlation = metadata_str(&request, "x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        metadata.insert("correlation_id".into(), correlation);
        if let Some(peer) = request.remote_addr() {
            metadata.insert("caller".into(), peer.to_string());
        }
        let header_key = metadata_str(&request, "idempotency-key").map(str::to_owned);
        let req = request.into_inner();
        let body_key = present(req.idempotency_key);
        let idempotency_key = match (header_key, body_key) {
            (Some(h), Some(b)) if h != b => {
                return Err(Status::invalid_argument(
                    "the idempotency-key metadata and the IdempotencyKey field disagree",
                ));
            }
            (h, b) => h.or(b),
        };
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
            self.ledger.create(CreateEmail { draft, source: Source::Grpc, idempotency_key, metadata }).await?;
        Ok(Response::new(CreateRes { status: "accepted".into(), email_id: accepted.id.to_string() }))
    }

    async fn get_by_id(&self, _request: Request<GetByIdReq>) -> Result<Response<GetByIdRes>, Status> {
        Err(Status::unimplemented("GetByID arrives with the read side"))
    }

    async fn search(&self, _request: Request<SearchReq>) -> Result<Response<SearchRes>, Status> {
        Err(Status::unimplemented("Search arrives with the read side"))
    }
}
