//! The load-test harness against the real gateway on loopback, with a throttled tenant.

mod common;

use common::{digest, Options, TestGateway, MODEL};
use loadtest::{Outcome, Report, Scenario};

#[tokio::test]
async fn a_run_against_the_gateway_counts_and_measures_consistently() {
    let config = format!(
        "[[models]]\nid = \"{MODEL}\"\n\
         [[tenants]]\nid = \"free\"\nkeys = [\"{}\"]\n\
         [[tenants]]\nid = \"throttled\"\nkeys = [\"{}\"]\nrequests_per_minute = 3\n",
        digest("sk-free"),
        digest("sk-throttled")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let scenario: Scenario = toml::from_str(&format!(
        r#"
        model = "{MODEL}"
        endpoint = "completions"
        stream = true
        ignore_eos = true
        seed = 3
        stop = {{ duration_secs = 3, requests = 40 }}

        [[tenants]]
        label = "free"
        api_key = "sk-free"
        arrival = {{ kind = "constant", rate = 3.0 }}
        prompts = {{ kind = "synthetic", tokens = {{ min = 5, max = 15 }} }}
        max_tokens = {{ min = 4, max = 12 }}

        [[tenants]]
        label = "throttled"
        api_key = "sk-throttled"
        arrival = {{ kind = "bursts", size = 8, every_secs = 10 }}
        prompts = {{ kind = "synthetic", tokens = 8 }}
        max_tokens = 4
        "#
    ))
    .unwrap();
    scenario.validate().unwrap();
    let report = loadtest::run(&gw.base, scenario, false).await.unwrap();

    let o = &report.overall;
    assert_eq!(
        o.sent,
        o.ok + o.rate_limited + o.client_errors + o.server_errors + o.transport_errors
    );
    assert_eq!(o.sent, report.requests.len() as u64);
    assert_eq!(o.sent, report.tenants.values().map(|t| t.sent).sum::<u64>());
    let throttled = &report.tenants["throttled"];
    assert_eq!(throttled.sent, 8);
    assert!(
        throttled.rate_limited >= 4,
        "a burst of 8 against 3/min: {throttled:?}"
    );
    let free = &report.tenants["free"];
    assert_eq!((free.ok, free.rate_limited), (free.sent, 0));
    assert!(free.sent >= 8);
    for r in report.requests.iter().filter(|r| r.outcome == Outcome::Ok) {
        let ttft = r.ttft_ms.expect("streamed requests have a TTFT");
        assert!(ttft <= r.e2el_ms, "{r:?}");
        assert_eq!(
            r.itl_ms.len() as u64,
            r.output_tokens - 1,
            "one gap between each pair of tokens"
        );
        assert!(r.prompt_tokens > 0);
    }
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
}

/// The synthetic benchmark model through the whole gateway: every request streams exactly the
/// configured tokens, paced (no gap shorter than the timer allows), and the run's pictures draw.
#[tokio::test]
async fn the_synthetic_model_streams_paced_tokens_and_the_run_plots() {
    let config = format!(
        "[[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 100\noutput_tokens = 6\n\
         [[tenants]]\nid = \"a\"\nkeys = [\"{}\"]\n\
         [[tenants]]\nid = \"b\"\nkeys = [\"{}\"]\n",
        digest("sk-a"),
        digest("sk-b")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let scenario: Scenario = toml::from_str(
        r#"
        model = "bench"
        endpoint = "chat"
        stream = true
        stop = { duration_secs = 2, requests = 1000 }

        [[tenants]]
        label = "a"
        api_key = "sk-a"
        arrival = { kind = "closed_loop", concurrency = 3 }
        prompts = { kind = "synthetic", tokens = 20 }
        max_tokens = 64

        [[tenants]]
        label = "b"
        api_key = "sk-b"
        arrival = { kind = "poisson", rate = 5.0 }
        prompts = { kind = "synthetic", tokens = 10 }
        max_tokens = 4
        "#,
    )
    .unwrap();
    scenario.validate().unwrap();
    let report = loadtest::run(&gw.base, scenario, false).await.unwrap();
    assert!(report.tenants["a"].ok > 0 && report.tenants["b"].ok > 0);
    assert_eq!(
        report.overall.ok, report.overall.sent,
        "{:?}",
        report.overall
    );
    for r in &report.requests {
        // Tenant a gets the configured 6; b's max_tokens = 4 caps it.
        let expected = if r.tenant == "a" { 6 } else { 4 };
        assert_eq!(r.output_tokens, expected, "{r:?}");
        assert_eq!(r.itl_ms.len() as u64, expected - 1);
        // 100 tokens/s: token k is due 10·k ms after the start and the engine's timer never
        // fires early, so the last token comes no sooner than 10 ms × the count. (Single gaps
        // can be short when a late token is followed by one on time.)
        let last_token_ms = r.ttft_ms.unwrap() + r.itl_ms.iter().sum::<f64>();
        assert!(last_token_ms >= 10.0 * expected as f64 - 0.5, "{r:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let files = loadtest::write_plots(&report, dir.path()).unwrap();
    assert_eq!(files.len(), 5);
    let ttft = std::fs::read_to_string(dir.path().join("ttft_cdf.svg")).unwrap();
    assert!(ttft.contains("a (n=") && ttft.contains("b (n="));
}

/// The README's smoke run: the smoke scenario against the example configuration, two real
/// tenants with their own keys (shortened here to a few requests).
#[tokio::test]
async fn the_smoke_scenario_runs_as_two_tenants_of_the_example_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = std::fs::read_to_string(root.join("deploy/examples/gateway.toml")).unwrap();
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let mut scenario = Scenario::load(&root.join("loadtest/scenarios/smoke.toml")).unwrap();
    // acme's first burst is 8 requests at once; hospital-a arrives about once a second.
    scenario.stop.duration_secs = Some(8.0);
    scenario.stop.requests = Some(12);
    scenario.validate().unwrap();
    let labels: Vec<&str> = scenario.tenants.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(labels, ["hospital-a", "acme"]);
    let report = loadtest::run(&gw.base, scenario, false).await.unwrap();
    for tenant in ["hospital-a", "acme"] {
        let summary = &report.tenants[tenant];
        assert!(summary.ok >= 1, "{tenant}: {summary:?}");
        assert_eq!(summary.ok, summary.sent, "{tenant}: {summary:?}");
    }
    // Two tenants in the gateway's own books, not one demo key twice.
    let metrics = gw.metrics_text().await;
    for tenant in ["hospital-a", "acme"] {
        let series = format!("gateway_requests_total{{tenant=\"{tenant}\",");
        assert!(metrics.contains(&series), "{series} missing");
    }
}
