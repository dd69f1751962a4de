//! Reading the ledger: raw records, usage summed per tenant (and day or model), and each
//! tenant's tokens since a moment (the daily budget after a restart).

use policies::TenantId;
use rusqlite::types::Value as SqlValue;
use serde::Serialize;

use crate::record::{RecordStatus, UsageRecord};
use crate::{Ledger, Result};

/// Second key of a usage summary (the first is always the tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// UTC calendar day of the request's end.
    Day,
    /// The model.
    Model,
}

/// Which records: all filters optional; times in Unix ms, `from` inclusive, `to` exclusive,
/// compared with the request's end (when it was billed).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// Only this tenant's records.
    pub tenant: Option<TenantId>,
    /// Records that ended at or after this time (Unix ms).
    pub from_ms: Option<i64>,
    /// Records that ended before this time (Unix ms).
    pub to_ms: Option<i64>,
    /// Sum per tenant and this key (absent: per tenant).
    pub group_by: Option<GroupBy>,
}

/// One line of a usage summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The tenant.
    pub tenant: TenantId,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The UTC day (`YYYY-MM-DD`), when grouped by day.
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The model, when grouped by model.
    pub model: Option<String>,
    /// Requests recorded.
    pub requests: u64,
    /// Their prompt tokens.
    pub prompt_tokens: u64,
    /// Their completion tokens.
    pub completion_tokens: u64,
    /// Prompt plus completion tokens.
    pub total_tokens: u64,
    /// Requests whose client hung up (billed for what was generated).
    pub cancelled: u64,
    /// Requests that failed.
    pub failed: u64,
}

impl UsageQuery {
    /// `WHERE` clause and its parameters.
    fn filter(&self) -> (String, Vec<SqlValue>) {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        if let Some(tenant) = &self.tenant {
            params.push(SqlValue::Text(tenant.to_string()));
            clauses.push(format!("tenant = ?{}", params.len()));
        }
        if let Some(from) = self.from_ms {
            params.push(SqlValue::Integer(from));
            clauses.push(format!("ended_at_ms >= ?{}", params.len()));
        }
        if let Some(to) = self.to_ms {
            params.push(SqlValue::Integer(to));
            clauses.push(format!("ended_at_ms < ?{}", params.len()));
        }
        let clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        (clause, params)
    }
}

impl Ledger {
    /// Usage summed per tenant, and per day or model when asked, in key order.
    pub fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>> {
        let (filter, params) = query.filter();
        let key = match query.group_by {
            None => "NULL",
            Some(GroupBy::Day) => "strftime('%Y-%m-%d', ended_at_ms / 1000, 'unixepoch')",
            Some(GroupBy::Model) => "model",
        };
        let sql = format!(
            "SELECT tenant, {key} AS k, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),
                    SUM(status = 'cancelled'), SUM(status = 'failed')
             FROM usage {filter} GROUP BY tenant, k ORDER BY tenant, k"
        );
        self.read(|c| {
            let mut statement = c.prepare(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
                let key: Option<String> = row.get(1)?;
                let prompt: i64 = row.get(3)?;
                let completion: i64 = row.get(4)?;
                Ok(UsageRow {
                    tenant: tenant_column(row, 0)?,
                    day: key.clone().filter(|_| query.group_by == Some(GroupBy::Day)),
                    model: key.filter(|_| query.group_by == Some(GroupBy::Model)),
                    requests: row.get::<_, i64>(2)? as u64,
                    prompt_tokens: prompt as u64,
                    completion_tokens: completion as u64,
                    total_tokens: (prompt + completion) as u64,
                    cancelled: row.get::<_, i64>(5)? as u64,
                    failed: row.get::<_, i64>(6)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    /// The records themselves, oldest first.
    pub fn records(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>> {
        let (filter, params) = query.filter();
        let sql = format!(
            "SELECT request_id, tenant, key_id, model, pool, prompt_tokens, completion_tokens,
                    status, finish_reason, started_at_ms, ended_at_ms
             FROM usage {filter} ORDER BY ended_at_ms, id"
        );
        self.read(|c| {
            let mut statement = c.prepare(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
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
                })
            })?;
            rows.collect()
        })
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

    fn record(tenant: &str, model: &str, ended_at_ms: i64, status: RecordStatus) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{tenant}-{ended_at_ms}"),
            tenant: tenant.parse().unwrap(),
            key_id: "k1".into(),
            model: model.into(),
            pool: "local".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            status,
            finish_reason: Some("stop".into()),
            started_at_ms: ended_at_ms - 100,
            ended_at_ms,
        }
    }

    const DAY: i64 = 86_400_000;

    #[tokio::test]
    async fn sums_per_tenant_day_and_model_within_the_time_range() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("usage.db")).unwrap();
        let d0 = ledger.parse_time("2026-11-20").unwrap();
        assert_eq!(d0, 1_795_132_800_000);
        for r in [
            record("acme", "m1", d0 + 1000, RecordStatus::Completed),
            record("acme", "m2", d0 + 2000, RecordStatus::Cancelled),
            record("acme", "m1", d0 + DAY + 5, RecordStatus::Failed),
            record("beta", "m1", d0 + 3000, RecordStatus::Completed),
        ] {
            ledger.append(r).await.unwrap();
        }
        let all = ledger.usage(&UsageQuery::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].tenant.as_str(), all[0].requests, all[0].total_tokens),
            ("acme", 3, 45)
        );
        assert_eq!((all[0].cancelled, all[0].failed), (1, 1));

        let by_day = ledger
            .usage(&UsageQuery {
                tenant: Some("acme".parse().unwrap()),
                group_by: Some(GroupBy::Day),
                ..Default::default()
            })
            .unwrap();
        let days: Vec<(&str, u64)> = by_day
            .iter()
            .map(|r| (r.day.as_deref().unwrap(), r.requests))
            .collect();
        assert_eq!(days, [("2026-11-20", 2), ("2026-11-21", 1)]);

        let by_model = ledger
            .usage(&UsageQuery {
                from_ms: Some(d0),
                to_ms: Some(d0 + DAY),
                group_by: Some(GroupBy::Model),
                ..Default::default()
            })
            .unwrap();
        let models: Vec<(&str, &str, u64)> = by_model
            .iter()
            .map(|r| (r.tenant.as_str(), r.model.as_deref().unwrap(), r.requests))
            .collect();
        assert_eq!(
            models,
            [("acme", "m1", 1), ("acme", "m2", 1), ("beta", "m1", 1)]
        );

        let records = ledger
            .records(&UsageQuery {
                tenant: Some("beta".parse().unwrap()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            records,
            vec![record("beta", "m1", d0 + 3000, RecordStatus::Completed)]
        );
    }

    #[test]
    fn parses_dates_datetimes_and_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("usage.db")).unwrap();
        assert_eq!(ledger.parse_time("1970-01-02").unwrap(), DAY);
        assert_eq!(ledger.parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(ledger.parse_time("86400").unwrap(), DAY);
        assert!(ledger.parse_time("yesterday").is_err());
    }
}
