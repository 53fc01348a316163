//! mailledger: a CQRS / event-sourced mail ledger.
#![forbid(unsafe_code)]

pub mod cli;
pub mod command;
pub mod config;
pub mod health;
pub mod ledger;
pub mod metrics;
pub mod observe;
pub mod ops;
pub mod projections;
pub mod query;
pub mod render;
pub mod saga;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
