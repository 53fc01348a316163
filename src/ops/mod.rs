//! What operators and auditors run from the command line: `replay`, `history`,
//! `reproject`, `dlq`, `status` and `ledger` (the proof log). Each writes data to stdout and talk to stderr.

pub(crate) mod dlq;
pub(crate) mod history;
pub mod ledger;
pub mod progress;
pub(crate) mod replay;
pub mod reproject;
pub(crate) mod status;
