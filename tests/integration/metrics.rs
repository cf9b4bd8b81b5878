//! Metrics read by a parser nobody here wrote (Debian's python3-prometheus-client), and
//! the shadow and canary policies: a shadow's agreement on known pairs, a canary's share
//! of real placements, a promotion.

use std::collections::HashMap;

use weir::control::Command;
use weir::state::CandidateKind;

use crate::support::{self, Upstream};

/// One sample: metric name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses OpenMetrics text with Debian's `prometheus_client` (strict: a malformed
/// exposition raises) and returns every sample.
pub async fn parse_with_prometheus_client(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = "import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
";
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 must exist (Debian's python3)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "install Debian's python3-prometheus-client (apt-get install python3-prometheus-client), as .ci/run does"
    );
    assert!(out.status.success(), "the parser refused the exposition: {stderr}\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_read_by_prometheus_client() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = support::start(&support::config_text(&[a.addr, b.addr], "")).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..10 {
        assert_eq!(support::get(&client, &url).await.0, http::StatusCode::OK);
    }
    // The demo backend answers 400 to a `set` without a status.
    assert_eq!(support::get(&client, &format!("{url}answer/set")).await.0, http::StatusCode::BAD_REQUEST);
    let text = server.control().metrics().render();
    let samples = parse_with_prometheus_client(&text).await;

    let (a, b) = (a.addr.to_string(), b.addr.to_string());
    let per = |name: &str, backend: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("pool", "p"), ("backend", backend)];
        labels.extend_from_slice(extra);
        value(&samples, name, &labels).unwrap_or_else(|| panic!("no {name} for {backend}:\n{text}"))
    };
    assert_eq!(per("weir_backend_requests_total", &a, &[]) + per("weir_backend_requests_total", &b, &[]), 11.0);
    let ok = per("weir_backend_responses_total", &a, &[("class", "2xx")])
        + per("weir_backend_responses_total", &b, &[("class", "2xx")]);
    assert_eq!(ok, 10.0);
    let refused = per("weir_backend_responses_total", &a, &[("class", "4xx")])
        + per("weir_backend_responses_total", &b, &[("class", "4xx")]);
    assert_eq!(refused, 1.0);
    let timed = per("weir_backend_latency_seconds_count", &a, &[]) + per("weir_backend_latency_seconds_count", &b, &[]);
    assert_eq!(timed, 11.0, "every answer is in the latency histogram");
    assert_eq!(
        per("weir_backend_latency_seconds_bucket", &a, &[("le", "+Inf")]),
        per("weir_backend_requests_total", &a, &[])
    );
    assert_eq!(per("weir_backend_health", &a, &[("state", "healthy")]), 1.0);
    assert_eq!(per("weir_backend_eligible", &a, &[]), 1.0);
    let calls =
        value(&samples, "weir_plugin_calls_total", &[("pool", "p"), ("role", "balancer"), ("plugin", "round-robin")]);
    assert_eq!(calls, Some(11.0), "one decision per request");
    assert_eq!(value(&samples, "weir_plugin_traps_total", &[("pool", "p")]), Some(0.0));
    assert!(value(&samples, "weir_listener_connections_total", &[("listener", "main")]).unwrap() >= 1.0);
    assert_eq!(value(&samples, "weir_control_reloads_total", &[]), Some(0.0));
    assert_eq!(value(&samples, "weir_pool_eligible_backends", &[("pool", "p")]), Some(2.0));
}

/// Sends `n` requests one after another; how many each backend answered, by name.
async fn spread(url: &str, n: usize) -> HashMap<String, usize> {
    let client = support::client();
    let mut by = HashMap::new();
    for _ in 0..n {
        let (status, body) = support::get(&client, url).await;
        assert_eq!(status, http::StatusCode::OK, "{body}");
        *by.entry(support::name_of(&body).to_owned()).or_default() += 1;
    }
    by
}

/// A pool of three backends with `extra` in its table; the server, its URL and the
/// backends (kept alive).
async fn three(extra: &str) -> (weir::Server, String, Vec<Upstream>) {
    let ups = vec![Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = support::start(&support::config_text(&addrs, extra)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    (server, url, ups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_round_robin_agrees_with_a_live_round_robin() {
    let (server, url, _ups) = three("shadow = { plugin = \"round-robin\", sample_percent = 100 }").await;
    let by = spread(&url, 60).await;
    assert_eq!(by.values().copied().collect::<Vec<_>>(), vec![20; 3], "the shadow never acts: {by:?}");
    let snapshot = server.snapshot();
    let shadow = snapshot.pools["p"].shadow.as_ref().unwrap();
    let stats = &shadow.stats;
    assert_eq!(stats.asked.load(std::sync::atomic::Ordering::Relaxed), 60);
    assert_eq!(stats.agreement(), Some(1.0), "its own cycle, in step with the live one");
    // The same figures through the metrics.
    let samples = parse_with_prometheus_client(&server.control().metrics().render()).await;
    let labels = [("pool", "p"), ("kind", "shadow")];
    assert_eq!(value(&samples, "weir_candidate_decisions_total", &labels), Some(60.0));
    assert_eq!(value(&samples, "weir_candidate_agreements_total", &labels), Some(60.0));
    for u in &_ups {
        let picks = [("pool", "p"), ("kind", "shadow"), ("backend", &*u.addr.to_string())];
        assert_eq!(value(&samples, "weir_candidate_picks_total", &picks), Some(20.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_first_agrees_with_round_robin_a_third_of_the_time() {
    let (server, url, ups) = three("shadow = { plugin = \"first\", sample_percent = 100 }").await;
    let by = spread(&url, 60).await;
    assert_eq!(by.values().copied().collect::<Vec<_>>(), vec![20; 3], "the shadow never acts: {by:?}");
    let snapshot = server.snapshot();
    let pool = &snapshot.pools["p"];
    let stats = &pool.shadow.as_ref().unwrap().stats;
    assert_eq!(stats.agreement(), Some(20.0 / 60.0), "`first` always names backend 0, round robin a third of the time");
    let picks: Vec<u64> =
        pool.view.members.iter().map(|m| m.live.shadow_picks.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert_eq!(picks, vec![60, 0, 0], "the distribution it would have produced");
    drop(ups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_samples_its_share() {
    let (server, url, _ups) = three("shadow = { plugin = \"first\", sample_percent = 25 }").await;
    spread(&url, 400).await;
    let asked =
        server.snapshot().pools["p"].shadow.as_ref().unwrap().stats.asked.load(std::sync::atomic::Ordering::Relaxed);
    // Binomial(400, 0.25): mean 100, sd 8.7; five sd either way.
    assert!((57..=143).contains(&asked), "{asked} of 400 sampled at 25%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_places_its_share_for_real() {
    // Live round robin over a, b, c; the canary (`first`) sends its share to a. Round
    // robin gives b and c exactly a third each of what it places, so b + c = 2/3 of the
    // live share.
    let n = 600;
    let (server, url, _ups) = three("canary = { plugin = \"first\", percent = 20 }").await;
    let by = spread(&url, n).await;
    let others = (by.get("b").copied().unwrap_or(0) + by.get("c").copied().unwrap_or(0)) as f64;
    let canary_share = 1.0 - others * 1.5 / n as f64;
    // Binomial(600, 0.2): sd 0.016 of the share; five sd either way.
    assert!((0.12..=0.28).contains(&canary_share), "canary share {canary_share} of {by:?}");
    let snapshot = server.snapshot();
    let pool = &snapshot.pools["p"];
    let stats = &pool.canary.as_ref().unwrap().stats;
    let given = stats.asked.load(std::sync::atomic::Ordering::Relaxed) as f64;
    assert!((canary_share * n as f64 - given).abs() <= 2.0, "the counted share ({given}) is the real one");
    assert_eq!(pool.view.members[0].live.canary_picks.load(std::sync::atomic::Ordering::Relaxed) as f64, given);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_shadow_becomes_the_live_balancer() {
    let (server, url, _ups) = three("shadow = { plugin = \"first\", sample_percent = 50 }").await;
    assert_eq!(spread(&url, 30).await.len(), 3);
    let err = server
        .control()
        .apply(vec![Command::Promote { pool: "p".into(), kind: CandidateKind::Canary }])
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "pool `p` has no canary to promote");
    server.control().apply(vec![Command::Promote { pool: "p".into(), kind: CandidateKind::Shadow }]).await.unwrap();
    let by = spread(&url, 30).await;
    assert_eq!(by.get("a"), Some(&30), "`first` places everything now: {by:?}");
    let snapshot = server.snapshot();
    let pool = &snapshot.pools["p"];
    assert!(pool.shadow.is_none());
    assert_eq!(pool.config.balancer.source.to_string(), "first");
    assert_eq!(server.control().counters().promotions.get(), 1);
    let history = server.control().counters().history();
    assert_eq!(history.last().map(|e| (e.kind, e.pool.as_str())), Some(("promote", "p")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_set_at_runtime_starts_counting() {
    let (server, url, _ups) = three("").await;
    let candidate = weir::config::CandidateConfig::new(weir::config::PluginRef::pack("round-robin"), 100.0);
    let set = Command::SetCandidate { pool: "p".into(), kind: CandidateKind::Shadow, candidate: Some(candidate) };
    server.control().apply(vec![set]).await.unwrap();
    spread(&url, 9).await;
    let snapshot = server.snapshot();
    let stats = &snapshot.pools["p"].shadow.as_ref().unwrap().stats;
    assert_eq!(stats.asked.load(std::sync::atomic::Ordering::Relaxed), 9);
    let unset = Command::SetCandidate { pool: "p".into(), kind: CandidateKind::Shadow, candidate: None };
    server.control().apply(vec![unset]).await.unwrap();
    assert!(server.snapshot().pools["p"].shadow.is_none());
}
