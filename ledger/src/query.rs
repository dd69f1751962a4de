//! Reading the ledger: raw records, usage summed per tenant (and day or model), and each
//! tenant's tokens since a moment (the daily budget after a restart). The queries are written
//! once here, in the two dialects of the stores (SQLite, PostgreSQL).

use policies::TenantId;
use serde::Serialize;

/// Second key of a usage summary (the first is always the tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// UTC calendar day of the request's end.
    Day,
    /// The model.
    Model,
    /// The project inside the tenant.
    Project,
}

/// Which records: all filters optional; times in Unix ms, `from` inclusive, `to` exclusive,
/// compared with the request's end (when it was billed).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// Only this tenant's records.
    pub tenant: Option<TenantId>,
    /// Only this project's records (within `tenant`).
    pub project: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The project, when grouped by project (`""`: keys of no project).
    pub project: Option<String>,
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
    /// What they cost, in millionths of a minor unit (requests of unpriced models count 0).
    pub cost_micros: i64,
    /// The same in minor units (cents, won), rounded half up from the exact sum.
    pub cost: i64,
}

/// A parameter of a query, bound by each store in its own way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// A text value.
    Text(String),
    /// An integer value.
    Int(i64),
}

/// The SQL dialect of a store: the same queries, two spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?1` parameters; dates by `strftime`.
    Sqlite,
    /// `$1` parameters; dates by `to_char`.
    Postgres,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of a request's end.
    fn day(self) -> &'static str {
        match self {
            Dialect::Sqlite => "strftime('%Y-%m-%d', ended_at_ms / 1000, 'unixepoch')",
            Dialect::Postgres => {
                "to_char(to_timestamp(ended_at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            }
        }
    }
}

/// The columns of a record, in the order [`records_sql`] selects them and stores insert them.
pub(crate) const RECORD_COLUMNS: &str = "request_id, tenant, key_id, model, pool, prompt_tokens, \
     completion_tokens, status, finish_reason, started_at_ms, ended_at_ms, prompt_tokens_estimated, \
     client_request_id, project, cached_tokens, cost_micros, price_version, api, batch_id, adapter";

impl UsageQuery {
    /// `WHERE` clause and its parameters.
    fn filter(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let mut clauses = Vec::new();
        let mut params = Vec::new();
        if let Some(tenant) = &self.tenant {
            params.push(Param::Text(tenant.to_string()));
            clauses.push(format!("tenant = {}", dialect.placeholder(params.len())));
        }
        if let Some(project) = &self.project {
            params.push(Param::Text(project.clone()));
            clauses.push(format!("project = {}", dialect.placeholder(params.len())));
        }
        if let Some(from) = self.from_ms {
            params.push(Param::Int(from));
            clauses.push(format!(
                "ended_at_ms >= {}",
                dialect.placeholder(params.len())
            ));
        }
        if let Some(to) = self.to_ms {
            params.push(Param::Int(to));
            clauses.push(format!(
                "ended_at_ms < {}",
                dialect.placeholder(params.len())
            ));
        }
        let clause = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        (clause, params)
    }

    /// Usage summed per tenant (and key): columns tenant, key, requests, prompt tokens,
    /// completion tokens, cancelled, failed; every number a 64-bit integer in both dialects.
    pub(crate) fn usage_sql(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let (filter, params) = self.filter(dialect);
        let key = match self.group_by {
            None => "CAST(NULL AS TEXT)",
            Some(GroupBy::Day) => dialect.day(),
            Some(GroupBy::Model) => "model",
            Some(GroupBy::Project) => "project",
        };
        let sql = format!(
            "SELECT tenant, {key} AS k, CAST(COUNT(*) AS BIGINT),
                    CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT),
                    CAST(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(COALESCE(cost_micros, 0)) AS BIGINT)
             FROM usage {filter} GROUP BY tenant, k ORDER BY tenant, k"
        );
        (sql, params)
    }

    /// The records themselves, oldest first ([`RECORD_COLUMNS`]).
    pub(crate) fn records_sql(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let (filter, params) = self.filter(dialect);
        let sql = format!("SELECT {RECORD_COLUMNS} FROM usage {filter} ORDER BY ended_at_ms, id");
        (sql, params)
    }

    /// A summary row from its columns as [`Self::usage_sql`] selects them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn row(
        &self,
        tenant: TenantId,
        key: Option<String>,
        requests: i64,
        prompt: i64,
        completion: i64,
        cancelled: i64,
        failed: i64,
        cost_micros: i64,
    ) -> UsageRow {
        UsageRow {
            tenant,
            day: key.clone().filter(|_| self.group_by == Some(GroupBy::Day)),
            model: key
                .clone()
                .filter(|_| self.group_by == Some(GroupBy::Model)),
            project: match self.group_by {
                Some(GroupBy::Project) => Some(key.unwrap_or_default()),
                _ => None,
            },
            requests: requests as u64,
            prompt_tokens: prompt as u64,
            completion_tokens: completion as u64,
            total_tokens: (prompt + completion) as u64,
            cancelled: cancelled as u64,
            failed: failed as u64,
            cost_micros,
            cost: (cost_micros + 500_000).div_euclid(1_000_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ledger, RecordStatus, UsageRecord};

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
            prompt_tokens_estimated: false,
            client_request_id: None,
            project: (tenant == "acme").then(|| format!("p-{model}")),
            cached_tokens: 2,
            cost_micros: Some(1_000_003),
            price_version: Some(format!("{model}@0")),
            api: Some(crate::Api::Messages),
            batch_id: (tenant == "acme").then(|| "batch_1".to_string()),
            adapter: None,
        }
    }

    const DAY: i64 = 86_400_000;

    /// The same records and queries give the same answers from either store.
    fn sums_per_tenant_day_and_model_within_the_time_range(ledger: Ledger) {
        let d0 = ledger.parse_time("2026-11-20").unwrap();
        assert_eq!(d0, 1_795_132_800_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for r in [
            record("acme", "m1", d0 + 1000, RecordStatus::Completed),
            record("acme", "m2", d0 + 2000, RecordStatus::Cancelled),
            record("acme", "m1", d0 + DAY + 5, RecordStatus::Failed),
            record("beta", "m1", d0 + 3000, RecordStatus::Completed),
        ] {
            runtime.block_on(ledger.append(r)).unwrap();
        }
        let all = ledger.usage(&UsageQuery::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].tenant.as_str(), all[0].requests, all[0].total_tokens),
            ("acme", 3, 45)
        );
        assert_eq!((all[0].cancelled, all[0].failed), (1, 1));
        assert_eq!(all[0].cost_micros, 3_000_009, "summed exactly");
        assert_eq!(all[0].cost, 3, "in minor units");

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

        let by_project = ledger
            .usage(&UsageQuery {
                group_by: Some(GroupBy::Project),
                ..Default::default()
            })
            .unwrap();
        let projects: Vec<(&str, &str, u64)> = by_project
            .iter()
            .map(|r| (r.tenant.as_str(), r.project.as_deref().unwrap(), r.requests))
            .collect();
        assert_eq!(
            projects,
            [("acme", "p-m1", 2), ("acme", "p-m2", 1), ("beta", "", 1)]
        );
        let one_project = ledger
            .usage(&UsageQuery {
                tenant: Some("acme".parse().unwrap()),
                project: Some("p-m1".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(one_project[0].requests, 2);

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
    fn sqlite_sums_per_tenant_day_and_model() {
        let dir = tempfile::tempdir().unwrap();
        sums_per_tenant_day_and_model_within_the_time_range(
            Ledger::open(&dir.path().join("usage.db")).unwrap(),
        );
    }

    #[test]
    fn postgres_sums_per_tenant_day_and_model() {
        let server = crate::test_server::PostgresServer::start();
        sums_per_tenant_day_and_model_within_the_time_range(
            Ledger::connect(&server.database("sums")).unwrap(),
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
