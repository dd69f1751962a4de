//! The in-flight relay: one placed request's events on their way to the caller, with one
//! retry on another replica before the first token, the reservation held until the end, and
//! every outcome reported to the replica's circuit breaker.

use std::sync::Arc;

use engines::{TokenEvent, TokenStream};

use crate::pool::{Pool, Replica, Reservation};
use crate::request::{generation_request, Requester, RouteRequest};

/// Where a request can be placed again: the model's router, seen from the relay (which must
/// not depend on the router that creates it).
pub(crate) trait Placement: Send + Sync {
    /// The first replica, in the tier's pool order, that is up, not saturated and not
    /// `exclude`; its breaker has let the request through.
    fn choose(
        &self,
        tier: Option<&str>,
        tokens: u64,
        exclude: Option<&Replica>,
    ) -> Option<(Arc<Pool>, Arc<Replica>)>;
}

fn routed_event(pool: &Pool, replica: &Replica) -> TokenEvent {
    TokenEvent::Routed {
        pool: pool.name.clone(),
        replica: replica.name.clone(),
    }
}

/// One routed request's events, read by the caller. The routing work (retry, reservation,
/// breaker feedback) happens inside [`RoutedStream::next`], on the caller's task: no task and
/// no second channel per request. Dropping it drops the engine's stream, which cancels the
/// request there, and gives the reservation back.
pub struct RoutedStream {
    /// The `Routed` event still to deliver.
    routed: Option<TokenEvent>,
    router: Arc<dyn Placement>,
    requester: Requester,
    request: RouteRequest,
    reservation: Reservation,
    inner: TokenStream,
    generated: usize,
    retried: bool,
    done: bool,
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
            routed: Some(routed_event(pool, &reservation.replica)),
            router,
            requester: requester.clone(),
            request: request.clone(),
            reservation,
            inner,
            generated: 0,
            retried: false,
            done: false,
        }
    }

    /// The next event: `Routed` first (again after a retry), then the engine's events; `None`
    /// after the final one.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        if let Some(routed) = self.routed.take() {
            return Some(routed);
        }
        if self.done {
            return None;
        }
        let replica = self.reservation.replica.clone();
        let event = match self.inner.next().await {
            Some(TokenEvent::Token { id, text }) => {
                self.generated += 1;
                self.reservation.consume_one();
                return Some(TokenEvent::Token { id, text });
            }
            Some(TokenEvent::Finished(completion)) => {
                replica.on_success();
                TokenEvent::Finished(completion)
            }
            Some(TokenEvent::Unavailable(reason)) if self.generated == 0 && !self.retried => {
                replica.on_failure(&reason);
                self.retried = true;
                match self.retry(&replica) {
                    Some((pool, reservation, inner)) => {
                        tracing::info!(from = %replica.name, to = %reservation.replica.name, reason, "retrying on another replica before the first token");
                        let routed = routed_event(&pool, &reservation.replica);
                        self.reservation = reservation;
                        self.inner = inner;
                        return Some(routed);
                    }
                    None => TokenEvent::Unavailable(reason),
                }
            }
            Some(TokenEvent::Unavailable(reason)) if self.generated == 0 => {
                // The retry failed too: still nothing generated, still "unavailable".
                replica.on_failure(&reason);
                TokenEvent::Unavailable(reason)
            }
            // Refused before any token without being unavailable: the request's fault (an
            // upstream 4xx), not the replica's; it answered, so it counts as healthy.
            Some(TokenEvent::Failed(reason)) if self.generated == 0 => {
                replica.on_success();
                TokenEvent::Failed(reason)
            }
            Some(TokenEvent::Failed(reason) | TokenEvent::Unavailable(reason)) => {
                replica.on_failure(&reason);
                TokenEvent::Failed(reason)
            }
            Some(routed @ TokenEvent::Routed { .. }) => return Some(routed),
            None => {
                let reason = "the engine stopped before the request finished".to_string();
                replica.on_failure(&reason);
                TokenEvent::Failed(reason)
            }
        };
        self.done = true;
        Some(event)
    }

    /// The same request on another replica (any pool of the tier), if one can take it.
    fn retry(&self, failed: &Replica) -> Option<(Arc<Pool>, Reservation, TokenStream)> {
        let tokens = self.request.reserved_tokens();
        let (pool, replica) =
            self.router
                .choose(self.requester.tier.as_deref(), tokens, Some(failed))?;
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
