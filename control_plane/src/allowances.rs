//! What the centre allocates: grants (an amount of tokens or money for a tenant or one of its
//! projects, between a start and an expiry) and budgets (an amount of money per UTC day or
//! month). Each is an allowance whose use lives in the store, not in a replica's memory or in
//! Redis: what requests settled, plus what requests in flight reserved under a lease. A request
//! reserves its maximum (prompt plus `max_tokens`, or their cost at the price in force) in one
//! store transaction that locks the allowances it touches, so concurrent requests, on any
//! replica, never take one past its amount; it settles its real use when it ends; a replica that
//! dies stops renewing its leases and its reservations lapse.
//!
//! A request is charged to one grant: the earliest-expiring active one with room for its whole
//! maximum (several grants are so consumed in order of expiry). Every budget that applies must
//! have room as well.

use policies::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::actor::Actor;
use crate::backend::{Tx, BUDGET, GRANT};
use crate::error::{Result, StoreError};
use crate::model::{now_ms, random_id, CostMicros, Snapshot};
use crate::ControlPlane;

/// What a grant counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Prompt plus generated tokens.
    Tokens,
    /// Cost, in minor units of the centre's currency.
    Money,
}

/// An allocation to a tenant, or to one of its projects, valid between a start and an expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Its id (`grant_...` unless given).
    #[serde(default)]
    pub id: String,
    /// The tenant it is for.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// The project it is for (absent: any of the tenant's requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A name for people (the research grant's reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tokens or money.
    pub unit: Unit,
    /// How much: tokens, or minor units of the currency.
    pub amount: i64,
    /// Valid from (Unix ms; default now).
    #[serde(default)]
    pub starts_at_ms: i64,
    /// Valid until (Unix ms, exclusive).
    pub expires_at_ms: i64,
    /// When it was made.
    #[serde(default)]
    pub created_at_ms: i64,
}

/// The period a budget renews over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

/// An amount of money a tenant, or one of its projects, may spend per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Its id (`budget_...` unless given).
    #[serde(default)]
    pub id: String,
    /// The tenant it bounds.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// The project it bounds (absent: all of the tenant's requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Day or month.
    pub period: Period,
    /// Minor units of the currency per period.
    pub amount: i64,
    /// When it was made.
    #[serde(default)]
    pub created_at_ms: i64,
}

/// What a request may use at most, or used: tokens, and cost in millionths of a minor unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt plus generated tokens.
    pub tokens: i64,
    /// Cost.
    pub micros: CostMicros,
}

/// A request's reservation, to settle when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id in the store.
    pub id: String,
    /// The grant it is charged to, if any.
    pub grant: Option<String>,
}

/// Why a request was refused: the allowance it needed, named for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// What to tell the client (`grant `g-2026` is exhausted`, ...).
    pub message: String,
}

/// One allowance's use around a settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// `grant` or `budget`.
    pub kind: &'static str,
    /// The grant's or budget's id.
    pub id: String,
    /// The period (`YYYY-MM-DD`, `YYYY-MM`) of a budget.
    pub period: Option<String>,
    /// Its use before (tokens, or millionths of a minor unit).
    pub before: i64,
    /// And after.
    pub after: i64,
}

/// An allowance's use, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AllowanceUse {
    /// `grant` or `budget`.
    pub kind: &'static str,
    /// The grant's or budget's id.
    pub id: String,
    /// The period (`YYYY-MM-DD`, `YYYY-MM`) of a budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Settled use: tokens, or millionths of a minor unit.
    pub used: i64,
}

impl Grant {
    /// The store's key of its use (its unit in it: a settlement knows what to add).
    pub fn key(&self) -> String {
        let unit = match self.unit {
            Unit::Tokens => "tokens",
            Unit::Money => "money",
        };
        format!("grant:{unit}:{}", self.id)
    }

    /// Its amount in the unit its use is counted in (money: millionths of a minor unit).
    pub fn capacity(&self) -> i64 {
        match self.unit {
            Unit::Tokens => self.amount,
            Unit::Money => self.amount.saturating_mul(1_000_000),
        }
    }

    fn of(&self, usage: Usage) -> i64 {
        match self.unit {
            Unit::Tokens => usage.tokens,
            Unit::Money => usage.micros,
        }
    }

    fn applies(&self, tenant: &TenantId, project: Option<&str>) -> bool {
        applies(&self.tenant, self.project.as_deref(), tenant, project)
    }
}

/// `YYYY-MM-DD` and `YYYY-MM` of the UTC day `at_ms` falls in.
fn utc_day_and_month(at_ms: i64) -> (String, String) {
    let (year, month, day) = crate::model::civil_from_days(at_ms.div_euclid(86_400_000));
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{year:04}-{month:02}"),
    )
}

impl Budget {
    /// Its amount in millionths of a minor unit, the unit its use is counted in.
    pub fn capacity(&self) -> i64 {
        self.amount.saturating_mul(1_000_000)
    }

    /// The period `at_ms` falls in, and the store's key of the budget's use in it.
    pub fn period_at(&self, at_ms: i64) -> (String, String) {
        let (day, month) = utc_day_and_month(at_ms);
        let period = match self.period {
            Period::Day => day,
            Period::Month => month,
        };
        let key = format!("budget:{}:{period}", self.id);
        (period, key)
    }

    fn applies(&self, tenant: &TenantId, project: Option<&str>) -> bool {
        applies(&self.tenant, self.project.as_deref(), tenant, project)
    }
}

/// What a store key of an allowance's use names: `(kind, id, period)`. The one reader of the
/// keys [`Grant::key`] and [`Budget::period_at`] write.
fn parse_key(key: &str) -> Option<(&'static str, String, Option<String>)> {
    let mut parts = key.splitn(3, ':');
    match (parts.next()?, parts.next()?, parts.next()?) {
        ("grant", _unit, id) => Some(("grant", id.to_string(), None)),
        ("budget", id, period) => Some(("budget", id.to_string(), Some(period.to_string()))),
        _ => None,
    }
}

/// Whether an allowance of `owner` (and `scope`, a project or none) applies to a request of
/// `tenant` and `project`: a tenant-wide one to all its requests, a project's to that project's.
fn applies(
    owner: &TenantId,
    scope: Option<&str>,
    tenant: &TenantId,
    project: Option<&str>,
) -> bool {
    owner == tenant && (scope.is_none() || scope == project)
}

/// Whether the snapshot has any allowance for `tenant` (and `project`): requests of others skip
/// the store entirely.
pub fn any_allowance(snapshot: &Snapshot, tenant: &TenantId, project: Option<&str>) -> bool {
    snapshot.grants.iter().any(|g| g.applies(tenant, project))
        || snapshot.budgets.iter().any(|b| b.applies(tenant, project))
}

impl ControlPlane {
    /// Creates a grant (operators).
    pub fn create_grant(&self, actor: &Actor, body: Value) -> Result<Grant> {
        actor.check_operator("granting")?;
        let mut grant: Grant = crate::writes::parse_body(body, &["created_at_ms"])?;
        let now = now_ms();
        if grant.id.is_empty() {
            grant.id = random_id("grant");
        }
        crate::model::check_project_id(&grant.id).map_err(|_| {
            StoreError::invalid("id", "`id`: 1-64 letters, digits, `_`, `.` or `-`")
        })?;
        if grant.amount <= 0 {
            return Err(StoreError::invalid("amount", "`amount` must be above 0"));
        }
        if grant.starts_at_ms == 0 {
            grant.starts_at_ms = now;
        }
        if grant.expires_at_ms <= grant.starts_at_ms {
            return Err(StoreError::invalid(
                "expires_at_ms",
                "`expires_at_ms` must be after `starts_at_ms`",
            ));
        }
        grant.created_at_ms = now;
        let (id, tenant, project) = (
            grant.id.clone(),
            grant.tenant.clone(),
            grant.project.clone(),
        );
        self.create_object(actor, GRANT, &id, &tenant, project.as_deref(), grant)
    }

    /// Creates a budget (operators).
    pub fn create_budget(&self, actor: &Actor, body: Value) -> Result<Budget> {
        actor.check_operator("setting budgets")?;
        let mut budget: Budget = crate::writes::parse_body(body, &["created_at_ms"])?;
        if budget.id.is_empty() {
            budget.id = random_id("budget");
        }
        crate::model::check_project_id(&budget.id).map_err(|_| {
            StoreError::invalid("id", "`id`: 1-64 letters, digits, `_`, `.` or `-`")
        })?;
        if budget.amount <= 0 {
            return Err(StoreError::invalid("amount", "`amount` must be above 0"));
        }
        budget.created_at_ms = now_ms();
        let (id, tenant, project) = (
            budget.id.clone(),
            budget.tenant.clone(),
            budget.project.clone(),
        );
        self.create_object(actor, BUDGET, &id, &tenant, project.as_deref(), budget)
    }

    /// Reserves `most` for a request of `tenant` (and `project`) against every allowance that
    /// applies, for `lease_ms` (renewed while it runs). `Ok(None)`: none applies. `Err` of a
    /// shortfall: refused, nothing held.
    pub fn reserve(
        &self,
        snapshot: &Snapshot,
        tenant: &TenantId,
        project: Option<&str>,
        most: Usage,
        lease_ms: i64,
    ) -> Result<std::result::Result<Option<Reservation>, Shortfall>> {
        let now = now_ms();
        let mut grants: Vec<&Grant> = snapshot
            .grants
            .iter()
            .filter(|g| g.applies(tenant, project))
            .collect();
        grants.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        let budgets: Vec<(&crate::Budget, String)> = snapshot
            .budgets
            .iter()
            .filter(|b| b.applies(tenant, project))
            .map(|b| (b, b.period_at(now).1))
            .collect();
        if grants.is_empty() && budgets.is_empty() {
            return Ok(Ok(None));
        }
        let active: Vec<&Grant> = grants
            .iter()
            .copied()
            .filter(|g| g.starts_at_ms <= now && now < g.expires_at_ms)
            .collect();
        if !grants.is_empty() && active.is_empty() {
            let last = grants.last().expect("not empty");
            let message = match grants.iter().find(|g| g.starts_at_ms > now) {
                Some(next) => format!("Grant `{}` has not started yet.", next.id),
                None => format!("Grant `{}` expired; no grant of yours is active.", last.id),
            };
            return Ok(Err(Shortfall { message }));
        }
        let id = random_id("hold");
        let mut outcome = Ok(None);
        self.backend().transact(&mut |tx: &mut dyn Tx| {
            // Lock in one order (the keys sorted), so two requests never wait on each other.
            let mut keys: Vec<String> = active
                .iter()
                .map(|g| g.key())
                .chain(budgets.iter().map(|(_, k)| k.clone()))
                .collect();
            keys.sort();
            let mut left = std::collections::HashMap::new();
            for key in &keys {
                let used = tx.lock_used(key)?;
                let reserved = tx.reserved(key, now)?;
                left.insert(key.clone(), used.saturating_add(reserved));
            }
            for (budget, key) in &budgets {
                let room = budget.capacity() - left[key];
                if most.micros > room {
                    outcome = Err(Shortfall {
                        message: format!(
                            "Budget `{}` ({:?}) has {} of {} minor units left; this request may cost up to {}.",
                            budget.id,
                            budget.period,
                            room.max(0) / 1_000_000,
                            budget.amount,
                            (most.micros + 999_999) / 1_000_000
                        ),
                    });
                    return Ok(());
                }
            }
            let chosen = match active.is_empty() {
                true => None,
                false => match active
                    .iter()
                    .find(|g| g.of(most) <= g.capacity() - left[&g.key()])
                {
                    Some(g) => Some(*g),
                    None => {
                        let first = active[0];
                        outcome = Err(Shortfall {
                            message: format!(
                                "Grant `{}` is exhausted for this request ({} of {} {} left){}.",
                                first.id,
                                match first.unit {
                                    Unit::Tokens => (first.capacity() - left[&first.key()]).max(0),
                                    Unit::Money =>
                                        (first.capacity() - left[&first.key()]).max(0) / 1_000_000,
                                },
                                first.amount,
                                match first.unit {
                                    Unit::Tokens => "tokens",
                                    Unit::Money => "minor units",
                                },
                                match active.len() {
                                    1 => String::new(),
                                    n => format!(", as are the {} others", n - 1),
                                }
                            ),
                        });
                        return Ok(());
                    }
                },
            };
            let expires = now + lease_ms;
            if let Some(grant) = chosen {
                tx.reserve(&id, &grant.key(), grant.of(most), expires)?;
            }
            for (_, key) in &budgets {
                tx.reserve(&id, key, most.micros, expires)?;
            }
            outcome = Ok(Some(Reservation {
                id: id.clone(),
                grant: chosen.map(|g| g.id.clone()),
            }));
            Ok(())
        })?;
        Ok(outcome)
    }

    /// Ends a reservation: its hold goes, `used` (never above what was reserved) is added to
    /// the allowances it held. Returns each allowance's use before and after, read in the same
    /// transaction: of all replicas, exactly one sees a threshold crossed.
    pub fn settle(&self, reservation: &str, used: Usage) -> Result<Vec<Settled>> {
        let mut settled = Vec::new();
        self.backend().transact(&mut |tx: &mut dyn Tx| {
            settled.clear();
            for (key, reserved) in tx.release(reservation)? {
                // Token grants count tokens; money grants and budgets, cost.
                let amount = match key.starts_with("grant:tokens:") {
                    true => used.tokens,
                    false => used.micros,
                }
                .clamp(0, reserved);
                let after = tx.add_used(&key, amount)?;
                if let Some((kind, id, period)) = parse_key(&key) {
                    settled.push(Settled {
                        kind,
                        id,
                        period,
                        before: after - amount,
                        after,
                    });
                }
            }
            Ok(())
        })?;
        Ok(settled)
    }

    /// Extends the leases of reservations `ids` by `lease_ms` from now; forgets reservations
    /// that lapsed long ago.
    pub fn renew(&self, ids: &[String], lease_ms: i64) -> Result<()> {
        let now = now_ms();
        self.backend().renew(ids, now + lease_ms, now - 3_600_000)
    }

    /// What every grant, and every budget in each period, has used.
    pub fn allowance_use(&self) -> Result<Vec<AllowanceUse>> {
        let mut uses: Vec<AllowanceUse> = self
            .backend()
            .allowance_use()?
            .into_iter()
            .filter_map(|(key, used)| {
                let (kind, id, period) = parse_key(&key)?;
                Some(AllowanceUse {
                    kind,
                    id,
                    period,
                    used,
                })
            })
            .collect();
        uses.sort_by(|a, b| (a.kind, &a.id, &a.period).cmp(&(b.kind, &b.id, &b.period)));
        Ok(uses)
    }
}
