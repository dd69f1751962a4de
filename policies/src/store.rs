//! Where tenants' quota state lives: [`QuotaStore`], with this process's [`QuotaBook`] as the
//! default (one gateway replica) and a store shared by every replica (the `redis_quotas`
//! crate) for a fleet, so that N replicas do not give a tenant N times its limits.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::quota::{Admission, Ask, DailyUsage, QuotaBook, RateLimitStatus, Rejection};
use crate::tenant::TenantSpec;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A limit refused it (429).
    Limited(Rejection),
    /// The shared store could not be asked and the operator chose to refuse then
    /// (`fail_closed`, 503).
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

/// A future a store answers with, boxed: a shared store's answer comes over the network.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An admission decision: at once (in process, no allocation on the hot path) or later.
pub enum Admitting {
    /// Decided without waiting.
    Decided(Result<Admission, Refusal>),
    /// To be awaited (a round trip to the shared store).
    Pending(StoreFuture<Result<Admission, Refusal>>),
}

/// How a shared store stands, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Whether the last call to the store succeeded.
    pub available: bool,
    /// Calls to the store that failed (unreachable, timed out, refused).
    pub errors: u64,
    /// Requests admitted by this replica's own limits while the store was unavailable
    /// (`fail_open`).
    pub fallback_admissions: u64,
    /// Requests refused because the store was unavailable (`fail_closed`).
    pub unavailable_refusals: u64,
}

/// Every tenant's admission state: limits per minute, concurrency, the day's budget.
pub trait QuotaStore: Send + Sync + 'static {
    /// Admits a request that will use at most `ask.reserve_tokens` (prompt + `max_tokens`), of
    /// which `ask.prompt_tokens` are its prompt, reserving them against the per-minute and
    /// the daily token limits (or what is left of the day, for a shortenable request).
    fn admit(&self, tenant: &TenantSpec, ask: Ask) -> Admitting;

    /// The tenant's current `x-ratelimit-*` state, without taking anything. A shared store
    /// answers from its last reading on this replica (headers must not cost a round trip).
    fn status(&self, tenant: &TenantSpec) -> RateLimitStatus;

    /// `(requests in flight, today's usage)` of the tenant, over every replica the store
    /// serves.
    fn live(&self, tenant: &TenantSpec) -> StoreFuture<(u64, DailyUsage)>;

    /// Seeds today's usage from the durable ledger at start-up. A shared store keeps what it
    /// already holds for today (other replicas count there) and takes the ledger's figures
    /// only when it has none.
    fn restore_usage(&self, tenant: &TenantSpec, usage: DailyUsage) -> StoreFuture<()>;

    /// A shared store's health (`None`: the store is this process, always there).
    fn health(&self) -> Option<StoreHealth> {
        None
    }
}

impl QuotaStore for QuotaBook {
    fn admit(&self, tenant: &TenantSpec, ask: Ask) -> Admitting {
        Admitting::Decided(QuotaBook::admit(self, tenant, ask).map_err(Refusal::Limited))
    }

    fn status(&self, tenant: &TenantSpec) -> RateLimitStatus {
        QuotaBook::status(self, tenant)
    }

    fn live(&self, tenant: &TenantSpec) -> StoreFuture<(u64, DailyUsage)> {
        let live = QuotaBook::live(self, tenant);
        Box::pin(async move { live })
    }

    fn restore_usage(&self, tenant: &TenantSpec, usage: DailyUsage) -> StoreFuture<()> {
        QuotaBook::restore_usage(self, tenant, usage);
        Box::pin(async {})
    }
}
