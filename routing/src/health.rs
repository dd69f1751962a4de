//! Background health checks of every replica that has one (remote upstreams).

use std::sync::Arc;
use std::time::Duration;

use crate::router::ModelRouter;

/// Checks every replica of `routers` each `interval` until the runtime shuts down. Checks of
/// one round run concurrently, so a replica that hangs delays nobody but itself.
pub fn spawn_health_checks(
    routers: Vec<Arc<ModelRouter>>,
    interval: Duration,
    runtime: &tokio::runtime::Handle,
) {
    // Nothing to check: local replicas have no health check.
    if routers
        .iter()
        .flat_map(|r| r.replicas())
        .all(|r| !r.has_probe())
    {
        return;
    }
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let checks = routers
                .iter()
                .flat_map(|r| r.replicas())
                .map(|replica| replica.check());
            futures::future::join_all(checks).await;
        }
    });
}
