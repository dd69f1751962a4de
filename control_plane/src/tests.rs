//! The same rules on both stores: every test runs on SQLite, and on a real PostgreSQL server.

use std::time::Duration;

use serde_json::json;

use crate::*;

fn operator() -> Actor {
    Actor {
        key_id: "admin-op".into(),
        role: Role::Operator,
        tenant: None,
        address: Some("10.0.0.1".into()),
    }
}

fn tenant_admin(tenant: &str) -> Actor {
    Actor {
        key_id: format!("key_{tenant}_admin"),
        role: Role::TenantAdmin,
        tenant: Some(tenant.parse().unwrap()),
        address: None,
    }
}

fn auditor() -> Actor {
    Actor {
        key_id: "key_auditor".into(),
        role: Role::Auditor,
        tenant: None,
        address: None,
    }
}

fn id(t: &str) -> policies::TenantId {
    t.parse().unwrap()
}

fn on_both(test: fn(ControlPlane)) {
    let dir = tempfile::tempdir().unwrap();
    test(ControlPlane::open_sqlite(&dir.path().join("control.db")).unwrap());
    let server = ledger::test_server::PostgresServer::start();
    test(ControlPlane::connect_postgres(&server.database("control")).unwrap());
}

fn tenants_projects_keys_and_their_audit(store: ControlPlane) {
    let op = operator();
    let v0 = store.version().unwrap();
    let acme = store
        .create_tenant(
            &op,
            json!({"id": "acme", "name": "ACME Hospital", "limits": {"requests_per_minute": 100}}),
        )
        .unwrap();
    assert_eq!(acme.limits.requests_per_minute, Some(100));
    assert!(store.version().unwrap() > v0, "a write moves the version");
    assert!(matches!(
        store.create_tenant(&op, json!({"id": "acme"})),
        Err(StoreError::Conflict(_))
    ));
    let project = store
        .create_project(
            &tenant_admin("acme"),
            &id("acme"),
            json!({"id": "radiology", "limits": {"requests_per_minute": 50}}),
        )
        .unwrap();
    assert_eq!(project.path(), "acme/radiology");
    let issued = store
        .issue_key(
            &tenant_admin("acme"),
            Some(&id("acme")),
            json!({"project": "radiology", "expires_in_secs": 3600, "models": ["m1"]}),
        )
        .unwrap();
    assert_eq!(issued.key.digest, issued.plaintext.digest().to_string());
    assert!(issued.key.view().get("digest").is_none(), "never shown");
    let updated = store
        .update_tenant(
            &op,
            &id("acme"),
            json!({"limits": {"max_concurrent": 4}, "name": null}),
        )
        .unwrap();
    assert_eq!(updated.limits.max_concurrent, Some(4));
    assert_eq!(
        updated.limits.requests_per_minute,
        Some(100),
        "a merge patch keeps the fields it does not name"
    );
    assert_eq!(updated.name, None, "null clears");

    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.version, store.version().unwrap());
    assert_eq!(snapshot.tenants.len(), 1);
    assert_eq!(snapshot.projects.len(), 1);
    assert_eq!(
        snapshot.key(&issued.key.id).unwrap().project.as_deref(),
        Some("radiology")
    );

    let log = store.audit(&AuditQuery::default()).unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "project.create",
            "key.issue",
            "tenant.update"
        ]
    );
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    let update = &log[3];
    assert_eq!(
        update.before.as_ref().unwrap()["limits"]["requests_per_minute"],
        100
    );
    assert_eq!(
        update.after.as_ref().unwrap()["limits"]["max_concurrent"],
        4
    );
    assert_eq!(update.address.as_deref(), Some("10.0.0.1"));
    assert_eq!(log[1].actor_role, "tenant_admin");
    assert_eq!(log[1].actor_tenant.as_deref(), Some("acme"));
    assert!(!log[2]
        .after
        .as_ref()
        .unwrap()
        .to_string()
        .contains("sha256:"));
}

#[test]
fn tenants_projects_keys_and_their_audit_on_both_stores() {
    on_both(tenants_projects_keys_and_their_audit);
}

fn roles_hold(store: ControlPlane) {
    let op = operator();
    store
        .create_tenant(&op, json!({"id": "acme", "limits": {"max_concurrent": 10}}))
        .unwrap();
    store.create_tenant(&op, json!({"id": "beta"})).unwrap();
    let acme_admin = tenant_admin("acme");
    let forbidden = |r: Result<()>| assert!(matches!(r, Err(StoreError::Forbidden(_))), "{r:?}");
    forbidden(
        store
            .create_tenant(&acme_admin, json!({"id": "gamma"}))
            .map(drop),
    );
    forbidden(
        store
            .update_tenant(&acme_admin, &id("acme"), json!({"weight": 9}))
            .map(drop),
    );
    forbidden(store.delete_tenant(&acme_admin, &id("beta")).map(drop));
    forbidden(
        store
            .create_project(&acme_admin, &id("beta"), json!({"id": "p"}))
            .map(drop),
    );
    forbidden(
        store
            .issue_key(&acme_admin, Some(&id("beta")), json!({}))
            .map(drop),
    );
    forbidden(
        store
            .issue_key(&acme_admin, None, json!({"role": "operator"}))
            .map(drop),
    );
    // Within the operator's limits only (absent: bounded by the tenant's all the same).
    store
        .create_project(&acme_admin, &id("acme"), json!({"id": "p0"}))
        .unwrap();
    forbidden(
        store
            .create_project(
                &acme_admin,
                &id("acme"),
                json!({"id": "p", "limits": {"max_concurrent": 11}}),
            )
            .map(drop),
    );
    store
        .create_project(
            &acme_admin,
            &id("acme"),
            json!({"id": "p", "limits": {"max_concurrent": 10}}),
        )
        .unwrap();
    forbidden(
        store
            .update_project(
                &acme_admin,
                &id("acme"),
                "p",
                json!({"limits": {"max_concurrent": 20}}),
            )
            .map(drop),
    );
    let beta_key = store.issue_key(&op, Some(&id("beta")), json!({})).unwrap();
    forbidden(store.revoke_key(&acme_admin, &beta_key.key.id).map(drop));
    forbidden(
        store
            .rotate_key(&acme_admin, &beta_key.key.id, Duration::ZERO)
            .map(drop),
    );
    for write in [
        store
            .create_tenant(&auditor(), json!({"id": "x"}))
            .map(drop),
        store
            .issue_key(&auditor(), Some(&id("acme")), json!({}))
            .map(drop),
        store.revoke_key(&auditor(), &beta_key.key.id).map(drop),
    ] {
        forbidden(write);
    }
    // Nothing refused was written: one entry per write that happened.
    assert_eq!(store.audit(&AuditQuery::default()).unwrap().len(), 5);
    let beta_only = store
        .audit(&AuditQuery {
            tenant: Some(id("beta")),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(beta_only.len(), 2);
}

#[test]
fn roles_hold_on_both_stores() {
    on_both(roles_hold);
}

fn rotate_revoke_delete(store: ControlPlane) {
    let op = operator();
    store.create_tenant(&op, json!({"id": "acme"})).unwrap();
    store
        .create_project(&op, &id("acme"), json!({"id": "p"}))
        .unwrap();
    let old = store
        .issue_key(
            &op,
            Some(&id("acme")),
            json!({"project": "p", "name": "ci"}),
        )
        .unwrap();
    let new = store
        .rotate_key(&op, &old.key.id, Duration::from_secs(60))
        .unwrap();
    assert_ne!(new.plaintext, old.plaintext);
    assert_eq!(
        (new.key.project.as_deref(), new.key.name.as_deref()),
        (Some("p"), Some("ci"))
    );
    let snapshot = store.snapshot().unwrap();
    let rotated = snapshot.key(&old.key.id).unwrap();
    let expiry = rotated.expires_at_ms.unwrap();
    assert!((expiry - now_ms() - 60_000).abs() < 5_000, "{expiry}");
    assert_eq!(rotated.replaced_by.as_deref(), Some(new.key.id.as_str()));
    assert!(rotated.is_valid_at(now_ms()) && !rotated.is_valid_at(expiry));

    let revoked = store.revoke_key(&op, &new.key.id).unwrap();
    assert!(!revoked.is_valid_at(now_ms()));
    assert!(matches!(
        store.rotate_key(&op, &new.key.id, Duration::ZERO),
        Err(StoreError::Conflict(_))
    ));
    store.delete_project(&op, &id("acme"), "p").unwrap();
    assert!(matches!(
        store.issue_key(&op, Some(&id("acme")), json!({"project": "p"})),
        Err(StoreError::Conflict(_))
    ));
    let deleted = store.delete_tenant(&op, &id("acme")).unwrap();
    assert!(deleted.disabled);
    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.tenants.len(), 1, "deleting keeps the row");
    assert_eq!(snapshot.keys.len(), 2);

    let mut used = std::collections::HashMap::new();
    used.insert(old.key.id.clone(), 1234);
    store.touch(&used).unwrap();
    used.insert(old.key.id.clone(), 1000);
    store.touch(&used).unwrap();
    let snapshot = store.snapshot().unwrap();
    assert_eq!(
        snapshot.key(&old.key.id).unwrap().last_used_at_ms,
        Some(1234)
    );
    assert_eq!(store.last_used().unwrap()[&old.key.id], 1234);
}

#[test]
fn rotate_revoke_and_delete_on_both_stores() {
    on_both(rotate_revoke_delete);
}

fn input_is_validated(store: ControlPlane) {
    let op = operator();
    let invalid = |r: Result<()>, field: &str| match r {
        Err(StoreError::Invalid { param, .. }) => assert_eq!(param, field),
        other => panic!("expected a 400 on `{field}`, got {other:?}"),
    };
    invalid(
        store.create_tenant(&op, json!({"id": "a b"})).map(drop),
        "id",
    );
    invalid(
        store
            .create_tenant(&op, json!({"id": "a", "colour": 1}))
            .map(drop),
        "colour",
    );
    invalid(
        store
            .create_tenant(&op, json!({"id": "a", "limits": {"max_concurrent": -1}}))
            .map(drop),
        "limits.max_concurrent",
    );
    invalid(
        store
            .create_tenant(&op, json!({"id": "a", "weight": 0}))
            .map(drop),
        "weight",
    );
    invalid(
        store
            .create_tenant(&op, json!({"id": "a", "created_at_ms": 1}))
            .map(drop),
        "created_at_ms",
    );
    invalid(store.create_tenant(&op, json!([1])).map(drop), "");
    store.create_tenant(&op, json!({"id": "a"})).unwrap();
    invalid(
        store
            .update_tenant(&op, &id("a"), json!({"id": "b"}))
            .map(drop),
        "id",
    );
    invalid(
        store
            .create_project(&op, &id("a"), json!({"id": "p/q"}))
            .map(drop),
        "id",
    );
    invalid(
        store
            .create_project(&op, &id("a"), json!({"id": "p", "weight": -1}))
            .map(drop),
        "weight",
    );
    invalid(
        store
            .issue_key(&op, Some(&id("a")), json!({"role": "operator"}))
            .map(drop),
        "role",
    );
    invalid(store.issue_key(&op, None, json!({})).map(drop), "tenant");
    invalid(
        store
            .issue_key(&op, Some(&id("a")), json!({"expires_at_ms": 1}))
            .map(drop),
        "expires_at_ms",
    );
    invalid(
        store
            .rotate_key(&op, "key_x", Duration::from_secs(31 * 86_400))
            .map(drop),
        "overlap_secs",
    );
    assert!(matches!(
        store.revoke_key(&op, "key_x"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create_project(&op, &id("zzz"), json!({"id": "p"})),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.audit(&AuditQuery::default()).unwrap().len(), 1);
}

#[test]
fn input_is_validated_on_both_stores() {
    on_both(input_is_validated);
}

fn seeded_once(store: ControlPlane) {
    let key = policies::ApiKey::from_plaintext("sk-seed");
    let seed = [SeedTenant {
        tenant: Tenant::new(id("from-file")),
        keys: vec![key.digest()],
    }];
    let v0 = store.version().unwrap();
    assert!(store.seed(&seed).unwrap());
    assert!(
        !store.seed(&seed).unwrap(),
        "a store with tenants is left alone"
    );
    let snapshot = store.snapshot().unwrap();
    assert_eq!(
        snapshot.version,
        v0 + 1,
        "the refused second seed changed nothing"
    );
    assert_eq!(snapshot.keys[0].id, key.digest().key_id().to_string());
    let log = store.audit(&AuditQuery::default()).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].action.as_str(), log[0].actor_key.as_str()),
        ("tenant.seed", "config-file")
    );
}

#[test]
fn seeded_once_on_both_stores() {
    on_both(seeded_once);
}

#[test]
fn the_audit_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let store = ControlPlane::open_sqlite(&path).unwrap();
    store
        .create_tenant(&operator(), json!({"id": "a"}))
        .unwrap();
    let connection = rusqlite::Connection::open(&path).unwrap();
    assert!(connection.execute("DELETE FROM cp_audit", []).is_err());
    assert!(connection
        .execute("UPDATE cp_audit SET actor_key = 'someone-else'", [])
        .is_err());
    assert_eq!(
        store.audit(&AuditQuery::default()).unwrap()[0].actor_key,
        "admin-op"
    );
}

#[test]
fn costs_are_exact_integers_and_batch_gets_its_discount() {
    let price = Price {
        model: "m".into(),
        effective_from_ms: 0,
        currency: "KRW".into(),
        input_per_mtok: 1_500,
        cached_input_per_mtok: Some(300),
        output_per_mtok: 6_000,
        batch_discount_percent: 50,
        version: "m@0".into(),
        created_at_ms: 0,
    };
    // 1000 prompt tokens (200 cached), 333 generated:
    // 800 * 1500 + 200 * 300 + 333 * 6000 = 1,200,000 + 60,000 + 1,998,000 micro-units.
    assert_eq!(price.cost_micros(1000, 200, 333, false), 3_258_000);
    assert_eq!(price.cost_micros(1000, 200, 333, true), 1_629_000);
    assert_eq!(price.cost_micros(3, 0, 1, true), (3 * 1_500 + 6_000) / 2);
    assert_eq!(
        price.cost_micros(10, 99, 0, false),
        10 * 300,
        "cached never above the prompt"
    );
}

fn prices_by_version(store: ControlPlane) {
    let op = operator();
    let invalid = |r: Result<Price>, field: &str| match r {
        Err(StoreError::Invalid { param, .. }) => assert_eq!(param, field),
        other => panic!("expected a 400 on `{field}`, got {other:?}"),
    };
    invalid(
        store.set_price(&op, json!({"model": "m", "input_per_mtok": 1, "output_per_mtok": 2, "effective_from_ms": 1}), "EUR"),
        "effective_from_ms",
    );
    invalid(
        store.set_price(
            &op,
            json!({"model": "m", "input_per_mtok": 1, "output_per_mtok": 2, "currency": "USD"}),
            "EUR",
        ),
        "currency",
    );
    invalid(
        store.set_price(
            &op,
            json!({"model": "m", "input_per_mtok": 1.5, "output_per_mtok": 2}),
            "EUR",
        ),
        "input_per_mtok",
    );
    assert!(matches!(
        store.set_price(
            &auditor(),
            json!({"model": "m", "input_per_mtok": 1, "output_per_mtok": 2}),
            "EUR"
        ),
        Err(StoreError::Forbidden(_))
    ));
    let now = now_ms();
    let first = store
        .set_price(
            &op,
            json!({"model": "m", "input_per_mtok": 100, "output_per_mtok": 200}),
            "EUR",
        )
        .unwrap();
    let later = store
        .set_price(
            &op,
            json!({"model": "m", "input_per_mtok": 300, "output_per_mtok": 400, "effective_from_ms": now + 3_600_000}),
            "EUR",
        )
        .unwrap();
    assert_eq!(first.currency, "EUR");
    let snapshot = store.snapshot().unwrap();
    assert_eq!(
        snapshot.price_at("m", now + 1).unwrap().version,
        first.version
    );
    assert_eq!(
        snapshot.price_at("m", now + 3_600_000).unwrap().version,
        later.version
    );
    assert!(snapshot
        .price_at("m", first.effective_from_ms - 1)
        .is_none());
    assert!(snapshot.price_at("other", now).is_none());
    let log = store.audit(&AuditQuery::default()).unwrap();
    assert_eq!(log.iter().filter(|e| e.action == "price.set").count(), 2);
}

#[test]
fn prices_by_version_on_both_stores() {
    on_both(prices_by_version);
}

/// Two connections to one store, as two replicas have.
fn two_connections(test: fn(ControlPlane, ControlPlane)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    // One connection syncing every commit, the other at checkpoints: the same rules hold.
    test(
        ControlPlane::open_sqlite(&path).unwrap(),
        ControlPlane::open_sqlite_with(&path, false).unwrap(),
    );
    let server = ledger::test_server::PostgresServer::start();
    let url = server.database("allowances");
    test(
        ControlPlane::connect_postgres(&url).unwrap(),
        ControlPlane::connect_postgres(&url).unwrap(),
    );
}

fn grants_hold_under_concurrency(a: ControlPlane, b: ControlPlane) {
    let op = operator();
    a.create_tenant(&op, json!({"id": "lab"})).unwrap();
    a.create_project(&op, &id("lab"), json!({"id": "p"}))
        .unwrap();
    let now = now_ms();
    a.create_grant(
        &op,
        json!({"id": "g-early", "tenant": "lab", "project": "p", "unit": "tokens",
               "amount": 1000, "expires_at_ms": now + 3_600_000}),
    )
    .unwrap();
    a.create_grant(
        &op,
        json!({"id": "g-late", "tenant": "lab", "unit": "tokens", "amount": 300,
               "expires_at_ms": now + 7_200_000}),
    )
    .unwrap();
    let snapshot = std::sync::Arc::new(a.snapshot().unwrap());
    let stores = [std::sync::Arc::new(a), std::sync::Arc::new(b)];
    let most = Usage {
        tokens: 150,
        micros: 0,
    };
    let charged = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (store, snapshot, charged) = (stores[t % 2].clone(), snapshot.clone(), &charged);
            scope.spawn(move || loop {
                match store
                    .reserve(&snapshot, &id("lab"), Some("p"), most, 60_000)
                    .unwrap()
                {
                    Ok(Some(held)) => {
                        std::thread::sleep(std::time::Duration::from_millis(3));
                        store.settle(&held.id, most).unwrap();
                        charged.lock().unwrap().push(held.grant.unwrap());
                    }
                    Ok(None) => panic!("the grants apply"),
                    Err(shortfall) => {
                        assert!(shortfall.message.contains("g-early"), "{shortfall:?}");
                        break;
                    }
                }
            });
        }
    });
    let charged = charged.into_inner().unwrap();
    // 1000 tokens hold six requests of 150 and 300 two more: in order of expiry, never past.
    assert_eq!(
        charged.iter().filter(|g| *g == "g-early").count(),
        6,
        "{charged:?}"
    );
    assert_eq!(
        charged.iter().filter(|g| *g == "g-late").count(),
        2,
        "{charged:?}"
    );
    let uses = stores[0].allowance_use().unwrap();
    let used = |id: &str| uses.iter().find(|u| u.id == id).unwrap().used;
    assert_eq!((used("g-early"), used("g-late")), (900, 300));

    // A reservation whose replica died lapses with its lease.
    a_lease_lapses(&stores[1], &snapshot);
}

fn a_lease_lapses(store: &ControlPlane, snapshot: &Snapshot) {
    let op = operator();
    store.create_tenant(&op, json!({"id": "solo"})).unwrap();
    store
        .create_grant(
            &op,
            json!({"id": "g-solo", "tenant": "solo", "unit": "tokens", "amount": 100,
                   "expires_at_ms": now_ms() + 3_600_000}),
        )
        .unwrap();
    let snapshot = Snapshot {
        grants: store.snapshot().unwrap().grants,
        ..snapshot.clone()
    };
    let most = Usage {
        tokens: 80,
        micros: 0,
    };
    let first = store
        .reserve(&snapshot, &id("solo"), None, most, 300)
        .unwrap();
    assert!(matches!(first, Ok(Some(_))));
    assert!(store
        .reserve(&snapshot, &id("solo"), None, most, 300)
        .unwrap()
        .is_err());
    std::thread::sleep(std::time::Duration::from_millis(400));
    let again = store
        .reserve(&snapshot, &id("solo"), None, most, 60_000)
        .unwrap();
    assert!(
        matches!(again, Ok(Some(_))),
        "the lapsed hold gave its room back"
    );
}

#[test]
fn grants_hold_under_concurrency_on_both_stores() {
    two_connections(grants_hold_under_concurrency);
}

fn budgets_and_expiry(store: ControlPlane) {
    let op = operator();
    store.create_tenant(&op, json!({"id": "lab"})).unwrap();
    let now = now_ms();
    store
        .create_budget(
            &op,
            json!({"id": "daily", "tenant": "lab", "period": "day", "amount": 1}),
        )
        .unwrap();
    let snapshot = store.snapshot().unwrap();
    let most = Usage {
        tokens: 10,
        micros: 400_000,
    };
    for round in 0..2 {
        let held = store
            .reserve(&snapshot, &id("lab"), None, most, 60_000)
            .unwrap()
            .unwrap()
            .unwrap();
        let settled = store.settle(&held.id, most).unwrap();
        assert_eq!(settled.len(), 1);
        let expected = (round * 400_000, (round + 1) * 400_000);
        assert_eq!((settled[0].before, settled[0].after), expected);
    }
    let refused = store
        .reserve(&snapshot, &id("lab"), None, most, 60_000)
        .unwrap()
        .unwrap_err();
    assert!(refused.message.contains("daily"), "{refused:?}");
    let uses = store.allowance_use().unwrap();
    assert_eq!(uses[0].used, 800_000);
    assert_eq!(
        uses[0].period.as_deref().unwrap().len(),
        10,
        "a day: YYYY-MM-DD"
    );
    // A grant that expired names itself.
    store
        .create_grant(
            &op,
            json!({"id": "g-past", "tenant": "lab", "unit": "money", "amount": 5,
                   "starts_at_ms": now - 7_200_000, "expires_at_ms": now - 3_600_000}),
        )
        .unwrap();
    let snapshot = store.snapshot().unwrap();
    let refused = store
        .reserve(&snapshot, &id("lab"), None, most, 60_000)
        .unwrap()
        .unwrap_err();
    assert!(
        refused.message.contains("g-past") && refused.message.contains("expired"),
        "{refused:?}"
    );
    // Nobody else is touched.
    store.create_tenant(&op, json!({"id": "free"})).unwrap();
    assert_eq!(
        store
            .reserve(&snapshot, &id("free"), None, most, 60_000)
            .unwrap(),
        Ok(None)
    );
    assert!(matches!(
        store.create_grant(
            &op,
            json!({"tenant": "lab", "unit": "tokens", "amount": 0, "expires_at_ms": now + 1})
        ),
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn budgets_and_expiry_on_both_stores() {
    on_both(budgets_and_expiry);
}

#[test]
fn utc_periods() {
    let budget = Budget {
        id: "b".into(),
        tenant: id("t"),
        project: None,
        period: Period::Month,
        amount: 1,
        created_at_ms: 0,
    };
    // 2024-02-29T23:59:59.999Z, a leap day.
    assert_eq!(budget.period_at(1_709_251_199_999).0, "2024-02");
    let day = Budget {
        period: Period::Day,
        ..budget
    };
    assert_eq!(day.period_at(1_709_251_199_999).0, "2024-02-29");
    assert_eq!(day.period_at(1_709_251_200_000).0, "2024-03-01");
    assert_eq!(day.period_at(0).1, "budget:b:1970-01-01");
}

fn api_objects_belong_to_one_tenant_and_expire(store: ControlPlane) {
    let v0 = store.version().unwrap();
    let object = |id: &str, tenant: &str, expires_ms: Option<i64>| ApiObject {
        kind: "response".into(),
        id: id.into(),
        tenant: tenant.into(),
        created_ms: 1_000,
        expires_ms,
        body: format!("{{\"id\":\"{id}\"}}"),
    };
    store
        .put_api_object(&object("resp_1", "acme", None))
        .unwrap();
    store
        .put_api_object(&object("resp_2", "acme", Some(5_000)))
        .unwrap();
    assert_eq!(store.version().unwrap(), v0, "replicas cache none of them");
    let got = store
        .api_object("response", "acme", "resp_1", 2_000)
        .unwrap();
    assert_eq!(got, Some(object("resp_1", "acme", None)));
    // Another tenant's is absent, whoever asks for it by id.
    assert_eq!(
        store
            .api_object("response", "beta", "resp_1", 2_000)
            .unwrap(),
        None
    );
    assert!(!store
        .delete_api_object("response", "beta", "resp_1")
        .unwrap());
    // Past its retention it is absent, then purged.
    assert!(store
        .api_object("response", "acme", "resp_2", 4_999)
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .api_object("response", "acme", "resp_2", 5_000)
            .unwrap(),
        None
    );
    assert_eq!(store.purge_api_objects(5_000).unwrap(), 1);
    assert_eq!(store.purge_api_objects(5_000).unwrap(), 0);
    assert!(store
        .delete_api_object("response", "acme", "resp_1")
        .unwrap());
    assert_eq!(
        store
            .api_object("response", "acme", "resp_1", 2_000)
            .unwrap(),
        None
    );

    // Lists by tenant and id prefix, oldest first; sizes by tenant.
    for (id, tenant) in [
        ("batch_1:0", "acme"),
        ("batch_1:1", "acme"),
        ("batch_10:0", "acme"),
        ("batch_1:2", "beta"),
    ] {
        store.put_api_object(&object(id, tenant, None)).unwrap();
    }
    let ids = |tenant: Option<&str>, prefix: &str| -> Vec<String> {
        store
            .api_objects("response", tenant, prefix, 2_000)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect()
    };
    assert_eq!(ids(Some("acme"), "batch_1:"), ["batch_1:0", "batch_1:1"]);
    assert_eq!(
        ids(None, "batch_1:"),
        ["batch_1:0", "batch_1:1", "batch_1:2"]
    );
    assert_eq!(ids(Some("acme"), "batch_1").len(), 3);
    assert_eq!(
        store.api_object_bytes("response", "acme").unwrap(),
        3 * "{\"id\":\"batch_1:0\"}".len() as i64 + 1
    );

    // One lease at a time: renewed by its owner, taken over once it runs out.
    assert!(store
        .claim_api_object("response", "batch_1:0", "replica-a", 10_000, 1_000)
        .unwrap());
    assert!(!store
        .claim_api_object("response", "batch_1:0", "replica-b", 10_500, 1_000)
        .unwrap());
    assert!(store
        .claim_api_object("response", "batch_1:0", "replica-a", 10_900, 1_000)
        .unwrap());
    assert!(!store
        .claim_api_object("response", "batch_1:0", "replica-b", 11_800, 1_000)
        .unwrap());
    assert!(store
        .claim_api_object("response", "batch_1:0", "replica-b", 11_900, 1_000)
        .unwrap());
    store
        .release_api_object("response", "batch_1:0", "replica-a")
        .unwrap();
    assert!(
        !store
            .claim_api_object("response", "batch_1:0", "replica-a", 12_000, 1_000)
            .unwrap(),
        "a stale owner's release changes nothing"
    );
    store
        .release_api_object("response", "batch_1:0", "replica-b")
        .unwrap();
    assert!(store
        .claim_api_object("response", "batch_1:0", "replica-a", 12_000, 1_000)
        .unwrap());
    assert!(!store
        .claim_api_object("response", "nothing", "replica-a", 12_000, 1_000)
        .unwrap());
}

#[test]
fn api_objects_on_both_stores() {
    on_both(api_objects_belong_to_one_tenant_and_expire);
}

fn adapter(id: &str, tenant: Option<&str>, source: AdapterSource) -> AdapterEntry {
    AdapterEntry {
        id: id.into(),
        model: "base".into(),
        tenant: tenant.map(|t| t.parse().unwrap()),
        source,
        sha256: "ab".repeat(32),
        bytes: 3,
        rank: 8,
        created_at_ms: 0,
        deleted_at_ms: None,
    }
}

fn upload() -> AdapterSource {
    AdapterSource::Upload {
        file: String::new(),
    }
}

fn file() -> Option<String> {
    Some("AAEC".into())
}

fn adapters_registry(store: ControlPlane) {
    let op = operator();
    for t in ["acme", "beta"] {
        store.create_tenant(&op, json!({ "id": t })).unwrap();
    }
    let acme = tenant_admin("acme");
    let path = || AdapterSource::Path {
        path: "/srv/adapters/x.gguf".into(),
    };
    // A tenant-admin uploads its own; never another tenant's, a shared one, or one by path.
    let v0 = store.version().unwrap();
    let radiology = adapter("radiology", Some("acme"), upload());
    let registered = store
        .register_adapter(&acme, radiology.clone(), file())
        .unwrap();
    assert!(registered.created_at_ms > 0 && registered.is_live());
    assert!(store.version().unwrap() > v0, "replicas learn of it");
    let refused = [
        adapter("x1", Some("beta"), upload()),
        adapter("x2", None, upload()),
        adapter("x3", Some("acme"), path()),
    ];
    for entry in refused {
        let body = (entry.source == upload()).then(|| "AAEC".to_string());
        assert!(
            matches!(
                store.register_adapter(&acme, entry.clone(), body),
                Err(StoreError::Forbidden(_))
            ),
            "{entry:?}"
        );
    }
    // Ids are what requests name: unique among live adapters, without `:`.
    assert!(matches!(
        store.register_adapter(&op, radiology.clone(), file()),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.register_adapter(&op, adapter("base:x", None, path()), None),
        Err(StoreError::Invalid { .. })
    ));
    // An operator shares one by path; its file is not in the store.
    store
        .register_adapter(&op, adapter("shared", None, path()), None)
        .unwrap();
    let snapshot = store.snapshot().unwrap();
    let ids: Vec<&str> = snapshot.adapters.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Every object in the store is an adapter's file: none was left behind by the refusals.
    assert_eq!(store.api_object_bytes(ADAPTER_FILE, "acme").unwrap(), 4);
    assert_eq!(
        store.adapter_file(&registered).unwrap().unwrap().body,
        "AAEC"
    );
    // Another tenant's admin is told it does not exist; a tenant's admin cannot delete a
    // shared one; the owner deletes its own, and its file goes with it.
    assert!(matches!(
        store.delete_adapter(&tenant_admin("beta"), "radiology"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete_adapter(&acme, "shared"),
        Err(StoreError::Forbidden(_))
    ));
    let deleted = store.delete_adapter(&acme, "radiology").unwrap();
    assert!(!deleted.is_live());
    assert!(store.adapter_file(&registered).unwrap().is_none());
    assert!(matches!(
        store.delete_adapter(&acme, "radiology"),
        Err(StoreError::NotFound(_))
    ));
    // Its id may be registered again.
    store.register_adapter(&acme, radiology, file()).unwrap();
    let audit = store.audit(&AuditQuery::default()).unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .filter(|e| e.target.starts_with("adapter:"))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "adapter.create",
            "adapter.create",
            "adapter.delete",
            "adapter.create"
        ]
    );
}

#[test]
fn the_adapter_registry_holds_its_rules_on_both_stores() {
    on_both(adapters_registry);
}
