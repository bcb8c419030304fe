//! The domain error: what every service operation returns when it does not do what was asked.
//! Callers match on its `kind` (not found, conflict, invalid, queue full, denied, unavailable,
//! ...), never on message text; `code` is the stable machine-readable code the REST API
//! returns, and the message is safe to show (a store failure's cause is logged, not shown).
//! Transports map kinds to their own answers: the REST API to HTTP statuses, the device
//! transports to MQTT reason codes and device-API statuses.

use crate::store::ports::StoreError;

/// Why a request conflicts with what is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("a {kind} named \"{name}\" already exists")]
    NameTaken { kind: &'static str, name: String },
    #[error("the {0} is not empty: delete what it holds first")]
    NotEmpty(&'static str),
    #[error("another device already answers to this credential")]
    CredentialTaken,
    /// The object's state or another object does not allow it; the message says which.
    #[error("{0}")]
    State(String),
}

/// Why an identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Sign-in failures are deliberately not more precise.
    #[error("wrong username or password")]
    InvalidLogin,
    #[error("the setup link is invalid, used or expired")]
    InvalidSetup,
    /// Signed in, but not allowed this.
    #[error("{0}")]
    Forbidden(String),
}

/// The kinds callers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    /// A field or parameter of the request is wrong; nothing was changed.
    Invalid,
    /// A per-object queue is at its cap: try again once it drains.
    QueueFull,
    /// Asks for something this server does not do.
    Unsupported,
    /// The identity is not accepted (sign-in) or may not do this.
    Denied,
    /// Too many attempts: try again later.
    Throttled,
    /// The request's content is over a size cap; nothing was stored.
    TooLarge,
    /// Free disk space is below the reserve: nothing was stored; try again once there is room.
    StorageFull,
    /// The server cannot serve it now (shutting down, storage failing); nothing was changed.
    Unavailable,
    /// A fault of the server (a damaged record, a bug): logged, not shown.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A paging cursor that this server did not hand out.
    #[error("cursor is not one this API returned")]
    BadCursor,
    #[error("{0}")]
    QueueFull(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Denied(#[from] Denial),
    /// Too many attempts; `message` says of what and how long to wait.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after_secs: u32,
    },
    /// What was sent is over a cap (`limit` bytes); nothing was stored.
    #[error("{what} is larger than the {limit}-byte cap")]
    TooLarge { what: &'static str, limit: u64 },
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            // The store read a cursor it did not hand out: the client's mistake, not the store's.
            StoreError::BadCursor => Error::BadCursor,
            e => Error::Store(e),
        }
    }
}

impl Error {
    /// A wrong field of a request.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// A conflict with the state of an object, said in `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(Conflict::State(message.into()))
    }

    /// Signed in, but not allowed `message`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Denied(Denial::Forbidden(message.into()))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Invalid { .. } | Error::BadCursor => ErrorKind::Invalid,
            Error::QueueFull(_) => ErrorKind::QueueFull,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Denied(_) => ErrorKind::Denied,
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Store(e) => store_kind(e),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The stable code clients match on (the REST API's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Conflict(Conflict::NameTaken { .. }) => "name_taken",
            Error::Conflict(Conflict::NotEmpty(_)) => "not_empty",
            Error::Conflict(Conflict::CredentialTaken) => "credential_taken",
            Error::Conflict(Conflict::State(_)) => "conflict",
            Error::Invalid { .. } => "invalid_field",
            Error::BadCursor => "invalid_cursor",
            Error::QueueFull(_) => "queue_full",
            Error::Unsupported(_) => "unsupported",
            Error::Denied(Denial::InvalidLogin) => "invalid_login",
            Error::Denied(Denial::InvalidSetup) => "invalid_setup_token",
            Error::Denied(Denial::Forbidden(_)) => "forbidden",
            Error::Throttled { .. } => "too_many_attempts",
            Error::TooLarge { .. } => "payload_too_large",
            Error::Store(e) if store_kind(e) == ErrorKind::StorageFull => "insufficient_storage",
            Error::Store(e) if store_kind(e) == ErrorKind::Unavailable => "unavailable",
            Error::Store(_) | Error::Internal(_) => "internal",
        }
    }
}

/// How a store failure looks to a caller.
pub fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        // Refused before the disk filled: nothing of the request was stored.
        StoreError::DiskLow { .. } | StoreError::DiskFull { .. } => ErrorKind::StorageFull,
        StoreError::Closed => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_codes_are_stable() {
        let cases: Vec<(Error, ErrorKind, &str)> = vec![
            (Error::NotFound("device"), ErrorKind::NotFound, "not_found"),
            (
                Conflict::NameTaken {
                    kind: "fleet",
                    name: "a".into(),
                }
                .into(),
                ErrorKind::Conflict,
                "name_taken",
            ),
            (
                Conflict::NotEmpty("workspace").into(),
                ErrorKind::Conflict,
                "not_empty",
            ),
            (Error::conflict("busy"), ErrorKind::Conflict, "conflict"),
            (
                Error::invalid("name", "too long"),
                ErrorKind::Invalid,
                "invalid_field",
            ),
            (Error::BadCursor, ErrorKind::Invalid, "invalid_cursor"),
            (
                Error::QueueFull("full".into()),
                ErrorKind::QueueFull,
                "queue_full",
            ),
            (
                Denial::InvalidLogin.into(),
                ErrorKind::Denied,
                "invalid_login",
            ),
            (
                Error::Throttled {
                    message: "wait".into(),
                    retry_after_secs: 60,
                },
                ErrorKind::Throttled,
                "too_many_attempts",
            ),
            (
                StoreError::DiskFull { path: "x".into() }.into(),
                ErrorKind::StorageFull,
                "insufficient_storage",
            ),
            (
                StoreError::Closed.into(),
                ErrorKind::Unavailable,
                "unavailable",
            ),
            (
                StoreError::BadCursor.into(),
                ErrorKind::Invalid,
                "invalid_cursor",
            ),
            (
                StoreError::Corrupt {
                    tree: "jobs",
                    detail: "x".into(),
                }
                .into(),
                ErrorKind::Internal,
                "internal",
            ),
        ];
        for (e, kind, code) in cases {
            assert_eq!((e.kind(), e.code()), (kind, code), "{e}");
        }
        assert_eq!(
            Error::invalid("ttl_secs", "must be 1 s to 365 days").to_string(),
            "ttl_secs: must be 1 s to 365 days"
        );
    }
}
