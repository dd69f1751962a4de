//! What the ledger stores: one [`UsageRecord`] per finished request.

use policies::TenantId;
use serde::{Deserialize, Serialize};

/// How a request ended, once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Ran to a stop condition or its length limit.
    Completed,
    /// The client went away first; billed for what was generated.
    Cancelled,
    /// Failed after admission (engine error, timeout).
    Failed,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Completed => "completed",
            RecordStatus::Cancelled => "cancelled",
            RecordStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(RecordStatus::Completed),
            "cancelled" => Some(RecordStatus::Cancelled),
            "failed" => Some(RecordStatus::Failed),
            _ => None,
        }
    }
}

/// One finished request: who, what, how much, when (Unix milliseconds, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub tenant: TenantId,
    pub key_id: String,
    pub model: String,
    pub pool: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub status: RecordStatus,
    /// `stop` / `length` for completed requests (several choices: the last one's).
    pub finish_reason: Option<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
}

impl UsageRecord {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
