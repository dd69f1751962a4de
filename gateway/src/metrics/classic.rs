//! The classic Prometheus text format (0.0.4) from the OpenMetrics text `prometheus-client`
//! writes. Prometheus 2.x, `promtool check metrics` and many other scrapers speak only the
//! classic format; no maintained Rust crate converts between the two, and the differences for
//! the metric types used here are few:
//!
//! - a counter family is named without `_total` in OpenMetrics (`# TYPE x counter`, samples
//!   `x_total`), with it in the classic format (`# TYPE x_total counter`);
//! - `# UNIT` lines and the final `# EOF` do not exist in the classic format;
//! - `unknown` is `untyped`.
//!
//! Sample lines are the same in both (histograms included).

use std::collections::HashSet;

/// The classic text of an OpenMetrics document.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match comment {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if tail == "unknown" { "untyped" } else { tail });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gain_their_suffix_and_openmetrics_only_lines_go() {
        let openmetrics = "# HELP gateway_requests Requests.\n\
            # TYPE gateway_requests counter\n\
            gateway_requests_total{tenant=\"a\"} 3\n\
            # HELP gateway_queue_time_seconds Queue.\n\
            # TYPE gateway_queue_time_seconds histogram\n\
            # UNIT gateway_queue_time_seconds seconds\n\
            gateway_queue_time_seconds_sum 0.5\n\
            gateway_queue_time_seconds_count 2\n\
            gateway_queue_time_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP gateway_engine_running_sequences Running.\n\
            # TYPE gateway_engine_running_sequences gauge\n\
            gateway_engine_running_sequences{model=\"m\"} 1\n\
            # EOF\n";
        let classic = to_classic_text(openmetrics);
        assert_eq!(
            classic,
            "# HELP gateway_requests_total Requests.\n\
            # TYPE gateway_requests_total counter\n\
            gateway_requests_total{tenant=\"a\"} 3\n\
            # HELP gateway_queue_time_seconds Queue.\n\
            # TYPE gateway_queue_time_seconds histogram\n\
            gateway_queue_time_seconds_sum 0.5\n\
            gateway_queue_time_seconds_count 2\n\
            gateway_queue_time_seconds_bucket{le=\"+Inf\"} 2\n\
            # HELP gateway_engine_running_sequences Running.\n\
            # TYPE gateway_engine_running_sequences gauge\n\
            gateway_engine_running_sequences{model=\"m\"} 1\n"
        );
    }
}
