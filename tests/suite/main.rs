//! mailledger's integration tests: one binary, the real application on random ports
//! against this machine's PostgreSQL, NATS and Redis, and real SMTP, NATS and Redis
//! servers where a test must stop or script one. Each test isolates itself (its own
//! database, NATS namespace and streams, Redis prefix); see [`support`].

mod support;

mod access;
mod audit;
mod cache;
mod contract;
mod delivery;
mod events_stream;
mod feed;
mod group_commit;
mod grpc_intake;
mod hardening;
mod hops;
mod nats_cluster;
mod nats_intake;
mod nats_restart;
mod operability;
mod policies;
mod process;
mod proof;
mod read_api;
mod replica;
mod reproject;
mod rest_intake;
mod search_language;
mod search_plans;
mod tls;
mod traces;
mod webhooks;
