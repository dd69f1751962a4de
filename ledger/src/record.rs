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
    /// The name stored and shown (`completed`, `cancelled`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Completed => "completed",
            RecordStatus::Cancelled => "cancelled",
            RecordStatus::Failed => "failed",
        }
    }

    /// The status of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(RecordStatus::Completed),
            "cancelled" => Some(RecordStatus::Cancelled),
            "failed" => Some(RecordStatus::Failed),
            _ => None,
        }
    }
}

/// The API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    #[serde(rename = "chat.completions")]
    ChatCompletions,
    /// `POST /v1/completions`.
    #[serde(rename = "completions")]
    Completions,
    /// `POST /v1/embeddings`.
    #[serde(rename = "embeddings")]
    Embeddings,
    /// `POST /v1/responses`.
    #[serde(rename = "responses")]
    Responses,
    /// `POST /v1/messages` (Anthropic's Messages API).
    #[serde(rename = "messages")]
    Messages,
    /// A line of a batch (`/v1/batches`).
    #[serde(rename = "batches")]
    Batches,
}

impl Api {
    /// Every API, in the order above.
    pub const ALL: [Api; 6] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
        Api::Batches,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat.completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Batches => "batches",
        }
    }

    /// The API of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|api| api.as_str() == s)
    }
}

/// One finished request: who, what, how much, when (Unix milliseconds, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The gateway's id of the request (the `x-request-id` of its response): the record's key,
    /// unique across tenants.
    pub request_id: String,
    /// The id the client sent with the request, if it sent a usable one (see the gateway's
    /// `client_request_id`): the client's own reference, never a key.
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// Who is billed.
    pub tenant: TenantId,
    /// The project inside the tenant whose key made the request (`None`: a key of no project).
    #[serde(default)]
    pub project: Option<String>,
    /// Which of the tenant's keys was used (its non-secret id).
    pub key_id: String,
    /// The model served.
    pub model: String,
    /// The pool that served it.
    pub pool: String,
    /// Prompt tokens: the engine's own count (a local engine's tokeniser, or a remote
    /// upstream's reported `usage`).
    pub prompt_tokens: u64,
    /// `prompt_tokens` is the gateway's estimate instead: a remote upstream reported no usage
    /// (or the request ended before it did).
    #[serde(default)]
    pub prompt_tokens_estimated: bool,
    /// Tokens generated, including those of a cancelled request.
    pub completion_tokens: u64,
    /// Of the prompt tokens, those found in the prefix cache (not computed; priced apart).
    #[serde(default)]
    pub cached_tokens: u64,
    /// What the request cost, in millionths of a minor unit of the centre's currency (`None`:
    /// its model had no price when it was admitted).
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// The price version it was billed at (`model@effective_from_ms`).
    #[serde(default)]
    pub price_version: Option<String>,
    /// The API it came through (`None`: recorded before the ledger kept it).
    #[serde(default)]
    pub api: Option<Api>,
    /// The batch it was a line of, if any.
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The LoRA adapter it ran with over `model`, if any.
    #[serde(default)]
    pub adapter: Option<String>,
    /// How it ended.
    pub status: RecordStatus,
    /// `stop` / `length` for completed requests (several choices: the last one's).
    pub finish_reason: Option<String>,
    /// When the gateway admitted it.
    pub started_at_ms: i64,
    /// When it ended.
    pub ended_at_ms: i64,
}

impl UsageRecord {
    /// Prompt plus completion tokens.
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
