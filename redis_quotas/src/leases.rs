//! The concurrency leases this replica holds. Each admitted request holds a lease in its
//! tenant's sorted set, scored by its expiry; while the request runs, this replica renews it
//! every third of the lease time. A replica that dies stops renewing, and its leases expire on
//! their own: its slots come back within one lease time, with no one to clean up after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::keys::TenantKeys;

/// The live leases of this replica: lease id to its tenant's keys.
pub struct Leases {
    /// This replica's prefix of every lease id: random, so replicas never collide.
    replica: String,
    next: AtomicU64,
    live: DashMap<String, Arc<TenantKeys>>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            replica: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(0),
            live: DashMap::new(),
        }
    }
}

impl Leases {
    /// A lease id not used before by any replica.
    pub fn next_id(&self) -> String {
        format!(
            "{}:{}",
            self.replica,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The lease was granted: renew it until [`Self::release`].
    pub fn hold(&self, id: String, keys: Arc<TenantKeys>) {
        self.live.insert(id, keys);
    }

    /// The request ended: stop renewing.
    pub fn release(&self, id: &str) {
        self.live.remove(id);
    }

    /// Live leases grouped by their tenant's lease set, for one renewal call each.
    pub fn by_tenant(&self) -> HashMap<String, Vec<String>> {
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for entry in self.live.iter() {
            groups
                .entry(entry.value().leases.clone())
                .or_default()
                .push(entry.key().clone());
        }
        groups
    }

    /// How many leases are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::TenantId;

    #[test]
    fn released_leases_are_no_longer_renewed_and_ids_are_unique() {
        let leases = Leases::default();
        let keys = |t: &str| Arc::new(TenantKeys::new("gw", &TenantId::new(t).unwrap()));
        let (a, b, c) = (leases.next_id(), leases.next_id(), leases.next_id());
        assert!(a != b && b != c);
        leases.hold(a.clone(), keys("x"));
        leases.hold(b.clone(), keys("x"));
        leases.hold(c.clone(), keys("y"));
        leases.release(&b);
        let groups = leases.by_tenant();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[&keys("x").leases], vec![a]);
        assert_eq!(leases.len(), 2);
        assert_ne!(Leases::default().next_id(), Leases::default().next_id());
    }
}
