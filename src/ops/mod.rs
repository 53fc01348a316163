//! What operators and auditors run from the command line: `replay`, `history`,
//! `reproject`, `dlq` and `status`. Each writes data to stdout and talk to stderr.

pub mod dlq;
pub mod history;
pub mod progress;
pub mod replay;
pub mod status;
