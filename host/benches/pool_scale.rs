//! Pool scale: a real `weir` process with `POOLS` pools (default 1,000) of `BACKENDS`
//! backends each (default 3), one listener routing `/pN/...` to pool `pN` by path prefix.
//!
//! Reports, for one pool and then for `POOLS` pools: the time from spawning the process
//! to its "listening" log line, its RSS once listening, and its RSS after every pool has
//! served requests on every worker thread (so that each pool's balancer instance exists on
//! each thread), hence the memory per pool. Each round sends one request to every pool on
//! each of `CONNS` concurrent keep-alive connections (default 4 per worker thread); a
//! second round shows whether the first reached every thread (RSS no longer grows).
//!
//! A decision that could not use its plugin falls back to the built-in round robin and the
//! request still succeeds, so fallbacks are counted from weir's log ("plugin instance could
//! not be created" and every other WARN/ERROR line) and, with `BALANCER=first` (where the
//! plugin always answers the first backend), from responses that came from another one.
//!
//! `WORKERS` sets `[runtime] worker_threads` (unset: weir's default, the CPUs it may run
//! on). Upstream keep-alive is off (`max_idle_per_backend = 0`) so that the figures are the
//! pools' own cost, not idle upstream connections.
//!
//! Run with `cargo bench --bench pool_scale` (`POOLS=`, `BACKENDS=`, `WORKERS=`,
//! `BALANCER=`, `CONNS=`, `ROUNDS=`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Weir, env_or, rss_kib};

use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One `weir` config: `pools` pools over the same backends, routed by path prefix.
fn config(pools: usize, backends: &[SocketAddr], balancer: &str, workers: Option<usize>) -> String {
    let mut c = String::new();
    if let Some(w) = workers {
        c += &format!("[runtime]\nworker_threads = {w}\n\n");
    }
    c += "[[listener]]\nname = \"scale\"\nlisten = \"127.0.0.1:0\"\npool = \"p0\"\n";
    for p in 0..pools {
        c += &format!("[[listener.route]]\npath_prefix = \"/p{p}\"\npool = \"p{p}\"\n");
    }
    let list = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect::<Vec<_>>().join(", ");
    for p in 0..pools {
        c += &format!(
            "\n[pool.p{p}]\nbackends = [{list}]\nbalancer = {{ plugin = \"{balancer}\" }}\nmax_idle_per_backend = 0\n"
        );
    }
    c
}

/// What one round of requests saw.
#[derive(Debug, Default)]
struct Round {
    ok: u64,
    /// Answers by backend name.
    by_backend: BTreeMap<String, u64>,
    /// Non-200 answers and failed exchanges.
    errors: u64,
}

/// Every connection sends one request to every pool (each starting at its own pool, so
/// the pools are reached on different connections at the same time).
async fn round(addr: SocketAddr, pools: usize, conns: usize) -> Round {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let (ok, errors) = (ok.clone(), errors.clone());
            tokio::spawn(async move {
                let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                let stream = TcpStream::connect(addr).await.unwrap();
                let _ = stream.set_nodelay(true);
                let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                for i in 0..pools {
                    let p = (i + c * pools / conns) % pools;
                    if sender.ready().await.is_err() {
                        errors.fetch_add((pools - i) as u64, Ordering::Relaxed);
                        break;
                    }
                    let req = http::Request::get(format!("/p{p}/x"))
                        .header(http::header::HOST, "scale.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let Ok(res) = sender.send_request(req).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let status = res.status();
                    let Ok(body) = res.into_body().collect().await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if status != http::StatusCode::OK {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                    // The demo backends answer `NAME: GET PATH`.
                    let body = body.to_bytes();
                    let name = body.split(|&b| b == b':').next().unwrap_or_default();
                    *seen.entry(String::from_utf8_lossy(name).into_owned()).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut r = Round::default();
    for t in tasks {
        for (name, n) in t.await.unwrap() {
            *r.by_backend.entry(name).or_default() += n;
        }
    }
    r.ok = ok.load(Ordering::Relaxed);
    r.errors = errors.load(Ordering::Relaxed);
    r
}

/// One configuration measured.
struct Measured {
    pools: usize,
    startup: Duration,
    rss_listening: u64,
    rss_rounds: Vec<u64>,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    pools: usize,
    backends: &[SocketAddr],
    balancer: &str,
    workers: Option<usize>,
    conns: usize,
    rounds: usize,
) -> Measured {
    let weir = Weir::spawn(&config(pools, backends, balancer, workers));
    let pid = weir.pid();
    // Let the process finish what it does after binding (it logs "weir is running").
    std::thread::sleep(Duration::from_millis(300));
    let rss_listening = rss_kib(pid);
    println!(
        "{pools} pools: listening {:.0} ms after spawn, rss {rss_listening} KiB",
        weir.startup.as_secs_f64() * 1e3
    );
    let addr: SocketAddr = weir.addr.parse().unwrap();
    let mut rss_rounds = Vec::new();
    let mut fallbacks_seen = 0;
    for r in 1..=rounds {
        let t = std::time::Instant::now();
        let seen = rt.block_on(round(addr, pools, conns));
        let took = t.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let rss = rss_kib(pid);
        rss_rounds.push(rss);
        let not_first: u64 = seen.by_backend.iter().filter(|(name, _)| name.as_str() != "b0").map(|(_, n)| n).sum();
        if balancer == "first" {
            fallbacks_seen += not_first;
        }
        println!(
            "  round {r}: {} requests ({} per pool) in {:.0} ms, {} errors, answered by {:?}, rss {rss} KiB",
            seen.ok,
            conns,
            took.as_secs_f64() * 1e3,
            seen.errors,
            seen.by_backend,
        );
    }
    let warnings = weir.warnings();
    let instance_failures = warnings.get("plugin instance could not be created").copied().unwrap_or(0);
    println!(
        "  weir WARN/ERROR lines: {} ({} \"plugin instance could not be created\"){}{}",
        warnings.values().sum::<u64>(),
        instance_failures,
        if balancer == "first" {
            format!("; answers not from b0 (fallbacks): {fallbacks_seen}")
        } else {
            String::new()
        },
        if warnings.is_empty() { String::new() } else { format!("\n  {warnings:?}") },
    );
    let startup = weir.startup;
    weir.stop();
    Measured { pools, startup, rss_listening, rss_rounds }
}

fn main() {
    let pools: usize = env_or("POOLS", 1_000);
    let nbackends: usize = env_or("BACKENDS", 3);
    let mut workers: Option<usize> = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok());
    if let Some(w) = workers
        && let Err(e) = common::weir_check(&format!(
            "[runtime]\nworker_threads = {w}\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n\
             [pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        ))
    {
        println!("WORKERS={w} not applied: this weir rejects `[runtime] worker_threads` ({e})");
        workers = None;
    }
    let threads = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let conns: usize = env_or("CONNS", 4 * threads);
    let rounds: usize = env_or("ROUNDS", 2);
    let balancer: String = env_or("BALANCER", "round-robin".to_owned());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let backends: Vec<SocketAddr> =
        (0..nbackends).map(|i| rt.block_on(weir::demo::spawn_backend(&format!("b{i}"))).unwrap()).collect();
    println!(
        "pool scale: {balancer}, {nbackends} backends per pool, worker_threads {}, {conns} connections per round",
        workers.map_or_else(|| format!("default ({threads})"), |w| w.to_string()),
    );
    // One pool first: the base the per-pool figures are measured from (and a warm
    // compiled-plugin cache for the big start).
    let one = measure(&rt, 1, &backends, &balancer, workers, conns, rounds);
    let many = measure(&rt, pools, &backends, &balancer, workers, conns, rounds);
    let per = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / (many.pools - one.pools).max(1) as f64;
    let last = |m: &Measured| *m.rss_rounds.last().unwrap_or(&m.rss_listening);
    println!(
        "POOL SCALE {} pools vs 1: start {:.0} ms vs {:.0} ms; rss listening {} vs {} KiB ({:.0} bytes per pool); \
         rss after requests on every thread {} vs {} KiB ({:.0} bytes per pool)",
        many.pools,
        many.startup.as_secs_f64() * 1e3,
        one.startup.as_secs_f64() * 1e3,
        many.rss_listening,
        one.rss_listening,
        per(many.rss_listening, one.rss_listening),
        last(&many),
        last(&one),
        per(last(&many), last(&one)),
    );
}
