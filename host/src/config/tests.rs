use super::*;

const GOOD: &str = r#"
[plugins]
call_timeout_ms = "3ms"

[[listener]]
name = "public"
listen = "127.0.0.1:8080"
pool = "web"
[[listener.route]]
host = "*.example.com"
path_prefix = "/api"
pool = "api"

[pool.web]
backends = [{ address = "127.0.0.1:9001", weight = 3 }, { address = "127.0.0.1:9002" }]
balancer = { plugin = "round-robin" }

[pool.api]
backends = [{ address = "127.0.0.1:9003" }]
on_plugin_error = "reject"
connect_timeout_ms = 500
"#;

fn invalid(text: &str) -> (usize, usize, String, String) {
    match Config::parse(text, Some(Path::new("weir.toml"))) {
        Err(ConfigError::Invalid { line, column, key, message, .. }) => (line, column, key, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn parses_a_full_config() {
    let c = Config::parse(GOOD, None).unwrap();
    assert_eq!(c.plugins.call_timeout, Duration::from_millis(3));
    assert_eq!(c.plugins.rebuild_timeout, Duration::from_millis(250), "the default");
    let slow = GOOD.replace("call_timeout_ms = \"3ms\"", "rebuild_timeout_ms = \"1s\"");
    assert_eq!(Config::parse(&slow, None).unwrap().plugins.rebuild_timeout, Duration::from_secs(1));
    assert_eq!(c.listeners[0].routes[0].pool, "api");
    assert_eq!(c.pools["web"].backends[0].weight, 3);
    assert_eq!(c.pools["web"].backends[1].weight, 1);
    assert_eq!(c.pools["api"].on_plugin_error, OnPluginError::Reject);
    assert_eq!(c.pools["api"].connect_timeout, Duration::from_millis(500));
    assert_eq!(c.pools["api"].balancer.source, PluginSource::Pack("round-robin".into()));
}

#[test]
fn misspelt_key_names_line_column_and_key() {
    let text = GOOD.replace("balancer = { plugin", "ballancer = { plugin");
    let (line, column, key, message) = invalid(&text);
    assert_eq!(line, 16, "{message}");
    assert_eq!(column, 1);
    assert_eq!(key, "pool.web.ballancer");
    assert!(message.contains("unknown field `ballancer`"), "{message}");
}

#[test]
fn bad_value_names_its_key() {
    let text = GOOD.replace("weight = 3", "weight = \"three\"");
    let (line, _, key, _) = invalid(&text);
    assert_eq!(line, 15);
    assert_eq!(key, "pool.web.backends[0].weight");
}

#[test]
fn unknown_pool_and_plugin_are_located() {
    let (line, column, key, message) = invalid(&GOOD.replace("pool = \"api\"", "pool = \"nope\""));
    assert_eq!((line, column, key.as_str()), (12, 8, "listener[0].route[0].pool"));
    assert!(message.contains("no pool named `nope`"));

    // Config knows no pack: it keeps where the plugin is named, and the plugin layer
    // reports an unknown name there when the pool is built (tests/integration/affinity.rs).
    let config = Config::parse(&GOOD.replace("plugin = \"round-robin\"", "plugin = \"round-rabin\""), None).unwrap();
    let at = config.pools["web"].balancer.at.clone().unwrap();
    assert_eq!((at.line, at.key.as_str()), (16, "pool.web.balancer.plugin"));
}

#[test]
fn syntax_error_is_located() {
    let (line, _, _, _) = invalid("[pool.web]\nbackends = [\n");
    assert!(line >= 2);
}

#[test]
fn durations_accept_integers_and_units() {
    assert_eq!(duration::parse("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(duration::parse("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(duration::parse("2m").unwrap(), Duration::from_secs(120));
    assert!(duration::parse("2 fortnights").is_err());
    assert!(duration::parse("fast").is_err());
}

#[test]
fn routes_match_host_and_path_segments() {
    let r = Route { host: Some("*.example.com".into()), path_prefix: Some("/api".into()), pool: "p".into() };
    assert!(r.matches(Some("a.example.com:8080"), "/api/v1"));
    assert!(r.matches(Some("A.Example.COM"), "/api"));
    assert!(r.matches(Some("a.example.com"), "/api?x=1"));
    assert!(!r.matches(Some("example.com"), "/api"));
    assert!(!r.matches(Some("a.example.com"), "/apix"));
    assert!(!r.matches(None, "/api"));
}

#[test]
fn worker_threads_zero_is_the_cpus_weir_may_use() {
    let cpus = RuntimeSettings::available_cpus();
    assert_eq!(Config::parse(GOOD, None).unwrap().runtime.worker_threads, cpus, "the default");
    let with = |n: &str| format!("[runtime]\nworker_threads = {n}\n{GOOD}");
    assert_eq!(Config::parse(&with("0"), None).unwrap().runtime.worker_threads, cpus);
    assert_eq!(Config::parse(&with("16"), None).unwrap().runtime.worker_threads, 16);
    let (line, column, key, message) = invalid(&with("1025"));
    assert_eq!((line, column, key.as_str()), (2, 18, "runtime.worker_threads"), "{message}");
    assert!(message.contains("at most 1024"), "{message}");
    let (line, _, key, _) = invalid(&with("-1"));
    assert_eq!((line, key.as_str()), (2, "runtime.worker_threads"));
}
