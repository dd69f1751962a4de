//! Every write: checked against the actor's role, validated, applied in one transaction with its
//! audit entry (before and after) and the version bump. A body is JSON as the client sent it;
//! an update is a JSON merge patch (RFC 7396) of the stored object, so `null` clears a field.

use std::time::Duration;

use policies::{ApiKey, KeyDigest, ModelAllowList, TenantId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::actor::{Actor, Role};
use crate::backend::{Tx, KEY, PRICE, PROJECT, TENANT};
use crate::error::{Result, StoreError};
use crate::model::random_id;
use crate::model::{now_ms, AuditEntry, Key, Limits, Price, Project, Tenant};
use crate::ControlPlane;

/// The longest a rotated key may stay valid beside its successor.
const MAX_OVERLAP: Duration = Duration::from_secs(30 * 86_400);

/// Fields the store sets, never a client.
const SERVER_FIELDS: [&str; 2] = ["created_at_ms", "updated_at_ms"];

/// A key just issued: the stored record and the plaintext, shown once.
#[derive(Debug)]
pub struct IssuedKey {
    /// As stored.
    pub key: Key,
    /// The key itself: give it to its owner; the store keeps only its digest.
    pub plaintext: ApiKey,
}

/// A tenant of the configuration file, with its keys' digests, for the first start.
#[derive(Debug, Clone)]
pub struct SeedTenant {
    /// The tenant.
    pub tenant: Tenant,
    /// Its keys' stored forms.
    pub keys: Vec<KeyDigest>,
}

/// What a client may say when it asks for a key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    #[serde(default = "inference")]
    role: Role,
    #[serde(default)]
    tenant: Option<TenantId>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    models: Option<ModelAllowList>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    expires_at_ms: Option<i64>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

fn inference() -> Role {
    Role::Inference
}

/// `value` as a `T`, or a 400 naming the field (`limits.max_concurrent`) and what is wrong.
fn parse<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." { String::new() } else { path };
        StoreError::invalid(param, e.into_inner().to_string())
    })
}

fn object(body: Value) -> Result<Map<String, Value>> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::invalid("", "the body must be a JSON object")),
    }
}

/// A request body as a `T`: an object, without fields only the store sets.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Value, server_fields: &[&str]) -> Result<T> {
    let body = object(body)?;
    refuse_server_fields(&body, server_fields)?;
    parse(Value::Object(body))
}

/// Refuses fields only the store sets.
fn refuse_server_fields(body: &Map<String, Value>, also: &[&str]) -> Result<()> {
    match SERVER_FIELDS
        .iter()
        .chain(also)
        .find(|f| body.contains_key(**f))
    {
        Some(field) => Err(StoreError::invalid(
            *field,
            format!("`{field}` is set by the gateway, not by a request"),
        )),
        None => Ok(()),
    }
}

/// Gives `body` the tenant of the path; a body naming another tenant is refused.
fn bind_tenant(body: &mut Map<String, Value>, tenant: &TenantId) -> Result<()> {
    match body.get("tenant") {
        Some(Value::String(t)) if t == tenant.as_str() => Ok(()),
        Some(_) => Err(StoreError::invalid(
            "tenant",
            "`tenant` is the tenant of the path",
        )),
        None => {
            body.insert("tenant".into(), Value::String(tenant.to_string()));
            Ok(())
        }
    }
}

/// RFC 7396: `patch` merged into `target`; `null` removes.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("an object");
            for (k, v) in patch {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    merge_patch(map.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

fn checked<T>(checked: std::result::Result<T, (&'static str, String)>) -> Result<T> {
    checked.map_err(|(param, message)| StoreError::invalid(param, message))
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

pub(crate) fn read<T: DeserializeOwned>(
    tx: &mut dyn Tx,
    kind: &str,
    id: &str,
) -> Result<Option<T>> {
    tx.get(kind, id)?
        .map(|body| {
            serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("{kind} {id}: {e}")))
        })
        .transpose()
}

pub(crate) fn store<T: serde::Serialize>(
    tx: &mut dyn Tx,
    kind: &str,
    id: &str,
    tenant: Option<&TenantId>,
    value: &T,
) -> Result<()> {
    let body = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.put(kind, id, tenant.map(TenantId::as_str), &body)
}

/// The tenant `id`, which must exist (404) and not be deleted (409).
pub(crate) fn live_tenant(tx: &mut dyn Tx, id: &TenantId) -> Result<Tenant> {
    let tenant: Tenant = read(tx, TENANT, id.as_str())?
        .ok_or_else(|| StoreError::NotFound(format!("no tenant `{id}`")))?;
    if tenant.disabled {
        return Err(StoreError::Conflict(format!("tenant `{id}` is deleted")));
    }
    Ok(tenant)
}

/// A tenant-admin's limits must stay within what the operator set for the tenant.
fn within_tenant(actor: &Actor, limits: &Limits, tenant: &Tenant) -> Result<()> {
    if actor.role != Role::TenantAdmin {
        return Ok(());
    }
    match limits.above(&tenant.limits) {
        Some((name, ceiling)) => Err(StoreError::Forbidden(format!(
            "`limits.{name}` must be at most {ceiling}: the operator's limit for tenant `{}`",
            tenant.id
        ))),
        None => Ok(()),
    }
}

impl Actor {
    pub(crate) fn entry(
        &self,
        action: &str,
        target: String,
        tenant: Option<&TenantId>,
        before: Option<Value>,
        after: Option<Value>,
    ) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at_ms: now_ms(),
            actor_key: self.key_id.clone(),
            actor_role: self.role.as_str().to_string(),
            actor_tenant: self.tenant.as_ref().map(TenantId::to_string),
            address: self.address.clone(),
            action: action.to_string(),
            target,
            tenant: tenant.map(TenantId::to_string),
            before,
            after,
        }
    }
}

impl ControlPlane {
    /// Runs `work` in one write transaction and returns what it produced.
    pub(crate) fn write<T>(&self, mut work: impl FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        let mut out = None;
        self.backend().write(&mut |tx| {
            out = Some(work(tx)?);
            Ok(())
        })?;
        Ok(out.expect("a committed write produced its value"))
    }

    /// Seeds an empty store with the configuration file's tenants and keys (one write, one
    /// audit entry per tenant). `false`: the store holds tenants already and is left alone.
    pub fn seed(&self, tenants: &[SeedTenant]) -> Result<bool> {
        let actor = Actor::config_file();
        let seeded = self.write(|tx| {
            if tx.count(TENANT)? > 0 {
                // Rolled back below: nothing changes, not even the version.
                return Err(StoreError::Conflict("already seeded".into()));
            }
            let now = now_ms();
            for seed in tenants {
                let mut tenant = seed.tenant.clone();
                checked(tenant.check())?;
                (tenant.created_at_ms, tenant.updated_at_ms) = (now, now);
                store(tx, TENANT, tenant.id.as_str(), Some(&tenant.id), &tenant)?;
                let mut keys = Vec::new();
                for digest in &seed.keys {
                    let key = Key {
                        // The id the configuration's keys always had: their usage records match.
                        id: digest.key_id().to_string(),
                        digest: digest.to_string(),
                        role: Role::Inference,
                        tenant: Some(tenant.id.clone()),
                        project: None,
                        name: Some("from the configuration file".into()),
                        models: None,
                        limits: Limits::default(),
                        expires_at_ms: None,
                        revoked_at_ms: None,
                        replaced_by: None,
                        created_at_ms: now,
                        created_by: actor.key_id.clone(),
                        last_used_at_ms: None,
                    };
                    store(tx, KEY, &key.id, Some(&tenant.id), &key)?;
                    keys.push(key.view());
                }
                let mut after = to_json(&tenant);
                after["keys"] = Value::Array(keys);
                let entry = actor.entry(
                    "tenant.seed",
                    format!("tenant:{}", tenant.id),
                    Some(&tenant.id),
                    None,
                    Some(after),
                );
                tx.audit(&entry)?;
            }
            Ok(())
        });
        match seeded {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a tenant (operators).
    pub fn create_tenant(&self, actor: &Actor, body: Value) -> Result<Tenant> {
        actor.check_operator("creating a tenant")?;
        let body = object(body)?;
        refuse_server_fields(&body, &["disabled"])?;
        let mut tenant: Tenant = parse(Value::Object(body))?;
        checked(tenant.check())?;
        self.write(|tx| {
            if read::<Tenant>(tx, TENANT, tenant.id.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "tenant `{}` exists already",
                    tenant.id
                )));
            }
            let now = now_ms();
            (tenant.created_at_ms, tenant.updated_at_ms) = (now, now);
            store(tx, TENANT, tenant.id.as_str(), Some(&tenant.id), &tenant)?;
            let entry = actor.entry(
                "tenant.create",
                format!("tenant:{}", tenant.id),
                Some(&tenant.id),
                None,
                Some(to_json(&tenant)),
            );
            tx.audit(&entry)?;
            Ok(tenant.clone())
        })
    }

    /// Changes a tenant (operators): `patch` is merged into it.
    pub fn update_tenant(&self, actor: &Actor, id: &TenantId, patch: Value) -> Result<Tenant> {
        actor.check_operator("changing a tenant")?;
        let patch = object(patch)?;
        refuse_server_fields(&patch, &["id"])?;
        self.change_tenant(actor, id, "tenant.update", |tenant| {
            let mut merged = to_json(tenant);
            merge_patch(&mut merged, Value::Object(patch.clone()));
            *tenant = parse(merged)?;
            checked(tenant.check())
        })
    }

    /// Deletes a tenant (operators): it is disabled, its keys stop working, its usage and audit
    /// rows stay.
    pub fn delete_tenant(&self, actor: &Actor, id: &TenantId) -> Result<Tenant> {
        actor.check_operator("deleting a tenant")?;
        self.change_tenant(actor, id, "tenant.delete", |tenant| {
            tenant.disabled = true;
            Ok(())
        })
    }

    /// Applies `change` to tenant `id` in one write, audited as `action` with before and after.
    fn change_tenant(
        &self,
        actor: &Actor,
        id: &TenantId,
        action: &str,
        change: impl Fn(&mut Tenant) -> Result<()>,
    ) -> Result<Tenant> {
        self.write(|tx| {
            let before: Tenant = read(tx, TENANT, id.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("no tenant `{id}`")))?;
            let mut after = before.clone();
            change(&mut after)?;
            after.updated_at_ms = now_ms();
            store(tx, TENANT, id.as_str(), Some(id), &after)?;
            let entry = actor.entry(
                action,
                format!("tenant:{id}"),
                Some(id),
                Some(to_json(&before)),
                Some(to_json(&after)),
            );
            tx.audit(&entry)?;
            Ok(after)
        })
    }

    /// Creates a project in `tenant` (operators, the tenant's admins).
    pub fn create_project(&self, actor: &Actor, tenant: &TenantId, body: Value) -> Result<Project> {
        actor.check_manage(tenant)?;
        let mut body = object(body)?;
        refuse_server_fields(&body, &["disabled"])?;
        bind_tenant(&mut body, tenant)?;
        let mut project: Project = parse(Value::Object(body))?;
        checked(project.check())?;
        self.write(|tx| {
            let owner = live_tenant(tx, tenant)?;
            within_tenant(actor, &project.limits, &owner)?;
            if read::<Project>(tx, PROJECT, &project.path())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "project `{}` exists already",
                    project.path()
                )));
            }
            let now = now_ms();
            (project.created_at_ms, project.updated_at_ms) = (now, now);
            store(tx, PROJECT, &project.path(), Some(tenant), &project)?;
            let entry = actor.entry(
                "project.create",
                format!("project:{}", project.path()),
                Some(tenant),
                None,
                Some(to_json(&project)),
            );
            tx.audit(&entry)?;
            Ok(project.clone())
        })
    }

    /// Changes a project (operators, the tenant's admins within the tenant's limits).
    pub fn update_project(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        id: &str,
        patch: Value,
    ) -> Result<Project> {
        actor.check_manage(tenant)?;
        let patch = object(patch)?;
        refuse_server_fields(&patch, &["id", "tenant"])?;
        self.change_project(actor, tenant, id, "project.update", |project| {
            let mut merged = to_json(project);
            merge_patch(&mut merged, Value::Object(patch.clone()));
            *project = parse(merged)?;
            checked(project.check())
        })
    }

    /// Deletes a project: it is disabled, its keys stop working, its usage and audit rows stay.
    pub fn delete_project(&self, actor: &Actor, tenant: &TenantId, id: &str) -> Result<Project> {
        actor.check_manage(tenant)?;
        self.change_project(actor, tenant, id, "project.delete", |project| {
            project.disabled = true;
            Ok(())
        })
    }

    fn change_project(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        id: &str,
        action: &str,
        change: impl Fn(&mut Project) -> Result<()>,
    ) -> Result<Project> {
        let path = format!("{tenant}/{id}");
        self.write(|tx| {
            let owner = live_tenant(tx, tenant)?;
            let before: Project = read(tx, PROJECT, &path)?
                .ok_or_else(|| StoreError::NotFound(format!("no project `{path}`")))?;
            let mut after = before.clone();
            change(&mut after)?;
            within_tenant(actor, &after.limits, &owner)?;
            after.updated_at_ms = now_ms();
            store(tx, PROJECT, &path, Some(tenant), &after)?;
            let entry = actor.entry(
                action,
                format!("project:{path}"),
                Some(tenant),
                Some(to_json(&before)),
                Some(to_json(&after)),
            );
            tx.audit(&entry)?;
            Ok(after)
        })
    }

    /// Issues a key. With a `tenant` (the path's): an inference key (optionally of a project)
    /// or a tenant-admin key, by operators and the tenant's admins. Without: an operator or
    /// auditor key, by operators.
    pub fn issue_key(
        &self,
        actor: &Actor,
        tenant: Option<&TenantId>,
        body: Value,
    ) -> Result<IssuedKey> {
        let mut body = object(body)?;
        refuse_server_fields(
            &body,
            &[
                "id",
                "digest",
                "revoked_at_ms",
                "replaced_by",
                "created_by",
                "last_used_at_ms",
            ],
        )?;
        if let Some(tenant) = tenant {
            bind_tenant(&mut body, tenant)?;
        }
        let request: KeyRequest = parse(Value::Object(body))?;
        let now = now_ms();
        let expires_at_ms = match (request.expires_at_ms, request.expires_in_secs) {
            (Some(_), Some(_)) => {
                return Err(StoreError::invalid(
                    "expires_in_secs",
                    "give `expires_at_ms` or `expires_in_secs`, not both",
                ))
            }
            (Some(at), None) if at <= now => {
                return Err(StoreError::invalid(
                    "expires_at_ms",
                    "`expires_at_ms` is in the past",
                ))
            }
            (Some(at), None) => Some(at),
            (None, Some(0)) => {
                return Err(StoreError::invalid(
                    "expires_in_secs",
                    "`expires_in_secs` must be above 0",
                ))
            }
            (None, Some(secs)) => {
                Some(now.saturating_add(secs.min(100 * 365 * 86_400) as i64 * 1000))
            }
            (None, None) => None,
        };
        match (request.role, &request.tenant) {
            (Role::Operator | Role::Auditor, None) => actor.check_operator("issuing admin keys")?,
            (Role::Operator | Role::Auditor, Some(_)) => {
                return Err(StoreError::invalid(
                    "role",
                    "operator and auditor keys belong to no tenant: issue them at /admin/keys",
                ))
            }
            (Role::Inference | Role::TenantAdmin, Some(t)) => actor.check_manage(t)?,
            (Role::Inference | Role::TenantAdmin, None) => {
                return Err(StoreError::invalid(
                    "tenant",
                    "inference and tenant-admin keys belong to a tenant: issue them at /admin/tenants/{tenant}/keys",
                ))
            }
        }
        if request.role == Role::TenantAdmin && request.project.is_some() {
            return Err(StoreError::invalid(
                "project",
                "a tenant-admin key runs the whole tenant, not one project",
            ));
        }
        if request.role.is_admin() && (!request.limits.is_empty() || request.models.is_some()) {
            return Err(StoreError::invalid(
                "limits",
                "limits and models apply to inference keys only",
            ));
        }
        checked(crate::model::check_name(request.name.as_deref()))?;
        let plaintext = ApiKey::generate();
        let key = Key {
            id: random_id("key"),
            digest: plaintext.digest().to_string(),
            role: request.role,
            tenant: request.tenant.clone(),
            project: request.project.clone(),
            name: request.name.clone(),
            models: request.models.clone(),
            limits: request.limits.clone(),
            expires_at_ms,
            revoked_at_ms: None,
            replaced_by: None,
            created_at_ms: now,
            created_by: actor.key_id.clone(),
            last_used_at_ms: None,
        };
        let key = self.write(|tx| {
            if let Some(tenant) = &key.tenant {
                let owner = live_tenant(tx, tenant)?;
                within_tenant(actor, &key.limits, &owner)?;
                if let Some(project) = &key.project {
                    let path = format!("{tenant}/{project}");
                    let found: Project = read(tx, PROJECT, &path)?
                        .ok_or_else(|| StoreError::NotFound(format!("no project `{path}`")))?;
                    if found.disabled {
                        return Err(StoreError::Conflict(format!("project `{path}` is deleted")));
                    }
                }
            }
            store(tx, KEY, &key.id, key.tenant.as_ref(), &key)?;
            let entry = actor.entry(
                "key.issue",
                format!("key:{}", key.id),
                key.tenant.as_ref(),
                None,
                Some(key.view()),
            );
            tx.audit(&entry)?;
            Ok(key.clone())
        })?;
        Ok(IssuedKey { key, plaintext })
    }

    /// Sets a model's price from `effective_from_ms` (default now; never in the past, so no
    /// record already billed changes) in `currency`, the centre's (operators).
    pub fn set_price(&self, actor: &Actor, body: Value, currency: &str) -> Result<Price> {
        actor.check_operator("setting prices")?;
        let body = object(body)?;
        refuse_server_fields(&body, &["version"])?;
        let mut price: Price = parse(Value::Object(body))?;
        let now = now_ms();
        if price.model.is_empty() || price.model.len() > 256 {
            return Err(StoreError::invalid(
                "model",
                "`model` must be 1-256 characters",
            ));
        }
        match price.effective_from_ms {
            0 => price.effective_from_ms = now,
            // A minute of clock skew between replicas is tolerated.
            at if at < now - 60_000 => return Err(StoreError::invalid(
                "effective_from_ms",
                "`effective_from_ms` is in the past: a price change never rewrites billed requests",
            )),
            _ => {}
        }
        match price.currency.as_str() {
            "" => price.currency = currency.to_string(),
            c if c == currency => {}
            other => {
                return Err(StoreError::invalid(
                    "currency",
                    format!("prices are in {currency}, the centre's currency, not {other}"),
                ))
            }
        }
        if price.batch_discount_percent > 100 {
            return Err(StoreError::invalid(
                "batch_discount_percent",
                "`batch_discount_percent` must be 0-100",
            ));
        }
        price.version = format!("{}@{}", price.model, price.effective_from_ms);
        price.created_at_ms = now;
        self.write(|tx| {
            if read::<Price>(tx, PRICE, &price.version)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "price `{}` exists already",
                    price.version
                )));
            }
            store(tx, PRICE, &price.version, None, &price)?;
            let entry = actor.entry(
                "price.set",
                format!("price:{}", price.version),
                None,
                None,
                Some(to_json(&price)),
            );
            tx.audit(&entry)?;
            Ok(price.clone())
        })
    }

    /// Stores a new object of `kind` for `tenant` (and `project`, which must exist): 409 if
    /// `id` is taken; audited as `{kind}.create`.
    pub(crate) fn create_object<T: serde::Serialize + Clone>(
        &self,
        actor: &Actor,
        kind: &str,
        id: &str,
        tenant: &TenantId,
        project: Option<&str>,
        object: T,
    ) -> Result<T> {
        self.write(|tx| {
            live_tenant(tx, tenant)?;
            if let Some(project) = project {
                let path = format!("{tenant}/{project}");
                read::<Project>(tx, PROJECT, &path)?
                    .ok_or_else(|| StoreError::NotFound(format!("no project `{path}`")))?;
            }
            if tx.get(kind, id)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "{kind} `{id}` exists already"
                )));
            }
            store(tx, kind, id, Some(tenant), &object)?;
            let entry = actor.entry(
                &format!("{kind}.create"),
                format!("{kind}:{id}"),
                Some(tenant),
                None,
                Some(to_json(&object)),
            );
            tx.audit(&entry)?;
            Ok(object.clone())
        })
    }

    /// Checks that `actor` may change `key`.
    fn check_key(actor: &Actor, key: &Key) -> Result<()> {
        match &key.tenant {
            Some(tenant) => actor.check_manage(tenant),
            None => actor.check_operator("changing admin keys"),
        }
    }

    /// Replaces a key with a new one of the same scope; the old one stays valid for `overlap`
    /// (at most 30 days, and never past its own expiry), then stops.
    pub fn rotate_key(&self, actor: &Actor, id: &str, overlap: Duration) -> Result<IssuedKey> {
        if overlap > MAX_OVERLAP {
            return Err(StoreError::invalid(
                "overlap_secs",
                "`overlap_secs` must be at most 2592000 (30 days)",
            ));
        }
        let plaintext = ApiKey::generate();
        let key = self.write(|tx| {
            let before: Key =
                read(tx, KEY, id)?.ok_or_else(|| StoreError::NotFound(format!("no key `{id}`")))?;
            Self::check_key(actor, &before)?;
            let now = now_ms();
            if !before.is_valid_at(now) {
                return Err(StoreError::Conflict(format!(
                    "key `{id}` is revoked or expired: issue a new one"
                )));
            }
            if let Some(tenant) = &before.tenant {
                live_tenant(tx, tenant)?;
            }
            let new = Key {
                id: random_id("key"),
                digest: plaintext.digest().to_string(),
                created_at_ms: now,
                created_by: actor.key_id.clone(),
                last_used_at_ms: None,
                replaced_by: None,
                ..before.clone()
            };
            let mut old = before.clone();
            let until = now.saturating_add(overlap.as_millis() as i64);
            old.expires_at_ms = Some(old.expires_at_ms.map_or(until, |at| at.min(until)));
            old.replaced_by = Some(new.id.clone());
            store(tx, KEY, &old.id, old.tenant.as_ref(), &old)?;
            store(tx, KEY, &new.id, new.tenant.as_ref(), &new)?;
            let entry = actor.entry(
                "key.rotate",
                format!("key:{id}"),
                before.tenant.as_ref(),
                Some(before.view()),
                Some(serde_json::json!({"rotated": old.view(), "issued": new.view()})),
            );
            tx.audit(&entry)?;
            Ok(new)
        })?;
        Ok(IssuedKey { key, plaintext })
    }

    /// Revokes a key: every replica refuses it once it has seen the change.
    pub fn revoke_key(&self, actor: &Actor, id: &str) -> Result<Key> {
        self.write(|tx| {
            let before: Key =
                read(tx, KEY, id)?.ok_or_else(|| StoreError::NotFound(format!("no key `{id}`")))?;
            Self::check_key(actor, &before)?;
            if before.revoked_at_ms.is_some() {
                return Ok(before);
            }
            let mut after = before.clone();
            after.revoked_at_ms = Some(now_ms());
            store(tx, KEY, id, after.tenant.as_ref(), &after)?;
            let entry = actor.entry(
                "key.revoke",
                format!("key:{id}"),
                before.tenant.as_ref(),
                Some(before.view()),
                Some(after.view()),
            );
            tx.audit(&entry)?;
            Ok(after)
        })
    }
}
