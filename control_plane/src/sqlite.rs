//! The store of one process: a SQLite file in WAL mode.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::api_objects::ApiObject;
use crate::backend::{audit_sql, json_column, AuditParam, Backend, Rows, Tx};
use crate::error::{Result, StoreError};
use crate::model::{AuditEntry, AuditQuery};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// The migrations' own table: the ledger may live in the same database.
pub(crate) const HISTORY_TABLE: &str = "control_plane_schema_history";

/// Opens (creating and migrating if needed) the store at `path`.
pub(crate) fn open(path: &Path, sync_every_commit: bool) -> Result<SqliteBackend> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if sync_every_commit { "FULL" } else { "NORMAL" };
    connection.pragma_update(None, "synchronous", synchronous)?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    embedded::migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run(&mut connection)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    Ok(SqliteBackend(connection))
}

/// The SQLite store's connection.
pub(crate) struct SqliteBackend(Connection);

struct SqliteTx<'a>(&'a rusqlite::Transaction<'a>);

impl Tx for SqliteTx<'_> {
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<String>> {
        Ok(self
            .0
            .query_row(
                "SELECT body FROM cp_objects WHERE kind = ?1 AND id = ?2",
                (kind, id),
                |row| row.get(0),
            )
            .optional()?)
    }

    fn put(&mut self, kind: &str, id: &str, tenant: Option<&str>, body: &str) -> Result<()> {
        self.0.execute(
            "INSERT INTO cp_objects (kind, id, tenant, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, id) DO UPDATE SET tenant = excluded.tenant, body = excluded.body",
            (kind, id, tenant, body),
        )?;
        Ok(())
    }

    fn count(&mut self, kind: &str) -> Result<i64> {
        Ok(self.0.query_row(
            "SELECT COUNT(*) FROM cp_objects WHERE kind = ?1",
            [kind],
            |row| row.get(0),
        )?)
    }

    fn lock_used(&mut self, allowance: &str) -> Result<i64> {
        // The transaction is IMMEDIATE: it holds the database's write lock already.
        self.0.execute(
            "INSERT INTO cp_allowance_use (allowance, used) VALUES (?1, 0) ON CONFLICT DO NOTHING",
            [allowance],
        )?;
        Ok(self.0.query_row(
            "SELECT used FROM cp_allowance_use WHERE allowance = ?1",
            [allowance],
            |row| row.get(0),
        )?)
    }

    fn reserved(&mut self, allowance: &str, now_ms: i64) -> Result<i64> {
        Ok(self.0.query_row(
            "SELECT COALESCE(SUM(amount), 0) FROM cp_reservations
             WHERE allowance = ?1 AND expires_ms > ?2",
            (allowance, now_ms),
            |row| row.get(0),
        )?)
    }

    fn reserve(&mut self, id: &str, allowance: &str, amount: i64, expires_ms: i64) -> Result<()> {
        self.0.execute(
            "INSERT INTO cp_reservations (id, allowance, amount, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            (id, allowance, amount, expires_ms),
        )?;
        Ok(())
    }

    fn release(&mut self, id: &str) -> Result<Vec<(String, i64)>> {
        let parts = self
            .0
            .prepare("SELECT allowance, amount FROM cp_reservations WHERE id = ?1")?
            .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.0
            .execute("DELETE FROM cp_reservations WHERE id = ?1", [id])?;
        Ok(parts)
    }

    fn add_used(&mut self, allowance: &str, amount: i64) -> Result<i64> {
        Ok(self.0.query_row(
            "INSERT INTO cp_allowance_use (allowance, used) VALUES (?1, ?2)
             ON CONFLICT (allowance) DO UPDATE SET used = used + excluded.used
             RETURNING used",
            (allowance, amount),
            |row| row.get(0),
        )?)
    }

    fn audit(&mut self, e: &AuditEntry) -> Result<()> {
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        self.0.execute(
            "INSERT INTO cp_audit (at_ms, actor_key, actor_role, actor_tenant, address, action,
                                   target, tenant, before_json, after_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rusqlite::params![
                e.at_ms,
                e.actor_key,
                e.actor_role,
                e.actor_tenant,
                e.address,
                e.action,
                e.target,
                e.tenant,
                json(&e.before),
                json(&e.after)
            ],
        )?;
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn version(&mut self) -> Result<i64> {
        Ok(self
            .0
            .query_row("SELECT version FROM cp_version", [], |row| row.get(0))?)
    }

    fn load(&mut self) -> Result<Rows> {
        let tx = self.0.transaction()?;
        let version = tx.query_row("SELECT version FROM cp_version", [], |row| row.get(0))?;
        let documents = tx
            .prepare("SELECT kind, body FROM cp_objects ORDER BY kind, id")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let last_used = tx
            .prepare("SELECT key_id, last_used_ms FROM cp_key_usage")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        tx.commit()?;
        Ok(Rows {
            version,
            documents,
            last_used,
        })
    }

    fn write(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE cp_version SET version = version + 1", [])?;
        work(&mut SqliteTx(&tx))?;
        tx.commit()?;
        Ok(())
    }

    fn transact(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        work(&mut SqliteTx(&tx))?;
        tx.commit()?;
        Ok(())
    }

    fn renew(&mut self, ids: &[String], expires_ms: i64, forget_before_ms: i64) -> Result<()> {
        let tx = self.0.transaction()?;
        {
            let mut statement =
                tx.prepare_cached("UPDATE cp_reservations SET expires_ms = ?2 WHERE id = ?1")?;
            for id in ids {
                statement.execute((id, expires_ms))?;
            }
        }
        tx.execute(
            "DELETE FROM cp_reservations WHERE expires_ms < ?1",
            [forget_before_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn allowance_use(&mut self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .0
            .prepare_cached("SELECT allowance, used FROM cp_allowance_use")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn audit_log(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let (sql, params) = audit_sql(query, |n| format!("?{n}"));
        let params: Vec<rusqlite::types::Value> = params
            .into_iter()
            .map(|p| match p {
                AuditParam::Text(t) => rusqlite::types::Value::Text(t),
                AuditParam::Int(i) => rusqlite::types::Value::Integer(i),
            })
            .collect();
        let mut statement = self.0.prepare(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
            Ok(AuditEntry {
                seq: row.get(0)?,
                at_ms: row.get(1)?,
                actor_key: row.get(2)?,
                actor_role: row.get(3)?,
                actor_tenant: row.get(4)?,
                address: row.get(5)?,
                action: row.get(6)?,
                target: row.get(7)?,
                tenant: row.get(8)?,
                before: json_column(row.get(9)?),
                after: json_column(row.get(10)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn last_used(&mut self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .0
            .prepare_cached("SELECT key_id, last_used_ms FROM cp_key_usage")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn touch(&mut self, used: &[(String, i64)]) -> Result<()> {
        let tx = self.0.transaction()?;
        {
            let mut statement = tx.prepare_cached(
                "INSERT INTO cp_key_usage (key_id, last_used_ms) VALUES (?1, ?2)
                 ON CONFLICT (key_id) DO UPDATE
                 SET last_used_ms = max(last_used_ms, excluded.last_used_ms)",
            )?;
            for (key, at) in used {
                statement.execute((key, at))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn api_put(&mut self, o: &ApiObject) -> Result<()> {
        self.0.execute(
            "INSERT INTO cp_api_objects (kind, id, tenant, created_ms, expires_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (kind, id) DO UPDATE SET tenant = excluded.tenant,
               created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
               body = excluded.body",
            (
                &o.kind,
                &o.id,
                &o.tenant,
                o.created_ms,
                o.expires_ms,
                &o.body,
            ),
        )?;
        Ok(())
    }

    fn api_get(&mut self, kind: &str, tenant: &str, id: &str) -> Result<Option<ApiObject>> {
        Ok(self
            .0
            .query_row(
                "SELECT created_ms, expires_ms, body FROM cp_api_objects
                 WHERE kind = ?1 AND id = ?2 AND tenant = ?3",
                (kind, id, tenant),
                |row| {
                    Ok(ApiObject {
                        kind: kind.to_string(),
                        id: id.to_string(),
                        tenant: tenant.to_string(),
                        created_ms: row.get(0)?,
                        expires_ms: row.get(1)?,
                        body: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn api_delete(&mut self, kind: &str, tenant: &str, id: &str) -> Result<bool> {
        let deleted = self.0.execute(
            "DELETE FROM cp_api_objects WHERE kind = ?1 AND id = ?2 AND tenant = ?3",
            (kind, id, tenant),
        )?;
        Ok(deleted > 0)
    }

    fn api_purge(&mut self, now_ms: i64) -> Result<u64> {
        let purged = self.0.execute(
            "DELETE FROM cp_api_objects WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
            [now_ms],
        )?;
        Ok(purged as u64)
    }

    fn api_list(
        &mut self,
        kind: &str,
        tenant: Option<&str>,
        id_prefix: &str,
    ) -> Result<Vec<ApiObject>> {
        let mut statement = self.0.prepare_cached(
            "SELECT id, tenant, created_ms, expires_ms, body FROM cp_api_objects
             WHERE kind = ?1 AND (?2 IS NULL OR tenant = ?2) AND substr(id, 1, ?3) = ?4
             ORDER BY created_ms, id",
        )?;
        let rows = statement.query_map(
            (kind, tenant, id_prefix.chars().count() as i64, id_prefix),
            |row| {
                Ok(ApiObject {
                    kind: kind.to_string(),
                    id: row.get(0)?,
                    tenant: row.get(1)?,
                    created_ms: row.get(2)?,
                    expires_ms: row.get(3)?,
                    body: row.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn api_bytes(&mut self, kind: &str, tenant: &str) -> Result<i64> {
        Ok(self.0.query_row(
            "SELECT COALESCE(SUM(length(CAST(body AS BLOB))), 0) FROM cp_api_objects
             WHERE kind = ?1 AND tenant = ?2",
            (kind, tenant),
            |row| row.get(0),
        )?)
    }

    fn api_claim(
        &mut self,
        kind: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        let claimed = self.0.execute(
            "UPDATE cp_api_objects SET lease_owner = ?3, lease_expires_ms = ?5
             WHERE kind = ?1 AND id = ?2
               AND (lease_owner IS NULL OR lease_owner = ?3 OR lease_expires_ms <= ?4)",
            (kind, id, owner, now_ms, until_ms),
        )?;
        Ok(claimed == 1)
    }

    fn api_release(&mut self, kind: &str, id: &str, owner: &str) -> Result<()> {
        self.0.execute(
            "UPDATE cp_api_objects SET lease_owner = NULL, lease_expires_ms = NULL
             WHERE kind = ?1 AND id = ?2 AND lease_owner = ?3",
            (kind, id, owner),
        )?;
        Ok(())
    }
}
