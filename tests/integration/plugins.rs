//! Plugins that misbehave — trap, loop forever, eat memory, answer nonsense — leave the
//! proxy serving, are counted, and follow the pool's `on_plugin_error`.

use std::sync::atomic::Ordering;

use http::StatusCode;

use crate::support::{self, Upstream};

struct Outcome {
    statuses: Vec<StatusCode>,
    traps: u64,
    timeouts: u64,
    memory_limits: u64,
    errors: u64,
    /// Counters, stick tables and secrets the pool holds.
    names: (usize, usize, usize),
}

async fn run_fixture(fixture: &str, policy: &str, requests: usize) -> Outcome {
    let ups = [Upstream::start("a").await, Upstream::start("b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let extra = format!(
        "balancer = {{ plugin = {:?} }}\non_plugin_error = \"{policy}\"",
        support::fixture(fixture).display().to_string()
    );
    let server = support::start(&support::config_text(&addrs, &extra)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    let mut statuses = Vec::new();
    for _ in 0..requests {
        statuses.push(support::get(&client, &url).await.0);
    }
    let runtime = server.snapshot();
    let stats = &runtime.pools["p"].balancer.stats;
    Outcome {
        statuses,
        traps: stats.traps.load(Ordering::Relaxed),
        timeouts: stats.timeouts.load(Ordering::Relaxed),
        memory_limits: stats.memory_limits.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        names: runtime.pools["p"].view.live.names(),
    }
}

fn all(statuses: &[StatusCode], want: StatusCode) -> bool {
    statuses.iter().all(|s| *s == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_falls_back_and_is_counted() {
    let o = run_fixture("trap", "fallback", 20).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!(o.traps, 20);
    assert_eq!(o.timeouts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_is_cut_by_the_deadline() {
    let o = run_fixture("spin", "fallback", 10).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!(o.timeouts, 10);
    assert_eq!(o.traps, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_hits_the_limit() {
    let o = run_fixture("hog", "fallback", 10).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!(o.memory_limits, 10);
    assert_eq!(o.traps, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_answer_is_an_error_not_a_crash() {
    let o = run_fixture("bad-pick", "fallback", 10).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!(o.errors, 10);
    assert_eq!(o.traps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_answers_503() {
    let o = run_fixture("trap", "reject", 5).await;
    assert!(all(&o.statuses, StatusCode::SERVICE_UNAVAILABLE), "{:?}", o.statuses);
    assert_eq!(o.traps, 5);
}

#[tokio::test]
async fn invalid_plugin_config_is_a_load_error_naming_pool_and_key() {
    let up = Upstream::start("a").await;
    let text = support::config_text(&[up.addr], "balancer = { plugin = \"round-robin\", config = { speed = 3 } }");
    let config = weir::config::Config::parse(&text, None).unwrap();
    let err = weir::Server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("pool `p`"), "{err}");
    assert!(err.contains("invalid config"), "{err}");
    assert!(err.contains("unknown field `speed`"), "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"\0asm but not really").unwrap();
    let up = Upstream::start("a").await;
    let text = support::config_text(&[up.addr], &format!("balancer = {{ plugin = {:?} }}", path.display().to_string()));
    let config = weir::config::Config::parse(&text, None).unwrap();
    let err = weir::Server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("not a valid component"), "{err}");
}

#[tokio::test]
async fn a_component_of_another_world_is_a_load_error_naming_the_world() {
    let up = Upstream::start("a").await;
    // `first-backend` is a balancer, given here as an affinity plugin.
    let extra = format!("affinity = {{ plugin = {:?} }}", support::fixture("first-backend").display().to_string());
    let config = weir::config::Config::parse(&support::config_text(&[up.addr], &extra), None).unwrap();
    let err = weir::Server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("affinity") && err.contains("not a usable affinity component"), "{err}");
    assert!(!err.contains("balancer component"), "{err}");
}

#[test]
fn compiled_plugins_are_cached_on_disk_across_restarts() {
    use weir::config::{PluginSettings, PluginSource};
    use weir::plugin::PluginRuntime;
    let dir = tempfile::tempdir().unwrap();
    let settings = PluginSettings { cache_dir: Some(dir.path().to_owned()), ..PluginSettings::default() };
    let bytes = PluginRuntime::bytes(&PluginSource::Pack("round-robin".into())).unwrap();

    let first = PluginRuntime::new(settings.clone()).unwrap();
    first.compile(&bytes).unwrap();
    assert_eq!((first.compiled.load(Ordering::Relaxed), first.cache_hits.load(Ordering::Relaxed)), (1, 0));
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);

    // A "restart": a new runtime on the same directory loads instead of compiling.
    let second = PluginRuntime::new(settings.clone()).unwrap();
    second.compile(&bytes).unwrap();
    assert_eq!((second.compiled.load(Ordering::Relaxed), second.cache_hits.load(Ordering::Relaxed)), (0, 1));

    // A damaged entry is dropped and recompiled, never trusted.
    std::fs::write(entries[0].path(), b"garbage").unwrap();
    let third = PluginRuntime::new(settings).unwrap();
    third.compile(&bytes).unwrap();
    assert_eq!(third.compiled.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_grow_the_host_with_endless_names() {
    // `names` asks for a new counter, stick table and secret on every pick.
    let o = run_fixture("names", "reject", 1_000).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!((o.traps, o.errors), (0, 0));
    assert_eq!(o.names, (weir::state::MAX_NAMES, weir::state::MAX_NAMES, weir::state::MAX_NAMES), "capped per pool");
}
