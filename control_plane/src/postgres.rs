//! The store of a fleet: PostgreSQL (the ledger's server, its own tables). Every replica polls
//! the version row and reloads when it moved; a broken connection is made again on the next
//! use, so a store that comes back is used again without a restart.

use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, NoTls};

use crate::api_objects::ApiObject;
use crate::backend::{audit_sql, json_column, AuditParam, Backend, Rows, Tx};
use crate::error::{Result, StoreError};
use crate::model::{AuditEntry, AuditQuery};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Migrations run under this advisory lock (the ledger uses another), one replica at a time.
const MIGRATION_LOCK: i64 = 0x0063_6f6e_7472_6f6c; // "control" in ASCII

/// How long a connection attempt may take: a store that is down must fail a write quickly (a
/// 503 to the admin), not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `url` and brings the schema up to date.
pub(crate) fn connect(url: &str) -> Result<PostgresBackend> {
    let mut client = open(url)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let migrated = embedded::migrations::runner()
        .set_migration_table_name(crate::sqlite::HISTORY_TABLE)
        .run(&mut client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    migrated.map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(PostgresBackend {
        url: url.to_string(),
        client: Some(client),
    })
}

fn open(url: &str) -> Result<Client> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::Unavailable(e.to_string()))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(NoTls).map_err(|e| {
        // The URL may carry a password: only its host part is named.
        let server = url.rsplit('@').next().unwrap_or(url);
        StoreError::Unavailable(format!("PostgreSQL at {server}: {e}"))
    })
}

/// The PostgreSQL store's connection.
pub(crate) struct PostgresBackend {
    url: String,
    client: Option<Client>,
}

impl PostgresBackend {
    /// The connection, made again if it broke. A failed call drops it, so the next call
    /// connects afresh.
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(open(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn run<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let result = f(self.client()?);
        if matches!(result, Err(StoreError::Unavailable(_))) {
            self.client = None;
        }
        result
    }
}

struct PostgresTx<'a, 'b>(&'a mut postgres::Transaction<'b>);

impl Tx for PostgresTx<'_, '_> {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<String>> {
        let row = self.0.query_opt(
            "SELECT body FROM cp_objects WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn put(&mut self, kind: &str, id: &str, tenant: Option<&str>, body: &str) -> Result<()> {
        self.0.execute(
            "INSERT INTO cp_objects (kind, id, tenant, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, id) DO UPDATE SET tenant = excluded.tenant, body = excluded.body",
            &[&kind, &id, &tenant, &body],
        )?;
        Ok(())
    }

    fn count(&mut self, kind: &str) -> Result<i64> {
        let row = self
            .0
            .query_one("SELECT COUNT(*) FROM cp_objects WHERE kind = $1", &[&kind])?;
        Ok(row.get(0))
    }

    fn lock_used(&mut self, allowance: &str) -> Result<i64> {
        self.0.execute(
            "INSERT INTO cp_allowance_use (allowance, used) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&allowance],
        )?;
        // Held until the transaction ends: the replicas' reservations of one allowance queue
        // here, each seeing the ones before it.
        let row = self.0.query_one(
            "SELECT used FROM cp_allowance_use WHERE allowance = $1 FOR UPDATE",
            &[&allowance],
        )?;
        Ok(row.get(0))
    }

    fn reserved(&mut self, allowance: &str, now_ms: i64) -> Result<i64> {
        let row = self.0.query_one(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM cp_reservations
             WHERE allowance = $1 AND expires_ms > $2",
            &[&allowance, &now_ms],
        )?;
        Ok(row.get(0))
    }

    fn reserve(&mut self, id: &str, allowance: &str, amount: i64, expires_ms: i64) -> Result<()> {
        self.0.execute(
            "INSERT INTO cp_reservations (id, allowance, amount, expires_ms) VALUES ($1, $2, $3, $4)",
            &[&id, &allowance, &amount, &expires_ms],
        )?;
        Ok(())
    }

    fn release(&mut self, id: &str) -> Result<Vec<(String, i64)>> {
        let rows = self.0.query(
            "DELETE FROM cp_reservations WHERE id = $1 RETURNING allowance, amount",
            &[&id],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn add_used(&mut self, allowance: &str, amount: i64) -> Result<i64> {
        let row = self.0.query_one(
            "INSERT INTO cp_allowance_use (allowance, used) VALUES ($1, $2)
             ON CONFLICT (allowance) DO UPDATE SET used = cp_allowance_use.used + excluded.used
             RETURNING used",
            &[&allowance, &amount],
        )?;
        Ok(row.get(0))
    }

    fn audit(&mut self, e: &AuditEntry) -> Result<()> {
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        self.0.execute(
            "INSERT INTO cp_audit (at_ms, actor_key, actor_role, actor_tenant, address, action,
                                   target, tenant, before_json, after_json)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &e.at_ms,
                &e.actor_key,
                &e.actor_role,
                &e.actor_tenant,
                &e.address,
                &e.action,
                &e.target,
                &e.tenant,
                &json(&e.before),
                &json(&e.after),
            ],
        )?;
        Ok(())
    }
}

impl Backend for PostgresBackend {
    fn version(&mut self) -> Result<i64> {
        self.run(|c| Ok(c.query_one("SELECT version FROM cp_version", &[])?.get(0)))
    }

    fn load(&mut self) -> Result<Rows> {
        self.run(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let version = tx.query_one("SELECT version FROM cp_version", &[])?.get(0);
            let documents = tx
                .query("SELECT kind, body FROM cp_objects ORDER BY kind, id", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let last_used = tx
                .query("SELECT key_id, last_used_ms FROM cp_key_usage", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            tx.commit()?;
            Ok(Rows {
                version,
                documents,
                last_used,
            })
        })
    }

    fn write(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            // The row lock orders writers of every replica: each sees the one before it.
            tx.execute("UPDATE cp_version SET version = version + 1", &[])?;
            work(&mut PostgresTx(&mut tx))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn transact(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            work(&mut PostgresTx(&mut tx))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn renew(&mut self, ids: &[String], expires_ms: i64, forget_before_ms: i64) -> Result<()> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE cp_reservations SET expires_ms = $2 WHERE id = ANY($1)",
                &[&ids, &expires_ms],
            )?;
            tx.execute(
                "DELETE FROM cp_reservations WHERE expires_ms < $1",
                &[&forget_before_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn allowance_use(&mut self) -> Result<Vec<(String, i64)>> {
        self.run(|c| {
            Ok(
                c.query("SELECT allowance, used FROM cp_allowance_use", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            )
        })
    }

    fn audit_log(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let (sql, params) = audit_sql(query, |n| format!("${n}"));
        self.run(|c| {
            let params: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| match p {
                    AuditParam::Text(t) => t as &(dyn ToSql + Sync),
                    AuditParam::Int(i) => i as &(dyn ToSql + Sync),
                })
                .collect();
            let rows = c.query(&sql, &params)?;
            Ok(rows
                .iter()
                .map(|row| AuditEntry {
                    seq: row.get(0),
                    at_ms: row.get(1),
                    actor_key: row.get(2),
                    actor_role: row.get(3),
                    actor_tenant: row.get(4),
                    address: row.get(5),
                    action: row.get(6),
                    target: row.get(7),
                    tenant: row.get(8),
                    before: json_column(row.get(9)),
                    after: json_column(row.get(10)),
                })
                .collect())
        })
    }

    fn last_used(&mut self) -> Result<Vec<(String, i64)>> {
        self.run(|c| {
            Ok(
                c.query("SELECT key_id, last_used_ms FROM cp_key_usage", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            )
        })
    }

    fn touch(&mut self, used: &[(String, i64)]) -> Result<()> {
        let keys: Vec<&str> = used.iter().map(|(k, _)| k.as_str()).collect();
        let times: Vec<i64> = used.iter().map(|(_, t)| *t).collect();
        self.run(|c| {
            c.execute(
                "INSERT INTO cp_key_usage (key_id, last_used_ms)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[])
                 ON CONFLICT (key_id) DO UPDATE
                 SET last_used_ms = GREATEST(cp_key_usage.last_used_ms, excluded.last_used_ms)",
                &[&keys, &times],
            )?;
            Ok(())
        })
    }

    fn api_put(&mut self, o: &ApiObject) -> Result<()> {
        self.run(|c| {
            c.execute(
                "INSERT INTO cp_api_objects (kind, id, tenant, created_ms, expires_ms, body)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (kind, id) DO UPDATE SET tenant = excluded.tenant,
                   created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
                   body = excluded.body",
                &[
                    &o.kind,
                    &o.id,
                    &o.tenant,
                    &o.created_ms,
                    &o.expires_ms,
                    &o.body,
                ],
            )?;
            Ok(())
        })
    }

    fn api_get(&mut self, kind: &str, tenant: &str, id: &str) -> Result<Option<ApiObject>> {
        self.run(|c| {
            let row = c.query_opt(
                "SELECT created_ms, expires_ms, body FROM cp_api_objects
                 WHERE kind = $1 AND id = $2 AND tenant = $3",
                &[&kind, &id, &tenant],
            )?;
            Ok(row.map(|row| ApiObject {
                kind: kind.to_string(),
                id: id.to_string(),
                tenant: tenant.to_string(),
                created_ms: row.get(0),
                expires_ms: row.get(1),
                body: row.get(2),
            }))
        })
    }

    fn api_delete(&mut self, kind: &str, tenant: &str, id: &str) -> Result<bool> {
        self.run(|c| {
            let deleted = c.execute(
                "DELETE FROM cp_api_objects WHERE kind = $1 AND id = $2 AND tenant = $3",
                &[&kind, &id, &tenant],
            )?;
            Ok(deleted > 0)
        })
    }

    fn api_purge(&mut self, now_ms: i64) -> Result<u64> {
        self.run(|c| {
            Ok(c.execute(
                "DELETE FROM cp_api_objects WHERE expires_ms IS NOT NULL AND expires_ms <= $1",
                &[&now_ms],
            )?)
        })
    }

    fn api_list(
        &mut self,
        kind: &str,
        tenant: Option<&str>,
        id_prefix: &str,
    ) -> Result<Vec<ApiObject>> {
        let length = id_prefix.chars().count() as i32;
        self.run(|c| {
            let rows = c.query(
                "SELECT id, tenant, created_ms, expires_ms, body FROM cp_api_objects
                 WHERE kind = $1 AND ($2::text IS NULL OR tenant = $2)
                   AND substr(id, 1, $3) = $4
                 ORDER BY created_ms, id",
                &[&kind, &tenant, &length, &id_prefix],
            )?;
            Ok(rows
                .iter()
                .map(|row| ApiObject {
                    kind: kind.to_string(),
                    id: row.get(0),
                    tenant: row.get(1),
                    created_ms: row.get(2),
                    expires_ms: row.get(3),
                    body: row.get(4),
                })
                .collect())
        })
    }

    fn api_bytes(&mut self, kind: &str, tenant: &str) -> Result<i64> {
        self.run(|c| {
            let row = c.query_one(
                "SELECT COALESCE(SUM(octet_length(body)), 0)::bigint FROM cp_api_objects
                 WHERE kind = $1 AND tenant = $2",
                &[&kind, &tenant],
            )?;
            Ok(row.get(0))
        })
    }

    fn api_claim(
        &mut self,
        kind: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        self.run(|c| {
            let claimed = c.execute(
                "UPDATE cp_api_objects SET lease_owner = $3, lease_expires_ms = $5
                 WHERE kind = $1 AND id = $2
                   AND (lease_owner IS NULL OR lease_owner = $3 OR lease_expires_ms <= $4)",
                &[&kind, &id, &owner, &now_ms, &until_ms],
            )?;
            Ok(claimed == 1)
        })
    }

    fn api_release(&mut self, kind: &str, id: &str, owner: &str) -> Result<()> {
        self.run(|c| {
            c.execute(
                "UPDATE cp_api_objects SET lease_owner = NULL, lease_expires_ms = NULL
                 WHERE kind = $1 AND id = $2 AND lease_owner = $3",
                &[&kind, &id, &owner],
            )?;
            Ok(())
        })
    }
}
