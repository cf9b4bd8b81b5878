//! Every plugin of the embedded pack works in a config and serves real traffic.

use std::collections::HashMap;

use http::StatusCode;

use crate::support::{self, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pack_plugin_serves_traffic() {
    let ups = [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let client = support::client();
    let names: Vec<&str> = weir::plugin::pack::names_of(weir::plugin::pack::Role::Balancer).collect();
    assert!(names.len() >= 2, "{names:?}");
    for name in names {
        let server =
            support::start(&support::config_text(&addrs, &format!("balancer = {{ plugin = \"{name}\" }}"))).await;
        let url = format!("http://{}/", server.addr("main").unwrap());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            let (status, body) = support::get(&client, &url).await;
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            *seen.entry(support::name_of(&body).to_owned()).or_default() += 1;
        }
        let stats = &server.snapshot().pools["p"].balancer.stats;
        let traps = stats.traps.load(std::sync::atomic::Ordering::Relaxed);
        let errors = stats.errors.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((traps, errors), (0, 0), "{name} failed while serving");
        assert!(seen.keys().all(|k| ["a", "b", "c"].contains(&k.as_str())), "{name}: {seen:?}");
    }
}

/// The pack's role table agrees with what each component really exports.
#[test]
fn pack_roles_match_the_components() {
    use weir::plugin::pack::{self, Role};
    let runtime = weir::plugin::PluginRuntime::new(weir::config::PluginSettings::default()).unwrap();
    for name in pack::names() {
        let world = runtime.inspect(pack::get(name).unwrap()).unwrap().world;
        let expected = match pack::role(name) {
            Some(Role::Balancer) => "balancer-plugin",
            Some(Role::Affinity) => "affinity-plugin",
            // The pack's evaluators take a slot's probe results in one call.
            Some(Role::Health) => "health-batch-plugin",
            None => panic!("{name} has no role"),
        };
        assert_eq!(world, Some(expected), "{name}");
    }
    assert!(pack::names_of(Role::Affinity).eq(["cookie", "header", "source-ip"]));
    assert!(pack::names_of(Role::Health).eq(["latency", "outlier", "threshold"]));
    assert!(pack::names_of(Role::Balancer).any(|n| n == "least-request"));
}
