//! gRPC over tonic: the original `EmailService`, server reflection and the standard
//! health service.

mod error;
pub mod service;

/// Code generated from `proto/email.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("email_service");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("email_descriptor");
}

use tonic::service::Routes;

use crate::ledger::Ledger;
use crate::query::ReadSide;

/// Every gRPC service mailledger serves, with the health reporter to flip on shutdown.
pub fn routes(ledger: Ledger, reads: ReadSide) -> anyhow::Result<(Routes, tonic_health::server::HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let email = proto::email_service_server::EmailServiceServer::new(service::EmailGrpc::new(ledger, reads));
    let routes = Routes::new(email).add_service(health).add_service(reflection);
    Ok((routes, reporter))
}
