//! gRPC over tonic: the original `EmailService`, server reflection and the standard
//! health service.

mod auth;
pub mod codec;
mod error;
pub(crate) mod service;
mod webhooks;

/// Code generated from `proto/email.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("email_service");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("email_descriptor");
}

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic_health::server::HealthReporter;

use crate::ledger::Ledger;
use crate::query::ReadSide;

/// The service whose health is reported.
type EmailServer = proto::email_service_server::EmailServiceServer<service::EmailGrpc>;

/// Every gRPC service mailledger serves, with the health reporter to flip on shutdown.
pub(crate) fn routes(
    ledger: Ledger,
    reads: ReadSide,
    pool: sqlx::PgPool,
    proofs: crate::proof::ProofLog,
    webhooks: crate::config::WebhookSettings,
    max_request_bytes: usize,
) -> anyhow::Result<(Routes, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // Reflection v1, and v1alpha for the stock clients that still ask it (Python's
    // grpcio-reflection, older grpcurl).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let reflection = reflection().build_v1()?;
    // The same request size REST takes (tonic's default is 4 MiB).
    let email = proto::email_service_server::EmailServiceServer::new(service::EmailGrpc::new(
        ledger, reads, pool, proofs, webhooks,
    ))
    .max_decoding_message_size(max_request_bytes);
    let routes = Routes::new(email).add_service(health).add_service(reflection).add_service(reflection_v1alpha);
    Ok((routes, reporter))
}

/// Every method served (`package.Service/Method`): the email service's and the health
/// service's, from their descriptor sets, and reflection's.
pub fn methods() -> Vec<String> {
    use prost::Message;
    let mut methods = Vec::new();
    for set in [proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
    }
    methods.push("grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned());
    methods.push("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned());
    methods
}

/// Starts `mailledger_grpc_requests_total{code="OK"}` and `…_duration_seconds` at zero
/// for every method, so a fresh instance's dashboard shows 0 rather than "No data".
pub fn metrics_at_zero() {
    for method in methods() {
        crate::metrics::GRPC_REQUESTS.with_label_values(&[method.as_str(), "OK"]);
        crate::metrics::GRPC_DURATION.with_label_values(&[method.as_str()]);
    }
}

/// Serves `routes` on the `incoming` connections (plain TCP or TLS), reported serving
/// until `stop`, then not serving while the calls in flight finish.
/// What the gRPC listener serves, and how.
pub(crate) struct Served {
    /// Every service.
    pub routes: Routes,
    /// Flipped to not serving at shutdown.
    pub health: HealthReporter,
    /// Calls are authenticated against it.
    pub keyring: crate::access::keyring::Keyring,
    /// A call not answered by then ends.
    pub timeout: std::time::Duration,
    /// `x-min-position` (read-your-writes with a read replica).
    pub consistency: crate::transport::consistency::ConsistencyLayer,
}

pub(crate) async fn serve<I, IO, IE>(incoming: I, served: Served, stop: CancellationToken)
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Served { routes, health, keyring, timeout, consistency } = served;
    health.set_serving::<EmailServer>().await;
    let served = tonic::transport::Server::builder()
        .timeout(timeout)
        // A peer that stops answering pings is dropped.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .layer(crate::transport::request_id::layers())
        .layer(crate::observe::grpc::ObserveLayer)
        .layer(auth::AuthLayer::new(keyring))
        .layer(consistency)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            stop.cancelled().await;
            health.set_not_serving::<EmailServer>().await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server failed");
    }
}
