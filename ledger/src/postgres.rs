//! The store a fleet shares: PostgreSQL. Every gateway replica appends its records to the same
//! table and reads the fleet's usage from it. Same records, same group commit (one transaction
//! per group, one round trip: the group's columns go as arrays and `UNNEST` makes the rows),
//! and the same promise: a record is committed (`synchronous_commit` as the server sets it,
//! `on` by default) before the caller is told so.
//!
//! The synchronous client runs on the ledger's own threads (the writer thread, and the
//! callers' blocking threads for reads), never on an async runtime's. A broken connection is
//! made again on the next use.

use policies::TenantId;
use postgres::types::ToSql;
use postgres::{Client, NoTls};

use crate::query::{Dialect, Param, RECORD_COLUMNS};
use crate::{
    Api, LedgerError, Reader, RecordStatus, Result, UsageQuery, UsageRecord, UsageRow, Writer,
};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Any number will do, as long as nothing else in the database uses it: migrations run under
/// this advisory lock, so replicas starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x0067_6174_6577_6179; // "gateway" in ASCII

/// Connects to `url` and brings the schema up to date.
pub(crate) fn connect(url: &str) -> Result<(PostgresWriter, PostgresReader)> {
    let mut client = open(url)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let migrated = embedded::migrations::runner().run(&mut client);
    client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
    migrated.map_err(|e| LedgerError::Migration(e.to_string()))?;
    Ok((
        PostgresWriter(Connection {
            url: url.to_string(),
            client,
        }),
        PostgresReader(Connection {
            url: url.to_string(),
            client: open(url)?,
        }),
    ))
}

fn open(url: &str) -> Result<Client> {
    Client::connect(url, NoTls).map_err(|source| LedgerError::Connect {
        // The URL may carry a password: only its host part is named.
        server: url.rsplit('@').next().unwrap_or(url).to_string(),
        source,
    })
}

/// A client that connects again when its connection broke.
struct Connection {
    url: String,
    client: Client,
}

impl Connection {
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_closed() {
            self.client = open(&self.url)?;
        }
        Ok(&mut self.client)
    }
}

/// The writer thread's connection.
pub(crate) struct PostgresWriter(Connection);

impl Writer for PostgresWriter {
    fn commit(&mut self, records: &[&UsageRecord]) -> Result<()> {
        Ok(commit(self.0.client()?, records)?)
    }
}

fn commit(client: &mut Client, records: &[&UsageRecord]) -> Result<(), postgres::Error> {
    let text = |f: fn(&UsageRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let number = |f: fn(&UsageRecord) -> i64| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    let request_ids = text(|r| &r.request_id);
    let tenants = text(|r| r.tenant.as_str());
    let key_ids = text(|r| &r.key_id);
    let models = text(|r| &r.model);
    let pools = text(|r| &r.pool);
    let prompt = number(|r| r.prompt_tokens as i64);
    let completion = number(|r| r.completion_tokens as i64);
    let statuses = text(|r| r.status.as_str());
    let finish: Vec<Option<&str>> = records.iter().map(|r| r.finish_reason.as_deref()).collect();
    let started = number(|r| r.started_at_ms);
    let ended = number(|r| r.ended_at_ms);
    let estimated: Vec<bool> = records.iter().map(|r| r.prompt_tokens_estimated).collect();
    let client_ids: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.client_request_id.as_deref())
        .collect();
    let projects: Vec<Option<&str>> = records.iter().map(|r| r.project.as_deref()).collect();
    let cached = number(|r| r.cached_tokens as i64);
    let costs: Vec<Option<i64>> = records.iter().map(|r| r.cost_micros).collect();
    let versions: Vec<Option<&str>> = records.iter().map(|r| r.price_version.as_deref()).collect();
    let apis: Vec<Option<&str>> = records.iter().map(|r| r.api.map(Api::as_str)).collect();
    let batches: Vec<Option<&str>> = records.iter().map(|r| r.batch_id.as_deref()).collect();
    let adapters: Vec<Option<&str>> = records.iter().map(|r| r.adapter.as_deref()).collect();
    let mut tx = client.transaction()?;
    tx.execute(
        &format!(
            "INSERT INTO usage ({RECORD_COLUMNS})
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::bigint[], $7::bigint[], $8::text[], $9::text[],
                                  $10::bigint[], $11::bigint[], $12::boolean[], $13::text[], $14::text[],
                                  $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[],
                                  $20::text[])
             ON CONFLICT DO NOTHING"
        ),
        &[
            &request_ids,
            &tenants,
            &key_ids,
            &models,
            &pools,
            &prompt,
            &completion,
            &statuses,
            &finish,
            &started,
            &ended,
            &estimated,
            &client_ids,
            &projects,
            &cached,
            &costs,
            &versions,
            &apis,
            &batches,
            &adapters,
        ],
    )?;
    tx.commit()
}

/// The connection for reads.
pub(crate) struct PostgresReader(Connection);

fn bind(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => t as &(dyn ToSql + Sync),
            Param::Int(i) => i as &(dyn ToSql + Sync),
        })
        .collect()
}

fn tenant(text: String) -> Result<TenantId> {
    TenantId::new(text).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

impl Reader for PostgresReader {
    fn usage(&mut self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        let (sql, params) = query.usage_sql(Dialect::Postgres);
        let rows = self.0.client()?.query(&sql, &bind(&params))?;
        rows.iter()
            .map(|row| {
                Ok(query.row(
                    tenant(row.try_get(0)?)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                    row.try_get(7)?,
                ))
            })
            .collect()
    }

    fn records(&mut self, query: &UsageQuery) -> Result<Vec<UsageRecord>> {
        let (sql, params) = query.records_sql(Dialect::Postgres);
        let rows = self.0.client()?.query(&sql, &bind(&params))?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get(7)?;
                Ok(UsageRecord {
                    request_id: row.try_get(0)?,
                    tenant: tenant(row.try_get(1)?)?,
                    key_id: row.try_get(2)?,
                    model: row.try_get(3)?,
                    pool: row.try_get(4)?,
                    prompt_tokens: row.try_get::<_, i64>(5)? as u64,
                    completion_tokens: row.try_get::<_, i64>(6)? as u64,
                    // Only this crate writes the column.
                    status: RecordStatus::parse(&status).unwrap_or(RecordStatus::Failed),
                    finish_reason: row.try_get(8)?,
                    started_at_ms: row.try_get(9)?,
                    ended_at_ms: row.try_get(10)?,
                    prompt_tokens_estimated: row.try_get(11)?,
                    client_request_id: row.try_get(12)?,
                    project: row.try_get(13)?,
                    cached_tokens: row.try_get::<_, i64>(14)? as u64,
                    cost_micros: row.try_get(15)?,
                    price_version: row.try_get(16)?,
                    api: row
                        .try_get::<_, Option<String>>(17)?
                        .as_deref()
                        .and_then(Api::parse),
                    batch_id: row.try_get(18)?,
                    adapter: row.try_get(19)?,
                })
            })
            .collect()
    }
}
