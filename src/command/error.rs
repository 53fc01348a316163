//! Business errors of the write side: what a command can be refused for.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A required field was not given.
    Missing,
    /// The field was given but is not acceptable.
    Invalid,
    /// The field is over a size or count limit.
    TooLarge,
}

/// One refused field: its path (`to[1]`, `headers.X-Tag`) and the reason, for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field in the request.
    pub field: String,
    /// What is wrong, for a person.
    pub reason: String,
    /// Category, for a program.
    pub kind: ErrorKind,
}

impl FieldError {
    /// A required field that is absent.
    pub fn missing(field: &str) -> Self {
        Self { field: field.into(), reason: "is required".into(), kind: ErrorKind::Missing }
    }
    /// A field that does not parse or breaks a rule.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into(), kind: ErrorKind::Invalid }
    }
    /// A field over a limit.
    pub fn too_large(field: &str, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into(), kind: ErrorKind::TooLarge }
    }
    /// The same error with another reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in one request (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// One error.
    pub fn single(error: FieldError) -> Self {
        Self(vec![error])
    }
    /// True when any field is over a limit (HTTP 413 rather than 422).
    pub fn is_too_large(&self) -> bool {
        self.0.iter().any(|e| e.kind == ErrorKind::TooLarge)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why the `Email` aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// The request itself is not acceptable.
    #[error("invalid email: {0}")]
    Invalid(ValidationErrors),
    /// The idempotency key was used before for a different email.
    #[error("idempotency key already used for a different email")]
    IdempotencyConflict,
    /// The email has never been requested.
    #[error("email not found")]
    NotFound,
    /// The email was delivered already.
    #[error("email already sent")]
    AlreadySent,
    /// The email is dead-lettered; only a redrive can revive it.
    #[error("email is dead-lettered")]
    DeadLettered,
    /// Only a dead-lettered email can be redriven.
    #[error("only a dead-lettered email can be redriven")]
    NotDeadLettered,
    /// An outcome for an attempt other than the next one.
    #[error("attempt {got} is out of order: the next attempt is {expected}")]
    AttemptOutOfOrder {
        /// Attempt number the aggregate expects next.
        expected: u32,
        /// Attempt number the command carried.
        got: u32,
    },
    /// An outcome names a recipient the email is not waiting to deliver to.
    #[error("the outcome names a recipient that is not pending")]
    UnknownRecipient,
    /// The rendered message could not be built.
    #[error("the message cannot be rendered: {0}")]
    Unrenderable(String),
}
