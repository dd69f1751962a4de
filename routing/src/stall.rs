//! Stall detection: a replica that stops producing (a hung process, a wedged device) is noticed
//! from the requests themselves, long before the client's timeout or the next failed health
//! check, and taken out at once.
//!
//! A request's stall timeout is measured against its replica's progress, not its own: a replica
//! that keeps producing tokens for other requests is busy, not hung, and a request queued there
//! keeps its place (moving it would lose its turn and only add load elsewhere). Only a replica
//! silent for every request, for longer than the limit, counts as stalled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a replica may stay silent before its requests fail over and it is taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StallTimeouts {
    /// Before a request's first token: from its submission (or the replica's last output, if
    /// later) to a stall. `None`: no limit.
    pub first_token: Option<Duration>,
    /// Between two tokens of a request (or the replica's last output, if later). `None`: no
    /// limit.
    pub inter_token: Option<Duration>,
}

impl StallTimeouts {
    /// No stall detection (the client's own timeout still applies).
    pub const OFF: StallTimeouts = StallTimeouts {
        first_token: None,
        inter_token: None,
    };

    /// The limit for a request that has generated `generated` tokens so far.
    pub(crate) fn limit(&self, generated: usize) -> Option<Duration> {
        match generated {
            0 => self.first_token,
            _ => self.inter_token,
        }
    }
}

/// When a replica last produced anything for any request, to the millisecond: read when a
/// request's stall timer fires, written (at most once a millisecond) on every event.
pub(crate) struct Progress {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// The replica produced something at `now`.
    pub(crate) fn note(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        // A load first: with many streams on one replica, most events find the value current
        // and leave the cache line shared instead of writing it.
        if self.last_ms.load(Ordering::Relaxed) < ms {
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// When the replica last produced something (its creation if never).
    pub(crate) fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_depends_on_whether_a_token_came() {
        let t = StallTimeouts {
            first_token: Some(Duration::from_secs(3)),
            inter_token: Some(Duration::from_secs(1)),
        };
        assert_eq!(t.limit(0), Some(Duration::from_secs(3)));
        assert_eq!(t.limit(5), Some(Duration::from_secs(1)));
        assert_eq!(StallTimeouts::OFF.limit(0), None);
    }

    #[test]
    fn progress_only_moves_forward() {
        let progress = Progress::new();
        let start = progress.last();
        let later = start + Duration::from_millis(250);
        progress.note(later);
        assert_eq!(progress.last(), later);
        progress.note(start + Duration::from_millis(100));
        assert_eq!(
            progress.last(),
            later,
            "an older note does not move it back"
        );
    }
}
