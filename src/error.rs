//! The crate's one error type and the `Result` alias every module uses.

use ruma::api::error::ErrorKind;

/// Result with Plait's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, grouped by who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller did something wrong; carries the Matrix error kind to answer with.
    #[error("{message}")]
    Matrix { kind: ErrorKind, message: String },
    /// The request conflicts with existing data (`409`, errcode `M_UNKNOWN`, as the spec says for
    /// a taken room alias).
    #[error("{0}")]
    Conflict(String),
    /// A policy server declines to sign an event: `400 M_FORBIDDEN`, as `/_matrix/policy/v1/sign`
    /// answers a refusal (its `403 M_FORBIDDEN` is for servers a room's ACL denies).
    #[error("{0}")]
    Refused(String),
    /// The client did not send its request body in time: `408`, errcode `M_UNKNOWN`.
    #[error("{0}")]
    RequestTimeout(String),
    /// User-interactive authentication must continue: the body is the UIA state (flows, session,
    /// completed stages) that the spec sends with `401`.
    #[error("user-interactive authentication required")]
    Uiaa(serde_json::Value),
    /// Another homeserver failed or refused. The message carries the source's whole chain,
    /// since the outer error alone ("error sending request for url …") hides the cause, such as
    /// a certificate the TLS handshake refused.
    #[error("remote server {server}: {}", with_sources(.source.as_ref()))]
    Remote {
        server: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Another process holds the database's lock: a second server started on the same folder.
    #[error(
        "another Plait process holds the database at {}; stop it first, or give this one \
         another database_path",
        path.display()
    )]
    DatabaseInUse { path: std::path::PathBuf },
    /// Stored bytes that cannot be decoded.
    #[error("corrupt data in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A bug or an impossible state; the detail is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// An error of the given Matrix kind.
    pub fn matrix(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix {
            kind,
            message: message.into(),
        }
    }

    /// `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::Forbidden, message)
    }

    /// `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::NotFound, message)
    }

    /// `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::BadJson, message)
    }

    /// `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::InvalidParam, message)
    }

    /// `M_MISSING_PARAM`.
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::MissingParam, message)
    }

    /// `429 M_LIMIT_EXCEEDED`: a rate limit is reached; the client may try again after
    /// `retry_after` (sent as `retry_after_ms` and the `Retry-After` header).
    pub fn limit_exceeded(retry_after: std::time::Duration, message: impl Into<String>) -> Self {
        let mut data = ruma::api::error::LimitExceededErrorData::new();
        data.retry_after = Some(ruma::api::error::RetryAfter::Delay(retry_after));
        Self::matrix(ErrorKind::LimitExceeded(data), message)
    }

    /// A sliding-sync `pos` the server does not hold (`400 M_UNKNOWN_POS`, MSC4186): the client
    /// starts its connection over.
    pub fn unknown_pos(message: impl Into<String>) -> Self {
        Self::matrix(ErrorKind::UnknownPos, message)
    }

    /// An error code ruma has no variant for, such as `M_INVALID_SIGNATURE` (`400`).
    pub fn custom(errcode: &str, message: impl Into<String>) -> Self {
        let kind = serde_json::from_value(serde_json::json!({ "errcode": errcode }))
            .expect("any errcode string is a valid custom error kind");
        Self::matrix(kind, message)
    }

    /// Stored data that failed to decode.
    pub fn corrupt(tree: &'static str, detail: impl ToString) -> Self {
        Self::Corrupt {
            tree,
            detail: detail.to_string(),
        }
    }

    /// An internal failure.
    pub fn internal(detail: impl ToString) -> Self {
        Self::Internal(detail.to_string())
    }

    /// The text that may be given to another server: the message, or "internal server error"
    /// for storage, configuration and internal failures, whose details stay in the log.
    pub fn shareable(&self) -> String {
        match self {
            Self::Storage(_)
            | Self::DatabaseInUse { .. }
            | Self::Corrupt { .. }
            | Self::Config(_)
            | Self::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// An error followed by its `source()` chain, `outer: cause: root cause`, for logs. A cause
/// whose text the message already holds (some errors repeat their source) is not repeated.
pub fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
