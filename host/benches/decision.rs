//! One routing decision through the real plugin runtime: the `round-robin` component
//! from the pack, called on the worker thread's own instance with a real request head,
//! exactly as the proxy calls it. Run with `just bench` (or `cargo bench --bench decision`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use weir::config::Config;
use weir::plugin::{PickRequest, PluginRuntime, Protocol};
use weir::state::{Pool, Runtime};

fn main() {
    divan::main();
}

fn pool(backends: usize) -> Arc<Pool> {
    let list: Vec<String> = (0..backends).map(|i| format!("{{ address = \"127.0.0.1:{}\" }}", 10_000 + i)).collect();
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbackends = [{}]\nbalancer = {{ plugin = \"round-robin\" }}\n",
        list.join(", ")
    );
    let config = Config::parse(&text, None).unwrap();
    let plugins = PluginRuntime::new(config.plugins.clone()).unwrap();
    let runtime = Runtime::build(&config, &plugins, None).unwrap();
    runtime.pools["p"].clone()
}

fn request() -> PickRequest {
    let (head, ()) = http::Request::get("/index.html").header("host", "example.com").body(()).unwrap().into_parts();
    PickRequest { protocol: Protocol::Http1, client: "192.0.2.1:40000".parse().unwrap(), sni: None, head: Some(head) }
}

/// `round-robin` pick through the runtime, per decision; `threads` run concurrently,
/// each on its own instance (shared counter on the host).
#[divan::bench(args = [3, 100, 10_000], threads = [1, 2])]
fn round_robin_pick(bencher: divan::Bencher, backends: usize) {
    let pool = pool(backends);
    bencher.with_inputs(request).bench_values(|req| {
        let (req, outcome) = pool.balancer.pick(&pool.view, req);
        divan::black_box(outcome.unwrap());
        req
    });
}

/// The whole placement the proxy does per request (plugin call plus policy), 3 backends.
#[divan::bench(threads = [1, 2])]
fn pool_place(bencher: divan::Bencher) {
    let pool = pool(3);
    bencher.with_inputs(request).bench_values(|req| pool.place(req, None));
}
