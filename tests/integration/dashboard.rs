//! The admin listener's metrics, dashboard and candidate endpoints over real HTTP: the
//! exposition read by Debian's python3-prometheus-client, the page loaded by Debian's
//! headless Chromium (which must find its plots drawn with this server's data), and a
//! shadow set, counted and promoted through the API.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::admin::{admin_table, call, full};
use crate::metrics::{parse_with_prometheus_client, value};
use crate::support::{self, Upstream};

/// A server with `[admin]` (and `admin_extra` in it) in front of backends a, b, c with
/// `pool_extra` in the pool; the server, its proxy URL and the backends.
async fn start(admin_extra: &str, pool_extra: &str) -> (weir::Server, String, Vec<Upstream>) {
    let ups = vec![Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let text = format!("{}{}", admin_table(admin_extra), support::config_text(&addrs, pool_extra));
    let server = support::start(&text).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    (server, url, ups)
}

async fn requests(url: &str, n: usize) {
    let client = support::client();
    for _ in 0..n {
        assert_eq!(support::get(&client, url).await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_is_openmetrics_that_prometheus_client_reads() {
    let (server, url, ups) = start("", "shadow = { plugin = \"first\", sample_percent = 100 }").await;
    requests(&url, 30).await;
    let admin = server.admin_addr().unwrap();
    let res = support::client()
        .request(http::Request::get(format!("http://{admin}/metrics")).body(support::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = support::body_text(res).await;
    let samples = parse_with_prometheus_client(&text).await;
    let total: f64 = ups
        .iter()
        .map(|u| value(&samples, "weir_backend_requests_total", &[("backend", &*u.addr.to_string())]).unwrap())
        .sum();
    assert_eq!(total, 30.0);
    let shadow = [("pool", "p"), ("kind", "shadow"), ("plugin", "first")];
    assert_eq!(value(&samples, "weir_candidate_decisions_total", &shadow), Some(30.0));
    assert_eq!(
        value(&samples, "weir_candidate_agreements_total", &shadow),
        Some(10.0),
        "round robin vs first: a third"
    );
    assert_eq!(value(&samples, "weir_plugin_calls_total", &[("role", "shadow"), ("plugin", "first")]), Some(30.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_set_counted_and_promoted_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let token_file = format!("token_file = {:?}", dir.path().join("token").display().to_string());
    let (server, url, _ups) = start(&token_file, "").await;
    let admin = server.admin_addr().unwrap();
    let shadow = r#"{"plugin": "first", "percent": 100}"#;
    let path = "/api/v1/pools/p/shadow";

    let (status, _) = call(admin, Method::PUT, path, None, full(shadow)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(server.snapshot().pools["p"].shadow.is_none(), "nothing changed");
    let (status, body) =
        call(admin, Method::PUT, path, Some("s3cret"), full(r#"{"plugin": "nope", "percent": 5}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no plugin `nope`"), "{body}");
    let (status, body) =
        call(admin, Method::PUT, path, Some("s3cret"), full(r#"{"plugin": "first", "percent": 0}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(admin, Method::PUT, path, Some("s3cret"), full(shadow)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    requests(&url, 12).await;
    let (_, d) = call(admin, Method::GET, "/api/v1/dashboard", None, support::empty()).await;
    let s = &d["pools"][0]["shadow"];
    assert_eq!((s["plugin"].as_str(), s["asked"].as_u64(), s["agreed"].as_u64()), (Some("first"), Some(12), Some(4)));
    assert_eq!(s["picks"], serde_json::json!([12, 0, 0]));

    let promote = "/api/v1/pools/p/canary/promote";
    let (status, body) = call(admin, Method::POST, promote, Some("s3cret"), support::empty()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("pool `p` has no canary to promote")));
    let promote = "/api/v1/pools/p/shadow/promote";
    let (status, body) = call(admin, Method::POST, promote, Some("s3cret"), support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["balancer"], "first");
    let client = support::client();
    for _ in 0..6 {
        assert_eq!(support::name_of(&support::get(&client, &url).await.1), "a", "`first` places every request now");
    }
    let (_, d) = call(admin, Method::GET, "/api/v1/dashboard", None, support::empty()).await;
    assert!(d["pools"][0]["shadow"].is_null());
    let kinds: Vec<&str> = d["history"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["candidate", "candidate", "promote"], "{d}");
}

/// Loads the dashboard in Debian's headless Chromium and returns the DOM once its
/// script has polled the server for `budget_ms` of virtual time.
async fn chromium_dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,1800",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium did not finish in 120 s")
        .expect("/usr/bin/chromium must exist (Debian's chromium, which .ci/run installs)");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !dom.is_empty(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    dom
}

/// `data-points` of the first element whose opening tag contains `marker`.
fn points(dom: &str, marker: &str) -> u64 {
    let start = dom.find(marker).unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let tag = &dom[dom[..start].rfind('<').unwrap()..start + dom[start..].find('>').unwrap()];
    let Some(at) = tag.find("data-points=\"") else { panic!("{marker} was never drawn: {tag}") };
    tag[at + 13..].split('"').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_a_live_server_in_headless_chromium() {
    let (server, url, ups) = start("", "shadow = { plugin = \"round-robin\", sample_percent = 100 }").await;
    // Enough decisions that each worker thread timed some (one in 64), and a WebSocket
    // open to one backend.
    requests(&url, 200).await;
    let ws_url = format!("ws://{}/ws", server.addr("main").unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap();
    // Traffic while the page polls, one request at a time (the shadow stays in step).
    let traffic = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = support::client();
            loop {
                let _ = support::get(&client, &url).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let admin = server.admin_addr().unwrap();
    let dom = chromium_dom(&format!("http://{admin}/"), 6000).await;
    traffic.abort();
    drop(ws);

    assert!(dom.contains("<span id=\"error\"></span>"), "the page could not poll:\n{dom}");
    let samples: u64 = dom.split("data-samples=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().parse().unwrap();
    assert!(samples >= 2, "the page polled {samples} times");
    // Each plot drew this server's data.
    assert!(points(&dom, "class=\"share\"") >= 3, "traffic share: a rate per backend");
    assert!(points(&dom, "id=\"decisions\"") >= 1, "decisions per second");
    assert!(points(&dom, "id=\"decision-time\"") >= 1, "decision-time percentiles");
    assert_eq!(points(&dom, "id=\"websockets\""), 3, "a bar per backend");
    assert!(points(&dom, "class=\"agreement-plot\"") >= 1, "the shadow's agreement");
    for u in &ups {
        assert!(dom.contains(&format!("<td>{}</td>", u.addr)), "backend {} in the table", u.addr);
    }
    assert!(dom.contains("class=\"big agreement\">100.0%</span>"), "round robin agrees with itself:\n{dom}");
    assert!(dom.contains("shadow: round-robin on 100% of decisions"));
    assert!(dom.contains("<td class=\"healthy\">healthy</td>"));
}
