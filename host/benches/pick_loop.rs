//! A fixed-count decision loop, for instruction counts under callgrind (whose figures do
//! not depend on what else the machine is doing) and quick wall-clock checks:
//! `N=20000 PLUGIN=round-robin valgrind --tool=callgrind target/release/deps/pick_loop-*`;
//! run it twice with different N and divide the difference by the difference in N.
//! `PLUGIN` is a pack name or a .wasm path.
#![allow(missing_docs, clippy::unwrap_used)]
use weir::config::Config;
use weir::plugin::{PickRequest, PluginRuntime, Protocol};
use weir::state::Runtime;
fn main() {
    let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let plugin = std::env::var("PLUGIN").unwrap_or_else(|_| "round-robin".into());
    let text = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbackends = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}, {{ address = \"127.0.0.1:3\" }}]\nbalancer = {{ plugin = {plugin:?} }}\n"
    );
    let config = Config::parse(&text, None).unwrap();
    let plugins = PluginRuntime::new(config.plugins.clone()).unwrap();
    let runtime = Runtime::build(&config, &plugins, None).unwrap();
    let pool = runtime.pools["p"].clone();
    let (head, ()) = http::Request::get("/").header("host", "e").body(()).unwrap().into_parts();
    let mut req =
        PickRequest { protocol: Protocol::Http1, client: "192.0.2.1:4".parse().unwrap(), sni: None, head: Some(head) };
    for _ in 0..1000 {
        req = pool.balancer.pick(&pool.view, req).0;
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        req = pool.balancer.pick(&pool.view, req).0;
    }
    println!("{plugin}: {:.1} ns/decision over {n}", t.elapsed().as_nanos() as f64 / f64::from(n));
}
