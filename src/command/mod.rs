//! The write side: the `Email` aggregate, its commands, events, value types and errors.
//!
//! Pure domain code on cqrs-es. Nothing here talks to a network or a database; the
//! transports parse their input into an [`EmailDraft`], validate it into a
//! [`ValidEmail`], and hand an [`EmailCommand`] to the framework.

pub mod address;
pub mod aggregate;
pub mod commands;
pub mod draft;
pub mod error;
pub mod events;
pub mod header;

pub use address::{EmailAddress, Mailbox};
pub use aggregate::{Email, EmailServices, EmailStatus, MessageRenderer, message_id_for};
pub use commands::*;
pub use draft::{EmailDraft, Limits, ValidEmail};
pub use error::{EmailError, ErrorKind, FieldError, ValidationErrors};
pub use events::{EVENT_VERSION, EmailEvent, Source};
pub use header::{HeaderName, HeaderValue};
