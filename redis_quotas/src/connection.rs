//! The connection to Redis and whether it is up.
//!
//! One multiplexed connection serves every request of the replica. When a call fails, the
//! connection is dropped and the store counts as unavailable: requests are then decided
//! without a round trip (by the fallback policy) and one request per `retry_interval` tries to
//! connect again, so a dead Redis costs each request nothing and a revived one is used again
//! within that interval, without a restart. State changes are logged once each.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// Why a call to the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error, or the connection broke.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The store is down and it is not yet time to try again.
    #[error("Redis is unavailable (next try soon)")]
    Down,
    /// A script answered something it never answers.
    #[error("unexpected answer from Redis: {0}")]
    Answer(String),
}

/// The shared connection and its health.
pub struct Connection {
    client: redis::Client,
    timeout: Duration,
    retry_interval: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
    /// Held by the one request that is connecting; the others do not wait for it.
    connecting: tokio::sync::Mutex<()>,
    available: AtomicBool,
    /// Milliseconds since `origin` before which nobody tries to connect again.
    retry_at_ms: AtomicU64,
    origin: Instant,
    errors: AtomicU64,
}

impl Connection {
    /// A connection to `client`, made on first use; calls time out after `timeout`.
    pub fn new(client: redis::Client, timeout: Duration, retry_interval: Duration) -> Self {
        Self {
            client,
            timeout,
            retry_interval,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            // Until the first call says otherwise: the first request tries at once.
            available: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            origin: Instant::now(),
            errors: AtomicU64::new(0),
        }
    }

    /// The time one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether a call may be tried now: the store is up, or it is time to try it again.
    pub fn may_try(&self) -> bool {
        self.available.load(Ordering::Acquire)
            || self.now_ms() >= self.retry_at_ms.load(Ordering::Acquire)
    }

    /// Whether the last call succeeded.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Failed calls so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The connection, made now if there is none (by one caller at a time; the others are told
    /// the store is down rather than wait).
    pub async fn get(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(connection) = self.current.lock().expect("connection lock").clone() {
            return Ok(connection);
        }
        if !self.may_try() {
            return Err(StoreError::Down);
        }
        let Ok(_connecting) = self.connecting.try_lock() else {
            return Err(StoreError::Down);
        };
        if let Some(connection) = self.current.lock().expect("connection lock").clone() {
            return Ok(connection);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.current.lock().expect("connection lock") = Some(connection.clone());
        Ok(connection)
    }

    /// A call succeeded.
    pub fn succeeded(&self) {
        if !self.available.swap(true, Ordering::AcqRel) {
            tracing::warn!("quota store: Redis is reachable again; limits are shared again");
        }
    }

    /// A call failed: the connection is dropped and the next try waits `retry_interval`.
    pub fn failed(&self, error: &StoreError) {
        if matches!(error, StoreError::Down) {
            return;
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.current.lock().expect("connection lock") = None;
        self.retry_at_ms.store(
            self.now_ms() + self.retry_interval.as_millis() as u64,
            Ordering::Release,
        );
        if self.available.swap(false, Ordering::AcqRel) {
            tracing::error!(%error, "quota store: Redis is unavailable");
        }
    }
}
