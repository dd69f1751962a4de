//! A GCRA limiter over tokens that can give tokens back.
//!
//! Requests per minute use governor's GCRA directly. Tokens per minute need one thing governor
//! does not offer: a request reserves `prompt + max_tokens` at admission and returns what it did
//! not use when it ends. GCRA keeps one number, the theoretical arrival time (TAT); taking `n`
//! tokens pushes it `n` emission intervals into the future, giving them back pulls it in again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A limit of `capacity` tokens per `period`, with a burst of the whole capacity.
#[derive(Debug)]
pub struct TokenLimiter {
    capacity: u64,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds of burst tolerance (the whole period).
    tolerance: u64,
    /// TAT in nanoseconds since `origin`.
    tat: AtomicU64,
    origin: Instant,
}

/// How the limiter stands after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    /// Tokens that can be taken now.
    pub remaining: u64,
    /// Time until the limiter is full again.
    pub reset: Duration,
}

impl TokenLimiter {
    /// A full limiter of `capacity` tokens, refilled evenly over `period`.
    pub fn new(capacity: u64, period: Duration) -> Self {
        let capacity = capacity.max(1);
        let tolerance = period.as_nanos() as u64;
        Self {
            capacity,
            interval: (tolerance / capacity).max(1),
            tolerance,
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// The limiter's size.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn state_at(&self, tat: u64, now: u64) -> TokenState {
        let used = tat.saturating_sub(now);
        TokenState {
            remaining: self.tolerance.saturating_sub(used) / self.interval,
            reset: Duration::from_nanos(used),
        }
    }

    /// Takes `n` tokens, or says how long until they would fit (`None`: never, `n` exceeds the
    /// capacity).
    pub fn try_take(&self, n: u64) -> Result<TokenState, Option<Duration>> {
        if n > self.capacity {
            return Err(None);
        }
        let cost = n * self.interval;
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let now = self.now();
            let new_tat = current.max(now) + cost;
            if new_tat - now > self.tolerance {
                return Err(Some(Duration::from_nanos(new_tat - now - self.tolerance)));
            }
            match self.tat.compare_exchange_weak(
                current,
                new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(self.state_at(new_tat, now)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back `n` tokens taken earlier (never below "full").
    pub fn give_back(&self, n: u64) {
        let refund = n * self.interval;
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(refund).max(self.now()))
            });
    }

    /// Its state now, taking nothing.
    pub fn state(&self) -> TokenState {
        self.state_at(self.tat.load(Ordering::Acquire), self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A period of a day: no measurable refill while the test runs, so counts are exact.
    fn limiter(capacity: u64) -> TokenLimiter {
        TokenLimiter::new(capacity, Duration::from_secs(86_400))
    }

    #[test]
    fn takes_up_to_the_capacity_then_refuses() {
        let l = limiter(100);
        assert_eq!(l.try_take(60).unwrap().remaining, 40);
        assert_eq!(l.try_take(40).unwrap().remaining, 0);
        assert!(matches!(l.try_take(1), Err(Some(_))));
        assert_eq!(
            l.try_take(101),
            Err(None),
            "more than the capacity never fits"
        );
    }

    #[test]
    fn given_back_tokens_can_be_taken_again() {
        let l = limiter(100);
        l.try_take(90).unwrap();
        assert!(l.try_take(50).is_err());
        l.give_back(80);
        assert_eq!(l.state().remaining, 90);
        assert!(l.try_take(50).is_ok());
        l.give_back(1_000);
        assert_eq!(l.state().remaining, 100, "never more than full");
    }
}
