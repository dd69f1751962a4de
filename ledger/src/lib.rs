//! The usage ledger: every finished request becomes one [`UsageRecord`], committed before the
//! caller is told it is safe (the gateway waits for that before it sends a response's last
//! byte). Two stores: SQLite in WAL mode, embedded (one replica, the default), and PostgreSQL,
//! shared by a fleet of replicas ([`Ledger::connect`]). Both schemas are versioned migrations
//! (`migrations/`, run by refinery when the ledger opens).
//!
//! Writes go through one writer thread that commits in groups: whatever records arrived while
//! the previous transaction was committing go into the next one, so a busy gateway pays one
//! sync (or one round trip) per group, not per request. Reads (usage queries, the daily budget
//! after a restart) use a connection of their own. Both stores' calls block: call them from a
//! blocking thread, not from an async task (the PostgreSQL client runs its own runtime).

#![warn(missing_docs)]

mod postgres;
mod query;
mod record;
mod sqlite;
#[cfg(any(test, feature = "test-server"))]
pub mod test_server;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

pub use query::{GroupBy, UsageQuery, UsageRow};
pub use record::{unix_ms_now, Api, RecordStatus, UsageRecord};

/// Why the ledger could not open, write or read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("usage ledger {path}: {source}")]
    /// The database could not be opened or set up.
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    #[error("usage ledger: {0}")]
    /// A query or statement failed.
    Sqlite(#[from] rusqlite::Error),
    #[error("usage ledger at PostgreSQL {server}: {source}")]
    /// PostgreSQL could not be reached.
    Connect {
        /// Where (the URL's host part, without credentials).
        server: String,
        /// What the client said.
        source: ::postgres::Error,
    },
    #[error("usage ledger (PostgreSQL): {0}")]
    /// A PostgreSQL query or statement failed.
    Postgres(#[from] ::postgres::Error),
    #[error("usage ledger: schema migration failed: {0}")]
    /// The schema could not be brought up to date.
    Migration(String),
    #[error("usage ledger: unexpected stored value: {0}")]
    /// A stored value this crate would never have written.
    Corrupt(String),
    #[error("usage ledger: commit failed: {0}")]
    /// A group commit failed after its retries (every record of the group shares the cause).
    Commit(#[source] std::sync::Arc<LedgerError>),
    #[error("usage ledger: cannot start its {0} thread: {1}")]
    /// A thread of the ledger could not be started.
    Thread(&'static str, #[source] std::io::Error),
    #[error("usage ledger: the writer thread is gone")]
    /// The writer thread stopped (the ledger is closing).
    WriterGone,
    #[error("invalid time `{0}`: use YYYY-MM-DD, an RFC 3339 date-time, or Unix seconds")]
    /// A time in a query could not be read.
    InvalidTime(String),
}

/// The ledger's result type.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// What a commit survives once it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The process being killed and the machine losing power: every commit is `fsync`ed
    /// (SQLite `synchronous = FULL`).
    #[default]
    PowerLoss,
    /// The process being killed (`kill -9`, a crash, an OOM kill), not a power cut: commits go to
    /// the WAL file without `fsync`, synced at checkpoints (`synchronous = NORMAL`). Much less
    /// commit latency on slow disks.
    ProcessCrash,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::PowerLoss => "FULL",
            Durability::ProcessCrash => "NORMAL",
        }
    }
}

/// Largest group committed in one transaction.
const MAX_GROUP: usize = 1024;

// Nearly every message is an `Append`: boxing its record would cost an allocation per request
// to shrink the rare `Flush`.
#[allow(clippy::large_enum_variant)]
enum Message {
    Append(
        UsageRecord,
        Option<oneshot::Sender<Result<(), Arc<LedgerError>>>>,
    ),
    /// Answered once every message before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The writer thread's side of a store: one transaction per group.
pub(crate) trait Writer: Send + 'static {
    /// Commits every record, or none.
    fn commit(&mut self, records: &[&UsageRecord]) -> Result<()>;
}

/// The reading side of a store.
pub(crate) trait Reader: Send + 'static {
    /// Usage summed per tenant (and day or model).
    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>>;
    /// The records, oldest first.
    fn records(&mut self, query: &UsageQuery) -> Result<Vec<UsageRecord>>;
}

/// See the crate documentation. Cheap to share behind an `Arc`.
pub struct Ledger {
    writer: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Box<dyn Reader>>,
    /// SQLite's date functions parse query times, whatever the store (an in-memory database).
    dates: Mutex<Connection>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, every commit synced to disk.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::PowerLoss)
    }

    /// Opens (creating and migrating if needed) the SQLite ledger at `path`, with the given
    /// durability of a commit.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        let (writer, reader) = sqlite::open(path, durability)?;
        Self::start(writer, reader)
    }

    /// Connects to the PostgreSQL ledger at `url` (`postgres://user:password@host:port/db`)
    /// and brings its schema up to date (replicas starting together migrate one at a time).
    /// Blocks: call it from a blocking thread.
    pub fn connect(url: &str) -> Result<Self> {
        let (writer, reader) = postgres::connect(url)?;
        Self::start(writer, reader)
    }

    fn start(writer: impl Writer, reader: impl Reader) -> Result<Self> {
        let dates = Connection::open_in_memory()?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("usage-ledger".into())
            .spawn(move || write_groups(writer, receiver))
            .map_err(|e| LedgerError::Thread("writer", e))?;
        Ok(Self {
            writer: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            reader: Mutex::new(Box::new(reader)),
            dates: Mutex::new(dates),
        })
    }

    /// Usage summed per tenant, and per day or model when asked, in key order.
    pub fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        self.reader.lock().expect("ledger reader lock").usage(query)
    }

    /// The records themselves, oldest first.
    pub fn records(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>> {
        self.reader
            .lock()
            .expect("ledger reader lock")
            .records(query)
    }

    fn send(&self, message: Message) -> Result<()> {
        let writer = self.writer.lock().expect("ledger writer lock");
        writer
            .as_ref()
            .ok_or(LedgerError::WriterGone)?
            .send(message)
            .map_err(|_| LedgerError::WriterGone)
    }

    /// Appends a record and waits until it is committed.
    pub async fn append(&self, record: UsageRecord) -> Result<()> {
        let (done, committed) = oneshot::channel();
        self.send(Message::Append(record, Some(done)))?;
        committed
            .await
            .map_err(|_| LedgerError::WriterGone)?
            .map_err(LedgerError::Commit)
    }

    /// Appends a record without waiting (from `Drop`, where nothing can wait): it is committed
    /// with the next group.
    pub fn append_detached(&self, record: UsageRecord) -> Result<()> {
        self.send(Message::Append(record, None))
    }

    /// Waits until everything appended so far is committed.
    pub async fn flush(&self) -> Result<()> {
        let (done, flushed) = oneshot::channel();
        self.send(Message::Flush(done))?;
        flushed.await.map_err(|_| LedgerError::WriterGone)
    }

    /// Commits what is queued and stops the writer (shutdown). Later appends fail.
    pub fn close(&self) {
        drop(self.writer.lock().expect("ledger writer lock").take());
        if let Some(thread) = self.thread.lock().expect("ledger thread lock").take() {
            let _ = thread.join();
        }
    }

    /// Unix milliseconds of `text`: `YYYY-MM-DD` (midnight UTC), an RFC 3339 / ISO 8601
    /// date-time, or Unix seconds. SQLite's date functions do the parsing.
    pub fn parse_time(&self, text: &str) -> Result<i64> {
        if let Ok(seconds) = text.parse::<i64>() {
            return Ok(seconds * 1000);
        }
        let parsed: Option<f64> = self.dates.lock().expect("date parser lock").query_row(
            "SELECT (julianday(?1) - 2440587.5) * 86400000.0",
            [text],
            |row| row.get(0),
        )?;
        parsed
            .map(|ms| ms.round() as i64)
            .ok_or_else(|| LedgerError::InvalidTime(text.to_string()))
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: take one message, then whatever else is already queued, commit them in one
/// transaction, answer everyone, repeat. Ends when every sender is gone and the queue is empty.
fn write_groups(mut store: impl Writer, receiver: mpsc::Receiver<Message>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(message) => group.push(message),
                Err(_) => break,
            }
        }
        let records: Vec<&UsageRecord> = group
            .iter()
            .filter_map(|m| match m {
                Message::Append(record, _) => Some(record),
                Message::Flush(_) => None,
            })
            .collect();
        let mut result = commit(&mut store, &records);
        for attempt in 1..=3 {
            if result.is_ok() {
                break;
            }
            tracing::warn!(attempt, error = %result.as_ref().unwrap_err(), "usage ledger commit failed; retrying");
            std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            result = commit(&mut store, &records);
        }
        if let Err(e) = &result {
            tracing::error!(records = records.len(), error = %e, "usage ledger commit failed: records lost");
        }
        let outcome = result.map_err(Arc::new);
        for message in group {
            match message {
                Message::Append(_, Some(done)) => {
                    let _ = done.send(outcome.clone());
                }
                Message::Append(_, None) => {}
                Message::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn commit(store: &mut impl Writer, records: &[&UsageRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    store.commit(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Record number `i` (three tenants in turn); the store tests use it too.
    pub(crate) fn record(i: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{i}"),
            tenant: format!("t{}", i % 3).parse().unwrap(),
            key_id: "k".into(),
            model: "m".into(),
            pool: "local".into(),
            prompt_tokens: i,
            completion_tokens: 2 * i,
            status: RecordStatus::Completed,
            finish_reason: Some("length".into()),
            started_at_ms: 1_000,
            ended_at_ms: 2_000 + i as i64,
            prompt_tokens_estimated: false,
            client_request_id: i.is_multiple_of(2).then(|| format!("client-{i}")),
            project: None,
            cached_tokens: 0,
            cost_micros: None,
            price_version: None,
            api: None,
            batch_id: None,
            // Every fifth ran with an adapter: round trips carry the column.
            adapter: i.is_multiple_of(5).then(|| format!("adapter-{i}")),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_committed_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/usage.db");
        let ledger = Arc::new(Ledger::open_with(&path, Durability::ProcessCrash).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.append(record(i)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Detached appends are committed by the next flush.
        for i in 200..210 {
            ledger.append_detached(record(i)).unwrap();
        }
        ledger.flush().await.unwrap();
        assert_eq!(ledger.records(&UsageQuery::default()).unwrap().len(), 210);
        drop(ledger);

        let reopened = Ledger::open(&path).unwrap();
        let records = reopened.records(&UsageQuery::default()).unwrap();
        assert_eq!(records.len(), 210);
        assert_eq!(records[5], record(5));
        let tokens: u64 = records.iter().map(UsageRecord::total_tokens).sum();
        assert_eq!(tokens, 3 * (0..210).sum::<u64>());
    }

    /// A batch line's records, twice (a line run again after a crash), and ordinary records
    /// that share a request id: the line is billed once, nothing else is dropped.
    pub(crate) fn batch_line_records() -> Vec<UsageRecord> {
        let line = |batch: &str, custom_id: &str, tokens: u64| UsageRecord {
            request_id: custom_id.into(),
            batch_id: Some(batch.into()),
            adapter: None,
            api: Some(Api::Batches),
            completion_tokens: tokens,
            ..record(1)
        };
        vec![
            line("batch_a", "line-1", 5),
            line("batch_a", "line-1", 7),
            line("batch_a", "line-2", 5),
            line("batch_b", "line-1", 5),
            record(9),
            record(9),
        ]
    }

    /// What [`batch_line_records`] leave in a ledger.
    pub(crate) fn assert_billed_once(records: &[UsageRecord]) {
        assert_eq!(records.len(), 5, "{records:?}");
        let first = records
            .iter()
            .find(|r| r.batch_id.as_deref() == Some("batch_a") && r.request_id == "line-1")
            .unwrap();
        assert_eq!(
            first.completion_tokens, 5,
            "the first record of a line stands"
        );
        assert_eq!(first.api, Some(Api::Batches));
    }

    #[tokio::test]
    async fn a_batch_line_is_billed_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("usage.db")).unwrap();
        for r in batch_line_records() {
            ledger.append(r).await.unwrap();
        }
        assert_billed_once(&ledger.records(&UsageQuery::default()).unwrap());
    }

    #[tokio::test]
    async fn appends_after_close_fail_instead_of_vanishing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("usage.db")).unwrap();
        ledger.append_detached(record(1)).unwrap();
        ledger.close();
        assert!(matches!(
            ledger.append(record(2)).await,
            Err(LedgerError::WriterGone)
        ));
        // The detached record queued before closing was committed.
        assert_eq!(ledger.records(&UsageQuery::default()).unwrap().len(), 1);
    }
}

/// The fleet's ledger: replicas that connect at once migrate one at a time, and each sees
/// what every replica committed.
#[cfg(test)]
mod postgres_tests {
    use super::*;
    use crate::test_server::PostgresServer;
    use std::sync::Arc;

    fn record(replica: usize, i: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{replica}-{i}"),
            tenant: "acme".parse().unwrap(),
            key_id: "k".into(),
            model: "m".into(),
            pool: format!("replica-{replica}"),
            prompt_tokens: i,
            completion_tokens: 1,
            status: RecordStatus::Completed,
            finish_reason: None,
            started_at_ms: 1_000,
            ended_at_ms: 2_000 + i as i64,
            prompt_tokens_estimated: false,
            client_request_id: (!i.is_multiple_of(2)).then(|| format!("client-{i}")),
            project: None,
            cached_tokens: 0,
            cost_micros: None,
            price_version: None,
            api: None,
            batch_id: None,
            adapter: None,
        }
    }

    #[test]
    fn two_replicas_share_one_ledger() {
        let server = PostgresServer::start();
        let url = server.database("fleet");
        let replicas: Vec<Arc<Ledger>> = std::thread::scope(|s| {
            let connecting: Vec<_> = (0..2)
                .map(|_| s.spawn(|| Arc::new(Ledger::connect(&url).unwrap())))
                .collect();
            connecting.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let appends: Vec<_> = (0..200)
                .map(|i| {
                    let ledger = replicas[i % 2].clone();
                    tokio::spawn(async move { ledger.append(record(i % 2, i as u64)).await })
                })
                .collect();
            for append in appends {
                append.await.unwrap().unwrap();
            }
        });
        for ledger in &replicas {
            let rows = ledger.usage(&UsageQuery::default()).unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].requests, 200);
            assert_eq!(rows[0].prompt_tokens, (0..200).sum::<u64>());
        }
        let records = replicas[1].records(&UsageQuery::default()).unwrap();
        assert_eq!(records[7], record(1, 7), "the records as written");
        // A batch line is billed once here too (records in one transaction, and apart).
        let ledger = Ledger::connect(&server.database("lines")).unwrap();
        runtime.block_on(async {
            for r in super::tests::batch_line_records() {
                ledger.append(r).await.unwrap();
            }
        });
        super::tests::assert_billed_once(&ledger.records(&UsageQuery::default()).unwrap());
        // A third replica starting later finds the schema migrated and the records there.
        let later = Ledger::connect(&url).unwrap();
        assert_eq!(later.records(&UsageQuery::default()).unwrap().len(), 200);
    }
}
