//! Why a control-plane call failed. Each kind maps to one HTTP status in the gateway.

/// Why a read or write of the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's role does not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such tenant, project or key (404).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or is in a state that refuses the change (409).
    #[error("{0}")]
    Conflict(String),
    /// A field is missing, unknown or out of range (400).
    #[error("{message}")]
    Invalid {
        /// The field, as a path into the request body (`limits.max_concurrent`).
        param: String,
        /// What is wrong.
        message: String,
    },
    /// The store could not be reached or failed: nothing was written (503).
    #[error("control-plane store unavailable: {0}")]
    Unavailable(String),
    /// The schema could not be brought up to date at start.
    #[error("control-plane store: schema migration failed: {0}")]
    Migration(String),
    /// A stored document this crate would not have written.
    #[error("control-plane store: unexpected stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A field's error.
    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
