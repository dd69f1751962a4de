//! The embedded store: one SQLite file in WAL mode (readers never block the writer), a
//! connection for the writer thread, one for reads and one for checkpoints.
//!
//! Checkpoints (copying the WAL back into the database file, two syncs and a burst of writes)
//! run on a thread of their own: SQLite's automatic checkpoint would run them inside the commit
//! that crosses the threshold, and every request waiting on that group would wait for it too.
//! A passive checkpoint never blocks the writer, and the WAL restarts from its beginning once
//! one has copied everything back.

use std::path::Path;
use std::sync::{mpsc, LazyLock};
use std::thread::JoinHandle;

use policies::TenantId;
use rusqlite::hooks::Wal;
use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;

use crate::query::{Dialect, Param, RECORD_COLUMNS};
use crate::{
    Api, Durability, LedgerError, Reader, RecordStatus, Result, UsageQuery, UsageRecord, UsageRow,
    Writer,
};

/// WAL frames (pages) after which the writer asks for a checkpoint: SQLite's own default for its
/// automatic one.
const CHECKPOINT_AFTER_FRAMES: i32 = 1000;

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
    let checkpoints = Connection::open(path).map_err(open_error)?;
    checkpoints
        .pragma_update(None, "synchronous", durability.synchronous())
        .map_err(open_error)?;
    let (checkpointer, wake) = Checkpointer::start(checkpoints)?;
    // The WAL's length at which to ask next: every further CHECKPOINT_AFTER_FRAMES frames (a
    // checkpoint held back by a reader is asked for again), from the start once it restarts.
    let mut ask_at = CHECKPOINT_AFTER_FRAMES;
    let mut last = 0;
    // Replaces SQLite's automatic checkpoint (itself a WAL hook) on this connection.
    writer
        .wal_hook(Some(move |_: &mut Wal, frames: i32| {
            if frames < last {
                ask_at = CHECKPOINT_AFTER_FRAMES;
            }
            last = frames;
            if frames >= ask_at {
                ask_at = frames + CHECKPOINT_AFTER_FRAMES;
                // Full: a checkpoint is already asked for, and it will see these frames too.
                let _ = wake.try_send(());
            }
            Ok(())
        }))
        .map_err(open_error)?;
    Ok((
        SqliteWriter {
            connection: writer,
            _checkpointer: checkpointer,
        },
        SqliteReader(reader),
    ))
}

/// The writer thread's connection.
pub(crate) struct SqliteWriter {
    connection: Connection,
    /// Stopped (and joined) when the writer goes: declared after the connection, whose hook
    /// holds the thread's only sender, so that the thread sees its channel close.
    _checkpointer: Checkpointer,
}

impl Writer for SqliteWriter {
    fn commit(&mut self, records: &[&UsageRecord]) -> Result<()> {
        Ok(commit(&mut self.connection, records)?)
    }
}

/// The thread that checkpoints the WAL when the writer asks, on its own connection; joined when
/// dropped.
struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread; the sender asks it for a checkpoint (it stops once the sender is
    /// gone).
    fn start(connection: Connection) -> Result<(Self, mpsc::SyncSender<()>)> {
        let (wake, asked) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    if let Err(e) = connection.query_row(
                        "PRAGMA wal_checkpoint(PASSIVE)",
                        [],
                        |_| Ok(()),
                    ) {
                        tracing::warn!(error = %e, "usage ledger checkpoint failed; the WAL grows until the next one");
                    }
                }
            })
            .map_err(|e| LedgerError::Thread("checkpoint", e))?;
        let checkpointer = Self {
            thread: Some(thread),
        };
        Ok((checkpointer, wake))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The statement that inserts one record (built once: it is looked up in the connection's
/// statement cache by its text).
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO usage ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
         ON CONFLICT DO NOTHING"
    )
});

fn commit(conn: &mut Connection, records: &[&UsageRecord]) -> rusqlite::Result<()> {
    // One record (the usual group at low rates) is one statement, its own transaction: no
    // BEGIN and COMMIT to parse and run around it. Several share one transaction (one sync).
    if let [record] = records {
        return insert(&mut conn.prepare_cached(&INSERT)?, record);
    }
    let tx = conn.transaction()?;
    {
        let mut statement = tx.prepare_cached(&INSERT)?;
        for r in records {
            insert(&mut statement, r)?;
        }
    }
    tx.commit()
}

/// Inserts one record with the prepared insert statement.
fn insert(insert: &mut rusqlite::CachedStatement<'_>, r: &UsageRecord) -> rusqlite::Result<()> {
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
        r.client_request_id,
        r.project,
        r.cached_tokens as i64,
        r.cost_micros,
        r.price_version,
        r.api.map(Api::as_str),
        r.batch_id,
        r.adapter,
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
                row.get(7)?,
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
                client_request_id: row.get(12)?,
                project: row.get(13)?,
                cached_tokens: row.get::<_, i64>(14)? as u64,
                cost_micros: row.get(15)?,
                price_version: row.get(16)?,
                api: row
                    .get::<_, Option<String>>(17)?
                    .as_deref()
                    .and_then(Api::parse),
                batch_id: row.get(18)?,
                adapter: row.get(19)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    #[test]
    fn the_checkpoint_thread_copies_the_wal_back_while_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let (mut writer, mut reader) = open(&path, Durability::ProcessCrash).unwrap();
        let database_size = || std::fs::metadata(&path).unwrap().len();
        let before = database_size();
        // One record per commit: well over CHECKPOINT_AFTER_FRAMES frames (a page or more each).
        let records: Vec<UsageRecord> = (0..3 * CHECKPOINT_AFTER_FRAMES as u64)
            .map(record)
            .collect();
        for r in &records {
            writer.commit(&[r]).unwrap();
        }
        // Only a checkpoint writes the database file while the connections are open (SQLite's
        // automatic one is off on the writer): it grows when the thread has run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while database_size() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: the database file is still {before} bytes"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let all = reader.records(&UsageQuery::default()).unwrap();
        assert_eq!(all.len(), records.len());
        drop(writer);
        // Closing stopped the thread (dropping the writer joined it) and kept every record.
        drop(reader);
        let (_, mut reopened) = open(&path, Durability::PowerLoss).unwrap();
        assert_eq!(
            reopened.records(&UsageQuery::default()).unwrap().len(),
            records.len()
        );
    }
}
