//! What a live plugin swap costs (issue 14, item 11), in process: a [`weir::Server`] with
//! its admin API in front of two demo backends (`a`, `b`), on a runtime of its own (two
//! worker threads); the clients run on another runtime.
//!
//! 1. **Swap time**: from sending `PUT /api/v1/pools/p/balancer` to the first response
//!    placed by the new plugin, swapping between `first` (every request to `a`) and the
//!    `counter` fixture with `{"fixed": 1}` (every request to `b`), so each response names
//!    the plugin that placed it. The first request is sent as soon as the API answers; a
//!    request after the answer placed by the old plugin would be counted (and is a bug).
//!    Three ways the new plugin's code is found, as the API's answer reports it
//!    (`code`): `in memory` (a component a loaded version still holds: swaps back and
//!    forth on one server, `RUNS` each way), `disk cache` (a new server per run on a warm
//!    cache directory) and `compiled` (a new server per run on an empty cache directory).
//!    Also the server's own split: load (compile or cache, world check, instantiate,
//!    configure), dry run, switch.
//! 2. **Request latency with and without swaps**: an open loop of `RATE` GETs per second
//!    (default 1,000) for `SECS` seconds (default 10) on keep-alive connections, each
//!    request's latency counted from the time it was due (so a stall delays every request
//!    behind it, not only the one it hit), once without swaps and once with a swap every
//!    second (`round-robin` and `p2c` in turn; `OTHER=NAME` for another than `p2c`),
//!    alternately, `PAIRS` times (default 3).
//!    Reports p50, p99, p99.9 and max of each run. `SWAPS_FIRST=1` starts each pair with
//!    the run with swaps.
//!
//! Run with `cargo bench --bench swap` (or `just bench-swap`). `PART=1` or `PART=2` runs
//! one part only.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::env_or;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

/// A weir server on a runtime (and thread) of its own; dropping it stops both.
struct Running {
    admin: SocketAddr,
    proxy: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(backends: [SocketAddr; 2], balancer: &str, cache: &std::path::Path) -> Self {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[plugins]\ncache_dir = {:?}\n\n[[listener]]\nname = \"main\"\n\
             listen = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
             balancer = {{ plugin = \"{balancer}\" }}\n",
            cache.display().to_string(),
            backends[0],
            backends[1]
        );
        let config = weir::config::Config::parse(&text, None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let server = weir::Server::start(config).await.unwrap();
                tx.send((server.admin_addr().unwrap(), server.addr("main").unwrap())).unwrap();
                let _ = stopped.await;
                drop(server);
            });
        });
        let (admin, proxy) = rx.recv().unwrap();
        Self { admin, proxy, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET `url`: the status and the backend's name (the demo backend's body starts with it).
async fn get(client: &Http, url: &str) -> Result<(u16, String), String> {
    let res = client.get(url.parse().unwrap()).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok((status, text.split(':').next().unwrap_or("").trim().to_owned()))
}

/// PUT a swap: the API's JSON answer.
async fn swap(client: &Http, admin: SocketAddr, body: serde_json::Value) -> serde_json::Value {
    let req = http::Request::put(format!("http://{admin}/api/v1/pools/p/balancer"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let ok = res.status().is_success();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(ok, "swap refused: {v}");
    v
}

/// One timed swap: to `target`'s plugin, then requests until one is placed by it.
struct Timed {
    api: Duration,
    first: Duration,
    stale: u32,
    load_ms: f64,
    dry_run_ms: f64,
    switch_ms: f64,
    code: String,
}

async fn timed_swap(client: &Http, run: &Running, body: serde_json::Value, target: &str) -> Timed {
    let url = format!("http://{}/", run.proxy);
    let t0 = Instant::now();
    let answer = swap(client, run.admin, body).await;
    let api = t0.elapsed();
    let mut stale = 0;
    let first = loop {
        let (status, name) = get(client, &url).await.unwrap();
        assert_eq!(status, 200);
        if name == target {
            break t0.elapsed();
        }
        stale += 1;
        assert!(stale < 1000, "the new plugin never placed a request");
    };
    Timed {
        api,
        first,
        stale,
        load_ms: answer["load_ms"].as_f64().unwrap(),
        dry_run_ms: answer["dry_run_ms"].as_f64().unwrap(),
        switch_ms: answer["switch_ms"].as_f64().unwrap(),
        code: answer["code"].as_str().unwrap().to_owned(),
    }
}

fn report(what: &str, mut runs: Vec<Timed>) {
    let n = runs.len();
    let codes: std::collections::BTreeSet<String> = runs.iter().map(|t| t.code.clone()).collect();
    let stale: u32 = runs.iter().map(|t| t.stale).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (first, first_min, first_max) = median(&mut runs.iter().map(|t| ms(t.first)).collect());
    let (api, _, _) = median(&mut runs.iter().map(|t| ms(t.api)).collect());
    let (load, _, _) = median(&mut runs.iter().map(|t| t.load_ms).collect());
    let (dry, _, _) = median(&mut runs.iter().map(|t| t.dry_run_ms).collect());
    let (switch, _, _) = median(&mut runs.iter().map(|t| t.switch_ms).collect());
    runs.clear();
    println!(
        "SWAP {what} (code: {codes:?}, {n} swaps): API call to the first request placed by the new plugin median \
         {first:.2} ms (min {first_min:.2}, max {first_max:.2}); API answer {api:.2} ms = load {load:.2} + dry run \
         {dry:.2} + switch {switch:.3} ms (medians); requests placed by the old plugin after the answer: {stale}"
    );
}

/// Part 1.
async fn swap_times(backends: [SocketAddr; 2], runs: usize) {
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let counter = weir_fixtures::path("counter").display().to_string();
    let to_b = serde_json::json!({ "plugin": counter, "config": { "fixed": 1 } });
    let to_a = serde_json::json!({ "plugin": "first" });
    let warm = tempfile::tempdir().unwrap();

    // In memory: back and forth on one server (the version swapped out is kept for a
    // rollback, and with it its compiled component).
    let run = Running::start(backends, "first", warm.path());
    timed_swap(&client, &run, to_b.clone(), "b").await; // compiles counter.wasm into `warm`
    timed_swap(&client, &run, to_a.clone(), "a").await;
    let mut memory = Vec::new();
    for _ in 0..runs {
        memory.push(timed_swap(&client, &run, to_b.clone(), "b").await);
        memory.push(timed_swap(&client, &run, to_a.clone(), "a").await);
    }
    drop(run);
    report("in memory", memory);

    // Disk cache: a new server (a new plugin runtime, nothing in memory) on the warm cache.
    let mut disk = Vec::new();
    for _ in 0..runs {
        let run = Running::start(backends, "first", warm.path());
        disk.push(timed_swap(&client, &run, to_b.clone(), "b").await);
    }
    report("disk cache", disk);

    // Compiled: a new server on an empty cache directory.
    let mut compiled = Vec::new();
    for _ in 0..runs {
        let empty = tempfile::tempdir().unwrap();
        let run = Running::start(backends, "first", empty.path());
        compiled.push(timed_swap(&client, &run, to_b.clone(), "b").await);
    }
    report("uncached", compiled);
}

/// Latency percentiles of `v` (sorted here), µs.
fn percentiles(v: &mut [u64]) -> (u64, u64, u64, u64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99), at(0.999), v[v.len() - 1])
}

/// One open-loop run of `rate` requests per second for `secs`; with `swaps`, a swap every
/// second. Returns the latencies (µs, from each request's due time), errors and swaps.
async fn open_loop(run: &Running, rate: u64, secs: u64, swaps: bool) -> (Vec<u64>, u64, u64) {
    let client: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let url: Arc<str> = format!("http://{}/", run.proxy).into();
    // Connections opened before the clock starts.
    let mut warm = Vec::new();
    for _ in 0..32 {
        let (c, u) = (client.clone(), url.clone());
        warm.push(tokio::spawn(async move { get(&c, &u).await }));
    }
    for w in warm {
        w.await.unwrap().unwrap();
    }
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((rate * secs) as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = swaps.then(|| {
        let (client, admin, done) = (client.clone(), run.admin, done.clone());
        let other: String = env_or("OTHER", "p2c".to_owned());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                let plugin = if n.is_multiple_of(2) { other.as_str() } else { "round-robin" };
                swap(&client, admin, serde_json::json!({ "plugin": plugin })).await;
                n += 1;
            }
            n
        })
    });
    let start = tokio::time::Instant::now();
    let total = rate * secs;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let (c, u, l, e) = (client.clone(), url.clone(), latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            match get(&c, &u).await {
                Ok((200, _)) => l.lock().unwrap().push(due.elapsed().as_micros() as u64),
                _ => {
                    e.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = match swapper {
        Some(s) => s.await.unwrap(),
        None => 0,
    };
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (latencies, errors.load(std::sync::atomic::Ordering::Relaxed), swaps)
}

/// Part 2.
async fn latency_under_swaps(backends: [SocketAddr; 2], rate: u64, secs: u64, pairs: usize, swaps_first: bool) {
    let cache = tempfile::tempdir().unwrap();
    let run = Running::start(backends, "round-robin", cache.path());
    // Both plugins compiled and in memory before the first measured run.
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let other: String = env_or("OTHER", "p2c".to_owned());
    swap(&client, run.admin, serde_json::json!({ "plugin": other })).await;
    swap(&client, run.admin, serde_json::json!({ "plugin": "round-robin" })).await;
    let order = if swaps_first { [true, false] } else { [false, true] };
    for pair in 0..pairs {
        for swaps in order {
            let (mut l, errors, n) = open_loop(&run, rate, secs, swaps).await;
            let (p50, p99, p999, max) = percentiles(&mut l);
            println!(
                "LATENCY pair {} {:<13} {rate}/s for {secs} s: {} answered, {errors} errors, {n} swaps; p50 {p50} µs, \
                 p99 {p99} µs, p99.9 {p999} µs, max {max} µs",
                pair + 1,
                if swaps { "swap every 1s" } else { "no swaps" },
                l.len(),
            );
        }
    }
}

fn main() {
    let part: u32 = env_or("PART", 0);
    let runs: usize = env_or("RUNS", 10);
    let rate: u64 = env_or("RATE", 1000);
    let secs: u64 = env_or("SECS", 10);
    let pairs: usize = env_or("PAIRS", 3);
    let swaps_first = env_or("SWAPS_FIRST", 0u8) == 1;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let a = weir::demo::Backend::start("a").await.unwrap();
        let b = weir::demo::Backend::start("b").await.unwrap();
        let backends = [a.addr, b.addr];
        if part != 2 {
            swap_times(backends, runs).await;
        }
        if part != 1 {
            latency_under_swaps(backends, rate, secs, pairs, swaps_first).await;
        }
    });
}
