//! Where requests wait when every replica they may use is up but saturated (remote pools with
//! `max_outstanding_tokens`, NPU workers, ...): the gateway's own queue for those pools, served
//! by the rule the engines use. The highest priority class first; inside a class the tenant
//! with the least weighted service ([`VirtualTokenCounters`], charged with the tokens each
//! request reserves when it is let through); inside a tenant, first come first served. Each
//! tenant's waiting requests are bounded, and a request waits at most a set time.
//!
//! Only the request whose turn it is tries to place itself (every few milliseconds while the
//! pools stay saturated); the others sleep until the room changes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policies::{Share, TenantId, VirtualTokenCounters};
use tokio::sync::Notify;

/// How long and how many requests may wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitingSettings {
    /// Longest wait before the request is refused as if no replica could take it.
    pub max_wait: Duration,
    /// Requests of one tenant that may wait, unless its own `max_waiting` says otherwise.
    pub max_waiting_per_tenant: usize,
}

/// Why a request could not join the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} requests of this tenant already wait for a saturated pool (limit {limit})")]
pub struct RoomFull {
    /// The tenant's bound.
    pub limit: usize,
    /// Its requests waiting now.
    pub waiting: usize,
}

struct Entry {
    id: u64,
    tenant: TenantId,
    share: Share,
    tokens: u64,
}

#[derive(Default)]
struct Inner {
    /// In arrival order.
    queue: VecDeque<Entry>,
    served: VirtualTokenCounters,
    next_id: u64,
}

impl Inner {
    /// The entry whose turn it is.
    fn turn(&self) -> Option<u64> {
        let class = self.queue.iter().map(|e| e.share.priority).max()?;
        let in_class = || self.queue.iter().filter(move |e| e.share.priority == class);
        let tenant = self.served.pick(in_class().map(|e| e.tenant.as_str()))?;
        in_class()
            .find(|e| e.tenant.as_str() == tenant)
            .map(|e| e.id)
    }
}

/// The waiting requests of one model's router.
pub struct WaitingRoom {
    settings: WaitingSettings,
    inner: Mutex<Inner>,
    changed: Notify,
}

/// A place in the room; leaving (dropping it) gives the place up.
pub struct Ticket {
    room: Arc<WaitingRoom>,
    id: u64,
}

impl WaitingRoom {
    /// An empty room.
    pub fn new(settings: WaitingSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> WaitingSettings {
        self.settings
    }

    /// Requests waiting now, per tenant.
    pub fn waiting(&self) -> Vec<(TenantId, usize)> {
        let inner = self.inner.lock().expect("room lock");
        let mut counts: Vec<(TenantId, usize)> = Vec::new();
        for e in &inner.queue {
            match counts.iter_mut().find(|(t, _)| t == &e.tenant) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.tenant.clone(), 1)),
            }
        }
        counts
    }

    /// Joins the queue for a request of `tenant` that will reserve `tokens`.
    pub fn join(
        self: &Arc<Self>,
        tenant: &TenantId,
        share: Share,
        tokens: u64,
    ) -> Result<Ticket, RoomFull> {
        let limit = share
            .max_waiting
            .unwrap_or(self.settings.max_waiting_per_tenant);
        let mut inner = self.inner.lock().expect("room lock");
        let waiting = inner.queue.iter().filter(|e| &e.tenant == tenant).count();
        if waiting >= limit {
            return Err(RoomFull { limit, waiting });
        }
        if waiting == 0 {
            // Idle time is not banked as credit: lift the tenant to the least served waiting.
            let others: Vec<String> = inner
                .queue
                .iter()
                .map(|e| e.tenant.as_str().to_string())
                .collect();
            inner
                .served
                .activate(tenant.as_str(), others.iter().map(String::as_str));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.queue.push_back(Entry {
            id,
            tenant: tenant.clone(),
            share,
            tokens,
        });
        Ok(Ticket {
            room: self.clone(),
            id,
        })
    }

    fn leave(&self, id: u64, served: bool) {
        let mut inner = self.inner.lock().expect("room lock");
        if let Some(at) = inner.queue.iter().position(|e| e.id == id) {
            let entry = inner.queue.remove(at).expect("found");
            if served {
                inner.served.charge(
                    entry.tenant.as_str(),
                    entry.tokens as usize,
                    entry.share.weight,
                );
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }
}

impl Ticket {
    /// Whether this request is the one to place next.
    pub fn is_turn(&self) -> bool {
        self.room.inner.lock().expect("room lock").turn() == Some(self.id)
    }

    /// Waits until the room changes (someone joined, left or was let through) or `poll`
    /// passes, whichever comes first.
    pub async fn changed(&self, poll: Duration) {
        let notified = self.room.changed.notified();
        let _ = tokio::time::timeout(poll, notified).await;
    }

    /// The request was placed: its tenant is charged and the next one's turn begins.
    pub fn served(self) {
        self.room.leave(self.id, true);
        std::mem::forget(self);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.room.leave(self.id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policies::Priority;

    fn room(max_waiting: usize) -> Arc<WaitingRoom> {
        Arc::new(WaitingRoom::new(WaitingSettings {
            max_wait: Duration::from_secs(1),
            max_waiting_per_tenant: max_waiting,
        }))
    }

    fn share(weight: f64, priority: Priority) -> Share {
        Share {
            weight,
            priority,
            ..Share::default()
        }
    }

    /// Serves whoever's turn it is until the room is empty; the tenants in serving order.
    fn serve_all(tickets: Vec<(&'static str, Ticket)>) -> Vec<&'static str> {
        let mut tickets = tickets;
        let mut order = Vec::new();
        while !tickets.is_empty() {
            let at = tickets
                .iter()
                .position(|(_, t)| t.is_turn())
                .expect("someone's turn");
            let (tenant, ticket) = tickets.remove(at);
            ticket.served();
            order.push(tenant);
        }
        order
    }

    #[test]
    fn turns_follow_weights_within_a_class_and_classes_go_first() {
        let room = room(100);
        let mut tickets = Vec::new();
        for _ in 0..8 {
            let light = room.join(
                &"light".parse().unwrap(),
                share(1.0, Priority::Interactive),
                10,
            );
            tickets.push(("light", light.unwrap()));
            let heavy = room.join(
                &"heavy".parse().unwrap(),
                share(3.0, Priority::Interactive),
                10,
            );
            tickets.push(("heavy", heavy.unwrap()));
        }
        let bulk = room.join(&"bulk".parse().unwrap(), share(100.0, Priority::Batch), 10);
        tickets.push(("bulk", bulk.unwrap()));
        let order = serve_all(tickets);
        // The batch request, however heavy its weight, comes after every interactive one.
        assert_eq!(order.last(), Some(&"bulk"));
        // While both interactive tenants wait, heavy gets three turns for each of light's.
        let first_eight = &order[..8];
        let heavy = first_eight.iter().filter(|t| **t == "heavy").count();
        assert_eq!(heavy, 6, "{order:?}");
    }

    #[test]
    fn a_tenants_waiting_requests_are_bounded_and_leaving_frees_the_place() {
        let room = room(2);
        let t: TenantId = "t".parse().unwrap();
        let a = room.join(&t, Share::default(), 1).unwrap();
        let _b = room.join(&t, Share::default(), 1).unwrap();
        assert_eq!(
            room.join(&t, Share::default(), 1).err(),
            Some(RoomFull {
                limit: 2,
                waiting: 2
            })
        );
        // A tenant's own bound wins over the room's default.
        let own = Share {
            max_waiting: Some(1),
            ..Share::default()
        };
        let u: TenantId = "u".parse().unwrap();
        let _c = room.join(&u, own, 1).unwrap();
        assert!(room.join(&u, own, 1).is_err());
        // A client that gives up (its ticket dropped) leaves no trace.
        assert!(a.is_turn());
        drop(a);
        let _d = room.join(&t, Share::default(), 1).unwrap();
        assert_eq!(room.waiting().iter().map(|(_, n)| n).sum::<usize>(), 3);
    }
}
