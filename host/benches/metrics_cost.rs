//! What the metrics cost a request where the data path counts something new, for
//! instruction counts under callgrind: the code `http::forward` runs for metrics once a
//! response head has arrived (`BackendLive::answered`: the status class counter and the
//! latency histogram), `N` times. `MODE=metrics` runs it; `MODE=baseline` runs the same
//! loop without it. `host/benches/metrics_cost.sh` runs each at two `N` under callgrind
//! and divides, and compares a decision (`pick_loop`) with main's.
#![allow(missing_docs, clippy::unwrap_used)]
use std::hint::black_box;

fn main() {
    let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let metrics = std::env::var("MODE").map_or(true, |m| m != "baseline");
    let config = weir::config::Config::parse("[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n", None).unwrap();
    let plugins = weir::plugin::PluginRuntime::new(config.plugins.clone()).unwrap();
    let snapshot = weir::state::Snapshot::build(&config, &plugins, None).unwrap();
    let live = &snapshot.pools["p"].view.members[0].live;
    let t = std::time::Instant::now();
    for i in 0..n {
        let status: u16 = black_box(200);
        // Latencies spread over the histogram's buckets, as real ones are.
        let latency_us: u32 = black_box(i.wrapping_mul(2_654_435_761) >> 12);
        if metrics {
            live.answered(status, latency_us);
        }
        black_box((status, latency_us));
    }
    let el = t.elapsed();
    eprintln!(
        "{n} iterations ({}): {:.2} ns each",
        if metrics { "metrics" } else { "baseline" },
        el.as_nanos() as f64 / f64::from(n.max(1))
    );
}
