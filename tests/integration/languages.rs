//! The example plugins in four languages (examples/plugins/{rust,js,python,c}), built by
//! their pinned toolchains, serve real traffic through weir: the zone-aware balancer sends
//! a request carrying `x-zone` to a backend of that zone, and falls back to every backend
//! without it; the Python affinity plugin pins a session. Per-plugin limits
//! (`memory_limit_mib`, `call_timeout_ms`) are honoured, and an instance that cannot start
//! names the phase that failed. Every example passes `weir plugin test`, and a project
//! made by `weir plugin new` in each language builds with its own command, on the pinned
//! toolchains found the way a user has them (`WEIR_TOOLCHAINS`), and passes it too.
//!
//! The components come from `examples/plugins/build.sh` (`just example-plugins`), which
//! these tests run once: it rebuilds only what is out of date, and installs a missing
//! toolchain first (CI runs it before `cargo test`, so here it finds everything built).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use http::{Request, StatusCode};

use crate::support::{self, Upstream};

/// The repository's root.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A built example component, `target/example-plugins/NAME.wasm`; the first call builds
/// them all.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(root().join("examples/plugins/build.sh"))
            .current_dir(root())
            .output()
            .map_err(|e| format!("cannot run examples/plugins/build.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("examples/plugins/build.sh failed:\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = root().join("target/example-plugins").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Three backends, two in zone `a` and one in zone `b`, behind a pool whose balancer is
/// the zone-aware example in `lang`. A plugin failure answers 503 (`on_plugin_error =
/// "reject"`), so no request is placed by the host's fallback unseen.
struct Zoned {
    _ups: Vec<Upstream>,
    server: weir::Server,
    url: String,
}

async fn zoned(lang: &str) -> Zoned {
    let ups = vec![Upstream::start("a1").await, Upstream::start("a2").await, Upstream::start("b1").await];
    let zones = ["a", "a", "b"];
    let backends: Vec<String> = ups
        .iter()
        .zip(zones)
        .map(|(u, z)| format!("{{ address = \"{}\", labels = {{ zone = \"{z}\" }} }}", u.addr))
        .collect();
    // A Python instance starts near the 16 MiB default and its first calls take
    // milliseconds: the entry's own limits, the same for every language.
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n\
         [pool.p]\nbackends = [{}]\non_plugin_error = \"reject\"\n\
         balancer = {{ plugin = {:?}, config = {{ header = \"x-zone\", label = \"zone\" }}, memory_limit_mib = 64, call_timeout_ms = 200 }}\n",
        support::cache_dir().display().to_string(),
        backends.join(", "),
        example(&format!("zone-{lang}")).display().to_string(),
    );
    let server = support::start(&text).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    Zoned { _ups: ups, server, url }
}

impl Zoned {
    /// Sends `n` requests, with `x-zone: zone` when given; counts the backends that
    /// answered.
    async fn send(&self, zone: Option<&str>, n: usize) -> BTreeMap<String, usize> {
        let client = support::client();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let mut req = Request::get(&self.url);
            if let Some(z) = zone {
                req = req.header("x-zone", z);
            }
            let res = client.request(req.body(support::empty()).unwrap()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "zone {zone:?}");
            let body = support::body_text(res).await;
            *seen.entry(support::name_of(&body).to_owned()).or_insert(0) += 1;
        }
        seen
    }
}

/// The placement every language's zone-aware example must give.
async fn zone_aware(lang: &str) {
    let z = zoned(lang).await;
    let b = z.send(Some("b"), 20).await;
    assert_eq!(b, BTreeMap::from([("b1".to_owned(), 20)]), "{lang}: zone b has one backend");
    let a = z.send(Some("a"), 40).await;
    assert_eq!(a.keys().collect::<Vec<_>>(), ["a1", "a2"], "{lang}: zone a is a1 and a2, both used: {a:?}");
    // No header, and a zone no backend is in: every eligible backend (a random first
    // choice each time; all three are missed in 30 requests with probability ~1e-5).
    for zone in [None, Some("c")] {
        let all = z.send(zone, 30).await;
        assert_eq!(
            all.keys().collect::<Vec<_>>(),
            ["a1", "a2", "b1"],
            "{lang}: zone {zone:?} falls back to all: {all:?}"
        );
    }
    let runtime = z.server.snapshot();
    let balancer = &runtime.pools["p"].balancer;
    assert_eq!(balancer.stats.traps.load(Ordering::Relaxed), 0, "{lang}");
    assert_eq!(balancer.stats.errors.load(Ordering::Relaxed), 0, "{lang}");
    assert_eq!(balancer.memory_limit(), 64 << 20, "{lang}: the entry's memory_limit_mib");
    assert_eq!(balancer.call_timeout(), std::time::Duration::from_millis(200), "{lang}: the entry's call_timeout_ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_zone_example_places_by_zone() {
    zone_aware("rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_zone_example_places_by_zone() {
    zone_aware("js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_zone_example_places_by_zone() {
    zone_aware("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_zone_example_places_by_zone() {
    zone_aware("c").await;
}

/// The Python affinity example pins each session (the `x-session` header) to one backend,
/// on every thread; requests without a session are left to the balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_session_example_pins_sessions() {
    let ups = [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let extra = format!(
        "on_plugin_error = \"reject\"\nbalancer = {{ plugin = \"round-robin\" }}\n\
         affinity = {{ plugin = {:?}, config = {{ header = \"x-session\", ttl_ms = 60000 }}, memory_limit_mib = 64, call_timeout_ms = 200 }}",
        example("session-python").display().to_string()
    );
    let server = support::start(&support::config_text(&addrs, &extra)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    let mut pinned = BTreeMap::new();
    for round in 0..4 {
        for session in ["alice", "bob", "carol", "dave"] {
            let req = Request::get(&url).header("x-session", session).body(support::empty()).unwrap();
            let res = client.request(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let name = support::name_of(&support::body_text(res).await).to_owned();
            let first = pinned.entry(session).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "round {round}: session {session} moved");
        }
    }
    let mut free = std::collections::BTreeSet::new();
    for _ in 0..6 {
        free.insert(support::name_of(&support::get(&client, &url).await.1).to_owned());
    }
    assert_eq!(free.len(), 3, "without a session, round robin: {free:?}");
    let runtime = server.snapshot();
    let affinity = runtime.pools["p"].affinity.as_ref().unwrap();
    assert_eq!(affinity.stats.traps.load(Ordering::Relaxed), 0);
    assert_eq!(affinity.stats.errors.load(Ordering::Relaxed), 0);
}

/// An instance that cannot start within its entry's memory limit is refused at load,
/// and the error says it was instantiation that failed, not `configure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_its_memory_limit_at_start_names_instantiation() {
    let up = Upstream::start("a").await;
    let extra =
        format!("balancer = {{ plugin = {:?}, memory_limit_mib = 8 }}", example("zone-python").display().to_string());
    let config = weir::config::Config::parse(&support::config_text(&[up.addr], &extra), None).unwrap();
    let Err(err) = weir::Server::start(config).await else { panic!("python does not start in 8 MiB") };
    let err = err.to_string();
    assert!(err.contains("could not be instantiated: memory limit exceeded"), "{err}");
    assert!(err.contains("memory_limit_mib"), "{err}");
    assert!(err.contains("pool.p.balancer"), "located: {err}");
}

/// A plugin's own `call_timeout_ms` cuts its calls, whatever `[plugins]` says: the
/// endless-loop fixture under a 1 ms entry deadline times out on every request while
/// `[plugins] call_timeout_ms` is 50 ms, and its instance is rebuilt each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_own_call_timeout_applies() {
    let up = Upstream::start("a").await;
    let extra = format!(
        "on_plugin_error = \"fallback\"\nbalancer = {{ plugin = {:?}, call_timeout_ms = 1, memory_limit_mib = 4 }}",
        support::fixture("spin").display().to_string()
    );
    let server = support::start(&support::config_text(&[up.addr], &extra)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..5 {
        assert_eq!(support::get(&client, &url).await.0, StatusCode::OK);
    }
    let runtime = server.snapshot();
    let balancer = &runtime.pools["p"].balancer;
    assert_eq!(balancer.call_timeout(), std::time::Duration::from_millis(1));
    assert_eq!(balancer.memory_limit(), 4 << 20);
    assert_eq!(balancer.stats.timeouts.load(Ordering::Relaxed), 5);
}

/// `examples/plugins/zone.toml`, which names the built JavaScript and Python examples,
/// passes `weir check` (every plugin compiled, instantiated and configured within the
/// limits it sets).
#[test]
fn the_zone_example_config_checks() {
    example("zone-js");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "--config"])
        .arg(root().join("examples/plugins/zone.toml"))
        .env("WEIR_CACHE_DIR", support::cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Each language's helper turns a bad config into `invalid-config` naming the key (an
/// unknown key, a value of the wrong type): weir refuses to load the plugin and shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_refuses_a_bad_config_naming_the_key() {
    let up = Upstream::start("a").await;
    for lang in ["rust", "js", "python", "c"] {
        for (config, key) in [("{ headr = \"x-zone\" }", "headr"), ("{ header = 5 }", "header")] {
            let extra = format!(
                "balancer = {{ plugin = {:?}, config = {config}, memory_limit_mib = 64, call_timeout_ms = 200 }}",
                example(&format!("zone-{lang}")).display().to_string()
            );
            let parsed = weir::config::Config::parse(&support::config_text(&[up.addr], &extra), None).unwrap();
            let Err(err) = weir::Server::start(parsed).await else { panic!("{lang} accepted {config}") };
            let err = err.to_string();
            assert!(err.contains("invalid config") && err.contains(key), "{lang}, {config}: {err}");
        }
    }
}

/// `weir plugin test` (the conformance kit, its default scenarios: 100000 decisions in
/// the long run) on `wasm`, under weir's default limits (16 MiB, 2 ms); `args` go before
/// the file. Returns whether every scenario passed, and the table.
fn conformance(wasm: &Path, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, format!("[plugins]\ncache_dir = {:?}\n", support::cache_dir().display().to_string()))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(&config)
        .args(["plugin", "test"])
        .args(args)
        .arg(wasm)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every example passes the kit, memory that stops growing over 100000 decisions
/// included (the JavaScript one on QuickJS: componentize-js's SpiderMonkey grew ~400
/// bytes per call even with an empty `pick`). `--ignores-weights`: the examples' power of
/// two choices compares loads and draws its two candidates uniformly, as the issue's
/// policy says.
#[test]
fn the_four_examples_pass_the_conformance_kit() {
    for name in ["zone-rust", "zone-js", "zone-python", "zone-c"] {
        let (passed, table) = conformance(&example(name), &["--ignores-weights"]);
        assert!(passed, "{name}:\n{table}");
        assert!(table.contains("memory stops growing"), "{name}:\n{table}");
        assert!(table.contains(" 0 failed"), "{name}:\n{table}");
    }
}

/// `weir plugin new --lang LANG` in a temporary directory, built by the project's own
/// one command the way a user would run it (the JavaScript, Python and C projects'
/// `./build.sh` finding the pinned toolchains through `WEIR_TOOLCHAINS`, here the ones
/// examples/plugins/build.sh installed), then the kit with every scenario, weights
/// included (the templates are weighted round robins). Returns the project's directory.
fn scaffold(lang: &str) -> tempfile::TempDir {
    // The examples' build installs every toolchain.
    example(&format!("zone-{lang}"));
    let dir = tempfile::tempdir().unwrap();
    let name = format!("my-{lang}-policy");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "--lang", lang, &name, "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{lang}: {}", String::from_utf8_lossy(&out.stderr));
    let project = dir.path().join(&name);
    let (build, wasm) = if lang == "rust" {
        // The README's command, in the target directory the examples' build warmed.
        let target = root().join("target/wasm-examples");
        let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        (cmd, target.join(format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_"))))
    } else {
        let mut cmd = std::process::Command::new(project.join("build.sh"));
        cmd.env("WEIR_TOOLCHAINS", root().join("target/toolchains"));
        (cmd, project.join(format!("build/{name}.wasm")))
    };
    let mut build = build;
    let out = build.current_dir(&project).output().unwrap();
    assert!(out.status.success(), "{lang}: the build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let (passed, table) = conformance(&wasm, &[]);
    assert!(passed, "{lang}:\n{table}");
    assert!(table.contains("10 passed, 0 failed, 0 skipped"), "{lang}:\n{table}");
    dir
}

#[test]
fn a_js_scaffold_builds_and_passes_the_kit() {
    let dir = scaffold("js");
    // It stands alone: the SDK and the WIT are in the project.
    let project = dir.path().join("my-js-policy");
    for file in ["weir.js", "wit/weir.wit", "package.json", "README.md"] {
        assert!(project.join(file).is_file(), "{file}");
    }
}

#[test]
fn a_python_scaffold_builds_and_passes_the_kit() {
    let dir = scaffold("python");
    assert!(dir.path().join("my-python-policy/weir.py").is_file());
}

#[test]
fn a_c_scaffold_builds_and_passes_the_kit() {
    let dir = scaffold("c");
    assert!(dir.path().join("my-c-policy/weir.h").is_file());
}

#[test]
fn a_rust_scaffold_in_the_shared_target_builds_and_passes_the_kit() {
    scaffold("rust");
}
