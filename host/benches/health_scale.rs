//! Health checks at scale: a real `weir` process whose pool of `BACKENDS` backends
//! (default 1,000, each a real listener of this process's demo backends, on a runtime
//! thread of its own) is probed every `INTERVAL_MS` (default 1,000) with `KIND` probes
//! (`tcp` or `http`, default both in turn), each result evaluated by the `threshold`
//! health plugin. Reports weir's CPU time (user and system, from /proc) over `SECS` seconds
//! (default 20) after a warm-up, minus the same process's CPU with no probe over the same
//! time, divided by the probes sent: the CPU a probe costs weir, evaluation included.
//!
//! The system time of a loopback probe includes the backend's side of TCP (the receiving
//! end runs in the sender's context), so it overstates a probe over a network; the user
//! time is weir's own.
//!
//! Run with `cargo bench --bench health_scale` (`BACKENDS=`, `INTERVAL_MS=`, `SECS=`,
//! `KIND=`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Weir, env_or};

/// weir's user and system CPU time so far, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}

fn config(backends: &[SocketAddr], probe: Option<(&str, u64)>) -> String {
    let list = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect::<Vec<_>>().join(", ");
    let probe = match probe {
        Some(("tcp", ms)) => format!("probe = {{ kind = \"tcp\", interval_ms = {ms}, timeout_ms = {} }}", ms / 2),
        Some((kind, ms)) => {
            format!("probe = {{ kind = \"{kind}\", path = \"/healthz\", interval_ms = {ms}, timeout_ms = {} }}", ms / 2)
        }
        None => String::new(),
    };
    format!(
        "[[listener]]\nname = \"scale\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{list}]\n{probe}\n"
    )
}

/// CPU ticks weir used over `secs` seconds after `warmup`; also how many backends were
/// judged unhealthy in its log (should be none).
fn measure(config: &str, warmup: Duration, secs: u64) -> ((u64, u64), u64) {
    let weir = Weir::spawn(config);
    std::thread::sleep(warmup);
    let (u0, s0) = cpu_ticks(weir.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let (u1, s1) = cpu_ticks(weir.pid());
    let down = weir.warnings().get("backend health changed").copied().unwrap_or(0);
    weir.stop();
    ((u1 - u0, s1 - s0), down)
}

fn main() {
    let n: usize = env_or("BACKENDS", 1000);
    let interval: u64 = env_or("INTERVAL_MS", 1000);
    let secs: u64 = env_or("SECS", 20);
    let kinds: Vec<String> = std::env::var("KIND").map_or(vec!["tcp".into(), "http".into()], |k| vec![k]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut addrs = Vec::with_capacity(n);
            for i in 0..n {
                addrs.push(weir::demo::spawn_backend(&format!("b{i}")).await.unwrap());
            }
            tx.send(addrs).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addrs = rx.recv().unwrap();
    let warmup = Duration::from_millis(interval * 2 + 1000);
    let ((bu, bs), _) = measure(&config(&addrs, None), warmup, secs);
    println!("{n} backends, no probe: {bu} user + {bs} system ticks (1/100 s) in {secs} s");
    for kind in &kinds {
        let ((u, s), down) = measure(&config(&addrs, Some((kind, interval))), warmup, secs);
        let probes = (n as u64 * secs * 1000 / interval) as f64;
        let per = |ticks: u64, base: u64| ticks.saturating_sub(base) as f64 * 10_000.0 / probes;
        println!(
            "{n} backends, {kind} probe every {interval} ms: {u} user + {s} system ticks in {secs} s = {:.1} µs user + {:.1} µs system per probe ({:.1} µs in all), {down} verdict changes",
            per(u, bu),
            per(s, bs),
            per(u + s, bu + bs),
        );
    }
}
