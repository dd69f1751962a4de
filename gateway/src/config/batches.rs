//! `[batches]`: the Files and Batch APIs (they need the control-plane store, where files, batches
//! and their results live, shared by every replica).

use serde::Deserialize;

/// `[batches]`: limits on files and batches, and how replicas run batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchesConfig {
    /// The largest file `POST /v1/files` takes (bytes); this route's body limit.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// What one tenant's files may weigh together (bytes; results included).
    #[serde(default = "default_max_storage_bytes_per_tenant")]
    pub max_storage_bytes_per_tenant: u64,
    /// The most lines (requests) in one batch's input file.
    #[serde(default = "default_max_lines_per_batch")]
    pub max_lines_per_batch: usize,
    /// Batches a tenant may have open (not yet completed, failed, expired or cancelled).
    #[serde(default = "default_max_open_batches_per_tenant")]
    pub max_open_batches_per_tenant: usize,
    /// Lines of one batch a replica runs at a time. They run in the `batch` priority class (the
    /// engines preempt and shed them first); fewer than the model's `max_running` leaves free
    /// slots for interactive arrivals, which then start without waiting for a preemption
    /// (docs/benchmarks.md: 8 of 16 kept an interactive tenant's TTFT p99 at 1.26x its solo
    /// value where 16 gave 1.72x, for the same batch throughput on a 2-core CPU).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a replica's hold on a batch lasts unless renewed (every third of it): a
    /// replica killed mid-batch leaves it to another within this.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// How often each replica looks for batches to run (ms).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long files (uploaded, and batches' output and error files) are kept (hours).
    #[serde(default = "default_file_retention_hours")]
    pub file_retention_hours: u64,
}

fn default_max_file_bytes() -> usize {
    64 << 20
}

fn default_max_storage_bytes_per_tenant() -> u64 {
    1 << 30
}

fn default_max_lines_per_batch() -> usize {
    50_000
}

fn default_max_open_batches_per_tenant() -> usize {
    8
}

fn default_concurrency() -> usize {
    8
}

fn default_lease_secs() -> u64 {
    30
}

fn default_poll_interval_ms() -> u64 {
    1_000
}

fn default_file_retention_hours() -> u64 {
    720
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: default_max_file_bytes(),
            max_storage_bytes_per_tenant: default_max_storage_bytes_per_tenant(),
            max_lines_per_batch: default_max_lines_per_batch(),
            max_open_batches_per_tenant: default_max_open_batches_per_tenant(),
            concurrency: default_concurrency(),
            lease_secs: default_lease_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            file_retention_hours: default_file_retention_hours(),
        }
    }
}
