//! mailledger: a CQRS / event-sourced mail ledger.
#![forbid(unsafe_code)]

pub mod command;
