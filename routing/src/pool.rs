//! Pools and their replicas: where a request can go, and how busy and healthy each place is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine_api::{Engine, EngineCounters, ProbeError, ReportedLoad};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::breaker::{Availability, BreakerSettings, CircuitBreaker};
use crate::stall::{Progress, StallTimeouts};

/// A health check of a replica: `Ok(Some(load))` from an `engine-worker`, `Ok(None)` from a
/// server that reports no load, `Err` when it is unreachable or unwell.
pub type Probe =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<ReportedLoad>, ProbeError>> + Send + Sync>;

/// Where a pool's engines run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Candle engines in this process, one per device.
    Local,
    /// OpenAI-compatible servers elsewhere.
    Remote,
}

/// One engine of a pool: a local device or an upstream URL.
pub struct Replica {
    /// `cpu`, `cuda:0`, or the upstream's base URL.
    pub name: Arc<str>,
    /// The engine behind it.
    pub engine: Arc<dyn Engine>,
    probe: Option<Probe>,
    breaker: Mutex<CircuitBreaker>,
    /// When its requests count it as stalled.
    pub(crate) stall: StallTimeouts,
    progress: Progress,
    stalls: AtomicU64,
    /// Prompt plus `max_tokens` not yet generated, over the requests routed here.
    outstanding: AtomicU64,
    in_flight: AtomicU64,
    routed: AtomicU64,
    failures: AtomicU64,
    reported: Mutex<Option<ReportedLoad>>,
    last_error: Mutex<Option<String>>,
}

impl Replica {
    /// A replica named `name` over `engine`, health-checked by `probe` if given, taken out by
    /// its breaker after failures and at once when it stalls.
    pub fn new(
        name: impl Into<Arc<str>>,
        engine: Arc<dyn Engine>,
        probe: Option<Probe>,
        breaker: BreakerSettings,
        stall: StallTimeouts,
    ) -> Self {
        Self {
            name: name.into(),
            engine,
            probe,
            breaker: Mutex::new(CircuitBreaker::new(breaker)),
            stall,
            progress: Progress::new(),
            stalls: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reported: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// The load used to choose between replicas: the tokens this router has outstanding here,
    /// or what the replica reports when that is more (other gateways share it).
    pub fn load(&self) -> u64 {
        let own = self.outstanding_tokens();
        let reported = self
            .reported
            .lock()
            .expect("replica lock")
            .as_ref()
            .map_or(0, |r| r.outstanding_tokens);
        own.max(reported)
    }

    /// Prompt plus `max_tokens` not yet generated, over the requests routed here.
    pub fn outstanding_tokens(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether a background health check watches it.
    pub fn has_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Whether it can take a request at `now` (its breaker's view).
    pub fn availability(&self, now: Instant) -> Availability {
        self.breaker.lock().expect("replica lock").availability(now)
    }

    pub(crate) fn acquire(&self, now: Instant) -> bool {
        self.breaker.lock().expect("replica lock").acquire(now)
    }

    pub(crate) fn on_success(&self) {
        let now = Instant::now();
        let mut breaker = self.breaker.lock().expect("replica lock");
        let was = breaker.availability(now);
        breaker.on_success(now);
        if was != Availability::Closed && breaker.availability(now) == Availability::Closed {
            tracing::info!(replica = %self.name, "replica back in service");
        }
    }

    /// Counts a failure (a transport error, an upstream 5xx, a failed check).
    pub(crate) fn on_failure(&self, reason: &str) {
        self.count_failure(reason, CircuitBreaker::on_failure, "failure");
    }

    /// Its requests found it silent past a stall timeout: out at once (passive health), and
    /// counted as a stall as well as a failure.
    pub(crate) fn on_stall(&self, reason: &str) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
        self.count_failure(reason, CircuitBreaker::trip, "stall");
    }

    /// Counts a failure of `kind` and gives it to the breaker with `feed`; the log says when
    /// that takes the replica out (not at every failed check of a replica already out).
    fn count_failure(
        &self,
        reason: &str,
        feed: fn(&mut CircuitBreaker, Instant),
        kind: &'static str,
    ) {
        let now = Instant::now();
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("replica lock") = Some(reason.to_string());
        let mut breaker = self.breaker.lock().expect("replica lock");
        let was = breaker.availability(now);
        feed(&mut breaker, now);
        if was != Availability::Out && breaker.availability(now) == Availability::Out {
            tracing::warn!(replica = %self.name, kind, reason, "replica taken out of service");
        } else {
            tracing::debug!(replica = %self.name, kind, reason, "replica failure");
        }
    }

    /// Stalls its requests have detected since start.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// It produced an event for some request at `now`.
    pub(crate) fn note_progress(&self, now: Instant) {
        self.progress.note(now);
    }

    /// When it last produced an event for any request.
    pub(crate) fn last_progress(&self) -> Instant {
        self.progress.last()
    }

    /// Runs the health check, if the replica has one, and feeds the breaker.
    pub(crate) async fn check(&self) {
        let Some(probe) = &self.probe else { return };
        match probe().await {
            Ok(load) => {
                *self.reported.lock().expect("replica lock") = load;
                self.on_success();
            }
            Err(reason) => {
                *self.reported.lock().expect("replica lock") = None;
                self.on_failure(&format!("health check failed: {reason}"));
            }
        }
    }

    pub(crate) fn reserve(self: &Arc<Self>, tokens: u64) -> Reservation {
        self.outstanding.fetch_add(tokens, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.routed.fetch_add(1, Ordering::Relaxed);
        Reservation {
            replica: self.clone(),
            remaining: tokens,
        }
    }

    /// The engine's counters.
    pub fn counters(&self) -> &EngineCounters {
        self.engine.counters()
    }

    /// How it stands at `now`, for `/admin/pools`.
    pub fn snapshot(&self, now: Instant) -> ReplicaSnapshot {
        let health = self.breaker.lock().expect("replica lock").health(now);
        let c = self.engine.counters();
        ReplicaSnapshot {
            name: self.name.to_string(),
            health: health.as_str(),
            outstanding_tokens: self.outstanding_tokens(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            routed: self.routed.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            stalls: self.stalls(),
            last_error: self.last_error.lock().expect("replica lock").clone(),
            running: EngineCounters::get(&c.running),
            waiting: EngineCounters::get(&c.waiting),
            reported: self.reported.lock().expect("replica lock").clone(),
        }
    }
}

/// What a routed request holds on its replica; dropping it gives back what was not generated.
pub(crate) struct Reservation {
    pub replica: Arc<Replica>,
    remaining: u64,
}

impl Reservation {
    /// One token generated.
    pub fn consume_one(&mut self) {
        if self.remaining > 0 {
            self.remaining -= 1;
            self.replica.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.replica
            .outstanding
            .fetch_sub(self.remaining, Ordering::Relaxed);
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replica as `/admin/pools` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSnapshot {
    /// `cpu`, `cuda:0` or the upstream's URL.
    pub name: String,
    /// `healthy`, `unhealthy` (taken out) or `probing` (being tried again).
    pub health: &'static str,
    /// Prompt plus `max_tokens` not yet generated, over its requests.
    pub outstanding_tokens: u64,
    /// Requests routed here and not finished.
    pub in_flight: u64,
    /// Requests placed here since start.
    pub routed: u64,
    /// Transport errors, stalls and failed health checks since start.
    pub failures: u64,
    /// Times its requests found it silent past a stall timeout (each took it out at once).
    pub stalls: u64,
    /// The last transport error or failed check.
    pub last_error: Option<String>,
    /// Local engines' batch, or nothing for remote ones (see `reported`).
    pub running: u64,
    /// Local engines' waiting sequences.
    pub waiting: u64,
    /// The last load an `engine-worker` reported.
    pub reported: Option<ReportedLoad>,
}

/// Replicas of one model in one pool.
pub struct Pool {
    /// The pool's name.
    pub name: Arc<str>,
    /// Local devices or remote upstreams.
    pub kind: PoolKind,
    /// Its replicas.
    pub replicas: Vec<Arc<Replica>>,
    /// A replica with this many tokens outstanding counts as saturated (no limit if `None`).
    pub max_outstanding_tokens: Option<u64>,
}

/// How far above the mean load (with the new request) a replica may be and still take a
/// request for its cached prefix: consistent hashing with bounded loads (Mirrokni, Thorup and
/// Zadimoghaddam), so affinity never piles work on one replica.
pub const PREFIX_AFFINITY_LOAD_FACTOR: f64 = 1.25;

impl Pool {
    /// Where a request goes, among the replicas that are up and have room for `tokens`, other
    /// than `exclude` (healthy ones before one only up for a trial): the replica that ranks
    /// first for `prefix_key` (rendezvous hashing, so requests whose prompts start alike meet
    /// the replica that has their prefix cached, and a replica leaving moves only its own
    /// keys), unless its load is past [`PREFIX_AFFINITY_LOAD_FACTOR`] times the mean (the new
    /// request counted in the mean); then the next in rank within that bound.
    pub(crate) fn choose(
        &self,
        tokens: u64,
        prefix_key: u64,
        exclude: Option<&Replica>,
        now: Instant,
    ) -> Option<&Arc<Replica>> {
        let has_room = |r: &Replica| match self.max_outstanding_tokens {
            // An idle replica takes any request, however large.
            Some(max) => r.load() == 0 || r.load() + tokens <= max,
            None => true,
        };
        let open: Vec<(bool, &Arc<Replica>)> = self
            .replicas
            .iter()
            .filter(|r| exclude.is_none_or(|e| !std::ptr::eq(e, r.as_ref())))
            .filter_map(|r| match r.availability(now) {
                Availability::Out => None,
                availability => Some((availability != Availability::Closed, r)),
            })
            .filter(|(_, r)| has_room(r))
            .collect();
        // Trials only when no healthy replica is open.
        let trial = open.iter().all(|(trial, _)| *trial);
        let candidates: Vec<&Arc<Replica>> = open
            .into_iter()
            .filter(|(t, _)| *t == trial)
            .map(|(_, r)| r)
            .collect();
        let total: u64 = candidates.iter().map(|r| r.load()).sum::<u64>() + tokens;
        let bound = PREFIX_AFFINITY_LOAD_FACTOR * total as f64 / candidates.len().max(1) as f64;
        candidates
            .iter()
            .filter(|r| r.load() as f64 <= bound)
            .max_by_key(|r| rendezvous(prefix_key, &r.name))
            .or_else(|| candidates.iter().min_by_key(|r| r.load()))
            .copied()
    }
}

/// The rank of replica `name` for `key`: each key prefers the replica with the highest.
fn rendezvous(key: u64, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (key, name).hash(&mut hasher);
    hasher.finish()
}
