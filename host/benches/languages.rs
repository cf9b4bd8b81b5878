//! What a plugin costs in each language: the zone-aware example balancer of
//! `examples/plugins/{rust,js,python,c}` (built by `just example-plugins`), loaded by the
//! real plugin runtime into a pool of `BACKENDS` labelled backends (default 8, in two
//! zones), with no sockets.
//!
//! For each language, in a process of its own (so that peak memory is its own):
//! - the component's size;
//! - compile, cold (an empty cache directory: cranelift) and cached (the disk cache), and
//!   the process's peak RSS after the cold compile;
//! - instantiation: a fresh instance with `configure` (the load's scratch instance), then
//!   the first decision on a new thread (instantiate, `configure`, `pool-changed`, `pick`);
//! - ns per decision over `DECISIONS` placements (default 20,000) of requests carrying
//!   `x-zone`, through the same path the proxy takes (`Pool::place`), with the traps
//!   (a blown deadline or memory limit, each followed by a fresh instance) counted apart
//!   and their decisions left out of the figure;
//! - memory per instance: the RSS that `INSTANCES` more threads (default 8) add when each
//!   makes its own instance and decides once.
//!
//! Limits: `memory_limit_mib = 64`, `call_timeout_ms = 100`, so a slow first call or a
//! garbage-collection pause is measured, not cut.
//!
//! Run with `cargo bench --bench languages` (`LANGS=rust,js`, `BACKENDS=`, `DECISIONS=`,
//! `INSTANCES=`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::{env_or, rss_kib};
use weir::config::Config;
use weir::plugin::{PickRequest, PluginRuntime};
use weir::state::{Placement, Pool, Snapshot};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn component(lang: &str) -> PathBuf {
    root().join("target/example-plugins").join(format!("zone-{lang}.wasm"))
}

/// The process's peak resident set, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn request(zone: &str) -> PickRequest {
    let head = http::Request::builder().uri("/").header("host", "bench").header("x-zone", zone).body(()).unwrap();
    PickRequest { head: Some(Box::new(head.into_parts().0)), ..PickRequest::default() }
}

fn config(lang: &str, backends: usize, cache: &Path) -> Config {
    let list: Vec<String> = (0..backends)
        .map(|i| format!("{{ address = \"10.0.0.{}:80\", labels = {{ zone = \"z{}\" }} }}", i + 1, i % 2))
        .collect();
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[pool.p]\nbackends = [{}]\non_plugin_error = \"reject\"\n\
         balancer = {{ plugin = {:?}, config = {{ header = \"x-zone\" }}, memory_limit_mib = 64, call_timeout_ms = 100 }}\n",
        cache.display().to_string(),
        list.join(", "),
        component(lang).display().to_string()
    );
    Config::parse(&text, None).unwrap()
}

/// Measures one language in this process; prints one line of figures.
fn measure(lang: &str) {
    let backends: usize = env_or("BACKENDS", 8);
    let decisions: usize = env_or("DECISIONS", 20_000);
    let instances: usize = env_or("INSTANCES", 8);
    let bytes = std::fs::read(component(lang)).unwrap_or_else(|e| {
        panic!("{}: {e} (build the examples first: just example-plugins)", component(lang).display())
    });
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(lang, backends, cache.path());

    let t = Instant::now();
    let cold = PluginRuntime::new(cfg.plugins.clone()).unwrap();
    cold.compile(&bytes).unwrap();
    let compile_cold = t.elapsed();
    let compile_peak = peak_rss_kib();
    drop(cold);

    let runtime = PluginRuntime::new(cfg.plugins.clone()).unwrap();
    let t = Instant::now();
    runtime.compile(&bytes).unwrap();
    let compile_cached = t.elapsed();
    assert_eq!(runtime.cache_hits.load(Ordering::Relaxed), 1, "the second compile came from the disk cache");

    // Loading makes and configures a scratch instance: instantiation + configure.
    let t = Instant::now();
    let snapshot = Snapshot::build(&cfg, &runtime, None).unwrap();
    let load = t.elapsed();
    let pool: Arc<Pool> = snapshot.pools["p"].clone();

    // The first decision on a thread builds that thread's instance.
    let first = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let (_, placed) = pool.place(request("z0"), None);
            assert!(matches!(placed, Placement::Backend(_)), "{placed:?}");
            t.elapsed()
        })
        .join()
        .unwrap()
    };

    // Decisions on this thread (its instance is built by the first, not timed).
    let mut req = request("z1");
    let (r, _) = pool.place(req, None);
    req = r;
    let stats = &pool.balancer.stats;
    let traps_before = stats.traps.load(Ordering::Relaxed);
    let mut timed = std::time::Duration::ZERO;
    let mut counted = 0u64;
    let mut trapped = 0u64;
    for _ in 0..decisions {
        let before = stats.traps.load(Ordering::Relaxed);
        let t = Instant::now();
        let (r, placed) = pool.place(req, None);
        let took = t.elapsed();
        req = r;
        if stats.traps.load(Ordering::Relaxed) != before {
            trapped += 1;
            continue;
        }
        match placed {
            Placement::Backend(id) => assert_eq!(id % 2, 1, "zone z1 is the odd backends"),
            other => panic!("{other:?}"),
        }
        timed += took;
        counted += 1;
    }
    assert_eq!(stats.traps.load(Ordering::Relaxed) - traps_before, trapped);
    let ns = timed.as_nanos() as f64 / counted.max(1) as f64;

    // Memory per instance: more threads, one instance each.
    let rss_before = rss_kib(std::process::id());
    let barrier = Arc::new(std::sync::Barrier::new(instances + 1));
    let threads: Vec<_> = (0..instances)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (_, placed) = pool.place(request("z0"), None);
                assert!(matches!(placed, Placement::Backend(_)));
                barrier.wait(); // hold the thread (and its instance) until RSS is read
                barrier.wait();
            })
        })
        .collect();
    barrier.wait();
    let rss_after = rss_kib(std::process::id());
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    let per_instance = rss_after.saturating_sub(rss_before) / instances as u64;

    println!(
        "{lang:<7} {:>10} {:>10.0} {:>10.1} {:>8.0} {:>11.2} {:>9.1} {:>10.0} {:>7} {:>10}",
        bytes.len(),
        compile_cold.as_secs_f64() * 1e3,
        compile_cached.as_secs_f64() * 1e3,
        compile_peak as f64 / 1024.0,
        load.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        ns,
        trapped,
        per_instance,
    );
}

fn main() {
    if let Ok(lang) = std::env::var("WEIR_BENCH_LANG") {
        measure(&lang);
        return;
    }
    let langs: String = env_or("LANGS", "rust,js,python,c".to_owned());
    println!(
        "{:<7} {:>10} {:>10} {:>10} {:>8} {:>11} {:>9} {:>10} {:>7} {:>10}",
        "lang", "bytes", "cold ms", "cached ms", "peak MiB", "load ms", "first ms", "ns/pick", "traps", "KiB/inst"
    );
    for lang in langs.split(',') {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env("WEIR_BENCH_LANG", lang)
            .arg("--bench")
            .status()
            .unwrap();
        assert!(status.success(), "{lang} failed");
    }
}
