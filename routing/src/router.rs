//! The router of one model: placement (which pool, which replica, with what reservation).
//! What happens to a placed request while it runs (retry, breaker feedback) is in `relay`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api::{EngineError, ModelInfo, Prompt};
use serde::Serialize;

use crate::pool::{Pool, PoolKind, Replica, ReplicaSnapshot};
use crate::relay::{Placement, RoutedStream};
use crate::request::{generation_request, Requester, RoutablePrompt, RouteRequest};
use crate::waiting_room::{RoomFull, WaitingRoom, WaitingSettings};

/// Why a request could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Every replica of every pool the request may use is down or saturated.
    #[error("no replica can serve model `{model}` now: {reason}")]
    NoReplica {
        /// The model.
        model: String,
        /// Why, for the client.
        reason: String,
    },
    /// The engine refused the request (the caller's fault: too long, empty, bad ids).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The pools are saturated and the tenant already has its most requests waiting for them.
    #[error("model `{model}`: {full}")]
    QueueFull {
        /// The model.
        model: String,
        /// The tenant's bound and count.
        full: RoomFull,
    },
}

/// How often the request whose turn it is looks for room while the pools stay saturated, and
/// how often the others look whether their turn came (they are also woken when it changes).
const TURN_POLL: Duration = Duration::from_millis(5);
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Every pool serving one model, in order of preference, per tier.
pub struct ModelRouter {
    info: ModelInfo,
    /// Every pool of the model.
    pools: Vec<Arc<Pool>>,
    /// The pools in the default order of preference.
    default_order: Vec<Arc<Pool>>,
    /// Tier → pools in that tier's order.
    tiers: HashMap<String, Vec<Arc<Pool>>>,
    /// Where requests wait for saturated pools (none: they are refused at once).
    waiting_room: Option<Arc<WaitingRoom>>,
}

impl ModelRouter {
    /// `pools`: every pool of the model; `default_order` and each tier's list name pools in
    /// order of preference (an empty `default_order`: all of `pools`, in order). Panics if no
    /// pool has a replica or a name is unknown (the configuration is validated before this).
    pub fn new(
        pools: Vec<Arc<Pool>>,
        default_order: &[String],
        tiers: &[(String, Vec<String>)],
    ) -> Self {
        let first = pools
            .iter()
            .flat_map(|p| p.replicas.first())
            .next()
            .expect("a model needs at least one replica");
        let info = first.engine.info().clone();
        let by_name = |names: &[String]| -> Vec<Arc<Pool>> {
            names
                .iter()
                .map(|n| {
                    pools
                        .iter()
                        .find(|p| &*p.name == n)
                        .unwrap_or_else(|| panic!("unknown pool `{n}`"))
                        .clone()
                })
                .collect()
        };
        let default_order = match default_order.is_empty() {
            true => pools.clone(),
            false => by_name(default_order),
        };
        let tiers = tiers
            .iter()
            .map(|(tier, names)| (tier.clone(), by_name(names)))
            .collect();
        Self {
            info,
            pools,
            default_order,
            tiers,
            waiting_room: None,
        }
    }

    /// Puts the operator's sampling defaults over those the model's file recommends: a request
    /// that leaves a setting out gets `defaults`' value, else the file's, else OpenAI's.
    pub fn with_sampling_defaults(mut self, defaults: engine_api::SamplingDefaults) -> Self {
        self.info.sampling_defaults = defaults.or(self.info.sampling_defaults);
        self
    }

    /// Lets requests that find every replica saturated wait (see [`WaitingRoom`]) instead of
    /// being refused at once.
    pub fn with_waiting_room(mut self, settings: WaitingSettings) -> Self {
        self.waiting_room = Some(Arc::new(WaitingRoom::new(settings)));
        self
    }

    /// The waiting room, if requests may wait.
    pub fn waiting_room(&self) -> Option<&Arc<WaitingRoom>> {
        self.waiting_room.as_ref()
    }

    /// The model's id and context.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Every pool of the model.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Every replica of every pool.
    pub fn replicas(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.pools.iter().flat_map(|p| p.replicas.iter())
    }

    fn order(&self, tier: Option<&str>) -> &[Arc<Pool>] {
        tier.and_then(|t| self.tiers.get(t))
            .map_or(&self.default_order, |pools| pools)
    }

    /// Sizes a prompt with the engine of the first pool the tier would use.
    pub fn prepare(
        &self,
        tier: Option<&str>,
        prompt: Prompt,
    ) -> Result<RoutablePrompt, RouteError> {
        let pool = &self.order(tier)[0];
        let engine = &pool.replicas[0].engine;
        let prepared = engine.prepare_prompt(&prompt)?;
        Ok(RoutablePrompt {
            original: prompt,
            prepared,
        })
    }

    fn no_replica(&self, tier: Option<&str>) -> RouteError {
        RouteError::NoReplica {
            model: self.info.id.clone(),
            reason: format!(
                "every replica of pools [{}] is down or saturated",
                self.pool_names(tier)
            ),
        }
    }

    /// [`Self::submit_all`], waiting in the waiting room while every replica the requests may
    /// use is up but saturated: by priority class, then weighted fair share, for at most the
    /// room's `max_wait`. While anyone waits, newcomers queue behind them rather than take room
    /// that frees up first.
    pub async fn submit_all_waiting(
        self: &Arc<Self>,
        requester: &Requester,
        requests: Vec<RouteRequest>,
    ) -> Result<Vec<RoutedStream>, RouteError> {
        let Some(room) = &self.waiting_room else {
            return self.submit_all(requester, requests);
        };
        let tier = requester.tier.as_deref();
        if room.waiting().is_empty() {
            match self.submit_all(requester, requests.clone()) {
                Err(RouteError::NoReplica { .. }) if self.any_up(tier) => {}
                placed => return placed,
            }
        }
        let ticket = room
            .join(
                &requester.tenant,
                requester.share,
                RouteRequest::reserved_tokens_of(&requests),
            )
            .map_err(|full| RouteError::QueueFull {
                model: self.info.id.clone(),
                full,
            })?;
        let max_wait = room.settings().max_wait;
        let deadline = Instant::now() + max_wait;
        loop {
            let turn = ticket.is_turn();
            if turn {
                match self.submit_all(requester, requests.clone()) {
                    Ok(streams) => {
                        ticket.served();
                        return Ok(streams);
                    }
                    Err(RouteError::NoReplica { .. }) if self.any_up(tier) => {}
                    Err(other) => return Err(other),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RouteError::NoReplica {
                    model: self.info.id.clone(),
                    reason: format!(
                        "every replica of pools [{}] stayed saturated for {} ms",
                        self.pool_names(tier),
                        max_wait.as_millis()
                    ),
                });
            }
            let poll = if turn { TURN_POLL } else { WAIT_POLL };
            ticket.changed(poll.min(left)).await;
        }
    }

    /// Some replica of the tier's pools is up (so a refusal means saturation, worth waiting).
    fn any_up(&self, tier: Option<&str>) -> bool {
        let now = Instant::now();
        self.order(tier)
            .iter()
            .flat_map(|p| p.replicas.iter())
            .any(|r| r.availability(now) != crate::breaker::Availability::Out)
    }

    fn pool_names(&self, tier: Option<&str>) -> String {
        let pools: Vec<&str> = self.order(tier).iter().map(|p| &*p.name).collect();
        pools.join(", ")
    }

    /// Places the requests (one replica for all of them, as one batch) and returns their
    /// streams. Each stream starts with [`crate::Routed::Placed`]; a stream whose replica fails
    /// before the first token is moved once to another replica.
    pub fn submit_all(
        self: &Arc<Self>,
        requester: &Requester,
        requests: Vec<RouteRequest>,
    ) -> Result<Vec<RoutedStream>, RouteError> {
        let tier = requester.tier.as_deref();
        let total = RouteRequest::reserved_tokens_of(&requests);
        // The choices of one request share a prompt, or their first prompt speaks for them.
        let key = requests.first().map_or(0, |r| r.prefix_key(requester));
        let mut excluded: Option<Arc<Replica>> = None;
        // A local engine whose thread died refuses at submission: try one other replica.
        for _attempt in 0..2 {
            let Some((pool, replica)) = self.choose(tier, total, key, excluded.as_deref()) else {
                break;
            };
            let engine_requests = requests
                .iter()
                .map(|r| generation_request(requester, r, pool.kind))
                .collect();
            match replica.engine.submit_all(engine_requests) {
                Ok(streams) => {
                    let streams = streams
                        .into_iter()
                        .zip(&requests)
                        .map(|(inner, request)| {
                            let reservation = replica.reserve(request.reserved_tokens());
                            RoutedStream::new(
                                self.clone(),
                                requester,
                                request,
                                &pool,
                                reservation,
                                inner,
                            )
                        })
                        .collect();
                    return Ok(streams);
                }
                Err(EngineError::EngineStopped) => {
                    replica.on_failure("the engine is not running");
                    excluded = Some(replica);
                }
                Err(other) => {
                    // The caller's fault, not the replica's: release a half-open trial.
                    replica.on_success();
                    return Err(other.into());
                }
            }
        }
        Err(self.no_replica(tier))
    }

    /// Every pool and replica, for `/admin/pools`.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let now = Instant::now();
        self.pools
            .iter()
            .map(|pool| PoolSnapshot {
                pool: pool.name.to_string(),
                kind: pool.kind,
                model: self.info.id.clone(),
                max_outstanding_tokens: pool.max_outstanding_tokens,
                replicas: pool.replicas.iter().map(|r| r.snapshot(now)).collect(),
            })
            .collect()
    }
}

impl Placement for ModelRouter {
    /// The first replica, in the tier's pool order, that is up and not saturated.
    fn choose(
        &self,
        tier: Option<&str>,
        tokens: u64,
        prefix_key: u64,
        exclude: Option<&Replica>,
    ) -> Option<(Arc<Pool>, Arc<Replica>)> {
        let now = Instant::now();
        for pool in self.order(tier) {
            // Another request may have taken a half-open replica's one trial meanwhile: the
            // acquire fails, and that replica, now out, is not chosen again.
            while let Some(replica) = pool.choose(tokens, prefix_key, exclude, now) {
                if replica.acquire(now) {
                    return Some((pool.clone(), replica.clone()));
                }
            }
        }
        None
    }
}

/// One pool of one model as `/admin/pools` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// The pool's name.
    pub pool: String,
    /// Local or remote.
    pub kind: PoolKind,
    /// The model.
    pub model: String,
    /// The pool's cap on outstanding tokens per replica, if any.
    pub max_outstanding_tokens: Option<u64>,
    /// Its replicas.
    pub replicas: Vec<ReplicaSnapshot>,
}

#[cfg(test)]
mod tests {
    use crate::relay::Routed;
    use std::time::Duration;

    use engine_api::{
        Engine, EngineCounters, GenerationRequest, PreparedPrompt, SamplingParams, SyntheticEngine,
        SyntheticOptions, TokenEvent, TokenStream,
    };

    use tokio::sync::mpsc;

    use super::*;
    use crate::breaker::BreakerSettings;
    use crate::stall::StallTimeouts;

    /// An engine that serves one request at a time, `tokens` tokens `interval` apart each,
    /// and (if `hang_after` is set) goes silent for good after that many tokens in all, as a
    /// stopped process does: it keeps every stream open and sends nothing more. With `fails`,
    /// every request gets that event at once instead, as from an unreachable or refusing
    /// upstream (the router isolated from HTTP).
    struct ScriptedEngine {
        info: ModelInfo,
        counters: EngineCounters,
        fails: Option<TokenEvent>,
        tokens: usize,
        interval: Duration,
        hang_after: Option<usize>,
        turn: Arc<tokio::sync::Mutex<usize>>,
        held: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<TokenEvent>>>>,
    }

    impl ScriptedEngine {
        fn new(tokens: usize, interval_ms: u64, hang_after: Option<usize>) -> Arc<Self> {
            Arc::new(Self {
                info: ModelInfo {
                    id: "m".into(),
                    context_length: 8192,
                    vocab_size: 0,
                    sampling_defaults: Default::default(),
                    file: Default::default(),
                },
                counters: EngineCounters::default(),
                fails: None,
                tokens,
                interval: Duration::from_millis(interval_ms),
                hang_after,
                turn: Default::default(),
                held: Default::default(),
            })
        }

        /// Streams it holds open that the relay has given up (closed).
        fn cancelled(&self) -> usize {
            let held = self.held.lock().unwrap();
            held.iter().filter(|s| s.is_closed()).count()
        }
    }

    impl Engine for ScriptedEngine {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn submit(&self, _: GenerationRequest) -> engine_api::Result<TokenStream> {
            let (events, receiver) = mpsc::unbounded_channel();
            if let Some(event) = &self.fails {
                events.send(event.clone()).unwrap();
                return Ok(TokenStream::new(0, 1, receiver));
            }
            let (turn, held) = (self.turn.clone(), self.held.clone());
            let (tokens, interval, hang_after) = (self.tokens, self.interval, self.hang_after);
            tokio::spawn(async move {
                let mut sent = turn.lock().await;
                for _ in 0..tokens {
                    if hang_after.is_some_and(|n| *sent >= n) {
                        held.lock().unwrap().push(events);
                        return;
                    }
                    tokio::time::sleep(interval).await;
                    *sent += 1;
                    let token = TokenEvent::Token {
                        id: 1,
                        text: "x".into(),
                        logprobs: None,
                    };
                    if events.send(token).is_err() {
                        return;
                    }
                }
                let _ = events.send(TokenEvent::Finished(engine_api::Completion {
                    finish_reason: engine_api::FinishReason::Length,
                    usage: engine_api::Usage {
                        prompt_tokens: 1,
                        completion_tokens: tokens,
                        cached_tokens: 0,
                        prompt_estimated: false,
                    },
                    timing: Default::default(),
                }));
            });
            Ok(TokenStream::new(0, 1, receiver))
        }
        fn prepare_prompt(&self, prompt: &Prompt) -> engine_api::Result<PreparedPrompt> {
            Ok(PreparedPrompt {
                prompt: prompt.clone(),
                tokens: 1,
                estimated: true,
            })
        }
        fn counters(&self) -> &EngineCounters {
            &self.counters
        }
    }

    fn synthetic(tokens_per_second: f64) -> Arc<dyn Engine> {
        let options = SyntheticOptions {
            tokens_per_second,
            ..SyntheticOptions::default()
        };
        Arc::new(SyntheticEngine::start("m", options).unwrap())
    }

    fn down() -> Arc<dyn Engine> {
        failing(false)
    }

    /// Every request fails before its first token: refused as invalid (an upstream 4xx, the
    /// request's fault) or unavailable (an unreachable upstream).
    fn failing(refuses: bool) -> Arc<dyn Engine> {
        let event = match refuses {
            true => TokenEvent::Refused(engine_api::Refusal {
                message: "prompt too long".into(),
                ..Default::default()
            }),
            false => TokenEvent::Unavailable("connection refused".into()),
        };
        let mut engine = Arc::into_inner(ScriptedEngine::new(0, 0, None)).unwrap();
        engine.fails = Some(event);
        Arc::new(engine)
    }

    fn pool(name: &str, engines: Vec<Arc<dyn Engine>>, max: Option<u64>) -> Arc<Pool> {
        stalling_pool(name, engines, max, StallTimeouts::OFF)
    }

    fn stalling_pool(
        name: &str,
        engines: Vec<Arc<dyn Engine>>,
        max: Option<u64>,
        stall: StallTimeouts,
    ) -> Arc<Pool> {
        let breaker = BreakerSettings {
            // Stalls take a replica out at once; other failures after one (as before).
            failure_threshold: match stall {
                StallTimeouts::OFF => 1,
                _ => 100,
            },
            open_for: Duration::from_secs(60),
        };
        Arc::new(Pool {
            name: name.into(),
            kind: PoolKind::Local,
            replicas: engines
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    Arc::new(Replica::new(format!("{name}-{i}"), e, None, breaker, stall))
                })
                .collect(),
            max_outstanding_tokens: max,
        })
    }

    fn request(router: &ModelRouter, tier: Option<&str>, max_tokens: usize) -> RouteRequest {
        RouteRequest {
            adapter: None,
            prompt: router
                .prepare(tier, Prompt::Text("one two three".into()))
                .unwrap(),
            params: SamplingParams::greedy(max_tokens),
        }
    }

    fn requester(tier: Option<&str>) -> Requester {
        Requester {
            project_share: None,
            tenant: "t".parse().unwrap(),
            share: Default::default(),
            tier: tier.map(str::to_string),
            traceparent: None,
            cache_scope: None,
        }
    }

    /// A requester whose requests ([`request`]'s prompt) rank the first replica of the tier's
    /// first pool highest, so that tests scripting that replica's failure meet it first (while
    /// it can take requests at all).
    fn first_replicas_requester(router: &ModelRouter, tier: Option<&str>) -> Requester {
        let pool = &router.order(tier)[0];
        let now = Instant::now();
        (0..1000)
            .map(|i| Requester {
                project_share: None,
                tenant: format!("t{i}").parse().unwrap(),
                ..requester(tier)
            })
            .find(|who| {
                let key = request(router, tier, 3).prefix_key(who);
                pool.choose(0, key, None, now)
                    .is_some_and(|r| Arc::ptr_eq(r, &pool.replicas[0]))
            })
            // The first replica is out: any requester will do.
            .unwrap_or_else(|| requester(tier))
    }

    /// Every placement's `(pool, replica)` and whether the stream finished.
    async fn drain(mut stream: RoutedStream) -> (Vec<(String, String)>, bool) {
        let (mut routes, mut finished) = (Vec::new(), false);
        while let Some(event) = stream.next().await {
            match event {
                Routed::Placed { pool, replica } => {
                    routes.push((pool.to_string(), replica.to_string()))
                }
                Routed::Event(TokenEvent::Token { .. }) => {}
                Routed::Event(TokenEvent::Finished(_)) => finished = true,
                Routed::Event(
                    TokenEvent::Failed(_)
                    | TokenEvent::Unavailable(_)
                    | TokenEvent::Declined(_)
                    | TokenEvent::Refused(_),
                ) => finished = false,
            }
        }
        (routes, finished)
    }

    async fn route_one(
        router: &Arc<ModelRouter>,
        tier: Option<&str>,
    ) -> (Vec<(String, String)>, bool) {
        let who = first_replicas_requester(router, tier);
        let mut streams = router
            .submit_all(&who, vec![request(router, tier, 3)])
            .unwrap();
        drain(streams.remove(0)).await
    }

    #[tokio::test]
    async fn the_tier_chooses_the_pool_order() {
        let pools = vec![
            pool("a", vec![synthetic(0.0)], None),
            pool("b", vec![synthetic(0.0)], None),
        ];
        let tiers = [(
            "premium".to_string(),
            vec!["b".to_string(), "a".to_string()],
        )];
        let router = Arc::new(ModelRouter::new(pools, &[], &tiers));
        assert_eq!(route_one(&router, None).await.0[0].0, "a");
        assert_eq!(route_one(&router, Some("premium")).await.0[0].0, "b");
        assert_eq!(route_one(&router, Some("unknown-tier")).await.0[0].0, "a");
    }

    #[tokio::test]
    async fn a_saturated_pool_falls_back_to_the_next() {
        // 10 tokens a second: the first request holds its reservation while the second arrives.
        let pools = vec![
            pool("a", vec![synthetic(10.0)], Some(20)),
            pool("b", vec![synthetic(0.0)], None),
        ];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        let first = router
            .submit_all(&requester(None), vec![request(&router, None, 15)])
            .unwrap();
        let (second, _) = route_one(&router, None).await;
        assert_eq!(
            second[0].0, "b",
            "a is saturated: 3 + 15 outstanding, 18 more would pass 20"
        );
        drop(first);
    }

    #[test]
    fn requests_that_start_alike_meet_one_replica_within_a_load_bound() {
        let engines: Vec<Arc<dyn Engine>> = (0..4).map(|_| synthetic(0.0)).collect();
        let pool = pool("p", engines, None);
        let now = Instant::now();
        let chosen = |key: u64| pool.choose(10, key, None, now).unwrap().clone();
        // Idle: each key has its replica, the same every time, and the keys spread over all.
        let mut used = std::collections::HashSet::new();
        for key in 0..64u64 {
            let first = chosen(key);
            assert!(Arc::ptr_eq(&chosen(key), &first));
            used.insert(first.name.clone());
        }
        assert_eq!(used.len(), 4, "keys spread over every replica");
        // Its replica loaded past 1.25 times the mean: the key goes elsewhere, then comes back.
        let preferred = chosen(7);
        let held = preferred.reserve(1000);
        assert!(!Arc::ptr_eq(&chosen(7), &preferred));
        drop(held);
        assert!(Arc::ptr_eq(&chosen(7), &preferred));
        // Without that replica (it failed), only its own keys move.
        let moved = (0..64u64)
            .filter(|&key| {
                let without = pool.choose(10, key, Some(&preferred), now).unwrap();
                !Arc::ptr_eq(without, &chosen(key))
            })
            .count();
        let its_own = (0..64u64)
            .filter(|&key| Arc::ptr_eq(&chosen(key), &preferred))
            .count();
        assert_eq!(moved, its_own);
    }

    #[test]
    fn the_prefix_key_is_the_scope_and_the_prompts_start() {
        let router = ModelRouter::new(vec![pool("a", vec![synthetic(0.0)], None)], &[], &[]);
        let text = |t: &str| RouteRequest {
            adapter: None,
            prompt: router.prepare(None, Prompt::Text(t.into())).unwrap(),
            params: SamplingParams::greedy(1),
        };
        let system = "You are a careful assistant. ".repeat(20);
        let a = text(&format!("{system} What is the time?"));
        let b = text(&format!("{system} Where is the station?"));
        let t = requester(None);
        assert_eq!(a.prefix_key(&t), b.prefix_key(&t), "same start, same key");
        assert_ne!(a.prefix_key(&t), text("Hello").prefix_key(&t));
        let other_tenant = Requester {
            project_share: None,
            tenant: "u".parse().unwrap(),
            ..requester(None)
        };
        assert_ne!(a.prefix_key(&t), a.prefix_key(&other_tenant));
        let group = |tenant: &str| Requester {
            project_share: None,
            tenant: tenant.parse().unwrap(),
            cache_scope: Some("group\0g".into()),
            ..requester(None)
        };
        assert_eq!(a.prefix_key(&group("t")), a.prefix_key(&group("u")));
    }

    fn waiting_router(max_wait: Duration, max_waiting: usize) -> Arc<ModelRouter> {
        // One replica, room for one request of 18 tokens at a time.
        let pools = vec![pool("a", vec![synthetic(400.0)], Some(20))];
        Arc::new(
            ModelRouter::new(pools, &[], &[]).with_waiting_room(WaitingSettings {
                max_wait,
                max_waiting_per_tenant: max_waiting,
            }),
        )
    }

    fn tenant(name: &str, weight: f64, priority: policies::Priority) -> Requester {
        Requester {
            project_share: None,
            tenant: name.parse().unwrap(),
            share: policies::Share {
                weight,
                priority,
                ..Default::default()
            },
            ..requester(None)
        }
    }

    #[tokio::test]
    async fn requests_for_a_saturated_pool_wait_and_are_let_through_by_class_and_weight() {
        use policies::Priority::{Batch, Interactive};
        let router = waiting_router(Duration::from_secs(30), 100);
        let occupant = router
            .submit_all(&requester(None), vec![request(&router, None, 15)])
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut waiters = vec![("bulk", 100.0, Batch)];
        for _ in 0..4 {
            waiters.push(("light", 1.0, Interactive));
            waiters.push(("heavy", 3.0, Interactive));
        }
        for (name, weight, priority) in waiters {
            let (shared, order) = (router.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let who = tenant(name, weight, priority);
                let request = request(&shared, None, 15);
                let mut streams = shared
                    .submit_all_waiting(&who, vec![request])
                    .await
                    .unwrap();
                order.lock().unwrap().push(name);
                drain(streams.remove(0)).await
            }));
            // Each joins before the next comes.
            while router
                .waiting_room()
                .unwrap()
                .waiting()
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>()
                < tasks.len()
            {
                tokio::task::yield_now().await;
            }
        }
        drop(occupant);
        for task in tasks {
            assert!(task.await.unwrap().1, "every waiter was served to the end");
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order.last(),
            Some(&"bulk"),
            "batch after interactive: {order:?}"
        );
        let heavy_first_four = order[..4].iter().filter(|t| **t == "heavy").count();
        assert_eq!(
            heavy_first_four, 3,
            "weights 3:1 while both wait: {order:?}"
        );
        assert!(router.waiting_room().unwrap().waiting().is_empty());
    }

    #[tokio::test]
    async fn a_wait_is_bounded_in_time_and_in_requests_per_tenant() {
        let router = waiting_router(Duration::from_millis(50), 1);
        let occupant = router
            .submit_all(&requester(None), vec![request(&router, None, 15)])
            .unwrap();
        let who = requester(None);
        let (first, second) = tokio::join!(
            router.submit_all_waiting(&who, vec![request(&router, None, 15)]),
            async {
                tokio::task::yield_now().await;
                router
                    .submit_all_waiting(&who, vec![request(&router, None, 15)])
                    .await
            }
        );
        match first {
            Err(RouteError::NoReplica { reason, .. }) => {
                assert!(reason.contains("stayed saturated"), "{reason}")
            }
            other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
        }
        assert!(
            matches!(second, Err(RouteError::QueueFull { full, .. }) if full.limit == 1),
            "{:?}",
            second.map(|_| ())
        );
        assert!(router.waiting_room().unwrap().waiting().is_empty());
        drop(occupant);
        // Room again: placed at once.
        assert!(router
            .submit_all_waiting(&who, vec![request(&router, None, 15)])
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_failure_before_the_first_token_is_retried_once_and_takes_the_replica_out() {
        let pools = vec![pool("p", vec![down(), synthetic(0.0)], None)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        let (routes, finished) = route_one(&router, None).await;
        assert!(finished);
        assert_eq!(
            routes,
            [("p".into(), "p-0".into()), ("p".into(), "p-1".into())]
        );
        // The breaker (threshold 1) took p-0 out: the next request goes straight to p-1.
        let (routes, finished) = route_one(&router, None).await;
        assert!(finished);
        assert_eq!(routes, [("p".into(), "p-1".into())]);
        let snapshot = &router.snapshot()[0].replicas;
        assert_eq!(snapshot[0].health, "unhealthy");
        assert_eq!(snapshot[0].failures, 1);
    }

    /// An upstream's 429, 401, 403 or 404 never counts against its replica (issue 30): the
    /// request moves to another replica before its first token, and the first stays in
    /// service however often it happens.
    #[tokio::test]
    async fn a_declined_request_moves_on_and_does_not_count_against_the_replica() {
        let mut declining = Arc::into_inner(ScriptedEngine::new(0, 0, None)).unwrap();
        declining.fails = Some(TokenEvent::Declined("upstream answered 429".into()));
        let pools = vec![pool("p", vec![Arc::new(declining), synthetic(0.0)], None)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        for _ in 0..5 {
            let (routes, finished) = route_one(&router, None).await;
            assert!(finished, "{routes:?}");
            assert_eq!(routes.last(), Some(&("p".into(), "p-1".into())));
        }
        let snapshot = &router.snapshot()[0].replicas;
        assert_eq!(snapshot[0].health, "healthy");
        assert_eq!(snapshot[0].failures, 0);
    }

    #[tokio::test]
    async fn a_refused_request_is_not_retried_and_does_not_count_against_the_replica() {
        let pools = vec![pool("p", vec![failing(true), synthetic(0.0)], None)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        for _ in 0..3 {
            let (routes, finished) = route_one(&router, None).await;
            assert!(!finished);
            assert_eq!(routes, [("p".into(), "p-0".into())]);
        }
        let snapshot = &router.snapshot()[0].replicas;
        assert_eq!(snapshot[0].health, "healthy");
        assert_eq!(snapshot[0].failures, 0);
    }

    #[tokio::test]
    async fn with_every_replica_out_submission_is_refused() {
        let pools = vec![pool("p", vec![down()], None)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        // The only replica fails, and there is nowhere to retry: unavailable, nothing generated.
        let (_, finished) = route_one(&router, None).await;
        assert!(!finished);
        let refused = router.submit_all(&requester(None), vec![request(&router, None, 3)]);
        assert!(matches!(refused, Err(RouteError::NoReplica { .. })));
    }

    const STALL: StallTimeouts = StallTimeouts {
        first_token: Some(Duration::from_millis(300)),
        inter_token: Some(Duration::from_millis(300)),
    };

    /// Drains a stream, with a bound so that a missing stall timeout fails instead of hanging.
    async fn drain_bounded(stream: RoutedStream) -> (Vec<(String, String)>, bool) {
        tokio::time::timeout(Duration::from_secs(30), drain(stream))
            .await
            .expect("the stream hung: the stall was not detected")
    }

    #[tokio::test]
    async fn a_replica_silent_before_the_first_token_is_taken_out_and_the_request_moves() {
        let hung = ScriptedEngine::new(5, 1, Some(0));
        let engines: Vec<Arc<dyn Engine>> = vec![hung.clone(), synthetic(0.0)];
        let pools = vec![stalling_pool("p", engines, None, STALL)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        let mut streams = router
            .submit_all(
                &first_replicas_requester(&router, None),
                vec![request(&router, None, 3)],
            )
            .unwrap();
        let (routes, finished) = drain_bounded(streams.remove(0)).await;
        assert!(finished, "failed over and finished on the live replica");
        assert_eq!(
            routes,
            [("p".into(), "p-0".into()), ("p".into(), "p-1".into())]
        );
        let snapshot = &router.snapshot()[0].replicas;
        assert_eq!(
            snapshot[0].health, "unhealthy",
            "one stall takes it out, with a threshold of 100 failures"
        );
        assert_eq!(snapshot[0].stalls, 1);
        assert_eq!(hung.cancelled(), 1, "the hung request was given up there");
        // New requests go straight to the live replica.
        assert_eq!(
            route_one(&router, None).await.0,
            [("p".into(), "p-1".into())]
        );
    }

    #[tokio::test]
    async fn a_replica_silent_mid_stream_ends_the_stream_with_an_error_and_is_taken_out() {
        let hung = ScriptedEngine::new(10, 1, Some(2));
        let pools = vec![stalling_pool(
            "p",
            vec![hung.clone(), synthetic(0.0)],
            None,
            STALL,
        )];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        let mut streams = router
            .submit_all(
                &first_replicas_requester(&router, None),
                vec![request(&router, None, 10)],
            )
            .unwrap();
        let mut stream = streams.remove(0);
        let mut tokens = 0;
        let last = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.next().await.expect("a final event") {
                    Routed::Event(TokenEvent::Token { .. }) => tokens += 1,
                    Routed::Placed { .. } => {}
                    Routed::Event(last) => return last,
                }
            }
        })
        .await
        .expect("the stream hung: the stall was not detected");
        assert_eq!(tokens, 2);
        assert!(
            matches!(&last, TokenEvent::Failed(f) if f.kind == engine_api::FailureKind::Stalled && f.message.contains("produced nothing")),
            "{last:?}"
        );
        assert!(stream.next().await.is_none());
        assert_eq!(router.snapshot()[0].replicas[0].health, "unhealthy");
        assert_eq!(hung.cancelled(), 1);
    }

    #[tokio::test]
    async fn a_request_queued_behind_others_on_a_busy_replica_keeps_its_place() {
        // One request at a time, 20 tokens 30 ms apart: the second waits about 600 ms for its
        // first token, twice the stall timeout, while the replica produces all along.
        let busy = ScriptedEngine::new(20, 30, None);
        let pools = vec![stalling_pool("p", vec![busy, synthetic(0.0)], None, STALL)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        // One batch goes to one replica: both to p-0.
        let streams = router
            .submit_all(
                &first_replicas_requester(&router, None),
                vec![request(&router, None, 20), request(&router, None, 20)],
            )
            .unwrap();
        let outcomes = futures::future::join_all(streams.into_iter().map(drain_bounded)).await;
        for (routes, finished) in outcomes {
            assert!(finished);
            assert_eq!(routes, [("p".into(), "p-0".into())], "never moved");
        }
        let snapshot = &router.snapshot()[0].replicas;
        assert_eq!(snapshot[0].health, "healthy");
        assert_eq!(snapshot[0].stalls, 0);
    }

    #[tokio::test]
    async fn a_dropped_stream_gives_its_reservation_back() {
        let pools = vec![pool("p", vec![synthetic(20.0)], None)];
        let router = Arc::new(ModelRouter::new(pools, &[], &[]));
        let mut streams = router
            .submit_all(&requester(None), vec![request(&router, None, 100)])
            .unwrap();
        let mut stream = streams.remove(0);
        // Wait for the first token, then hang up.
        while !matches!(
            stream.next().await,
            Some(Routed::Event(TokenEvent::Token { .. }))
        ) {}
        assert!(router.snapshot()[0].replicas[0].outstanding_tokens > 0);
        drop(stream);
        let started = std::time::Instant::now();
        loop {
            let replica = &router.snapshot()[0].replicas[0];
            if replica.outstanding_tokens == 0 && replica.in_flight == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "reservation leaked"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
