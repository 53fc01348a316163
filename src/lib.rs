//! mailledger: a CQRS / event-sourced mail ledger. Every email is a stream of events
//! kept in PostgreSQL; everything else is derived from those events and can be rebuilt.
//!
//! # Layout
//!
//! The flow of one email, and the module that owns each step:
//!
//! ```text
//!  producers ──► transport::{nats, http, grpc} ──► ledger ──► store ──► PostgreSQL `events`
//!                 (parse, authenticate, map errors)  (ids,       (append: group commit
//!                                                     metadata,   or cqrs-es; feed)
//!                                                     errors)          │
//!                                                                      ▼ feed (commit order)
//!                     projections::runner ◄────────────────────────────┘
//!                       ├─ projections::emails  ──► `emails` read model  (query::row)
//!                       ├─ projections::cache   ──► Redis views          (query::cache)
//!                       ├─ projections::events  ──► NATS `mail.events.*`
//!                       └─ saga::schedule       ──► `deliveries` ──► saga (SMTP) ──► ledger
//!  readers  ──► transport::{http, grpc} ──► query (cache, then read model; history and
//!                                                  as-of from the store)
//!  operators ──► cli ──► ops (replay, history, reproject, dlq, status, ledger)
//!  auditors  ──► transport::{http, grpc}, cli ──► proof (sealed from store::raw by a projection)
//! ```
//!
//! Dependencies point inward: transports, operator tools and the sender use the ledger
//! and the read side; those use the store; the store uses the domain ([`command`]),
//! which uses no I/O crate. Helpers every layer needs ([`config`], [`metrics`],
//! [`telemetry`], [`text`], [`render`]) sit below them all.
//!
//! | module | its one job |
//! |---|---|
//! | [`command`] | the `Email` aggregate: value types, commands, events, rules (pure) |
//! | [`store`] | the event store: every statement on `events` and checkpoints, the feed, commit announcements |
//! | [`access`] | API keys, principals, tenants, scopes, rate limits and quotas |
//! | [`ledger`] | the write API every transport calls |
//! | [`query`] | the read side: `EmailView`, the `emails` table, search, the Redis cache |
//! | [`projections`] | what tails the feed: the runner, the read model, cache and NATS projections |
//! | [`saga`] | the sender: schedule projection, claims and domain shaping, its SMTP client, retries |
//! | [`suppression`] | the suppression list (per tenant): lookups, changes recorded as events |
//! | [`redrive`] | bulk redrives by filter: counted, paced, resumable runs |
//! | [`webhooks`] | signed status webhooks: endpoints, the queueing projection, the dispatcher |
//! | [`transport`] | REST, gRPC, NATS intake and TLS: adapters only |
//! | [`proof`] | the tamper-evident log: Merkle tree over every event, signed checkpoints, proofs, audits |
//! | [`ops`] | operator and auditor tools behind the CLI |
//! | [`observe`] | request spans and metrics, the gauge monitor, readiness |
//! | [`startup`] | [`startup::Application`]: wiring and one shutdown for everything |
#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod command;
pub mod config;
pub mod ledger;
pub(crate) mod metrics;
pub(crate) mod observe;
pub mod ops;
pub mod projections;
pub mod proof;
pub mod query;
pub mod redrive;
pub mod render;
pub mod saga;
pub mod startup;
pub mod store;
pub mod suppression;
pub mod telemetry;
pub(crate) mod text;
pub mod transport;
pub mod webhooks;
