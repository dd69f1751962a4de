//! Fair share across tenants: virtual token counters (VTC, "Fairness in Serving Large Language
//! Models", OSDI 2024).
//!
//! Each tenant has a counter of the service it received, in tokens divided by its weight. When
//! the scheduler admits, it serves the waiting tenant with the smallest counter. A tenant that
//! becomes active (nothing waiting or running before) is lifted to the smallest counter among
//! the active tenants, so time spent idle is not banked as credit. A tenant that floods the
//! engine therefore gets what the others leave, not everyone's share.
//!
//! The engines' schedulers admit by these counters, and so does the gateway's waiting room for
//! saturated pools.

use std::collections::HashMap;

/// The counters, keyed by tenant label.
#[derive(Debug, Default, Clone)]
pub struct VirtualTokenCounters {
    counters: HashMap<String, f64>,
}

impl VirtualTokenCounters {
    /// The service `tenant` received so far (0 for a tenant never seen).
    pub fn get(&self, tenant: &str) -> f64 {
        self.counters.get(tenant).copied().unwrap_or(0.0)
    }

    /// A tenant with no sequence in the engine submits: lift it to the least-served active
    /// tenant (if any is active), never lower it.
    pub fn activate<'a>(&mut self, tenant: &str, active: impl Iterator<Item = &'a str>) {
        let floor = active
            .filter(|t| *t != tenant)
            .map(|t| self.get(t))
            .min_by(f64::total_cmp);
        let counter = self.counters.entry(tenant.to_string()).or_insert(0.0);
        if let Some(floor) = floor {
            *counter = counter.max(floor);
        }
    }

    /// Records service: `tokens` processed for `tenant`, whose weight is `weight`.
    pub fn charge(&mut self, tenant: &str, tokens: usize, weight: f64) {
        *self.counters.entry(tenant.to_string()).or_insert(0.0) += tokens as f64 / weight.max(1e-6);
    }

    /// Takes back a charge for tokens that were planned but will not run (their sequence was
    /// preempted in the same step).
    pub fn refund(&mut self, tenant: &str, tokens: usize, weight: f64) {
        if let Some(counter) = self.counters.get_mut(tenant) {
            *counter -= tokens as f64 / weight.max(1e-6);
        }
    }

    /// Of the candidate tenants, the least served (the first on ties).
    pub fn pick<'a>(&self, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        candidates.fold(None, |best: Option<&str>, t| match best {
            Some(b) if self.get(b) <= self.get(t) => Some(b),
            _ => Some(t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_least_served_and_weights_count() {
        let mut vtc = VirtualTokenCounters::default();
        vtc.charge("a", 30, 1.0);
        vtc.charge("b", 30, 3.0);
        assert_eq!(vtc.get("b"), 10.0);
        assert_eq!(vtc.pick(["a", "b"].into_iter()), Some("b"));
        assert_eq!(vtc.pick(std::iter::empty()), None);
    }

    #[test]
    fn a_newly_active_tenant_banks_no_idle_credit() {
        let mut vtc = VirtualTokenCounters::default();
        vtc.charge("a", 100, 1.0);
        vtc.charge("b", 40, 1.0);
        vtc.activate("c", ["a", "b"].into_iter());
        assert_eq!(
            vtc.get("c"),
            40.0,
            "lifted to the least-served active tenant"
        );
        vtc.charge("c", 200, 1.0);
        vtc.activate("c", ["a"].into_iter());
        assert_eq!(vtc.get("c"), 240.0, "never lowered");
        vtc.activate("d", std::iter::empty());
        assert_eq!(vtc.get("d"), 0.0);
    }
}
