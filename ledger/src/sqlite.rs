//! The embedded store: one SQLite file in WAL mode (readers never block the writer), a
//! connection for the writer thread and one for reads.

use std::path::Path;

use policies::TenantId;
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;

use crate::query::{Dialect, Param, RECORD_COLUMNS};
use crate::{
    Durability, LedgerError, Reader, RecordStatus, Result, UsageQuery, UsageRecord, UsageRow,
    Writer,
};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Opens (creating and migrating if needed) the file at `path`.
pub(crate) fn open(path: &Path, durability: Durability) -> Result<(SqliteWriter, SqliteReader)> {
    let open_error = |source| LedgerError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut writer = Connection::open(path).map_err(open_error)?;
    writer
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(open_error)?;
    writer
        .pragma_update(None, "synchronous", durability.synchronous())
        .map_err(open_error)?;
    writer
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_error)?;
    embedded::migrations::runner()
        .run(&mut writer)
        .map_err(|e| LedgerError::Migration(e.to_string()))?;
    let reader = Connection::open(path).map_err(open_error)?;
    reader
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_error)?;
    Ok((SqliteWriter(writer), SqliteReader(reader)))
}

/// The writer thread's connection.
pub(crate) struct SqliteWriter(Connection);

impl Writer for SqliteWriter {
    fn commit(&mut self, records: &[&UsageRecord]) -> Result<(), String> {
        commit(&mut self.0, records).map_err(|e| e.to_string())
    }
}

fn commit(conn: &mut Connection, records: &[&UsageRecord]) -> rusqlite::Result<()> {
    // One record (the usual group at low rates) is one statement, its own transaction: no
    // BEGIN and COMMIT to parse and run around it. Several share one transaction (one sync).
    if let [record] = records {
        return insert(conn, record);
    }
    let tx = conn.transaction()?;
    for r in records {
        insert(&tx, r)?;
    }
    tx.commit()
}

/// Inserts one record with the cached prepared statement.
fn insert(conn: &Connection, r: &UsageRecord) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO usage ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?;
    insert.execute(rusqlite::params![
        r.request_id,
        r.tenant.as_str(),
        r.key_id,
        r.model,
        r.pool,
        r.prompt_tokens as i64,
        r.completion_tokens as i64,
        r.status.as_str(),
        r.finish_reason,
        r.started_at_ms,
        r.ended_at_ms,
        r.prompt_tokens_estimated,
    ])?;
    Ok(())
}

/// The connection for reads.
pub(crate) struct SqliteReader(Connection);

fn bind(params: Vec<Param>) -> impl Iterator<Item = SqlValue> {
    params.into_iter().map(|p| match p {
        Param::Text(t) => SqlValue::Text(t),
        Param::Int(i) => SqlValue::Integer(i),
    })
}

impl Reader for SqliteReader {
    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        let (sql, params) = query.usage_sql(Dialect::Sqlite);
        let mut statement = self.0.prepare(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(bind(params)), |row| {
            Ok(query.row(
                tenant_column(row, 0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn records(&mut self, query: &UsageQuery) -> Result<Vec<UsageRecord>> {
        let (sql, params) = query.records_sql(Dialect::Sqlite);
        let mut statement = self.0.prepare(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(bind(params)), |row| {
            let status: String = row.get(7)?;
            Ok(UsageRecord {
                request_id: row.get(0)?,
                tenant: tenant_column(row, 1)?,
                key_id: row.get(2)?,
                model: row.get(3)?,
                pool: row.get(4)?,
                prompt_tokens: row.get::<_, i64>(5)? as u64,
                completion_tokens: row.get::<_, i64>(6)? as u64,
                // Only this crate writes the column.
                status: RecordStatus::parse(&status).unwrap_or(RecordStatus::Failed),
                finish_reason: row.get(8)?,
                started_at_ms: row.get(9)?,
                ended_at_ms: row.get(10)?,
                prompt_tokens_estimated: row.get(11)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A tenant column, read back as the validated id it was written from.
fn tenant_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<TenantId> {
    let text: String = row.get(index)?;
    TenantId::new(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}
