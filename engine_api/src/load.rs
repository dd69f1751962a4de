//! The load an engine worker reports at `GET /load`: what routing reads to place requests on
//! remote replicas by their real queue, not only the gateway's own count.

use serde::{Deserialize, Serialize};

/// Load as an `engine-worker` reports it at `GET /load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLoad {
    /// The model id the worker serves.
    pub model: String,
    /// Sequences in the running batch.
    pub running: u64,
    /// Sequences waiting for admission.
    pub waiting: u64,
    /// Prompt plus `max_tokens` not yet generated, over the requests in flight.
    pub outstanding_tokens: u64,
    /// Free KV-cache blocks.
    pub kv_blocks_free: u64,
    /// KV-cache blocks in the pool.
    pub kv_blocks_total: u64,
}

/// The body of `GET /load`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// One entry per model the worker serves.
    pub models: Vec<ReportedLoad>,
}

/// Why a replica's health check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No answer: unreachable, refused, timed out (the client's account of it).
    #[error("{0}")]
    NoAnswer(String),
    /// A worker's `/load` answer that cannot be read.
    #[error("unreadable load report: {0}")]
    UnreadableReport(String),
    /// A worker that does not serve the model.
    #[error("the worker does not serve `{0}`")]
    NotServed(String),
    /// An answer other than success.
    #[error("health check answered {0}")]
    Status(u16),
}
