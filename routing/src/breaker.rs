//! The circuit breaker of one replica: closed (in use), open (taken out after failures) and
//! half-open (after a cool-down, one trial request or a successful health check puts it back).
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::time::{Duration, Instant};

/// When to take a replica out and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures (transport errors, failed health checks) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker keeps the replica out before it may be tried again.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 2,
            open_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over; `trial` is true while one request tests the replica.
    HalfOpen {
        trial: bool,
    },
}

/// What the router may do with a replica now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Healthy: route freely.
    Closed,
    /// Cooling down is over and no trial runs: one request may test it.
    Trial,
    /// Out.
    Out,
}

/// The breaker's state as `/admin/pools` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes requests.
    Healthy,
    /// Taken out; tried again after its cool-down.
    Unhealthy,
    /// Being tried again.
    Probing,
}

impl Health {
    /// The name `/admin/pools` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Probing => "probing",
        }
    }
}

#[derive(Debug, Clone)]
/// Takes a replica out after repeated failures and tries it again after a cool-down.
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Whether a request may go to the replica now (no change of state).
    pub fn availability(&self, now: Instant) -> Availability {
        match self.state {
            State::Closed { .. } => Availability::Closed,
            State::Open { until } if now >= until => Availability::Trial,
            State::Open { .. } => Availability::Out,
            State::HalfOpen { trial: false } => Availability::Trial,
            State::HalfOpen { trial: true } => Availability::Out,
        }
    }

    /// Takes the replica for a request; false if it is out (or its one trial is taken).
    pub fn acquire(&mut self, now: Instant) -> bool {
        match self.availability(now) {
            Availability::Closed => true,
            Availability::Trial => {
                self.state = State::HalfOpen { trial: true };
                true
            }
            Availability::Out => false,
        }
    }

    /// A request finished, or a health check passed.
    pub fn on_success(&mut self, now: Instant) {
        match self.state {
            // A check that passes during the cool-down does not cut it short: a replica that
            // flaps between answering checks and failing requests stays out for the whole
            // cool-down.
            State::Open { until } if now < until => {}
            _ => {
                self.state = State::Closed {
                    consecutive_failures: 0,
                }
            }
        }
    }

    /// A transport error, an upstream 5xx, or a failed health check.
    pub fn on_failure(&mut self, now: Instant) {
        let open = State::Open {
            until: now + self.settings.open_for,
        };
        self.state = match self.state {
            State::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures + 1;
                if failures >= self.settings.failure_threshold {
                    open
                } else {
                    State::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            // A failed trial, or a failure during the cool-down, starts a new cool-down.
            State::HalfOpen { .. } | State::Open { .. } => open,
        };
    }

    /// A stall (a replica silent for every request past its stall timeout): out at once,
    /// whatever the failure count. A hung process answers nothing, so waiting for more
    /// failures would only send it more requests to hang.
    pub fn trip(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.settings.open_for,
        };
    }

    /// The state at `now`.
    pub fn health(&self, now: Instant) -> Health {
        match self.availability(now) {
            Availability::Closed => Health::Healthy,
            Availability::Out if matches!(self.state, State::HalfOpen { .. }) => Health::Probing,
            Availability::Trial => Health::Probing,
            Availability::Out => Health::Unhealthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failure_threshold: 2,
            open_for: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let now = Instant::now();
        let mut b = breaker();
        b.on_failure(now);
        b.on_success(now);
        b.on_failure(now);
        assert_eq!(
            b.availability(now),
            Availability::Closed,
            "a success resets the count"
        );
        b.on_failure(now);
        assert_eq!(b.availability(now), Availability::Out);
        assert_eq!(b.health(now), Health::Unhealthy);
        assert!(!b.acquire(now));
    }

    #[test]
    fn half_open_allows_one_trial_then_closes_or_reopens() {
        let now = Instant::now();
        let mut b = breaker();
        b.on_failure(now);
        b.on_failure(now);
        let later = now + Duration::from_secs(5);
        assert_eq!(b.availability(later), Availability::Trial);
        assert!(b.acquire(later));
        assert!(!b.acquire(later), "only one trial at a time");
        assert_eq!(b.health(later), Health::Probing);
        b.on_failure(later);
        assert_eq!(
            b.availability(later + Duration::from_secs(1)),
            Availability::Out
        );
        let after = later + Duration::from_secs(5);
        assert!(b.acquire(after));
        b.on_success(after);
        assert_eq!(b.availability(after), Availability::Closed);
    }

    #[test]
    fn a_trip_takes_a_closed_replica_out_at_once() {
        let now = Instant::now();
        let mut b = breaker();
        assert_eq!(b.availability(now), Availability::Closed);
        b.trip(now);
        assert_eq!(b.health(now), Health::Unhealthy, "threshold 2, one trip");
        assert!(!b.acquire(now + Duration::from_secs(4)));
        assert!(
            b.acquire(now + Duration::from_secs(5)),
            "then a trial as usual"
        );
    }

    #[test]
    fn a_passing_check_during_the_cool_down_does_not_close_it() {
        let now = Instant::now();
        let mut b = breaker();
        b.on_failure(now);
        b.on_failure(now);
        b.on_success(now + Duration::from_secs(1));
        assert_eq!(b.health(now + Duration::from_secs(1)), Health::Unhealthy);
        b.on_success(now + Duration::from_secs(6));
        assert_eq!(b.health(now + Duration::from_secs(6)), Health::Healthy);
    }
}
