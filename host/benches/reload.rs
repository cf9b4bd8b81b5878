//! Reload of a large pool, in process: a [`weir::Server`] started on one pool of
//! `BACKENDS` backends (default 10,000; a list such as `BACKENDS="1000 10000"` measures
//! each), then reloaded `RUNS` times (default 11) to a config that differs by one backend
//! removed and one added, alternating between the two configs so that every reload is such
//! a change. Reports the median, min and max time of one reload.
//!
//! The backends are addresses nothing listens on (10.x.y.z:80): a reload never connects.
//! No request is served, so the balancer's own `pool-changed` rebuild (run on the next
//! decision of each thread) is not part of the figure.
//!
//! Run with `cargo bench --bench reload`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::env_or;
use weir::config::Config;

/// A config of one pool whose backends are `10.a.b.c:80` for `first..first + n`.
fn config(first: usize, n: usize, balancer: &str) -> Config {
    let mut c = String::from("[[listener]]\nname = \"r\"\nlisten = \"127.0.0.1:0\"\npool = \"big\"\n\n[pool.big]\n");
    c += &format!("balancer = {{ plugin = \"{balancer}\" }}\nbackends = [\n");
    for i in first..first + n {
        c += &format!("  {{ address = \"10.{}.{}.{}:80\" }},\n", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    }
    c += "]\n";
    Config::parse(&c, None).unwrap()
}

/// One reload, timed (the copy of the config it takes is made before). The one place
/// that calls `Server::reload`.
async fn reload(server: &weir::Server, config: &Config) -> Duration {
    let config = config.clone();
    let t = Instant::now();
    server.reload(config).await.unwrap();
    t.elapsed()
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BACKENDS")
        .unwrap_or_else(|_| "10000".into())
        .split([' ', ','])
        .filter_map(|s| s.parse().ok())
        .collect();
    let runs: usize = env_or("RUNS", 11);
    let balancer: String = env_or("BALANCER", "round-robin".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for n in sizes {
        // Backends 0..n, and 1..n+1: one removed (the first), one added (a new last).
        let a = config(0, n, &balancer);
        let b = config(1, n, &balancer);
        let mut times = rt.block_on(async {
            let server = weir::Server::start(a.clone()).await.unwrap();
            let mut times = Vec::with_capacity(runs);
            for r in 0..runs {
                times.push(reload(&server, if r % 2 == 0 { &b } else { &a }).await);
            }
            times
        });
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "RELOAD {n} backends ({balancer}), one removed and one added: median {:.2} ms, min {:.2} ms, max {:.2} ms \
             ({runs} reloads)",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
        );
    }
}
