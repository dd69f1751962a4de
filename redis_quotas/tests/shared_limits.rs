//! Two stores on one real Redis stand for two gateway replicas: every limit holds over both,
//! a crashed replica's slots come back within the lease time, and Redis going away follows
//! the configured policy and is used again when it returns.

use std::time::{Duration, Instant};

use policies::{
    Admission, Admitting, Ask, ModelAllowList, QuotaStore, Refusal, RejectReason, TenantId,
    TenantLimits, TenantSpec,
};
use redis_quotas::test_server::RedisServer;
use redis_quotas::{OnUnavailable, RedisQuotaSettings, RedisQuotas};

fn tenant(id: &str, limits: TenantLimits) -> TenantSpec {
    TenantSpec {
        id: TenantId::new(id).unwrap(),
        models: ModelAllowList::all(),
        limits,
        tier: None,
        prefix_cache_group: None,
    }
}

fn replica(redis: &RedisServer, lease: Duration, policy: OnUnavailable) -> RedisQuotas {
    RedisQuotas::new(RedisQuotaSettings {
        url: redis.url(),
        namespace: "test".into(),
        on_unavailable: policy,
        lease,
        timeout: Duration::from_millis(500),
        retry_interval: Duration::from_millis(200),
    })
    .unwrap()
}

async fn admit(
    store: &RedisQuotas,
    tenant: &TenantSpec,
    prompt: u64,
    reserve: u64,
) -> Result<Admission, Refusal> {
    match store.admit(tenant, Ask::new(prompt, reserve)) {
        Admitting::Decided(decision) => decision,
        Admitting::Pending(decision) => decision.await,
    }
}

fn reason(refusal: Result<Admission, Refusal>) -> RejectReason {
    match refusal {
        Err(Refusal::Limited(rejection)) => rejection.reason,
        Err(other) => panic!("refused for another cause: {other:?}"),
        Ok(_) => panic!("admitted"),
    }
}

/// Waits (bounded) for a settlement task to reach Redis.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn in_flight(redis: &RedisServer, tenant: &str) -> usize {
    let mut c = redis.connection();
    redis::cmd("ZCARD")
        .arg(format!("test:{{{tenant}}}:leases"))
        .query(&mut c)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_hold_across_two_replicas() {
    let redis = RedisServer::start();
    let (a, b) = (
        replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen),
        replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen),
    );
    let t = tenant(
        "rpm",
        TenantLimits {
            requests_per_minute: Some(60),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let mut admitted = 0;
    let mut last_refusal = None;
    for i in 0..200 {
        let store = if i % 2 == 0 { &a } else { &b };
        match admit(store, &t, 1, 1).await {
            Ok(_) => admitted += 1,
            Err(refusal) => last_refusal = Some(refusal),
        }
    }
    // A burst of the whole minute (60), plus one per second of the loop's own time. Each
    // replica alone would have allowed 60.
    let refill = started.elapsed().as_secs() as usize + 1;
    assert!(
        (60..=60 + refill).contains(&admitted),
        "{admitted} admitted over two replicas"
    );
    let Some(Refusal::Limited(rejection)) = last_refusal else {
        panic!("nothing refused")
    };
    assert_eq!(rejection.reason, RejectReason::RequestsPerMinute);
    assert!(rejection.retry_after.unwrap() <= Duration::from_secs(1));
    assert_eq!(rejection.status.requests.unwrap().remaining, 0);
    let (_, usage) = a.live(&t).await;
    assert!(usage.rejections >= 200 - admitted as u64 - 1, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reservations_are_shared_and_unused_tokens_come_back() {
    let redis = RedisServer::start();
    let (a, b) = (
        replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen),
        replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen),
    );
    let t = tenant(
        "tpm",
        TenantLimits {
            tokens_per_minute: Some(6000),
            ..Default::default()
        },
    );
    assert_eq!(
        reason(admit(&a, &t, 10, 6001).await),
        RejectReason::RequestTooLarge
    );
    let mut first = admit(&a, &t, 100, 5000).await.unwrap();
    assert!(first.status.tokens.unwrap().remaining <= 1000);
    // The other replica sees the reservation.
    assert_eq!(
        reason(admit(&b, &t, 100, 5000).await),
        RejectReason::TokensPerMinute
    );
    first.start();
    first.record_completion_tokens(50); // 150 of 5000 used: 4850 come back at settlement
    drop(first);
    until("the unused reservation is back", || {
        in_flight(&redis, "tpm") == 0
    })
    .await;
    let mut second = admit(&b, &t, 100, 5000).await.unwrap();
    second.start();
    drop(second);
    until("the second settles", || in_flight(&redis, "tpm") == 0).await;
    let (_, usage) = b.live(&t).await;
    assert_eq!(
        (usage.requests, usage.prompt_tokens, usage.completion_tokens),
        (2, 200, 50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_across_replicas_and_a_crashed_replica_gives_its_slots_back() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let a = replica(&redis, lease, OnUnavailable::FailOpen);
    let b = replica(&redis, lease, OnUnavailable::FailOpen);
    let t = tenant(
        "conc",
        TenantLimits {
            max_concurrent: Some(3),
            ..Default::default()
        },
    );
    let on_a = [
        admit(&a, &t, 1, 1).await.unwrap(),
        admit(&a, &t, 1, 1).await.unwrap(),
    ];
    let on_b = admit(&b, &t, 1, 1).await.unwrap();
    assert_eq!(reason(admit(&b, &t, 1, 1).await), RejectReason::Concurrency);
    assert_eq!(b.live(&t).await.0, 3);

    // Renewal keeps running requests' leases alive past their lease time.
    tokio::time::sleep(lease * 2 + lease / 2).await;
    assert_eq!(
        reason(admit(&b, &t, 1, 1).await),
        RejectReason::Concurrency,
        "leases of running requests must not expire"
    );

    // A's process dies: nothing settles, nothing renews.
    std::mem::forget(on_a);
    drop(a);
    let crashed = Instant::now();
    let admitted = loop {
        match admit(&b, &t, 1, 1).await {
            Ok(admission) => break admission,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(
            crashed.elapsed() < lease * 5,
            "the crashed replica's slots never came back"
        );
    };
    drop((admitted, on_b));
    until("every lease released", || in_flight(&redis, "conc") == 0).await;
    assert_eq!(b.leases_held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_counts_every_replicas_usage_and_restore_only_seeds() {
    let redis = RedisServer::start();
    let a = replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen);
    let b = replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen);
    let t = tenant(
        "budget",
        TenantLimits {
            daily_tokens: Some(100),
            ..Default::default()
        },
    );
    let seed = policies::DailyUsage {
        requests: 2,
        prompt_tokens: 30,
        completion_tokens: 10,
        rejections: 0,
    };
    a.restore_usage(&t, seed).await;
    // Another replica restarting later must not overwrite what the fleet counted since.
    b.restore_usage(
        &t,
        policies::DailyUsage {
            requests: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(a.live(&t).await.1.total_tokens(), 40);
    let mut first = admit(&a, &t, 30, 60).await.unwrap();
    first.start();
    first.record_completion_tokens(30);
    drop(first);
    until("the usage is settled", || in_flight(&redis, "budget") == 0).await;
    assert_eq!(reason(admit(&b, &t, 1, 1).await), RejectReason::DailyBudget);
    assert_eq!(b.live(&t).await.1.total_tokens(), 100);
}

/// Two replicas, 500 tokens left of the day, requests of 1,000 each in parallel: the day is
/// reserved at admission in Redis, so it never ends past its budget (it ended 15 % over when
/// only usage was counted, at settlement); a request without `max_tokens` is cut to what is
/// left; a replica that dies gives its reservation back when its lease expires (issue 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_is_reserved_across_replicas_and_comes_back_from_a_dead_one() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(1);
    let a = replica(&redis, lease, OnUnavailable::FailClosed);
    let b = replica(&redis, lease, OnUnavailable::FailClosed);
    let t = tenant(
        "reserved",
        TenantLimits {
            daily_tokens: Some(8_000),
            ..Default::default()
        },
    );
    a.restore_usage(
        &t,
        policies::DailyUsage {
            prompt_tokens: 7_500,
            ..Default::default()
        },
    )
    .await;
    let ask = |store: &RedisQuotas, ask: Ask| {
        let decision = store.admit(&t, ask);
        async move {
            match decision {
                Admitting::Decided(d) => d,
                Admitting::Pending(d) => d.await,
            }
        }
    };
    // With `max_tokens`: more than is left is refused, whichever replica.
    assert_eq!(
        reason(ask(&a, Ask::new(10, 1_010)).await),
        RejectReason::DailyBudgetShort
    );
    // Without: both ask at once; one gets what is left, the other nothing.
    let (one, two) = tokio::join!(
        ask(&a, Ask::new(10, 1_010).shortenable()),
        ask(&b, Ask::new(10, 1_010).shortenable())
    );
    let (mut held, refused) = match (one, two) {
        (Ok(held), refused) | (refused, Ok(held)) => (held, refused),
        (Err(a), Err(b)) => panic!("both refused: {a:?} {b:?}"),
    };
    assert_eq!(held.shortened_to(), Some(500));
    assert_eq!(reason(refused), RejectReason::DailyBudget);
    held.start();
    held.record_completion_tokens(490);
    drop(held);
    until("the usage is settled", || {
        in_flight(&redis, "reserved") == 0
    })
    .await;
    assert_eq!(
        b.live(&t).await.1.total_tokens(),
        8_000,
        "exactly the budget"
    );
    assert_eq!(
        reason(ask(&b, Ask::new(1, 1)).await),
        RejectReason::DailyBudget
    );

    // A reservation held by a replica that dies comes back within its lease.
    let t2 = tenant(
        "dies",
        TenantLimits {
            daily_tokens: Some(1_000),
            ..Default::default()
        },
    );
    let admit2 = |store: &RedisQuotas, ask: Ask| {
        let decision = store.admit(&t2, ask);
        async move {
            match decision {
                Admitting::Decided(d) => d,
                Admitting::Pending(d) => d.await,
            }
        }
    };
    let doomed = admit2(&a, Ask::new(10, 900)).await.unwrap();
    assert_eq!(
        reason(admit2(&b, Ask::new(10, 900)).await),
        RejectReason::DailyBudgetShort
    );
    std::mem::forget(doomed);
    drop(a);
    let died = Instant::now();
    loop {
        if admit2(&b, Ask::new(10, 900)).await.is_ok() {
            break;
        }
        assert!(
            died.elapsed() < lease * 5,
            "the dead replica's reservation never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_fail_open_admits_by_local_limits_and_recovers() {
    let mut redis = RedisServer::start();
    let store = replica(&redis, Duration::from_secs(10), OnUnavailable::FailOpen);
    let t = tenant(
        "open",
        TenantLimits {
            max_concurrent: Some(2),
            ..Default::default()
        },
    );
    drop(admit(&store, &t, 1, 1).await.unwrap());
    assert!(store.health().unwrap().available);

    redis.stop();
    let held = [
        admit(&store, &t, 1, 1).await.unwrap(),
        admit(&store, &t, 1, 1).await.unwrap(),
    ];
    // The local limits still apply.
    assert_eq!(
        reason(admit(&store, &t, 1, 1).await),
        RejectReason::Concurrency
    );
    let health = store.health().unwrap();
    assert!(!health.available && health.errors >= 1, "{health:?}");
    assert!(health.fallback_admissions >= 2, "{health:?}");
    drop(held);

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admission = admit(&store, &t, 1, 1).await.unwrap();
        if store.health().unwrap().available {
            // Admitted by Redis again: its lease is there.
            assert_eq!(in_flight(&redis, "open"), 1);
            drop(admission);
            break;
        }
        drop(admission);
        assert!(Instant::now() < deadline, "Redis never used again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_fail_closed_refuses_and_recovers() {
    let mut redis = RedisServer::start();
    let store = replica(&redis, Duration::from_secs(10), OnUnavailable::FailClosed);
    let t = tenant("closed", TenantLimits::default());
    drop(admit(&store, &t, 1, 1).await.unwrap());
    redis.stop();
    match admit(&store, &t, 1, 1).await {
        Err(Refusal::Unavailable { retry_after }) => assert!(retry_after >= Duration::from_secs(1)),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("admitted without Redis under fail_closed"),
    }
    // Known down: refused at once, without waiting for Redis.
    assert!(matches!(
        store.admit(&t, Ask::new(1, 1)),
        Admitting::Decided(Err(Refusal::Unavailable { .. }))
    ));
    assert!(store.health().unwrap().unavailable_refusals >= 2);
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admit(&store, &t, 1, 1).await.is_err() {
        assert!(Instant::now() < deadline, "Redis never used again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.health().unwrap().available);
}
