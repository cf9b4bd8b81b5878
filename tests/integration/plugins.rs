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

/// A load error says each cause once, however it is rendered: its own text, the whole
/// chain (anyhow's `{:#}`, what a caller that reports causes prints), or the CLI's line.
#[tokio::test]
async fn a_load_error_says_each_cause_once_even_with_its_chain() {
    let up = Upstream::start("a").await;
    // A health plugin given as a balancer; a refused config; a file that is not there.
    let wrong_world = format!("balancer = {{ plugin = {:?} }}", support::fixture("teapot").display().to_string());
    let refused = "balancer = { plugin = \"round-robin\", config = { speed = 3 } }".to_owned();
    let missing = "balancer = { plugin = \"/nonexistent/x.wasm\" }".to_owned();
    for (extra, phrase) in [
        (wrong_world, "not a usable balancer component"),
        (refused, "unknown field `speed`"),
        (missing, "No such file"),
    ] {
        let config = weir::config::Config::parse(&support::config_text(&[up.addr], &extra), None).unwrap();
        let err = anyhow::Error::from(weir::Server::start(config).await.unwrap_err());
        let chain = format!("{err:#}");
        assert_eq!(chain.matches(phrase).count(), 1, "{chain}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "simulate", "--plugin"])
        .arg(support::fixture("teapot"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("not a usable balancer component").count(), 1, "{stderr}");
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

#[test]
fn pools_that_name_the_same_plugin_share_its_compiled_code() {
    use weir::config::Config;
    use weir::plugin::PluginRuntime;
    use weir::state::Snapshot;
    let mut text = format!("[plugins]\ncache_dir = {:?}\n", support::cache_dir().display().to_string());
    for p in 0..3 {
        text += &format!("[pool.p{p}]\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n");
    }
    text += "[pool.other]\nbackends = [{ address = \"127.0.0.1:1\" }]\nbalancer = { plugin = \"p2c\" }\n";
    let config = Config::parse(&text, None).unwrap();
    let runtime = PluginRuntime::new(config.plugins.clone()).unwrap();
    let snapshot = Snapshot::build(&config, &runtime, None).unwrap();
    let loaded = runtime.compiled.load(Ordering::Relaxed) + runtime.cache_hits.load(Ordering::Relaxed);
    assert_eq!((loaded, runtime.shared.load(Ordering::Relaxed)), (2, 2), "round-robin once, p2c once");
    // Once no plugin holds it, a component is loaded afresh.
    drop(snapshot);
    Snapshot::build(&config, &runtime, None).unwrap();
    let again = runtime.compiled.load(Ordering::Relaxed) + runtime.cache_hits.load(Ordering::Relaxed);
    assert_eq!((again, runtime.shared.load(Ordering::Relaxed)), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_grow_the_host_with_endless_names() {
    // `names` asks for a new counter, stick table and secret on every pick.
    let o = run_fixture("names", "reject", 1_000).await;
    assert!(all(&o.statuses, StatusCode::OK), "{:?}", o.statuses);
    assert_eq!((o.traps, o.errors), (0, 0));
    assert_eq!(o.names, (weir::state::MAX_NAMES, weir::state::MAX_NAMES, weir::state::MAX_NAMES), "capped per pool");
}

/// Runs `f` while eight threads spin, so both cores are saturated and a thread that
/// places decisions is preempted for several milliseconds at a time.
fn with_cores_saturated<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::AtomicBool;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}

/// A well-behaved plugin on a thread that the OS preempts mid-call is not cut off: the
/// deadline counts the time the call ran, not the time its thread waited for a core.
/// Two threads place 20,000 round-robin decisions under the proxy's default 2 ms deadline
/// while every core is busy. (Before the deadline counted CPU time, 1 to 6 of them timed
/// out per run.)
#[test]
fn a_preempted_call_is_not_cut_by_the_deadline() {
    use weir::config::PluginSettings;
    use weir::simulate::{Sim, SimBackend};
    use weir::state::Placement;

    let settings = PluginSettings::default();
    assert_eq!(settings.call_timeout, std::time::Duration::from_millis(2), "the proxy's default deadline");
    let sim = Sim::with_settings("round-robin", "{}", &[SimBackend::equal(); 4], settings).unwrap();
    let unplaced: u32 = with_cores_saturated(|| {
        std::thread::scope(|s| {
            let placers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut req = Sim::request(None);
                        let mut unplaced = 0u32;
                        for _ in 0..10_000 {
                            let (back, placement) = sim.place(req);
                            req = back;
                            unplaced += u32::from(!matches!(placement, Placement::Backend(_)));
                        }
                        unplaced
                    })
                })
                .collect();
            placers.into_iter().map(|p| p.join().unwrap()).sum()
        })
    });
    let stats = sim.stats();
    assert_eq!(stats.calls.get(), 20_000);
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 0, "calls cut by the deadline");
    assert_eq!(unplaced, 0);
}

/// ... while a plugin that really runs away is still cut, on a saturated machine too.
#[test]
fn an_endless_loop_is_cut_on_a_saturated_machine() {
    use weir::config::PluginSettings;
    use weir::simulate::{Sim, SimBackend};
    use weir::state::Placement;

    let spin = support::fixture("spin").display().to_string();
    let sim = Sim::with_settings(&spin, "{}", &[SimBackend::equal(); 2], PluginSettings::default()).unwrap();
    let placements = with_cores_saturated(|| (0..5).map(|_| sim.pick(None)).collect::<Vec<_>>());
    assert!(placements.iter().all(|p| *p == Placement::Rejected), "{placements:?}");
    assert_eq!(sim.stats().timeouts.load(Ordering::Relaxed), 5);
}

/// A component that imports `wasi:http` (as componentize-js builds do) loads, and every
/// outgoing request it makes is refused with `HTTP-request-denied`: the `http-caller`
/// fixture sends one on each pick, waits for the answer, and picks backend 1 only when
/// refused so. `weir plugin simulate` runs it on a plain thread, where the wait works:
/// every pick is backend 1. The proxy runs it on its runtime's workers, where a blocking
/// call cannot be allowed: each pick is a trap (the instance dropped, the fallback
/// serving), and the proxy serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_wasi_http_loads_its_requests_are_denied_and_blocking_traps() {
    let bytes = std::fs::read(support::fixture("http-caller")).unwrap();
    let runtime = weir::plugin::PluginRuntime::new(weir::config::PluginSettings {
        cache_dir: Some(support::cache_dir()),
        ..Default::default()
    })
    .unwrap();
    let inspection = runtime.inspect(&bytes).unwrap();
    assert!(inspection.imports.iter().any(|i| i.starts_with("wasi:http/outgoing-handler")), "{:?}", inspection.imports);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "simulate", "--backends", "2", "--requests", "20", "--json", "--plugin"])
        .arg(support::fixture("http-caller"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let picks: Vec<u64> = report["backends"].as_array().unwrap().iter().map(|b| b["picks"].as_u64().unwrap()).collect();
    assert_eq!(picks, [0, 20], "every request refused as HTTP-request-denied: {report}");
    assert_eq!(report["traps"], 0, "{report}");

    let ups = [Upstream::start("a").await, Upstream::start("b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let extra = format!("balancer = {{ plugin = {:?} }}", support::fixture("http-caller").display().to_string());
    let server = support::start(&support::config_text(&addrs, &extra)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..4 {
        assert_eq!(support::get(&client, &url).await.0, StatusCode::OK);
    }
    let stats = &server.snapshot().pools["p"].balancer.stats;
    assert!(stats.traps.load(Ordering::Relaxed) >= 4, "each blocking pick traps");
}
