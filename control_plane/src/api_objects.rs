//! What the API keeps for a tenant at its request (stored responses; files and batches to
//! come): one row per object, owned by one tenant and read only by it, with a retention after
//! which it is purged. Kept apart from the documents replicas cache: writing one does not move
//! the store's version.

use serde::{Deserialize, Serialize};

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiObject {
    /// What it is (`response`, ...).
    pub kind: String,
    /// Its id (`resp_...`), unique within its kind.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// When it was made (Unix ms).
    pub created_ms: i64,
    /// When it is purged (Unix ms); `None`: kept until deleted.
    pub expires_ms: Option<i64>,
    /// Its content (JSON).
    pub body: String,
}

impl ApiObject {
    /// Whether it is still kept at `now_ms`.
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.expires_ms.is_none_or(|at| at > now_ms)
    }
}
