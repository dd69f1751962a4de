//! Routing between engine replicas: pools (local devices or remote upstreams) in order of
//! preference per tenant tier, the least-loaded healthy replica within a pool, circuit breakers
//! fed by transport errors, stalls and background health checks, and one retry before the first
//! token. When every replica a request may use is up but saturated, it waits in the model's
//! waiting room, let through by priority class and weighted fair share.
//!
//! The gateway builds one [`ModelRouter`] per model from its `[[pools]]` configuration.

#![warn(missing_docs)]

mod breaker;
mod health;
mod pool;
mod relay;
mod request;
mod router;
mod stall;
mod waiting_room;

// The surface other crates use; the modules stay private.

pub use breaker::{Availability, BreakerSettings, CircuitBreaker, Health};
pub use health::spawn_health_checks;
pub use pool::{Pool, PoolKind, Probe, Replica, ReplicaSnapshot};
pub use relay::{Routed, RoutedStream};
pub use request::{Requester, RoutablePrompt, RouteRequest};
pub use router::{ModelRouter, PoolSnapshot, RouteError};
pub use stall::StallTimeouts;
pub use waiting_room::{RoomFull, Ticket, WaitingRoom, WaitingSettings};
