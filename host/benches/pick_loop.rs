//! A fixed-count decision loop, for instruction counts under callgrind (whose figures do
//! not depend on what else the machine is doing) and quick wall-clock checks:
//! `N=20000 PLUGIN=round-robin BACKENDS=10000 valgrind --tool=callgrind target/release/deps/pick_loop-*`;
//! run it twice with different N and divide the difference by the difference in N.
//!
//! `PLUGIN` is a pack name or a .wasm path (default `round-robin`); `BACKENDS` the pool
//! size (default 3; weights 1, 2, 3, 1, ... as in the `decision` benchmark); each decision
//! is `Pool::place` for a request from a different client address, so the hashing
//! balancers see a new key every time.
#![allow(missing_docs, clippy::unwrap_used)]
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weir::simulate::{Sim, SimBackend};

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let n: u32 = var("N", 1_000_000);
    let backends: usize = var("BACKENDS", 3);
    let plugin: String = var("PLUGIN", "round-robin".into());
    let pool: Vec<SimBackend> =
        (0..backends).map(|i| SimBackend { weight: (i % 3) as u32 + 1, max_connections: 0 }).collect();
    let sim = Sim::new(&plugin, "{}", &pool).unwrap();
    for id in 0..backends as u32 {
        sim.set_latency_us(id, 1_000 + id % 7 * 100);
    }
    let mut req = Sim::request(Some(0));
    let mut decide = |i: u32| {
        req.client = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32.wrapping_add(i))), 40_000);
        let (back, placement) = sim.place(std::mem::take(&mut req));
        req = back;
        std::hint::black_box(placement);
    };
    for i in 0..1000 {
        decide(i);
    }
    let t = std::time::Instant::now();
    for i in 0..n {
        decide(i);
    }
    println!(
        "{plugin} at {backends} backends: {:.1} ns/decision over {n}",
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
    // A trap or blown deadline would mean some decisions were the host's fallback, not the
    // plugin's: the figure would not be the plugin's cost.
    let stats = sim.stats();
    let failures = [&stats.traps, &stats.timeouts, &stats.errors].map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(failures, [0; 3], "traps, timeouts, errors: the loop did not measure the plugin alone");
}
