//! What passive health costs a successful request, for instruction counts under callgrind:
//! the code `http::forward` runs once a response head has arrived (is the status one of
//! the pool's failure statuses? no: count a success in the backend's atomics), `N` times.
//! `MODE=passive` runs it; `MODE=baseline` runs the same loop without it. Run each at two
//! `N` under callgrind and divide: `host/benches/passive.sh` does.
#![allow(missing_docs, clippy::unwrap_used)]
use std::hint::black_box;

fn main() {
    let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let passive = std::env::var("MODE").map_or(true, |m| m != "baseline");
    let config = weir::config::Config::parse(
        "[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\nprobe = { kind = \"tcp\" }\n",
        None,
    )
    .unwrap();
    let plugins = weir::plugin::PluginRuntime::new(config.plugins.clone()).unwrap();
    let snapshot = weir::state::Snapshot::build(&config, &plugins, None).unwrap();
    let pool = &snapshot.pools["p"];
    let live = &pool.view.members[0].live;
    let statuses = &pool.config.health.passive_failure_statuses;
    let t = std::time::Instant::now();
    for i in 0..n {
        let status: u16 = black_box(200);
        let latency_us: u32 = black_box(i);
        if passive {
            if statuses.contains(status) {
                live.exchange_failed(weir::core::Failure::Status, Some(status), latency_us);
            } else {
                live.exchange_succeeded(Some(status), latency_us);
            }
        }
        black_box((status, latency_us));
    }
    let el = t.elapsed();
    eprintln!(
        "{n} iterations ({}): {:.2} ns each",
        if passive { "passive" } else { "baseline" },
        el.as_nanos() as f64 / f64::from(n.max(1))
    );
}
