//! Health checks at scale: a real `weir` process whose pool of `BACKENDS` backends
//! (default 1,000, each a real listener of this process's demo backends, on a runtime
//! thread of its own) is probed every `INTERVAL_MS` (default 1,000) with `KIND` probes
//! (`tcp` or `http`, default both in turn), each result evaluated by the `threshold`
//! health plugin. Reports weir's CPU time over `SECS` seconds (default 20) after a
//! warm-up, minus the same process's CPU with no probe over the same time, divided by the
//! probes sent: the CPU a probe costs weir, evaluation included. `RUNS` (default 1)
//! repeats each measurement.
//!
//! CPU time is each thread's run time as the scheduler counts it (`/proc/PID/task/*/
//! schedstat`, in nanoseconds), summed over the process and shown per thread kind
//! (`weir-health` runs the probes and the evaluators; `weir-epoch` is the plugin deadline
//! ticker); the user/system split is from `/proc/PID/stat`, in 10 ms ticks, so it is rough.
//! Context switches are the threads' voluntary and involuntary ones (`/proc/.../status`).
//!
//! The system time of a loopback probe includes the backend's side of TCP (the receiving
//! end runs in the sender's context), so it overstates a probe over a network; the user
//! time is weir's own.
//!
//! Run with `cargo bench --bench health_scale` (`BACKENDS=`, `INTERVAL_MS=`, `SECS=`,
//! `KIND=`, `RUNS=`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Weir, env_or};

/// What one sample of a process's CPU counters holds.
#[derive(Debug, Default, Clone)]
struct Cpu {
    /// Run time (ns) and context switches by thread kind (the thread's name, with a
    /// trailing number dropped).
    threads: BTreeMap<String, (u64, u64)>,
    /// User and system time of the whole process, in clock ticks (1/100 s).
    user: u64,
    system: u64,
}

impl Cpu {
    fn sample(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let mut cpu = Cpu { user: f[11].parse().unwrap(), system: f[12].parse().unwrap(), ..Cpu::default() };
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let dir = task.unwrap().path();
            // A thread that ended between the listing and the reads is not counted.
            let (Ok(comm), Ok(sched), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("schedstat")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let kind = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_owned();
            let ns: u64 = sched.split(' ').next().unwrap().parse().unwrap();
            let switches: u64 = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
                .sum();
            let e = cpu.threads.entry(kind).or_default();
            e.0 += ns;
            e.1 += switches;
        }
        cpu
    }

    /// What happened from `earlier` to `self`.
    fn since(&self, earlier: &Cpu) -> Cpu {
        let threads = self
            .threads
            .iter()
            .map(|(k, &(ns, sw))| {
                let (ns0, sw0) = earlier.threads.get(k).copied().unwrap_or_default();
                (k.clone(), (ns.saturating_sub(ns0), sw.saturating_sub(sw0)))
            })
            .collect();
        Cpu { threads, user: self.user - earlier.user, system: self.system - earlier.system }
    }

    fn ns(&self) -> u64 {
        self.threads.values().map(|t| t.0).sum()
    }

    fn thread(&self, kind: &str) -> (u64, u64) {
        self.threads.get(kind).copied().unwrap_or_default()
    }
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

/// What weir's threads used over `secs` seconds after `warmup`; also how many backends
/// were judged unhealthy in its log (should be none).
fn measure(config: &str, warmup: Duration, secs: u64) -> (Cpu, u64) {
    let weir = Weir::spawn(config);
    std::thread::sleep(warmup);
    let before = Cpu::sample(weir.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let used = Cpu::sample(weir.pid()).since(&before);
    let down = weir.warnings().get("backend health changed").copied().unwrap_or(0);
    weir.stop();
    (used, down)
}

/// Each thread kind's run time in ms and context switches.
fn threads(cpu: &Cpu) -> String {
    cpu.threads
        .iter()
        .map(|(k, (ns, sw))| format!("{k} {:.0} ms/{sw} cs", *ns as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let n: usize = env_or("BACKENDS", 1000);
    let interval: u64 = env_or("INTERVAL_MS", 1000);
    let secs: u64 = env_or("SECS", 20);
    let runs: usize = env_or("RUNS", 1);
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
    let (base, _) = measure(&config(&addrs, None), warmup, secs);
    println!(
        "{n} backends, no probe, {secs} s: {:.0} ms of CPU ({} user + {} system ticks); {}",
        base.ns() as f64 / 1e6,
        base.user,
        base.system,
        threads(&base)
    );
    let probes = (n as u64 * secs * 1000 / interval) as f64;
    for _ in 0..runs {
        for kind in &kinds {
            let (used, down) = measure(&config(&addrs, Some((kind, interval))), warmup, secs);
            let us = |ns: u64| ns as f64 / 1e3 / probes;
            let ticks = |t: u64, b: u64| t.saturating_sub(b) as f64 * 10_000.0 / probes;
            let (health_ns, health_cs) = used.thread("weir-health");
            println!(
                "{n} backends, {kind} probe every {interval} ms, {secs} s: {:.1} µs of CPU per probe \
                 ({:.1} µs on weir-health, {:.2} switches; user {:.1} + system {:.1} µs by ticks); {}; {down} verdict changes",
                us(used.ns().saturating_sub(base.ns())),
                us(health_ns),
                health_cs as f64 / probes,
                ticks(used.user, base.user),
                ticks(used.system, base.system),
                threads(&used),
            );
        }
    }
}
