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
    let r = Route { host: Some("*.example.com".into()), path_prefix: Some("/api".into()), sni: None, pool: "p".into() };
    assert!(r.matches(Some("a.example.com:8080"), "/api/v1"));
    assert!(r.matches(Some("A.Example.COM"), "/api"));
    assert!(r.matches(Some("a.example.com"), "/api?x=1"));
    assert!(!r.matches(Some("example.com"), "/api"));
    assert!(!r.matches(Some("a.example.com"), "/apix"));
    assert!(!r.matches(None, "/api"));
}

/// A config with `extra` lines added to `[runtime]`, `[plugins]`, the listener or the
/// pool (by `table`); the added lines start at line 1 of that table's body, which is
/// `line` of the whole text.
fn with_key(table: &str, lines: &str) -> (String, usize) {
    let mut text = String::new();
    let mut line = 0;
    for (name, header) in [
        ("runtime", "[runtime]"),
        ("plugins", "[plugins]"),
        ("listener", "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\""),
        ("pool", "[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]"),
    ] {
        text.push_str(header);
        text.push('\n');
        if name == table {
            line = text.matches('\n').count() + 1;
            text.push_str(lines);
            text.push('\n');
        }
        text.push('\n');
    }
    (text, line)
}

/// One ranged key: where it lives, its bounds as written in the file, the values just
/// outside them (when the type allows any), and how to read it back from a `Config`.
struct Ranged {
    table: &'static str,
    key: &'static str,
    path: &'static str,
    min: &'static str,
    max: &'static str,
    below: Option<&'static str>,
    above: &'static str,
    /// Other lines the table needs for `min`/`max` to be valid (the drain pair).
    with: &'static str,
    read: fn(&Config) -> u128,
}

const WEEK_MS: &str = "604800000";
const WEEK_MS_PLUS: &str = "604800001";

fn ranged() -> Vec<Ranged> {
    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }
    vec![
        Ranged {
            table: "runtime",
            key: "worker_threads",
            path: "runtime.worker_threads",
            min: "1",
            max: "1024",
            below: None,
            above: "1025",
            with: "",
            read: |c| c.runtime.worker_threads as u128,
        },
        Ranged {
            table: "runtime",
            key: "release_memory_ms",
            path: "runtime.release_memory_ms",
            min: "0",
            max: "\"3600s\"",
            below: None,
            above: "3600001",
            with: "",
            read: |c| ms(c.runtime.release_memory.unwrap_or_default()),
        },
        Ranged {
            table: "plugins",
            key: "call_timeout_ms",
            path: "plugins.call_timeout_ms",
            min: "1",
            max: "\"10s\"",
            below: Some("\"999us\""),
            above: "10001",
            with: "",
            read: |c| ms(c.plugins.call_timeout),
        },
        Ranged {
            table: "plugins",
            key: "rebuild_timeout_ms",
            path: "plugins.rebuild_timeout_ms",
            min: "\"1ms\"",
            max: "60000",
            below: Some("0"),
            above: "\"60.001s\"",
            with: "",
            read: |c| ms(c.plugins.rebuild_timeout),
        },
        Ranged {
            table: "plugins",
            key: "memory_limit_mib",
            path: "plugins.memory_limit_mib",
            min: "1",
            max: "1024",
            below: Some("0"),
            above: "1025",
            with: "",
            read: |c| (c.plugins.memory_limit >> 20) as u128,
        },
        Ranged {
            table: "listener",
            key: "header_read_timeout_ms",
            path: "listener[0].header_read_timeout_ms",
            min: "1",
            max: WEEK_MS,
            below: Some("0"),
            above: WEEK_MS_PLUS,
            with: "",
            read: |c| ms(c.listeners[0].header_read_timeout),
        },
        Ranged {
            table: "listener",
            key: "max_header_bytes",
            path: "listener[0].max_header_bytes",
            min: "1024",
            max: "1048576",
            below: Some("1023"),
            above: "1048577",
            with: "",
            read: |c| c.listeners[0].max_header_bytes as u128,
        },
        Ranged {
            table: "listener",
            key: "max_headers",
            path: "listener[0].max_headers",
            min: "1",
            max: "10000",
            below: Some("0"),
            above: "10001",
            with: "",
            read: |c| c.listeners[0].max_headers as u128,
        },
        Ranged {
            table: "listener",
            key: "tunnel_idle_timeout_ms",
            path: "listener[0].tunnel_idle_timeout_ms",
            min: "1",
            max: WEEK_MS,
            below: Some("0"),
            above: WEEK_MS_PLUS,
            with: "",
            read: |c| ms(c.listeners[0].tunnels.idle_timeout),
        },
        Ranged {
            table: "listener",
            key: "tunnel_max_lifetime_ms",
            path: "listener[0].tunnel_max_lifetime_ms",
            min: "1",
            max: "31536000000",
            below: Some("0"),
            above: "31536000001",
            with: "",
            read: |c| c.listeners[0].tunnels.max_lifetime.map_or(0, ms),
        },
        Ranged {
            table: "pool",
            key: "connect_timeout_ms",
            path: "pool.p.connect_timeout_ms",
            min: "1",
            max: WEEK_MS,
            below: Some("0"),
            above: WEEK_MS_PLUS,
            with: "",
            read: |c| ms(c.pools["p"].connect_timeout),
        },
        Ranged {
            table: "pool",
            key: "response_timeout_ms",
            path: "pool.p.response_timeout_ms",
            min: "1",
            max: WEEK_MS,
            below: Some("0"),
            above: WEEK_MS_PLUS,
            with: "",
            read: |c| ms(c.pools["p"].response_timeout),
        },
        Ranged {
            table: "pool",
            key: "idle_timeout_ms",
            path: "pool.p.idle_timeout_ms",
            min: "1",
            max: WEEK_MS,
            below: Some("0"),
            above: WEEK_MS_PLUS,
            with: "",
            read: |c| ms(c.pools["p"].idle_timeout),
        },
        Ranged {
            table: "pool",
            key: "max_idle_per_backend",
            path: "pool.p.max_idle_per_backend",
            min: "0",
            max: "65535",
            below: None,
            above: "65536",
            with: "",
            read: |c| c.pools["p"].max_idle_per_backend as u128,
        },
        Ranged {
            table: "pool",
            key: "drain_spread_ms",
            path: "pool.p.drain_spread_ms",
            min: "0",
            max: WEEK_MS,
            below: None,
            above: WEEK_MS_PLUS,
            with: "drain_deadline_ms = 604800000",
            read: |c| ms(c.pools["p"].drain_spread),
        },
        Ranged {
            table: "pool",
            key: "drain_deadline_ms",
            path: "pool.p.drain_deadline_ms",
            min: "0",
            max: WEEK_MS,
            below: None,
            above: WEEK_MS_PLUS,
            with: "drain_spread_ms = 0",
            read: |c| ms(c.pools["p"].drain_deadline),
        },
        Ranged {
            table: "pool",
            key: "health_tick_ms",
            path: "pool.p.health_tick_ms",
            min: "10",
            max: "3600000",
            below: Some("9"),
            above: "3600001",
            with: "",
            read: |c| ms(c.pools["p"].health.tick),
        },
        Ranged {
            table: "pool",
            key: "slow_start_ms",
            path: "pool.p.slow_start_ms",
            min: "0",
            max: "86400000",
            below: None,
            above: "86400001",
            with: "",
            read: |c| ms(c.pools["p"].health.slow_start),
        },
        Ranged {
            table: "listener",
            key: "http2.max_concurrent_streams",
            path: "listener[0].http2.max_concurrent_streams",
            min: "1",
            max: "10000",
            below: Some("0"),
            above: "10001",
            with: "",
            read: |c| u128::from(c.listeners[0].http2.max_concurrent_streams),
        },
        Ranged {
            table: "listener",
            key: "http2.max_header_list_size",
            path: "listener[0].http2.max_header_list_size",
            min: "1024",
            max: "1048576",
            below: Some("1023"),
            above: "1048577",
            with: "",
            read: |c| u128::from(c.listeners[0].http2.max_header_list_size),
        },
        Ranged {
            table: "listener",
            key: "http2.initial_stream_window_size",
            path: "listener[0].http2.initial_stream_window_size",
            min: "65535",
            max: "2147483647",
            below: Some("65534"),
            above: "2147483648",
            with: "",
            read: |c| u128::from(c.listeners[0].http2.initial_stream_window_size),
        },
        Ranged {
            table: "listener",
            key: "http2.initial_connection_window_size",
            path: "listener[0].http2.initial_connection_window_size",
            min: "65535",
            max: "2147483647",
            below: Some("65534"),
            above: "2147483648",
            with: "",
            read: |c| u128::from(c.listeners[0].http2.initial_connection_window_size),
        },
        Ranged {
            table: "pool",
            key: "panic_threshold_percent",
            path: "pool.p.panic_threshold_percent",
            min: "0",
            max: "100",
            below: Some("-1"),
            above: "101",
            with: "",
            read: |c| u128::from(c.pools["p"].health.panic_threshold_percent),
        },
    ]
}

/// The number a bound written in the file stands for (milliseconds for durations).
fn written(value: &str) -> u128 {
    let v = value.trim_matches('"');
    if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().unwrap()
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<u128>().unwrap() * 1000
    } else {
        v.parse().unwrap()
    }
}

#[test]
fn every_bound_is_accepted_and_read_back() {
    for r in ranged() {
        for value in [r.min, r.max] {
            let (text, _) = with_key(r.table, &format!("{} = {value}\n{}", r.key, r.with));
            let config = Config::parse(&text, None).unwrap_or_else(|e| panic!("{} = {value}: {e}", r.key));
            assert_eq!((r.read)(&config), written(value), "{} = {value}", r.key);
        }
    }
}

#[test]
fn every_value_out_of_range_is_refused_at_its_place() {
    for r in ranged() {
        for value in r.below.into_iter().chain([r.above]) {
            let (text, line) = with_key(r.table, &format!("{} = {value}\n{}", r.key, r.with));
            let (l, column, key, message) = invalid(&text);
            let want_column = r.key.len() + 4;
            assert_eq!((l, column, key.as_str()), (line, want_column, r.path), "{} = {value}: {message}", r.key);
            assert!(message.contains("is out of range ("), "{} = {value}: {message}", r.key);
        }
    }
}

#[test]
fn http2_limits_default_like_an_edge_proxy_and_unknown_ones_are_located() {
    let c = Config::parse(GOOD, None).unwrap();
    assert_eq!(c.listeners[0].http2, Http2Limits::default());
    assert_eq!(c.listeners[0].http2.max_concurrent_streams, 100);
    let (text, line) = with_key("listener", "http2 = { max_concurrent_streams = 7, max_streams = 5 }");
    let (l, _, key, message) = invalid(&text);
    assert_eq!((l, key.as_str()), (line, "listener[0].http2.max_streams"), "{message}");
    assert!(message.contains("unknown field `max_streams`"), "{message}");
    let (text, _) = with_key("listener", "[listener.http2]\nmax_concurrent_streams = 7\nmax_header_list_size = 2048");
    let c = Config::parse(&text, None).unwrap();
    assert_eq!(c.listeners[0].http2.max_concurrent_streams, 7);
    assert_eq!(c.listeners[0].http2.max_header_list_size, 2048);
    assert_eq!(c.listeners[0].http2.initial_stream_window_size, 65_535, "the default");
}

#[test]
fn bounds_are_said_in_the_unit_of_the_key() {
    let (text, _) = with_key("pool", "connect_timeout_ms = 604800001");
    let (_, _, _, message) = invalid(&text);
    assert_eq!(message, "604800001 ms is out of range (1 ms to 7 days)");
    let (text, _) = with_key("plugins", "call_timeout_ms = \"500us\"");
    assert_eq!(invalid(&text).3, "500µs is out of range (1 ms to 10 s)");
    let (text, _) = with_key("listener", "max_headers = 0");
    assert_eq!(invalid(&text).3, "0 is out of range (1 to 10000)");
}

#[test]
fn values_past_any_clock_are_refused_not_wrapped() {
    // u64::MAX milliseconds once reached hyper's `Instant + Duration` and panicked there.
    for value in ["18446744073709551615", "9223372036854775807", "\"5000000000h\"", "\"1e3s\""] {
        for (table, key) in [("listener", "header_read_timeout_ms"), ("pool", "drain_deadline_ms")] {
            let (text, line) = with_key(table, &format!("{key} = {value}"));
            let (l, _, k, message) = invalid(&text);
            assert_eq!(l, line, "{key} = {value}: {message}");
            assert!(k.ends_with(key), "{k}");
        }
    }
    let (text, line) = with_key("plugins", "memory_limit_mib = 4294967295");
    assert_eq!(invalid(&text).0, line);
}

#[test]
fn worker_threads_zero_is_the_cpus_weir_may_use() {
    let (text, _) = with_key("runtime", "worker_threads = 0");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(Config::parse(&text, None).unwrap().runtime.worker_threads, cpus);
    let (text, _) = with_key("runtime", "");
    assert_eq!(Config::parse(&text, None).unwrap().runtime.worker_threads, cpus, "the default");
    let (text, _) = with_key("runtime", "worker_threads = 16");
    assert_eq!(Config::parse(&text, None).unwrap().runtime.worker_threads, 16);
    let (text, line) = with_key("runtime", "worker_threads = -1");
    assert_eq!(invalid(&text).0, line);
}

#[test]
fn a_drain_deadline_shorter_than_its_spread_names_the_key_written() {
    let (text, line) = with_key("pool", "drain_spread_ms = \"20s\"\ndrain_deadline_ms = \"15s\"");
    let (l, column, key, message) = invalid(&text);
    assert_eq!((l, column, key.as_str()), (line + 1, 21, "pool.p.drain_deadline_ms"));
    assert_eq!(message, "15 s is shorter than drain_spread_ms (20 s)");
    // Only the spread written: it is the one longer than the default deadline (30 s).
    let (text, line) = with_key("pool", "drain_spread_ms = \"1m\"");
    let (l, column, key, message) = invalid(&text);
    assert_eq!((l, column, key.as_str()), (line, 19, "pool.p.drain_spread_ms"));
    assert!(message.contains("1 min is longer than drain_deadline_ms (30 s, its default)"), "{message}");
}

#[test]
fn a_spanned_key_with_a_bad_type_names_the_key_only() {
    let (text, line) = with_key("listener", "max_headers = \"many\"");
    let (l, column, key, _) = invalid(&text);
    assert_eq!((l, column, key.as_str()), (line, 15, "listener[0].max_headers"));
}

/// A pool whose affinity plugin's config is `config`, written in the header form
/// (`[pool.p.affinity.config]` from line 5) or inline (line 4).
fn with_plugin_config(config: &str, header_form: bool) -> String {
    let head =
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    if header_form {
        format!("{head}[pool.p.affinity]\nplugin = \"cookie\"\n[pool.p.affinity.config]\n{config}\n")
    } else {
        format!("{head}affinity = {{ plugin = \"cookie\", config = {{ {config} }} }}\n")
    }
}

#[test]
fn file_keys_of_plugin_configs_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let weir = dir.path().join("weir.toml");
    std::fs::write(dir.path().join("key"), "0123456789abcdef\n").unwrap();
    let parse = |text: &str| Config::parse(text, Some(&weir));

    let ok = parse(&with_plugin_config("key_file = \"key\"", true)).unwrap();
    assert_eq!(ok.pools["p"].affinity.as_ref().unwrap().config_json, r#"{"key":"0123456789abcdef"}"#);

    // (config, header form) -> (line, column, key, message)
    let cases = [
        (("key_file = 3", true), (9, 12, "key_file", "expected a path (a string)")),
        (("name = \"A\", key_file = 3", false), (6, 67, "key_file", "expected a path (a string)")),
        (("key = \"k\"\nkey_file = \"key\"", true), (10, 1, "key_file", "give either `key` or `key_file`, not both")),
        (("key_file = \"missing\"", true), (9, 12, "key_file", "cannot read ")),
        (("key_file = \"missing\"", false), (6, 55, "key_file", "cannot read ")),
    ];
    for ((config, header_form), (line, column, key, message)) in cases {
        let text = with_plugin_config(config, header_form);
        match parse(&text) {
            Err(ConfigError::Invalid { line: l, column: c, key: k, message: m, .. }) => {
                assert_eq!(
                    (l, c, k.as_str()),
                    (line, column, &*format!("pool.p.affinity.config.{key}")),
                    "{text}\n{m}"
                );
                assert!(m.starts_with(message), "{m}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn plugins_keep_where_their_config_is_written() {
    let text = "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n[pool.p.affinity]\nplugin = \"cookie\"\nconfig = { name = \"A\" }\n";
    let c = Config::parse(text, Some(Path::new("weir.toml"))).unwrap();
    let affinity = c.pools["p"].affinity.as_ref().unwrap();
    let place = |l: &Location| (l.file.clone(), l.line, l.column, l.key.clone());
    let want = |line, key: &str| ("weir.toml".to_owned(), line, 10, key.to_owned());
    assert_eq!(place(affinity.at.as_ref().unwrap()), want(8, "pool.p.affinity.plugin"));
    assert_eq!(place(affinity.config_at.as_ref().unwrap()), want(9, "pool.p.affinity.config"));
    // The default balancer is written nowhere.
    assert!(c.pools["p"].balancer.config_at.is_none());
}

// ---------------------------------------------------------------------------------------
// Property tests: no input makes a parser panic.

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A value as TOML text: numbers of every size and sign, durations with and without
    /// units, strings, booleans, arrays, inline tables.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (0u64..2_000_000).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            (
                "[0-9]{0,22}(\\.[0-9]{0,12})?",
                prop::sample::select(vec!["", "us", "µs", "ms", "s", "m", "h", "d", " s", "x"])
            )
                .prop_map(|(n, u)| format!("\"{n}{u}\"")),
            prop::sample::select(vec![
                "\"127.0.0.1:0\"",
                "\"[::1]:8080\"",
                "\"p\"",
                "\"q\"",
                "\"round-robin\"",
                "\"cookie\"",
                "\"consistent-hash\"",
                "\"x.wasm\"",
                "\"/nope/x\"",
                "\"*.example.com\"",
                "\"/api\"",
                "\"reject\"",
                "\"http\"",
            ])
            .prop_map(str::to_owned),
            "[^\"\\\\\\n]{0,12}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                    let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", body.join(", "))
                }),
            ]
        })
    }

    /// Keys weir knows (most of the time), or others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "worker_threads", "cache_dir", "call_timeout_ms", "rebuild_timeout_ms", "memory_limit_mib", "name",
                "listen", "protocol", "pool", "header_read_timeout_ms", "max_header_bytes", "max_headers",
                "tunnel_idle_timeout_ms", "tunnel_max_lifetime_ms", "host", "path_prefix", "balancer", "affinity",
                "on_plugin_error", "connect_timeout_ms", "response_timeout_ms", "idle_timeout_ms",
                "max_idle_per_backend", "drain_spread_ms", "drain_deadline_ms", "plugin", "config", "weight",
                "max_connections", "labels", "key_file", "key", "same_site",
            ]).prop_map(str::to_owned),
            1 => "[a-z_]{1,10}",
        ]
    }

    /// Backends with addresses that never need a DNS lookup (a lookup without a network
    /// would make a case slow).
    fn backends() -> impl Strategy<Value = String> {
        let address = prop::sample::select(vec![
            "127.0.0.1:1",
            "127.0.0.1:2",
            "[::1]:80",
            "0.0.0.0:0",
            "bad",
            "127.0.0.1:99999",
            " 127.0.0.1:1 ",
            "",
        ]);
        let backend = (address, prop::option::of(value()), prop::option::of(value())).prop_map(|(a, w, m)| {
            let mut b = format!("{{ address = \"{a}\"");
            if let Some(w) = w {
                b.push_str(&format!(", weight = {w}"));
            }
            if let Some(m) = m {
                b.push_str(&format!(", max_connections = {m}"));
            }
            b + " }"
        });
        prop::collection::vec(backend, 0..4).prop_map(|b| format!("backends = [{}]", b.join(", ")))
    }

    /// A TOML-ish file: weir's tables in any order, known and unknown keys, any values,
    /// now and then a line of noise.
    fn file() -> impl Strategy<Value = String> {
        let header = prop::sample::select(vec![
            "[runtime]",
            "[plugins]",
            "[[listener]]",
            "[[listener.route]]",
            "[pool.p]",
            "[pool.q]",
            "[pool.p.balancer]",
            "[pool.p.balancer.config]",
            "[pool.p.affinity]",
            "[pool.p.affinity.config]",
            "[pool]",
            "[other]",
        ]);
        let line = prop_oneof![
            8 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
            2 => backends(),
            1 => ".{0,16}",
        ];
        prop::collection::vec((header, prop::collection::vec(line, 0..6)), 0..6).prop_map(|tables| {
            tables.into_iter().map(|(h, lines)| format!("{h}\n{}\n", lines.join("\n"))).collect::<Vec<_>>().join("\n")
        })
    }

    /// Whatever `Config::parse` accepts lies within every bound.
    fn within_bounds(c: &Config) {
        assert!((1..=1024).contains(&c.runtime.worker_threads));
        assert!(bounds::CALL_TIMEOUT.contains(&c.plugins.call_timeout));
        assert!(bounds::REBUILD_TIMEOUT.contains(&c.plugins.rebuild_timeout));
        assert!(c.plugins.memory_limit <= 1 << 30 && c.plugins.memory_limit >= 1 << 20);
        for l in &c.listeners {
            assert!(bounds::TIMEOUT.contains(&l.header_read_timeout));
            assert!(bounds::MAX_HEADER_BYTES.contains(&l.max_header_bytes));
            assert!(bounds::MAX_HEADERS.contains(&l.max_headers));
            assert!(bounds::TIMEOUT.contains(&l.tunnels.idle_timeout));
            assert!(l.tunnels.max_lifetime.is_none_or(|d| bounds::TUNNEL_MAX_LIFETIME.contains(&d)));
        }
        for p in c.pools.values() {
            for d in [p.connect_timeout, p.response_timeout, p.idle_timeout] {
                assert!(bounds::TIMEOUT.contains(&d));
            }
            assert!(bounds::MAX_IDLE_PER_BACKEND.contains(&p.max_idle_per_backend));
            assert!(bounds::DRAIN.contains(&p.drain_spread) && bounds::DRAIN.contains(&p.drain_deadline));
            assert!(p.drain_spread <= p.drain_deadline);
        }
    }

    /// Every error points inside the text.
    fn located(text: &str, e: &ConfigError) {
        if let ConfigError::Invalid { line, column, .. } = e {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(*line >= 1 && *line <= lines.len(), "line {line} of {}: {e}", lines.len());
            assert!(*column >= 1 && *column <= lines[line - 1].chars().count() + 1, "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic_the_loader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            match Config::parse(&text, None) {
                Ok(c) => within_bounds(&c),
                Err(e) => located(&text, &e),
            }
        }

        #[test]
        fn arbitrary_toml_never_panics_the_loader_and_what_it_accepts_is_in_range(text in file()) {
            match Config::parse(&text, None) {
                Ok(c) => within_bounds(&c),
                Err(e) => located(&text, &e),
            }
        }

        #[test]
        fn arbitrary_durations_never_panic(text in ".{0,24}") {
            let _ = duration::parse(&text);
        }

        #[test]
        fn numbers_with_units_are_what_they_say(n in 0u64..=u64::from(u32::MAX)) {
            prop_assert_eq!(duration::parse(&format!("{n}ms")), Ok(Duration::from_millis(n)));
            prop_assert_eq!(duration::parse(&format!(" {n}s ")), Ok(Duration::from_secs(n)));
        }

        #[test]
        fn routes_never_panic_on_arbitrary_hosts_and_paths(
            want in prop::option::of(prop_oneof![".{0,12}", "\\*\\..{0,12}"]),
            prefix in prop::option::of(".{0,8}"),
            host in prop::option::of(".{0,24}"),
            path in ".{0,24}",
        ) {
            let r = Route { host: want.clone(), path_prefix: prefix, sni: None, pool: "p".into() };
            let _ = r.matches(host.as_deref(), &path);
            let _ = strip_port(host.as_deref().unwrap_or(""));
        }

        #[test]
        fn a_wildcard_matches_exactly_the_subdomains(
            sub in "[a-zA-Zé0-9-]{1,8}(\\.[a-z0-9é-]{1,8})?",
            suffix in "[a-z0-9é-]{1,8}\\.[a-zé]{1,6}",
            port in prop::option::of(0u16..),
            other in ".{0,20}",
        ) {
            let r = Route { host: Some(format!("*.{suffix}")), path_prefix: None, sni: None, pool: "p".into() };
            let with_port = |h: String| match port { Some(p) => format!("{h}:{p}"), None => h };
            let subdomain = with_port(format!("{sub}.{}", suffix.to_ascii_uppercase()));
            prop_assert!(r.matches(Some(&subdomain), "/"));
            let apex = with_port(suffix.clone());
            prop_assert!(!r.matches(Some(&apex), "/"));
            let bare = strip_port(&other);
            let want = bare.len() > suffix.len() + 1
                && bare.to_ascii_lowercase().ends_with(&format!(".{suffix}"));
            prop_assert_eq!(r.matches(Some(&other), "/"), want, "{}", other);
        }
    }
}

#[test]
fn a_wildcard_route_cut_inside_a_character_does_not_panic() {
    // Found by `a_wildcard_matches_exactly_the_subdomains`: the suffix's length fell
    // inside a multi-byte character of the host, and slicing the `str` there panicked.
    let r = Route { host: Some("*.example.com".into()), path_prefix: None, sni: None, pool: "p".into() };
    assert!(!r.matches(Some("aéxample.com"), "/"));
    assert!(r.matches(Some("é.example.com"), "/"));
}

#[test]
fn durations_with_units_are_exact() {
    // Found by `numbers_with_units_are_what_they_say`: parsing through f64 gave
    // 4209957.952000001 s.
    assert_eq!(duration::parse("4209957952ms").unwrap(), Duration::from_millis(4_209_957_952));
    assert_eq!(duration::parse("0.1s").unwrap(), Duration::from_millis(100));
    assert_eq!(duration::parse(".5m").unwrap(), Duration::from_secs(30));
    assert_eq!(duration::parse("1.000000001s").unwrap(), Duration::new(1, 1));
    assert!(duration::parse(".").is_err() && duration::parse("1.2.3s").is_err() && duration::parse("s").is_err());
    assert!(duration::parse("18446744073709551616s").is_err(), "past u64 seconds");
    assert_eq!(duration::parse("18446744073709551615s").unwrap(), Duration::from_secs(u64::MAX));
}

#[test]
fn health_settings_are_read_with_their_defaults() {
    let (text, _) =
        with_key("pool", "probe = { kind = \"http\", path = \"/healthz\", expect_status = \"200,204-206\" }");
    let c = Config::parse(&text, None).unwrap();
    let h = &c.pools["p"].health;
    let probe = h.probe.as_ref().unwrap();
    assert_eq!(
        (probe.kind, probe.interval, probe.timeout),
        (ProbeKind::Http, Duration::from_secs(2), Duration::from_secs(1))
    );
    assert!(
        probe.expect_status.contains(200) && probe.expect_status.contains(205) && !probe.expect_status.contains(201)
    );
    assert_eq!(probe.expect_status.to_string(), "200,204-206");
    assert!(probe.reuse_connection, "an http probe keeps its connection by default");
    let (text, _) = with_key("pool", "probe = { kind = \"http\", reuse_connection = false }");
    assert!(!Config::parse(&text, None).unwrap().pools["p"].health.probe.as_ref().unwrap().reuse_connection);
    assert_eq!(h.plugins, vec![PluginRef::pack("threshold")], "a probe alone is judged by threshold");
    assert!(h.passive_failure_statuses.contains(503) && !h.passive_failure_statuses.contains(404));
    assert_eq!((h.panic_threshold_percent, h.on_unhealthy, h.slow_start), (50, OnUnhealthy::Keep, Duration::ZERO));
    let (text, _) = with_key("pool", "");
    assert!(!Config::parse(&text, None).unwrap().pools["p"].health.enabled(), "nothing watches a pool by default");
}

#[test]
fn bad_health_settings_are_located() {
    let cases = [
        ("probe = { kind = \"tcp\", interval_ms = 5 }", "pool.p.probe.interval_ms", "out of range"),
        (
            "probe = { kind = \"tcp\", interval_ms = 100, timeout_ms = 200 }",
            "pool.p.probe.timeout_ms",
            "longer than interval_ms",
        ),
        ("probe = { kind = \"tcp\", path = \"/x\" }", "pool.p.probe.path", "sends nothing"),
        ("probe = { kind = \"websocket\", expect_body = \"ok\" }", "pool.p.probe.expect_body", "only an http probe"),
        ("probe = { kind = \"tcp\", reuse_connection = true }", "pool.p.probe.reuse_connection", "only an http probe"),
        (
            "probe = { kind = \"websocket\", reuse_connection = false }",
            "pool.p.probe.reuse_connection",
            "only an http probe",
        ),
        ("probe = { kind = \"http\", reuse_connection = 1 }", "pool.p.probe.reuse_connection", "invalid type"),
        ("probe = { kind = \"http\", path = \"healthz\" }", "pool.p.probe.path", "starts with `/`"),
        ("probe = { kind = \"http\", path = \"/a<b\" }", "pool.p.probe.path", "not a request path"),
        ("probe = { kind = \"websocket\", host = \"api.example.com/v1\" }", "pool.p.probe.host", "host[:port]"),
        ("probe = { kind = \"http\", expect_status = \"299-200\" }", "pool.p.probe.expect_status", "empty range"),
        ("probe = { kind = \"http\", expect_status = \"2xx\" }", "pool.p.probe.expect_status", "not an HTTP status"),
        ("probe = { kind = \"http\", port = 70000 }", "pool.p.probe.port", "out of range"),
        ("probe = { kind = \"udp\" }", "pool.p.probe.kind", "unknown variant"),
        ("passive_failure_statuses = \"5000\"", "pool.p.passive_failure_statuses", "not an HTTP status"),
        ("on_unhealthy = \"explode\"", "pool.p.on_unhealthy", "unknown variant"),
        ("health = [{ plugin = \"round-robin\" }]", "", ""),
    ];
    for (lines, want_key, want) in cases {
        let (text, line) = with_key("pool", lines);
        if want_key.is_empty() {
            // A balancer named as a health plugin parses; loading it is refused (plugin layer).
            assert!(Config::parse(&text, None).is_ok(), "{lines}");
            continue;
        }
        let (l, column, key, message) = invalid(&text);
        assert_eq!((l, key.as_str()), (line, want_key), "{lines}: {message}");
        assert!(column > 1, "{lines}: column {column}");
        assert!(message.contains(want), "{lines}: {message}");
    }
}

const L4: &str = r#"
[[listener]]
name = "db"
listen = "127.0.0.1:5432"
protocol = "tcp"
pool = "db"
idle_timeout_ms = "10m"
max_lifetime_ms = "1h"

[[listener]]
name = "tls"
listen = "[::]:8443"
protocol = "tls-passthrough"
pool = "db"
peek_timeout_ms = 2000
proxy_protocol = "v2"
proxy_protocol_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
[[listener.route]]
sni = "*.Example.com."
pool = "web"

[pool.db]
backends = [{ address = "127.0.0.1:9001" }]
send_proxy = "v1"

[pool.web]
backends = [{ address = "127.0.0.1:9002" }]
"#;

#[test]
fn parses_tcp_and_tls_passthrough_listeners() {
    let c = Config::parse(L4, None).unwrap();
    let (db, tls) = (&c.listeners[0], &c.listeners[1]);
    assert_eq!(db.protocol, ListenerProtocol::Tcp);
    assert_eq!(db.tunnels.idle_timeout, Duration::from_secs(600));
    assert_eq!(db.tunnels.max_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(db.peek_timeout, Duration::from_secs(5), "the default");
    assert_eq!(db.proxy_protocol, None);
    assert_eq!(tls.protocol, ListenerProtocol::TlsPassthrough);
    assert_eq!(tls.tunnels.idle_timeout, Duration::from_secs(3600), "the default");
    assert_eq!(tls.peek_timeout, Duration::from_secs(2));
    assert_eq!(tls.routes[0].sni.as_deref(), Some("*.example.com"));
    assert!(tls.routes[0].matches_sni(Some("db.EXAMPLE.com")));
    assert!(!tls.routes[0].matches_sni(Some("example.com")));
    assert!(!tls.routes[0].matches_sni(None));
    let pp = tls.proxy_protocol.as_ref().unwrap();
    assert_eq!(pp.accept, ProxyAccept::V2);
    assert!(pp.trusts("10.1.2.3".parse().unwrap()));
    assert!(pp.trusts("::ffff:10.1.2.3".parse().unwrap()), "an IPv4-mapped source is its IPv4");
    assert!(pp.trusts("192.0.2.7".parse().unwrap()));
    assert!(!pp.trusts("192.0.2.8".parse().unwrap()));
    assert!(pp.trusts("2001:db8::1".parse().unwrap()));
    assert_eq!(c.pools["db"].send_proxy, Some(ProxyVersion::V1));
    assert_eq!(c.pools["web"].send_proxy, None);
}

#[test]
fn l4_keys_are_refused_where_they_do_not_apply() {
    // Each case: a change to L4, the key blamed, and words of the message.
    let cases = [
        (
            "idle_timeout_ms = \"10m\"",
            "header_read_timeout_ms = 5",
            "listener[0].header_read_timeout_ms",
            "http listeners only",
        ),
        (
            "idle_timeout_ms = \"10m\"",
            "http2 = { max_concurrent_streams = 5 }",
            "listener[0].http2",
            "http listeners only",
        ),
        ("sni = \"*.Example.com.\"", "host = \"a.example.com\"", "listener[1].route[0].host", "route by `sni`"),
        ("sni = \"*.Example.com.\"", "sni = \"bad name!\"", "listener[1].route[0].sni", "not a server name"),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
            "",
            "listener[1].proxy_protocol",
            "proxy_protocol_from",
        ),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
            "proxy_protocol_from = [\"10.0.0.0/33\"]",
            "listener[1].proxy_protocol_from[0]",
            "not an address",
        ),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
            "proxy_protocol_from = []",
            "listener[1].proxy_protocol_from",
            "empty",
        ),
        ("proxy_protocol = \"v2\"", "proxy_protocol = \"v3\"", "listener[1].proxy_protocol", "unknown variant"),
        ("send_proxy = \"v1\"", "send_proxy = \"v9\"", "pool.db.send_proxy", "unknown variant"),
        ("protocol = \"tcp\"", "protocol = \"udp\"", "listener[0].protocol", "unknown variant"),
    ];
    for (from, to, key, words) in cases {
        let text = L4.replacen(from, to, 1);
        let (_, _, k, message) = invalid(&text);
        assert_eq!(k, key, "{to}: {message}");
        assert!(message.contains(words), "{to}: {message}");
    }
    // A tcp listener has nothing to route on.
    let text =
        L4.replacen("max_lifetime_ms = \"1h\"", "max_lifetime_ms = \"1h\"\n[[listener.route]]\npool = \"web\"", 1);
    let (_, _, key, message) = invalid(&text);
    assert_eq!(key, "listener[0].route[0]", "{message}");
    // An http listener's WebSockets have their own keys; sni is not an http route.
    let (_, _, key, message) = invalid(&GOOD.replace("pool = \"web\"\n[[", "pool = \"web\"\nidle_timeout_ms = 5\n[["));
    assert_eq!(key, "listener[0].idle_timeout_ms", "{message}");
    assert!(message.contains("tunnel_idle_timeout_ms"), "{message}");
    let (_, _, key, _) = invalid(&GOOD.replace("path_prefix = \"/api\"", "sni = \"a.example.com\""));
    assert_eq!(key, "listener[0].route[0].sni");
}

/// A directory with `ca.pem`, `client.pem` and `client.key` (made with rcgen), and a
/// config whose pool `web` names them in its `upstream` (paths relative to the file).
fn upstream_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["weir.test".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    dir
}

const UPSTREAM: &str = r#"
[[listener]]
listen = "127.0.0.1:8080"
pool = "web"

[pool.web]
backends = [{ address = "127.0.0.1:9001" }]
upstream = { protocol = "h2", tls = { ca = "ca.pem", server_name = "web.internal", cert = "client.pem", key = "client.key" } }

[pool.plain]
backends = [{ address = "127.0.0.1:9002" }]
upstream = { protocol = "h2c" }

[pool.default]
backends = [{ address = "127.0.0.1:9003" }]
"#;

fn parse_upstream(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = dir.join("weir.toml");
    std::fs::write(&file, text).unwrap();
    Config::load(&file)
}

#[test]
fn parses_upstream_protocols_and_tls() {
    let dir = upstream_files();
    let c = parse_upstream(dir.path(), UPSTREAM).unwrap();
    let web = &c.pools["web"].upstream;
    assert_eq!(web.protocol, UpstreamProtocol::H2);
    let tls = web.tls.as_ref().unwrap();
    assert_eq!(tls.roots.len(), 1);
    assert!(tls.verify, "verified by default");
    assert_eq!(tls.server_name.as_ref().unwrap().to_str(), "web.internal");
    let (chain, _) = tls.client_auth.as_ref().unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(tls.at.key, "pool.web.upstream.tls");
    assert_eq!(c.pools["plain"].upstream, UpstreamConfig { protocol: UpstreamProtocol::H2c, tls: None });
    assert_eq!(c.pools["default"].upstream, UpstreamConfig::default());
    assert_eq!(UpstreamConfig::default().protocol, UpstreamProtocol::Http1);

    // The same files read again are the same settings (a reload changes nothing); a
    // renewed file is a change.
    assert_eq!(parse_upstream(dir.path(), UPSTREAM).unwrap().pools["web"], c.pools["web"]);
    std::fs::copy(dir.path().join("client.pem"), dir.path().join("ca.pem")).unwrap();
    assert_ne!(parse_upstream(dir.path(), UPSTREAM).unwrap().pools["web"], c.pools["web"]);

    let unverified = UPSTREAM.replace(
        "tls = { ca = \"ca.pem\", server_name = \"web.internal\", cert = \"client.pem\", key = \"client.key\" }",
        "tls = { verify = false }",
    );
    let c = parse_upstream(dir.path(), &unverified).unwrap();
    let tls = c.pools["web"].upstream.tls.as_ref().unwrap();
    assert!(!tls.verify && tls.roots.is_empty() && tls.client_auth.is_none());
}

#[test]
fn upstream_errors_are_located() {
    let dir = upstream_files();
    let tls = "tls = { ca = \"ca.pem\", server_name = \"web.internal\", cert = \"client.pem\", key = \"client.key\" }";
    // Each case: the `web` pool's upstream table, the key blamed, and words of the message.
    let cases = [
        ("{ protocol = \"h2\" }", "pool.web.upstream.protocol", "needs `tls"),
        ("{ protocol = \"h3\" }", "pool.web.upstream.protocol", "unknown variant"),
        ("{ protocol = \"h2c\", tls = { verify = false } }", "pool.web.upstream.tls", "cleartext"),
        ("{ tls = { } }", "pool.web.upstream.tls", "needs `ca`"),
        ("{ tls = { ca = \"ca.pem\", verify = false } }", "pool.web.upstream.tls.ca", "no effect"),
        ("{ tls = { ca = \"missing.pem\" } }", "pool.web.upstream.tls.ca", "cannot read"),
        ("{ tls = { ca = \"junk.pem\" } }", "pool.web.upstream.tls.ca", "holds no PEM certificate"),
        (
            "{ tls = { ca = \"ca.pem\", server_name = \"bad name!\" } }",
            "pool.web.upstream.tls.server_name",
            "not a DNS",
        ),
        ("{ tls = { ca = \"ca.pem\", cert = \"client.pem\" } }", "pool.web.upstream.tls.cert", "needs `key`"),
        ("{ tls = { ca = \"ca.pem\", key = \"client.key\" } }", "pool.web.upstream.tls.key", "needs `cert`"),
        (
            "{ tls = { ca = \"ca.pem\", cert = \"client.pem\", key = \"client.pem\" } }",
            "pool.web.upstream.tls.key",
            "no usable PEM private key",
        ),
        ("{ tls = { ca = \"ca.pem\", verfy = false } }", "pool.web.upstream.tls.verfy", "unknown field"),
    ];
    for (upstream, key, words) in cases {
        let text = UPSTREAM.replace(&format!("{{ protocol = \"h2\", {tls} }}"), upstream);
        let (line, _, k, message) = match parse_upstream(dir.path(), &text) {
            Err(ConfigError::Invalid { line, column, key, message, .. }) => (line, column, key, message),
            other => panic!("{upstream}: expected an invalid-config error, got {other:?}"),
        };
        assert_eq!(k, key, "{upstream}: {message}");
        assert_eq!(line, 8, "{upstream}: {message}");
        assert!(message.contains(words), "{upstream}: {message}");
    }
}

/// A directory with `site.pem`/`site.key` (a matching pair), `ca.pem`, and files that are
/// not what they should be; and a config of one TLS listener whose `tls` table is `tls`.
fn tls_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["site.test".to_owned()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.path().join("site.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 !\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no PEM here\n").unwrap();
    dir
}

fn tls_text(protocol: &str, tls: &str) -> String {
    format!(
        "[[listener]]\nlisten = \"127.0.0.1:8443\"\nprotocol = \"{protocol}\"\npool = \"web\"\ntls = {tls}\n\n[pool.web]\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n"
    )
}

#[test]
fn tls_settings_are_read_with_their_defaults_and_paths_relative_to_the_file() {
    let dir = tls_files();
    let path = dir.path().join("weir.toml");
    let text = tls_text("http", "{ certificates = [{ cert = \"site.pem\", key = \"site.key\" }] }");
    let c = Config::parse(&text, Some(&path)).unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, dir.path().join("site.pem"));
    assert_eq!(tls.certificates[0].key, dir.path().join("site.key"));
    assert_eq!(tls.certificates[0].at.key, "listener[0].tls.certificates[0].cert");
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(tls.client_ca, None);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(10));

    let text = tls_text(
        "http",
        "{ certificates = [{ cert = \"site.pem\", key = \"site.key\" }], min_version = \"1.3\", alpn = [\"http/1.1\"], client_ca = \"ca.pem\", client_auth = \"optional\", client_subject_header = \"X-Client-Subject\", handshake_timeout_ms = \"2s\" }",
    );
    let c = Config::parse(&text, Some(&path)).unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.alpn, ["http/1.1"]);
    assert_eq!(tls.client_ca.as_ref().unwrap().path, dir.path().join("ca.pem"));
    assert_eq!(tls.client_auth, ClientAuth::Optional);
    assert_eq!(tls.client_subject_header.as_ref().unwrap(), "x-client-subject");
    assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.listeners[0].tls.as_ref().unwrap().files().count(), 3);
}

#[test]
fn bad_tls_settings_are_located() {
    let dir = tls_files();
    let path = dir.path().join("weir.toml");
    let good = "{ cert = \"site.pem\", key = \"site.key\" }";
    // Each case: protocol, the tls table, the key blamed, words of the message.
    let cases = [
        ("tcp", format!("{{ certificates = [{good}] }}"), "listener[0].tls", "http listeners only"),
        ("tls-passthrough", format!("{{ certificates = [{good}] }}"), "listener[0].tls", "forwards TLS untouched"),
        ("http", "{ certificates = [] }".to_owned(), "listener[0].tls.certificates", "at least one"),
        (
            "http",
            "{ certificates = [{ cert = \"missing.pem\", key = \"site.key\" }] }".to_owned(),
            "listener[0].tls.certificates[0].cert",
            "cannot read",
        ),
        (
            "http",
            format!("{{ certificates = [{good}, {{ cert = \"garbage.pem\", key = \"site.key\" }}] }}"),
            "listener[0].tls.certificates[1].cert",
            "bad PEM",
        ),
        (
            "http",
            "{ certificates = [{ cert = \"empty.pem\", key = \"site.key\" }] }".to_owned(),
            "listener[0].tls.certificates[0].cert",
            "no CERTIFICATE",
        ),
        (
            "http",
            "{ certificates = [{ cert = \"site.pem\", key = \"site.pem\" }] }".to_owned(),
            "listener[0].tls.certificates[0].key",
            "no PRIVATE KEY",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], min_version = \"1.1\" }}"),
            "listener[0].tls.min_version",
            "\"1.2\" or \"1.3\"",
        ),
        ("http", format!("{{ certificates = [{good}], alpn = [\"\"] }}"), "listener[0].tls.alpn[0]", "1 to 255 bytes"),
        (
            "http",
            format!("{{ certificates = [{good}], client_auth = \"optional\" }}"),
            "listener[0].tls.client_auth",
            "without `client_ca`",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], client_auth = \"maybe\" }}"),
            "listener[0].tls.client_auth",
            "unknown variant",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], client_ca = \"empty.pem\" }}"),
            "listener[0].tls.client_ca",
            "no CERTIFICATE",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], client_subject_header = \"X-Subject\" }}"),
            "listener[0].tls.client_subject_header",
            "needs `client_ca`",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], client_ca = \"ca.pem\", client_subject_header = \"bad header\" }}"),
            "listener[0].tls.client_subject_header",
            "not a header name",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], handshake_timeout_ms = 0 }}"),
            "listener[0].tls.handshake_timeout_ms",
            "out of range",
        ),
        (
            "http",
            format!("{{ certificates = [{good}], ciphers = \"all\" }}"),
            "listener[0].tls.ciphers",
            "unknown field `ciphers`",
        ),
    ];
    for (protocol, tls, key, words) in cases {
        let text = tls_text(protocol, &tls);
        let (line, _, k, message) = match Config::parse(&text, Some(&path)) {
            Err(ConfigError::Invalid { line, column, key, message, .. }) => (line, column, key, message),
            other => panic!("{tls}: expected an invalid-config error, got {other:?}"),
        };
        assert_eq!(k, key, "{tls}: {message}");
        assert_eq!(line, 5, "{tls}: the tls line");
        assert!(message.contains(words), "{tls}: {message}");
    }
}

#[test]
fn a_plugin_entry_sets_its_own_limits_and_others_keep_the_defaults() {
    let text = GOOD.replace(
        "balancer = { plugin = \"round-robin\" }",
        "balancer = { plugin = \"round-robin\", memory_limit_mib = 32, call_timeout_ms = \"10ms\" }\n\
         affinity = { plugin = \"cookie\", memory_limit_mib = 1024 }\n\
         probe = { kind = \"tcp\" }\nhealth = [{ plugin = \"threshold\", memory_limit_mib = 2 }]",
    );
    let c = Config::parse(&text, None).unwrap();
    let web = &c.pools["web"];
    assert_eq!(
        web.balancer.limits,
        PluginLimits { memory_limit: Some(32 << 20), call_timeout: Some(Duration::from_millis(10)) }
    );
    assert_eq!(web.affinity.as_ref().unwrap().limits, PluginLimits { memory_limit: Some(1 << 30), call_timeout: None });
    assert_eq!(web.health.plugins[0].limits.memory_limit, Some(2 << 20));
    assert_eq!(c.pools["api"].balancer.limits, PluginLimits::default(), "none set: [plugins] applies");
    let mut other = web.balancer.clone();
    other.limits.memory_limit = Some(16 << 20);
    assert_ne!(other, web.balancer, "a changed limit is another plugin to load");
}

#[test]
fn bad_plugin_limits_are_located() {
    let entry = |e: &str| GOOD.replace("balancer = { plugin = \"round-robin\" }", e);
    let (line, column, key, message) =
        invalid(&entry("balancer = { plugin = \"round-robin\", memory_limit_mib = 2048 }"));
    assert_eq!((line, key.as_str()), (16, "pool.web.balancer.memory_limit_mib"));
    assert!(column > 30 && message.contains("1 to 1024"), "{column} {message}");
    let (_, _, key, message) = invalid(&entry("balancer = { plugin = \"round-robin\", call_timeout_ms = 0 }"));
    assert_eq!(key, "pool.web.balancer.call_timeout_ms");
    assert!(message.contains("out of range"), "{message}");
    let (_, _, key, message) =
        invalid(&entry("probe = { kind = \"tcp\" }\nhealth = [{ plugin = \"threshold\", call_timeout_ms = 5 }]"));
    assert_eq!(key, "pool.web.health[0].call_timeout_ms");
    assert!(message.contains("rebuild_timeout_ms"), "{message}");
}

#[test]
fn shadow_and_canary_are_read_with_their_shares() {
    let text = GOOD.replace(
        "balancer = { plugin = \"round-robin\" }",
        "balancer = { plugin = \"round-robin\" }\nshadow = { plugin = \"p2c\" }\ncanary = { plugin = \"first\", percent = 2.5 }",
    );
    let c = Config::parse(&text, None).unwrap();
    let web = &c.pools["web"];
    let shadow = web.shadow.as_ref().unwrap();
    assert_eq!(shadow.plugin.source, PluginSource::Pack("p2c".into()));
    assert_eq!(shadow.percent(), 10.0, "the default sample");
    let canary = web.canary.as_ref().unwrap();
    assert_eq!((canary.per_million, canary.percent()), (25_000, 2.5));
    assert!(c.pools["api"].shadow.is_none() && c.pools["api"].canary.is_none());
    let sampled = GOOD.replace(
        "balancer = { plugin = \"round-robin\" }",
        "shadow = { plugin = \"x.wasm\", config = { k = 1 }, sample_percent = 100 }",
    );
    let shadow = Config::parse(&sampled, None).unwrap().pools["web"].shadow.clone().unwrap();
    assert_eq!((shadow.per_million, shadow.plugin.config_json.as_str()), (1_000_000, "{\"k\":1}"));
}

#[test]
fn bad_shadow_and_canary_shares_are_located() {
    let with = |line: &str| GOOD.replace("balancer = { plugin = \"round-robin\" }", line);
    let (line, _, key, message) = invalid(&with("shadow = { plugin = \"p2c\", sample_percent = 0 }"));
    assert_eq!((line, key.as_str()), (16, "pool.web.shadow.sample_percent"), "the line of the value");
    assert_eq!(message, "0 is out of range (above 0, at most 100)");
    let (_, _, key, message) = invalid(&with("canary = { plugin = \"p2c\", percent = 101 }"));
    assert_eq!(
        (key.as_str(), message.as_str()),
        ("pool.web.canary.percent", "101 is out of range (above 0, at most 100)")
    );
    let (line, _, key, message) = invalid(&with("canary = { plugin = \"p2c\" }"));
    assert_eq!((line, key.as_str()), (16, "pool.web.canary"), "the line of the table");
    assert!(message.contains("needs `percent`"), "{message}");
    let (_, _, _, message) = invalid(&with("shadow = { plugin = \"p2c\", percent = 5 }"));
    assert!(message.contains("unknown field `percent`"), "{message}");
}

#[test]
fn a_pool_from_etcd_is_checked_at_its_key_and_listeners_may_name_it_only_with_a_cluster() {
    let base = Path::new("/etc/weir");
    let pool = Config::parse_pool(
        "shared",
        "backends = [{ address = \"127.0.0.1:9001\" }]\nbalancer = { plugin = \"p2c\" }\nshare_stick_tables = true\n",
        "/weir/pools/shared",
        base,
    )
    .unwrap();
    assert_eq!(pool.name, "shared");
    assert_eq!(pool.backends[0].address, "127.0.0.1:9001");
    assert!(pool.share_stick_tables);
    let err = |text: &str| match Config::parse_pool("shared", text, "/weir/pools/shared", base) {
        Err(ConfigError::Invalid { file, line, key, message, .. }) => (file, line, key, message),
        other => panic!("expected an invalid-config error, got {other:?}"),
    };
    let (file, line, key, message) = err("backends = []\nbalancr = 1\n");
    assert_eq!((file.as_str(), line, key.as_str()), ("/weir/pools/shared", 2, "pool.shared.balancr"), "{message}");
    assert!(message.contains("balancr"), "{message}");
    let (_, line, key, _) = err("\nbackends = [{ address = \"nope\" }]\n");
    assert_eq!((line, key.as_str()), (2, "pool.shared.backends[0].address"));
    let (_, line, _, _) = err("backends = [");
    assert_eq!(line, 1);
    // A listener naming a pool the file does not define: an error, unless [cluster] is set.
    let listener = "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"shared\"\n";
    let (_, _, key, message) = invalid(listener);
    assert_eq!(key, "listener[0].pool", "{message}");
    let clustered = format!("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n{listener}");
    assert_eq!(Config::parse(&clustered, None).unwrap().listeners[0].pool, "shared");
}
