//! One routing decision through the real plugin runtime, exactly as the proxy makes it
//! (`Pool::place`: the plugin call on the worker thread's own instance, plus the host's
//! policy checks), for every balancer of the pack at 10 to 10,000 backends.
//! Run with `just bench` (or `cargo bench --bench decision`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use weir::plugin::PickRequest;
use weir::simulate::{Sim, SimBackend};

fn main() {
    divan::main();
}

const PLUGINS: &[&str] = &[
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "p2c",
    "peak-ewma",
    "random",
    "first",
    "ip-hash",
    "consistent-hash",
    "maglev",
    "rendezvous",
    "bounded-load",
];

/// `n` backends with weights 1, 2, 3, 1, 2, 3, ...
fn sim(plugin: &str, n: usize) -> Sim {
    let backends: Vec<SimBackend> =
        (0..n).map(|i| SimBackend { weight: (i % 3) as u32 + 1, max_connections: 0 }).collect();
    let sim = Sim::new(plugin, "{}", &backends).unwrap();
    for id in 0..n as u32 {
        sim.set_latency_us(id, 1_000 + id % 7 * 100);
    }
    sim.pick(Some(0)); // builds the instance and its tables outside the measurement
    sim
}

/// Requests with distinct keys (client ip, header, cookie, path, query).
fn request() -> PickRequest {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    Sim::request(Some(NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// One decision by each pack balancer at N backends.
#[divan::bench(args = PLUGINS, consts = [10, 100, 1_000, 10_000], sample_count = 50, sample_size = 400)]
fn decision<const N: usize>(bencher: divan::Bencher, plugin: &str) {
    let sim = sim(plugin, N);
    bencher.with_inputs(request).bench_local_values(|req| sim.place(req));
}

/// `round-robin` on one and on two threads at once (each with its own instance; the
/// position is one host counter they share).
#[divan::bench(threads = [1, 2])]
fn round_robin_threads(bencher: divan::Bencher) {
    let sim = sim("round-robin", 3);
    bencher.with_inputs(request).bench_values(|req| sim.place(req));
}
