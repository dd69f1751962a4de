//! What a run measured: per-request records, summarised per tenant and overall. JSON field names
//! follow vLLM's `bench serve` where one exists (`ttft_ms`, `itl_ms`, `tpot_ms`, `e2el_ms`,
//! `request_throughput`, `output_throughput`, `goodput`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scenario::Slo;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx, and the stream (if any) ended properly.
    Ok,
    /// 429.
    RateLimited,
    /// Another 4xx.
    ClientError,
    /// 5xx, or an error event inside a stream.
    ServerError,
    /// No HTTP answer: connection refused or reset, timeout, bad host.
    Transport,
}

/// One request as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The scenario's tenant label.
    pub tenant: String,
    /// How it went.
    pub outcome: Outcome,
    /// The HTTP status, if one came.
    pub status: Option<u16>,
    /// When it was sent, from the start of the run.
    pub sent_at_ms: f64,
    /// First content token (streamed requests).
    pub ttft_ms: Option<f64>,
    /// Gaps between consecutive content tokens.
    pub itl_ms: Vec<f64>,
    /// From sending to the last byte.
    pub e2el_ms: f64,
    /// Prompt tokens as the server reported them.
    pub prompt_tokens: u64,
    /// Completion tokens as the server reported them (else content chunks counted).
    pub output_tokens: u64,
    /// Prompt tokens the server found in its prefix cache
    /// (`usage.prompt_tokens_details.cached_tokens`; 0 if it does not say).
    #[serde(default)]
    pub cached_tokens: u64,
    /// Why it failed, as the client saw it: the transport error with its causes, or the status
    /// and the server's error message. Absent in reports of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RequestRecord {
    /// Time per output token after the first.
    pub fn tpot_ms(&self) -> Option<f64> {
        let ttft = self.ttft_ms?;
        (self.output_tokens > 1).then(|| (self.e2el_ms - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Distribution of one latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Values summarised.
    pub count: usize,
    /// Their mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Percentile `p` (0-100) of sorted data, interpolating linearly between ranks (numpy's
/// default, as vLLM reports them). `None` for no data.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

impl Stats {
    /// The statistics of `values` (all `None` when there are none).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Self {
            count: v.len(),
            mean,
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied(),
        }
    }
}

/// Counts and latencies of a set of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Answered successfully.
    pub ok: u64,
    /// Refused with 429.
    pub rate_limited: u64,
    /// Other 4xx.
    pub client_errors: u64,
    /// 5xx or failed streams.
    pub server_errors: u64,
    /// Never answered.
    pub transport_errors: u64,
    /// Prompt tokens of successful requests.
    pub total_input_tokens: u64,
    /// Completion tokens of successful requests.
    pub total_output_tokens: u64,
    /// Of the prompt tokens, those the server reported as served from its prefix cache.
    #[serde(default)]
    pub total_cached_tokens: u64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Successful requests per second that met every SLO given.
    pub goodput: f64,
    /// Time to first token, ms.
    pub ttft_ms: Stats,
    /// Inter-token latency, ms (every gap).
    pub itl_ms: Stats,
    /// Time per output token after the first, ms (one per request).
    pub tpot_ms: Stats,
    /// End-to-end latency, ms.
    pub e2el_ms: Stats,
}

impl Summary {
    /// The summary of `records` over a run of `duration_s` seconds.
    pub fn of(records: &[&RequestRecord], duration_s: f64, slo: &Slo) -> Self {
        let count = |o: Outcome| records.iter().filter(|r| r.outcome == o).count() as u64;
        let ok: Vec<&&RequestRecord> = records
            .iter()
            .filter(|r| r.outcome == Outcome::Ok)
            .collect();
        let meets = |r: &RequestRecord| {
            let within = |value: Option<f64>, bound: Option<f64>| match bound {
                None => true,
                Some(b) => value.is_some_and(|v| v <= b),
            };
            within(r.ttft_ms, slo.ttft_ms)
                && within(r.tpot_ms(), slo.tpot_ms)
                && within(Some(r.e2el_ms), slo.e2el_ms)
        };
        let per_second = |n: f64| {
            if duration_s > 0.0 {
                n / duration_s
            } else {
                0.0
            }
        };
        let output: u64 = ok.iter().map(|r| r.output_tokens).sum();
        Self {
            sent: records.len() as u64,
            ok: ok.len() as u64,
            rate_limited: count(Outcome::RateLimited),
            client_errors: count(Outcome::ClientError),
            server_errors: count(Outcome::ServerError),
            transport_errors: count(Outcome::Transport),
            total_input_tokens: ok.iter().map(|r| r.prompt_tokens).sum(),
            total_output_tokens: output,
            total_cached_tokens: ok.iter().map(|r| r.cached_tokens).sum(),
            request_throughput: per_second(ok.len() as f64),
            output_throughput: per_second(output as f64),
            goodput: per_second(ok.iter().filter(|r| meets(r)).count() as f64),
            ttft_ms: Stats::of(ok.iter().filter_map(|r| r.ttft_ms)),
            itl_ms: Stats::of(ok.iter().flat_map(|r| r.itl_ms.iter().copied())),
            tpot_ms: Stats::of(ok.iter().filter_map(|r| r.tpot_ms())),
            e2el_ms: Stats::of(ok.iter().map(|r| r.e2el_ms)),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The endpoint driven.
    pub url: String,
    /// The model requested.
    pub model: String,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Every request together.
    pub overall: Summary,
    /// Per tenant label.
    pub tenants: BTreeMap<String, Summary>,
    /// Output tokens completed in each second of the run.
    pub output_tokens_per_second: Vec<u64>,
    /// Every request, in sending order.
    pub requests: Vec<RequestRecord>,
    /// The scenario's service-level objectives (drawn on the plots; reports written before
    /// they were recorded read as none).
    #[serde(default)]
    pub slo: Slo,
}

impl Report {
    /// The report of a run's `requests`.
    pub fn new(
        url: &str,
        model: &str,
        duration_s: f64,
        requests: Vec<RequestRecord>,
        slo: &Slo,
    ) -> Self {
        let all: Vec<&RequestRecord> = requests.iter().collect();
        let mut tenants = BTreeMap::new();
        let labels: std::collections::BTreeSet<&str> =
            requests.iter().map(|r| r.tenant.as_str()).collect();
        for label in labels {
            let mine: Vec<&RequestRecord> = requests.iter().filter(|r| r.tenant == label).collect();
            tenants.insert(label.to_string(), Summary::of(&mine, duration_s, slo));
        }
        let per_second = tokens_per_second(&requests, duration_s, None);
        Self {
            url: url.to_string(),
            model: model.to_string(),
            duration_s,
            overall: Summary::of(&all, duration_s, slo),
            tenants,
            output_tokens_per_second: per_second,
            requests,
            slo: slo.clone(),
        }
    }
}

/// Output tokens finished in each second of a run, for the requests of `tenant` (all if None).
pub fn tokens_per_second(
    requests: &[RequestRecord],
    duration_s: f64,
    tenant: Option<&str>,
) -> Vec<u64> {
    let mut per_second = vec![0u64; duration_s.ceil().max(1.0) as usize];
    let last = per_second.len() - 1;
    for r in requests
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && tenant.is_none_or(|t| r.tenant == t))
    {
        let second = ((r.sent_at_ms + r.e2el_ms) / 1000.0) as usize;
        per_second[second.min(last)] += r.output_tokens;
    }
    per_second
}

/// The distinct reasons requests failed, most frequent first: `(count, outcome, reason)`.
pub fn failure_reasons(requests: &[RequestRecord]) -> Vec<(usize, Outcome, String)> {
    let mut counts: BTreeMap<(String, String), (usize, Outcome)> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.outcome != Outcome::Ok) {
        let reason = r.error.clone().unwrap_or_else(|| match r.status {
            Some(status) => format!("HTTP {status}"),
            None => "no response".to_string(),
        });
        let entry = counts
            .entry((format!("{:?}", r.outcome), reason))
            .or_insert((0, r.outcome));
        entry.0 += 1;
    }
    let mut reasons: Vec<_> = counts
        .into_iter()
        .map(|((_, reason), (count, outcome))| (count, outcome, reason))
        .collect();
    reasons.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    reasons
}

/// A ratio that keeps its significant digits: `0.0033` stays `3.30e-3`, never `0.00`.
pub fn format_ratio(r: f64) -> String {
    if r == 0.0 || (0.01..10_000.0).contains(&r.abs()) {
        format!("{r:.2}")
    } else {
        format!("{r:.2e}")
    }
}

/// The compared metrics of one summary.
fn metrics(s: &Summary) -> Vec<(&'static str, Option<f64>)> {
    vec![
        ("requests ok", Some(s.ok as f64)),
        ("rate limited (429)", Some(s.rate_limited as f64)),
        ("request_throughput (req/s)", Some(s.request_throughput)),
        ("output_throughput (tok/s)", Some(s.output_throughput)),
        ("goodput (req/s)", Some(s.goodput)),
        ("ttft_ms p50", s.ttft_ms.p50),
        ("ttft_ms p99", s.ttft_ms.p99),
        ("itl_ms p50", s.itl_ms.p50),
        ("itl_ms p99", s.itl_ms.p99),
        ("tpot_ms p50", s.tpot_ms.p50),
        ("e2el_ms p50", s.e2el_ms.p50),
        ("e2el_ms p99", s.e2el_ms.p99),
    ]
}

/// Two runs side by side: each metric of A and B and the ratio B / A, overall and then for
/// every tenant both runs have (rows prefixed `[tenant]`).
pub fn compare(a: &Report, b: &Report) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mut out = format!("{:<40} {:>12} {:>12} {:>9}\n", "metric", "A", "B", "B/A");
    let mut rows = |prefix: &str, x: &Summary, y: &Summary| {
        for ((name, x), (_, y)) in metrics(x).into_iter().zip(metrics(y)) {
            let ratio = match (x, y) {
                (Some(x), Some(y)) if x != 0.0 => format_ratio(y / x),
                _ => "-".to_string(),
            };
            let name = format!("{prefix}{name}");
            out += &format!("{name:<40} {:>12} {:>12} {ratio:>9}\n", cell(x), cell(y));
        }
    };
    rows("", &a.overall, &b.overall);
    for (tenant, x) in &a.tenants {
        if let Some(y) = b.tenants.get(tenant) {
            rows(&format!("[{tenant}] "), x, y);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_data() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5)); // numpy.percentile([1,2,3,4], 50)
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&hundred, 99.0).unwrap() - 99.01).abs() < 1e-9);
        assert!((percentile(&hundred, 90.0).unwrap() - 90.1).abs() < 1e-9);
        let s = Stats::of([]);
        assert_eq!((s.count, s.mean, s.max), (0, None, None));
        let s = Stats::of([3.0, 1.0, 2.0]);
        assert_eq!((s.mean, s.p50, s.max), (Some(2.0), Some(2.0), Some(3.0)));
    }

    fn record(tenant: &str, outcome: Outcome, ttft: f64, e2el: f64, tokens: u64) -> RequestRecord {
        RequestRecord {
            tenant: tenant.into(),
            outcome,
            status: Some(200),
            sent_at_ms: 0.0,
            ttft_ms: Some(ttft),
            itl_ms: vec![1.0; tokens.saturating_sub(1) as usize],
            e2el_ms: e2el,
            prompt_tokens: 5,
            output_tokens: tokens,
            cached_tokens: 0,
            error: None,
        }
    }

    #[test]
    fn counts_add_up_and_goodput_applies_the_slo() {
        let records = vec![
            record("a", Outcome::Ok, 10.0, 20.0, 11),
            record("a", Outcome::Ok, 50.0, 60.0, 11),
            record("b", Outcome::RateLimited, 0.0, 1.0, 0),
            record("b", Outcome::Transport, 0.0, 1.0, 0),
        ];
        let slo = Slo {
            ttft_ms: Some(20.0),
            ..Slo::default()
        };
        let report = Report::new("u", "m", 2.0, records, &slo);
        let o = &report.overall;
        assert_eq!(
            o.sent,
            o.ok + o.rate_limited + o.client_errors + o.server_errors + o.transport_errors
        );
        assert_eq!((o.ok, o.rate_limited, o.transport_errors), (2, 1, 1));
        assert_eq!(o.goodput, 0.5, "one of two within the TTFT SLO, over 2 s");
        assert_eq!(o.output_throughput, 11.0);
        assert_eq!(report.tenants["b"].rate_limited, 1);
        assert_eq!(o.tpot_ms.p50, Some(1.0));
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"ttft_ms\"") && json.contains("\"output_throughput\""));
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn compare_prints_ratios() {
        let slo = Slo::default();
        let a = Report::new(
            "u",
            "m",
            1.0,
            vec![record("a", Outcome::Ok, 10.0, 20.0, 10)],
            &slo,
        );
        let b = Report::new(
            "u",
            "m",
            1.0,
            vec![record("a", Outcome::Ok, 30.0, 40.0, 20)],
            &slo,
        );
        let text = compare(&a, &b);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(line("ttft_ms p50").trim_end().ends_with("3.00"), "{text}");
        assert!(
            line("output_throughput").trim_end().ends_with("2.00"),
            "{text}"
        );
        assert!(line("e2el_ms p50").trim_end().ends_with("2.00"), "{text}");
        assert!(
            line("[a] ttft_ms p50").trim_end().ends_with("3.00"),
            "{text}"
        );
    }

    #[test]
    fn ratios_keep_their_digits() {
        assert_eq!(format_ratio(2.0), "2.00");
        assert_eq!(format_ratio(0.0033), "3.30e-3");
        assert_eq!(format_ratio(300.0), "300.00");
        assert_eq!(format_ratio(123_456.0), "1.23e5");
        assert_eq!(format_ratio(0.0), "0.00");
    }

    #[test]
    fn failure_reasons_are_grouped_and_counted() {
        let mut refused = record("a", Outcome::Transport, 0.0, 1.0, 0);
        refused.error = Some("connection refused".into());
        let mut unauthorized = record("a", Outcome::ClientError, 0.0, 1.0, 0);
        unauthorized.status = Some(401);
        unauthorized.error = Some("HTTP 401: invalid key".into());
        let records = vec![
            refused.clone(),
            unauthorized,
            refused,
            record("a", Outcome::Ok, 1.0, 2.0, 3),
        ];
        let reasons = failure_reasons(&records);
        assert_eq!(
            reasons,
            vec![
                (2, Outcome::Transport, "connection refused".to_string()),
                (1, Outcome::ClientError, "HTTP 401: invalid key".to_string()),
            ]
        );
    }
}
