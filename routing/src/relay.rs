//! The in-flight relay: one placed request's events on their way to the caller, with one
//! retry on another replica before the first token, the reservation held until the end, every
//! outcome reported to the replica's circuit breaker, and a stall watch (see `stall`) that
//! fails a silent replica's requests over and takes it out.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api::{Failure, FailureKind, TokenEvent, TokenStream};

use crate::pool::{Pool, Replica, Reservation};
use crate::request::{generation_request, Requester, RouteRequest};

/// Where a request can be placed again: the model's router, seen from the relay (which must
/// not depend on the router that creates it).
pub(crate) trait Placement: Send + Sync {
    /// The first replica, in the tier's pool order, that is up, not saturated and not
    /// `exclude`; its breaker has let the request through.
    /// Requests with the same `prefix_key` go to the same replica while its load allows.
    fn choose(
        &self,
        tier: Option<&str>,
        tokens: u64,
        prefix_key: u64,
        exclude: Option<&Replica>,
    ) -> Option<(Arc<Pool>, Arc<Replica>)>;
}

/// What the caller of a routed request reads: where the router placed it, then its engine's
/// events. Placement is the router's fact, not an engine's: it travels in the router's own
/// event, around the engine's.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// The request runs on this pool and replica (before the first token, and again if a
    /// retry moves it).
    Placed {
        /// The pool's name.
        pool: Arc<str>,
        /// The replica's name.
        replica: Arc<str>,
    },
    /// An event of the engine that serves it (as the router passes it on: a decline or a
    /// stall it could not recover from reads as `Unavailable` or `Failed`).
    Event(TokenEvent),
}

fn placed(pool: &Pool, replica: &Replica) -> Routed {
    Routed::Placed {
        pool: pool.name.clone(),
        replica: replica.name.clone(),
    }
}

/// One routed request's events, read by the caller. The routing work (retry, reservation,
/// breaker feedback) happens inside [`RoutedStream::next`], on the caller's task: no task and
/// no second channel per request. Dropping it drops the engine's stream, which cancels the
/// request there, and gives the reservation back.
pub struct RoutedStream {
    /// The placement still to tell.
    routed: Option<Routed>,
    router: Arc<dyn Placement>,
    requester: Requester,
    request: RouteRequest,
    reservation: Reservation,
    inner: TokenStream,
    generated: usize,
    retried: bool,
    done: bool,
    /// Armed on the first read from a replica with stall timeouts.
    watch: Option<StallWatch>,
}

/// A routed request's stall timer. Armed once per replica and re-armed only when it fires
/// (from the replica's latest progress), so a token costs a clock read, not a timer update.
struct StallWatch {
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When the request reached its current replica.
    since: Instant,
}

impl StallWatch {
    fn new(since: Instant, limit: Duration) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep_until((since + limit).into())),
            since,
        }
    }
}

impl RoutedStream {
    /// Wraps `inner` in the stream the caller reads: it retries once elsewhere if the replica
    /// fails before the first token, and holds the reservation until the end.
    pub(crate) fn new(
        router: Arc<dyn Placement>,
        requester: &Requester,
        request: &RouteRequest,
        pool: &Pool,
        reservation: Reservation,
        inner: TokenStream,
    ) -> Self {
        RoutedStream {
            routed: Some(placed(pool, &reservation.replica)),
            router,
            requester: requester.clone(),
            request: request.clone(),
            reservation,
            inner,
            generated: 0,
            retried: false,
            done: false,
            watch: None,
        }
    }

    /// The engine's next event, or the silence that counts the replica as stalled.
    async fn next_or_stall(&mut self) -> Result<Option<TokenEvent>, Duration> {
        let replica = &self.reservation.replica;
        loop {
            let Some(limit) = replica.stall.limit(self.generated) else {
                return Ok(self.inner.next().await);
            };
            let watch = self
                .watch
                .get_or_insert_with(|| StallWatch::new(Instant::now(), limit));
            tokio::select! {
                biased;
                event = self.inner.next() => {
                    replica.note_progress(Instant::now());
                    return Ok(event);
                }
                () = watch.timer.as_mut() => {
                    let last = replica.last_progress().max(watch.since);
                    let deadline = last + limit;
                    if Instant::now() >= deadline {
                        return Err(limit);
                    }
                    // Busy, not hung: the replica produced something for some request lately.
                    watch.timer.as_mut().reset(deadline.into());
                }
            }
        }
    }

    /// The next event: the placement first (again after a retry), then the engine's events;
    /// `None` after the final one.
    pub async fn next(&mut self) -> Option<Routed> {
        if let Some(routed) = self.routed.take() {
            return Some(routed);
        }
        if self.done {
            return None;
        }
        let replica = self.reservation.replica.clone();
        let next = match self.next_or_stall().await {
            Ok(next) => next,
            Err(limit) => {
                let reason = format!(
                    "replica {} produced nothing for {limit:?} ({} tokens into the request)",
                    replica.name, self.generated
                );
                replica.on_stall(&reason);
                // Gives the request up there: a hung upstream's connection is closed, a local
                // engine frees the sequence.
                self.inner.cancel();
                let event = match (self.generated, self.retried) {
                    (0, false) => match self.fail_over(&replica, &reason) {
                        Some(routed) => return Some(routed),
                        None => TokenEvent::Unavailable(reason),
                    },
                    (0, true) => TokenEvent::Unavailable(reason),
                    _ => TokenEvent::Failed(Failure::new(FailureKind::Stalled, reason)),
                };
                self.done = true;
                return Some(Routed::Event(event));
            }
        };
        let event = match next {
            Some(token @ TokenEvent::Token { .. }) => {
                self.generated += 1;
                self.reservation.consume_one();
                return Some(Routed::Event(token));
            }
            Some(TokenEvent::Finished(completion)) => {
                replica.on_success();
                TokenEvent::Finished(completion)
            }
            Some(TokenEvent::Unavailable(reason)) if self.generated == 0 && !self.retried => {
                replica.on_failure(&reason);
                match self.fail_over(&replica, &reason) {
                    Some(routed) => return Some(routed),
                    None => TokenEvent::Unavailable(reason),
                }
            }
            Some(TokenEvent::Unavailable(reason)) if self.generated == 0 => {
                // The retry failed too: still nothing generated, still "unavailable".
                replica.on_failure(&reason);
                TokenEvent::Unavailable(reason)
            }
            // Declined (an upstream's 429, 401, 403, 404): not the replica's failure, and
            // another replica may take it.
            Some(TokenEvent::Declined(reason)) if self.generated == 0 && !self.retried => {
                replica.on_success();
                match self.fail_over(&replica, &reason) {
                    Some(routed) => return Some(routed),
                    None => TokenEvent::Unavailable(reason),
                }
            }
            Some(TokenEvent::Declined(reason)) => {
                replica.on_success();
                TokenEvent::Unavailable(reason)
            }
            // Refused as invalid: the request's fault, not the replica's; it answered, so it
            // counts as healthy, and another replica would refuse it too.
            Some(TokenEvent::Refused(reason)) => {
                replica.on_success();
                TokenEvent::Refused(reason)
            }
            Some(TokenEvent::Failed(failure)) => {
                replica.on_failure(&failure.message);
                TokenEvent::Failed(failure)
            }
            Some(TokenEvent::Unavailable(reason)) => {
                replica.on_failure(&reason);
                TokenEvent::Failed(Failure::new(FailureKind::Unavailable, reason))
            }
            None => {
                let reason = "the engine stopped before the request finished";
                replica.on_failure(reason);
                TokenEvent::Failed(Failure::new(FailureKind::Stopped, reason))
            }
        };
        self.done = true;
        Some(Routed::Event(event))
    }

    /// Uses the one retry: the request moves to another replica, and the placement that says
    /// so is returned; `None` if no replica can take it.
    fn fail_over(&mut self, failed: &Replica, reason: &str) -> Option<Routed> {
        self.retried = true;
        let (pool, reservation, inner) = self.retry(failed)?;
        tracing::info!(from = %failed.name, to = %reservation.replica.name, reason, "retrying on another replica before the first token");
        let routed = placed(&pool, &reservation.replica);
        self.reservation = reservation;
        self.inner = inner;
        self.watch = None;
        Some(routed)
    }

    /// The same request on another replica (any pool of the tier), if one can take it.
    fn retry(&self, failed: &Replica) -> Option<(Arc<Pool>, Reservation, TokenStream)> {
        let tokens = self.request.reserved_tokens();
        let key = self.request.prefix_key(&self.requester);
        let (pool, replica) =
            self.router
                .choose(self.requester.tier.as_deref(), tokens, key, Some(failed))?;
        let request = generation_request(&self.requester, &self.request, pool.kind);
        match replica.engine.submit(request) {
            Ok(inner) => Some((pool, replica.reserve(tokens), inner)),
            Err(e) => {
                replica.on_failure(&e.to_string());
                None
            }
        }
    }
}
