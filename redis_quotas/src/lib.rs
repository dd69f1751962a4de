//! Tenant quotas kept in Redis, shared by every gateway replica: a [`policies::QuotaStore`].
//!
//! With N replicas and limits kept in each process, a tenant gets N times its limits. Here
//! every admission is one atomic Lua script in Redis (`lua/admit.lua`) that checks and takes
//! all of a tenant's limits at once, on Redis's clock: requests and tokens per minute (GCRA,
//! tokens reserved at admission and the unused part given back at settlement), the daily token
//! budget (reserved at admission too: each lease carries what it holds of the day, so a lease
//! that expires gives it back), and concurrency as leases with an expiry that this replica renews while the request
//! runs ([`leases`]), so a crashed replica's slots come back on their own. The answer carries
//! the limits' state for the `x-ratelimit-*` headers.
//!
//! When Redis cannot be reached, [`OnUnavailable`] decides: `fail_open` admits by this
//! replica's own limits (an in-process [`QuotaBook`]), `fail_closed` refuses with 503. Either
//! way Redis is tried again every `retry_interval` and used as soon as it answers.

#![warn(missing_docs)]

mod connection;
mod keys;
mod leases;
mod scripts;
#[cfg(feature = "test-server")]
pub mod test_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use policies::{
    Admission, Admitting, Ask, DailyUsage, LimitState, QuotaBook, QuotaStore, RateLimitStatus,
    Refusal, RejectReason, Rejection, Settle, Settlement, StoreFuture, StoreHealth, TenantId,
    TenantLimits, TenantSpec,
};

use connection::Connection;
pub use connection::StoreError;
use keys::TenantKeys;
use leases::Leases;
use scripts::Scripts;

/// What admission does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Admit by this replica's own limits (each replica then allows a tenant its whole limit).
    #[default]
    FailOpen,
    /// Refuse every generation with 503 until Redis answers again.
    FailClosed,
}

/// How to reach Redis and what to do without it.
#[derive(Debug, Clone)]
pub struct RedisQuotaSettings {
    /// `redis://[user:password@]host:port/db` (TLS, `rediss://`, is not compiled in yet).
    pub url: String,
    /// Prefix of every key, so several gateways (or tests) can share one Redis.
    pub namespace: String,
    /// What admission does while Redis cannot be reached.
    pub on_unavailable: OnUnavailable,
    /// How long a concurrency lease lives unless renewed: the time in which a crashed
    /// replica's slots come back.
    pub lease: Duration,
    /// The longest one call to Redis may take before it counts as unavailable.
    pub timeout: Duration,
    /// While Redis is unavailable, how often it is tried again.
    pub retry_interval: Duration,
}

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisQuotaError {
    /// The URL does not parse.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// A setting out of range.
    #[error("{0}")]
    Setting(String),
}

/// Quotas in Redis. See the crate documentation.
pub struct RedisQuotas {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisQuotaSettings,
    connection: Connection,
    leases: Leases,
    /// This replica's own limits: the `fail_open` fallback.
    local: QuotaBook,
    /// The last limits' state Redis reported per tenant, for headers that take nothing.
    readings: DashMap<TenantId, (RateLimitStatus, Instant)>,
    /// Settlements run as tasks on this runtime (an admission may be dropped anywhere).
    runtime: tokio::runtime::Handle,
    fallback_admissions: AtomicU64,
    unavailable_refusals: AtomicU64,
}

impl RedisQuotas {
    /// A store on `settings`; it connects on first use (a gateway starts even while Redis is
    /// down). Must be called inside a Tokio runtime: lease renewal runs as a task on it.
    pub fn new(settings: RedisQuotaSettings) -> Result<Self, RedisQuotaError> {
        if settings.lease < Duration::from_secs(1) {
            return Err(RedisQuotaError::Setting(
                "the lease must be at least 1 s (it is renewed every third of it)".into(),
            ));
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(RedisQuotaError::Url)?;
        let inner = Arc::new(Inner {
            connection: Connection::new(client, settings.timeout, settings.retry_interval),
            settings,
            leases: Leases::default(),
            local: QuotaBook::default(),
            readings: DashMap::new(),
            runtime: tokio::runtime::Handle::current(),
            fallback_admissions: AtomicU64::new(0),
            unavailable_refusals: AtomicU64::new(0),
        });
        tokio::spawn(renew_leases(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Leases this replica holds now (requests it admitted that have not ended).
    pub fn leases_held(&self) -> usize {
        self.inner.leases.len()
    }
}

impl QuotaStore for RedisQuotas {
    fn admit(&self, tenant: &TenantSpec, ask: Ask) -> Admitting {
        let inner = &self.inner;
        if !inner.connection.may_try() {
            // Known down: decided here, without a round trip.
            return Admitting::Decided(inner.fallback(tenant, ask));
        }
        let inner = inner.clone();
        let tenant = tenant.clone();
        Admitting::Pending(Box::pin(async move {
            match inner.admit(&tenant.id, &tenant.limits, ask).await {
                Ok(decision) => decision,
                Err(error) => {
                    inner.connection.failed(&error);
                    inner.fallback(&tenant, ask)
                }
            }
        }))
    }

    fn status(&self, tenant: &TenantSpec) -> RateLimitStatus {
        let inner = &self.inner;
        if !inner.connection.is_available() {
            return inner.local.status(tenant);
        }
        match inner.readings.get(&tenant.id) {
            Some(reading) => refilled(&reading.0, reading.1.elapsed()),
            None => full(&tenant.limits),
        }
    }

    fn live(&self, tenant: &TenantSpec) -> StoreFuture<(u64, DailyUsage)> {
        let inner = self.inner.clone();
        let tenant = tenant.clone();
        Box::pin(async move {
            match inner.live(&tenant.id).await {
                Ok(live) => live,
                Err(error) => {
                    inner.connection.failed(&error);
                    inner.local.live(&tenant)
                }
            }
        })
    }

    fn restore_usage(&self, tenant: &TenantSpec, usage: DailyUsage) -> StoreFuture<()> {
        let inner = self.inner.clone();
        let tenant = tenant.clone();
        Box::pin(async move {
            // The fallback counts from the ledger too, should Redis be down later.
            inner.local.restore_usage(&tenant, usage);
            let keys = inner.keys(&tenant.id);
            let restored = inner
                .call(|mut c, scripts| async move {
                    let seeded: i64 = scripts
                        .restore
                        .key(&keys.day)
                        .arg(usage.requests)
                        .arg(usage.prompt_tokens)
                        .arg(usage.completion_tokens)
                        .invoke_async(&mut c)
                        .await?;
                    Ok(seeded == 1)
                })
                .await;
            match restored {
                Ok(seeded) => {
                    tracing::debug!(tenant = %tenant.id, seeded, "today's usage offered to Redis")
                }
                Err(error) => inner.connection.failed(&error),
            }
        })
    }

    fn health(&self) -> Option<StoreHealth> {
        let inner = &self.inner;
        Some(StoreHealth {
            available: inner.connection.is_available(),
            errors: inner.connection.errors(),
            fallback_admissions: inner.fallback_admissions.load(Ordering::Relaxed),
            unavailable_refusals: inner.unavailable_refusals.load(Ordering::Relaxed),
        })
    }
}

impl Inner {
    fn keys(&self, tenant: &TenantId) -> TenantKeys {
        TenantKeys::new(&self.settings.namespace, tenant)
    }

    /// Runs `call` on the connection within the timeout, and notes a success.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(redis::aio::MultiplexedConnection, &'static Scripts) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let timeout = self.connection.timeout();
        let answer = tokio::time::timeout(timeout, async {
            let connection = self.connection.get().await?;
            call(connection, scripts()).await
        })
        .await
        .map_err(|_| StoreError::Timeout(timeout))??;
        self.connection.succeeded();
        Ok(answer)
    }

    /// One admission script; `Err` only when Redis could not answer.
    async fn admit(
        self: &Arc<Self>,
        tenant: &TenantId,
        limits: &TenantLimits,
        ask: Ask,
    ) -> Result<Result<Admission, Refusal>, StoreError> {
        let keys = Arc::new(self.keys(tenant));
        let lease = self.leases.next_id();
        let lease_ms = self.settings.lease.as_millis() as u64;
        let rpm = limits.requests_per_minute.unwrap_or(0);
        let tpm = limits.tokens_per_minute.unwrap_or(0);
        let answer: Vec<i64> = {
            let (keys, lease) = (keys.clone(), lease.clone());
            self.call(|mut c, scripts| async move {
                Ok(scripts
                    .admit
                    .key(&keys.requests)
                    .key(&keys.tokens)
                    .key(&keys.leases)
                    .key(&keys.day)
                    .arg(rpm)
                    .arg(tpm)
                    .arg(ask.reserve_tokens)
                    .arg(limits.max_concurrent.map_or(-1, i64::from))
                    .arg(
                        limits
                            .daily_tokens
                            .map_or(-1, |d| d.min(i64::MAX as u64) as i64),
                    )
                    .arg(&lease)
                    .arg(lease_ms)
                    .arg(ask.prompt_tokens)
                    .arg(ask.shortenable_to.unwrap_or(0))
                    .invoke_async(&mut c)
                    .await?)
            })
            .await?
        };
        let [code, retry_ms, requests_remaining, requests_reset, tokens_remaining, tokens_reset, granted] =
            answer[..]
        else {
            return Err(StoreError::Answer(format!("{answer:?}")));
        };
        let reading = |limit: u32, remaining: i64, reset: i64| {
            (limit > 0).then(|| LimitState {
                limit: limit as u64,
                remaining: remaining.max(0) as u64,
                reset: Duration::from_millis(reset.max(0) as u64),
            })
        };
        let status = RateLimitStatus {
            requests: reading(rpm, requests_remaining, requests_reset),
            tokens: reading(tpm, tokens_remaining, tokens_reset),
        };
        self.readings
            .insert(tenant.clone(), (status.clone(), Instant::now()));
        let retry_after = Some(Duration::from_millis(retry_ms.max(0) as u64));
        let reason = match code {
            0 => {
                let granted = granted.max(0) as u64;
                // The lease's member carries what it holds of the day (see admit.lua).
                let member = format!("{lease}|{granted}");
                self.leases.hold(member.clone(), keys.clone());
                let hold = Box::new(RedisHold {
                    store: Arc::downgrade(self),
                    keys,
                    lease: member,
                    tokens_per_minute: tpm,
                });
                let shortened_to = (granted < ask.reserve_tokens).then_some(granted);
                return Ok(Ok(Admission::shared(
                    ask.prompt_tokens,
                    granted,
                    shortened_to,
                    status,
                    hold,
                )));
            }
            1 => RejectReason::RequestsPerMinute,
            2 => RejectReason::TokensPerMinute,
            3 => RejectReason::RequestTooLarge,
            4 => RejectReason::Concurrency,
            5 => RejectReason::DailyBudget,
            6 => RejectReason::DailyBudgetShort,
            other => return Err(StoreError::Answer(format!("admission code {other}"))),
        };
        Ok(Err(Refusal::Limited(Rejection {
            reason,
            retry_after: (!matches!(
                reason,
                RejectReason::RequestTooLarge | RejectReason::DailyBudgetShort
            ))
            .then_some(retry_after)
            .flatten(),
            status,
        })))
    }

    /// Admission while Redis cannot be asked, by the configured policy.
    fn fallback(&self, tenant: &TenantSpec, ask: Ask) -> Result<Admission, Refusal> {
        match self.settings.on_unavailable {
            OnUnavailable::FailOpen => {
                self.fallback_admissions.fetch_add(1, Ordering::Relaxed);
                self.local.admit(tenant, ask).map_err(Refusal::Limited)
            }
            OnUnavailable::FailClosed => {
                self.unavailable_refusals.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Unavailable {
                    retry_after: self.settings.retry_interval.max(Duration::from_secs(1)),
                })
            }
        }
    }

    async fn live(&self, tenant: &TenantId) -> Result<(u64, DailyUsage), StoreError> {
        let keys = self.keys(tenant);
        let answer: Vec<u64> = self
            .call(|mut c, scripts| async move {
                Ok(scripts
                    .live
                    .key(&keys.leases)
                    .key(&keys.day)
                    .invoke_async(&mut c)
                    .await?)
            })
            .await?;
        let [in_flight, requests, prompt_tokens, completion_tokens, rejections] = answer[..] else {
            return Err(StoreError::Answer(format!("{answer:?}")));
        };
        Ok((
            in_flight,
            DailyUsage {
                requests,
                prompt_tokens,
                completion_tokens,
                rejections,
            },
        ))
    }

    /// Renews every lease this replica holds, one call per tenant.
    async fn renew(&self) {
        let lease_ms = self.settings.lease.as_millis() as u64;
        for (leases_key, ids) in self.leases.by_tenant() {
            let renewed = self
                .call(|mut c, scripts| async move {
                    let mut invocation = scripts.renew.key(&leases_key);
                    invocation.arg(lease_ms);
                    for id in &ids {
                        invocation.arg(id);
                    }
                    let _: i64 = invocation.invoke_async(&mut c).await?;
                    Ok(())
                })
                .await;
            if let Err(error) = renewed {
                self.connection.failed(&error);
                return;
            }
        }
    }
}

/// The scripts, compiled once per process (a `Script` only holds its text and hash).
fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(Scripts::default)
}

/// Renews this replica's leases every third of the lease time, while the store lives.
async fn renew_leases(store: Weak<Inner>) {
    let period = match store.upgrade() {
        Some(inner) => inner.settings.lease / 3,
        None => return,
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = store.upgrade() else { return };
        if inner.connection.may_try() {
            inner.renew().await;
        }
    }
}

/// An admission's hold in Redis: its lease, released with its usage at settlement. It does not
/// keep the store alive: a store dropped (the process ending) leaves its leases to expire.
struct RedisHold {
    store: Weak<Inner>,
    keys: Arc<TenantKeys>,
    lease: String,
    tokens_per_minute: u32,
}

impl Settle for RedisHold {
    fn settle(self: Box<Self>, settlement: Settlement) {
        let RedisHold {
            store,
            keys,
            lease,
            tokens_per_minute,
        } = *self;
        let Some(store) = store.upgrade() else {
            return;
        };
        // No longer renewed from now: should the settlement below not reach Redis, the lease
        // still expires within its time.
        store.leases.release(&lease);
        let runtime = store.runtime.clone();
        runtime.spawn(async move {
            let usage = settlement.usage;
            let settled = store
                .call(|mut c, scripts| async move {
                    let _: i64 = scripts
                        .settle
                        .key(&keys.tokens)
                        .key(&keys.leases)
                        .key(&keys.day)
                        .arg(tokens_per_minute)
                        .arg(settlement.unused_tokens)
                        .arg(&lease)
                        .arg(usage.requests)
                        .arg(usage.prompt_tokens)
                        .arg(usage.completion_tokens)
                        .invoke_async(&mut c)
                        .await?;
                    Ok(())
                })
                .await;
            if let Err(error) = settled {
                // The lease expires on its own; the usage stays in the ledger, the source of
                // truth for billing. Only today's budget counter in Redis misses it.
                tracing::warn!(%error, "quota store: a settlement did not reach Redis");
                store.connection.failed(&error);
            }
        });
    }
}

/// Every limit whole: what a tenant not seen yet reports.
fn full(limits: &TenantLimits) -> RateLimitStatus {
    let whole = |limit: Option<u32>| {
        limit.filter(|&l| l > 0).map(|l| LimitState {
            limit: l as u64,
            remaining: l as u64,
            reset: Duration::ZERO,
        })
    };
    RateLimitStatus {
        requests: whole(limits.requests_per_minute),
        tokens: whole(limits.tokens_per_minute),
    }
}

/// A reading taken `elapsed` ago, refilled by the time since (limits per minute refill
/// evenly).
fn refilled(status: &RateLimitStatus, elapsed: Duration) -> RateLimitStatus {
    let refill = |state: &Option<LimitState>| {
        state.map(|s| {
            let per_unit = Duration::from_secs(60).as_nanos() / s.limit.max(1) as u128;
            let gained = (elapsed.as_nanos() / per_unit.max(1)) as u64;
            LimitState {
                limit: s.limit,
                remaining: (s.remaining + gained).min(s.limit),
                reset: s.reset.saturating_sub(elapsed),
            }
        })
    };
    RateLimitStatus {
        requests: refill(&status.requests),
        tokens: refill(&status.tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_refills_with_time_up_to_its_limit() {
        let status = RateLimitStatus {
            requests: Some(LimitState {
                limit: 60,
                remaining: 0,
                reset: Duration::from_secs(60),
            }),
            tokens: None,
        };
        let later = refilled(&status, Duration::from_secs(10));
        let requests = later.requests.unwrap();
        assert_eq!(
            (requests.remaining, requests.reset),
            (10, Duration::from_secs(50))
        );
        assert_eq!(
            refilled(&status, Duration::from_secs(600))
                .requests
                .unwrap()
                .remaining,
            60
        );
        assert!(later.tokens.is_none());
    }
}
