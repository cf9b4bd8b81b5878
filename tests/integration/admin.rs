//! The admin API on a real listener: status, bearer tokens, reloads, limits and errors.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use crate::support::{self, Body, Upstream};

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e: std::convert::Infallible| match e {}).boxed()
}

/// Calls the admin API at `admin`: status and parsed JSON body.
pub async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = support::client().request(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    assert_eq!(res.headers()["content-type"], "application/json", "{path}: every answer is JSON");
    let text = support::body_text(res).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

/// `[admin]` on a free loopback port, with `extra` lines.
pub fn admin_table(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_listeners_pools_backends_and_plugins() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let text = format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], ""));
    let server = support::start(&text).await;
    let admin = server.admin_addr().expect("the admin API listens");
    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());
    for _ in 0..4 {
        assert_eq!(support::get(&client, &url).await.0, StatusCode::OK);
    }
    let (status, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["listeners"][0]["name"], "main");
    assert_eq!(s["listeners"][0]["address"], server.addr("main").unwrap().to_string());
    assert!(s["listeners"][0]["accepted"].as_u64().unwrap() >= 1);
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "p");
    let backends = pool["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0]["address"], a.addr.to_string());
    assert_eq!(backends[0]["health"]["verdict"], "healthy");
    let requests: u64 = backends.iter().map(|b| b["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 4);
    let balancer = &pool["balancer"];
    assert_eq!(balancer["name"], "round-robin");
    assert_eq!(balancer["world"], "balancer");
    assert_eq!(balancer["sha256"].as_str().unwrap().len(), 64);
    assert!(balancer["calls"].as_u64().unwrap() >= 4);
    assert_eq!(balancer["traps"], 0);
    assert!(balancer["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(pool["affinity"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").unwrap();
    let a = Upstream::start("a").await;
    let config = dir.path().join("weir.toml");
    let text = format!("{}{}", admin_table("token_file = \"admin.token\""), support::config_text(&[a.addr], ""));
    std::fs::write(&config, &text).unwrap();
    let server = weir::Server::start(weir::config::Config::load(&config).unwrap()).await.unwrap();
    let admin = server.admin_addr().unwrap();
    // The file now has a second pool; a refused reload must not apply it.
    std::fs::write(&config, format!("{text}\n[pool.q]\nbackends = [{{ address = \"{}\" }}]\n", a.addr)).unwrap();

    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, _) = call(admin, Method::POST, "/api/v1/reload", Some("s3cret-tokeN"), support::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.snapshot().pools.len(), 1, "nothing changed");

    // Reading needs no token; the refusals are counted.
    let (status, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["admin"]["unauthorized"], 2);

    let (status, body) = call(admin, Method::POST, "/api/v1/reload", Some("s3cret-token"), support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pools_changed"], 1);
    assert_eq!(server.snapshot().pools.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_changed_by_an_api_reload_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = dir.path().join("weir.toml");
    let write = |pool: &str| {
        let route = format!("[[listener.route]]\npath_prefix = \"/api\"\npool = \"{pool}\"\n");
        let text = support::config_text(&[a.addr], "")
            .replace("pool = \"p\"\n\n[pool.p]", &format!("pool = \"p\"\n{route}\n[pool.p]"));
        std::fs::write(
            &config,
            format!("{}{text}\n[pool.q]\nbackends = [{{ address = \"{}\" }}]\n", admin_table(""), b.addr),
        )
        .unwrap();
    };
    write("p");
    let server = weir::Server::start(weir::config::Config::load(&config).unwrap()).await.unwrap();
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/api/x", server.addr("main").unwrap());
    let client = support::client();
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "a");

    write("q");
    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["listeners_changed"], 1);
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "b", "the new route is used at once");

    // A broken file is refused with its location, and the running config stays.
    std::fs::write(&config, "[[listener]]\nname = 3\n").unwrap();
    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("weir.toml:2:"), "{body}");
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_wrong_methods_and_large_bodies_get_json_errors() {
    let a = Upstream::start("a").await;
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let (status, body) = call(admin, Method::GET, "/api/v1/nothing", None, support::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/api/v1/nothing"));
    let (status, _) = call(admin, Method::DELETE, "/api/v1/status", None, support::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let big = vec![0u8; weir::admin::MAX_BODY + 1];
    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, full(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    // A server started without a file has nothing to read again.
    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[test]
fn a_non_loopback_admin_address_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("weir.toml:2:10: admin.listen: 0.0.0.0:0 is not a loopback address"), "{stderr}");
    // With a token it starts (checked without binding: `weir check`).
    std::fs::write(dir.path().join("t"), "x").unwrap();
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"t\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `PUT /api/v1/pools/{pool}/{kind}` with a JSON body naming a plugin.
async fn swap_json(admin: SocketAddr, pool: &str, kind: &str, body: Value) -> (StatusCode, Value) {
    call(admin, Method::PUT, &format!("/api/v1/pools/{pool}/{kind}"), None, full(body.to_string())).await
}

/// `PUT /api/v1/pools/{pool}/balancer` with a component as the body.
async fn swap_upload(admin: SocketAddr, pool: &str, wasm: &std::path::Path, query: &str) -> (StatusCode, Value) {
    let bytes = std::fs::read(wasm).unwrap();
    call(admin, Method::PUT, &format!("/api/v1/pools/{pool}/balancer{query}"), None, full(bytes)).await
}

/// The backends that answer `n` GETs of `url`, in order.
async fn names(client: &Client<HttpConnector, Body>, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, body) = support::get(client, url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.push(support::name_of(&body).to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_that_fails_any_step_is_refused_and_the_old_plugin_keeps_serving() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    let serving = |when: &'static str| {
        let (client, url, server) = (&client, &url, &server);
        async move {
            let mut seen = names(client, url, 4).await;
            seen.sort();
            assert_eq!(seen, ["a", "a", "b", "b"], "round robin still serves after {when}");
            assert_eq!(&*server.snapshot().pools["p"].balancer.name, "round-robin", "{when}");
        }
    };
    serving("start").await;

    // Not a component: bytes that start like one, then garbage.
    let (status, body) =
        call(admin, Method::PUT, "/api/v1/pools/p/balancer", None, full(&b"\0asm\x0d\0\x01\0garbage"[..])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not a valid component"), "{body}");
    serving("a bad component").await;

    // A component of another world (a health plugin).
    let (status, body) = swap_upload(admin, "p", &support::fixture("teapot"), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not a usable balancer component"), "{body}");
    serving("a wrong world").await;

    // A pack plugin of another role.
    let (status, body) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugin": "cookie" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("`cookie` is for `affinity`"), "{body}");

    // `configure` refuses its config.
    let bad_config = serde_json::json!({ "plugin": "consistent-hash", "config": { "key": "bogus" } });
    let (status, body) = swap_json(admin, "p", "balancer", bad_config).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("invalid config: key: `bogus`"), "{body}");
    serving("a failing configure").await;

    // Loads and configures, but answers ids that are not eligible in the dry run.
    let (status, body) = swap_upload(admin, "p", &support::fixture("bad-pick"), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("dry run against pool `p`: picked backend"), "{body}");
    serving("a dry run answering ineligible ids").await;

    // Malformed requests and unknown pools.
    let (status, _) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugn": "first" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = swap_json(admin, "nope", "balancer", serde_json::json!({ "plugin": "first" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(admin, Method::POST, "/api/v1/pools/p/balancer/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing was swapped: nothing to roll back to");
    serving("refused calls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_switches_at_once_and_a_rollback_goes_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();

    let (status, body) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugin": "first" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plugin"]["name"], "first");
    for key in ["load_ms", "dry_run_ms", "switch_ms"] {
        assert!(body[key].as_f64().unwrap() >= 0.0, "{key}: {body}");
    }
    assert_eq!(names(&client, &url, 4).await, ["a", "a", "a", "a"], "`first` places every request");
    let (_, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    assert_eq!(s["pools"][0]["balancer"]["name"], "first");

    let (status, body) = call(admin, Method::POST, "/api/v1/pools/p/balancer/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plugin"]["name"], "round-robin");
    let mut seen = names(&client, &url, 4).await;
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"], "round robin again");

    // A second rollback goes back to what the first one left.
    let (status, body) = call(admin, Method::POST, "/api/v1/pools/p/balancer/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(&client, &url, 3).await, ["a", "a", "a"]);
}

#[tokio::test]
async fn state_exported_by_the_old_version_is_imported_by_the_new_one() {
    // One thread (this test's runtime): one instance of each version, so the count is
    // the whole plugin's.
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let counter = support::fixture("counter");
    let pool = format!("balancer = {{ plugin = {:?} }}", counter.display().to_string());
    let server =
        support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr, c.addr], &pool))).await;
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    assert_eq!(names(&client, &url, 4).await, ["a", "b", "c", "a"], "count 0..4");

    // The same component again, uploaded: a new version, which continues at 4.
    let (status, body) = swap_upload(admin, "p", &counter, "?name=counter-v2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plugin"]["name"], "counter-v2");
    assert_eq!(names(&client, &url, 3).await, ["b", "c", "a"], "count 4..7, carried from the old version");

    // A version without the state interface in between starts fresh, and so does the
    // one after it (it has nothing to import).
    let (status, _) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugin": "first" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&client, &url, 2).await, ["a", "a"]);
    let (status, _) = swap_upload(admin, "p", &counter, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&client, &url, 2).await, ["a", "b"], "fresh: count 0..2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_under_load_lose_no_request_and_close_no_tunnel() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let proxy = server.addr("main").unwrap();
    let url = format!("http://{proxy}/");

    let mut sockets = Vec::with_capacity(50);
    for _ in 0..50 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
        sockets.push(ws);
    }

    // Keep-alive clients sending requests back to back through every swap.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let client = support::client();
                while !stop.load(Ordering::Relaxed) {
                    let res = client.request(Request::get(&url).body(support::empty()).unwrap()).await;
                    match res {
                        Ok(r) if r.status() == StatusCode::OK => {
                            support::body_text(r).await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let counter = support::fixture("counter").display().to_string();
    let client = support::client();
    for i in 0..100 {
        let (plugin, expect) = if i % 2 == 0 {
            (serde_json::json!({ "plugin": "first" }), "a")
        } else {
            (serde_json::json!({ "plugin": counter, "config": { "fixed": 1 } }), "b")
        };
        let (status, body) = swap_json(admin, "p", "balancer", plugin).await;
        assert_eq!(status, StatusCode::OK, "swap {i}: {body}");
        assert_eq!(names(&client, &url, 2).await, [expect, expect], "swap {i}: placed by the new plugin at once");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) >= 100, "the clients kept sending: {}", ok.load(Ordering::Relaxed));

    // Every tunnel is still open and still echoes.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("still here {i}"))).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(echo.ends_with(&format!(": still here {i}")), "{echo}");
    }
    let (_, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    let tunnels: u64 =
        s["pools"][0]["backends"].as_array().unwrap().iter().map(|b| b["tunnels"].as_u64().unwrap()).sum();
    assert_eq!(tunnels, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_takes_no_new_work_and_its_websockets_close() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let pool = "drain_spread_ms = 0\ndrain_deadline_ms = 2000";
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], pool))).await;
    let admin = server.admin_addr().unwrap();
    let proxy = server.addr("main").unwrap();
    let url = format!("http://{proxy}/");
    let client = support::client();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap().0);
    }

    let path = format!("/api/v1/pools/p/backends/{}/drain", a.addr);
    let (status, body) = call(admin, Method::POST, &path, None, support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tunnels_drained"], 1, "{body}");
    assert_eq!(names(&client, &url, 4).await, ["b", "b", "b", "b"]);
    // One of the two sockets went to `a` (round robin): it gets a close frame.
    let mut closed = 0;
    for ws in &mut sockets {
        if let Ok(Some(Ok(Message::Close(_)))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), ws.next()).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 1);
    let (_, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    assert_eq!(s["pools"][0]["backends"][0]["drained"], true);

    let (status, _) = call(admin, Method::POST, &path.replace("/drain", "/undrain"), None, support::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let mut seen = names(&client, &url, 4).await;
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);

    let (status, body) =
        call(admin, Method::POST, "/api/v1/pools/p/backends/127.0.0.1:1/drain", None, support::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_swapped_plugin_until_the_file_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = dir.path().join("weir.toml");
    let write = |pool_extra: &str| {
        let text = format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], pool_extra));
        std::fs::write(&config, text).unwrap();
    };
    write("");
    let server = weir::Server::start(weir::config::Config::load(&config).unwrap()).await.unwrap();
    let admin = server.admin_addr().unwrap();
    let (status, _) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugin": "first" })).await;
    assert_eq!(status, StatusCode::OK);

    // The pool's entry changes, but not its balancer: the swapped one stays.
    write("connect_timeout_ms = 2500");
    let (status, body) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!((status, &body["pools_changed"]), (StatusCode::OK, &serde_json::json!(1)), "{body}");
    assert_eq!(&*server.snapshot().pools["p"].balancer.name, "first");
    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());
    assert_eq!(names(&client, &url, 3).await, ["a", "a", "a"]);

    // The file names another balancer: the file wins, and there is nothing to roll back.
    write("connect_timeout_ms = 2500\nbalancer = { plugin = \"weighted-round-robin\" }");
    let (status, _) = call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&*server.snapshot().pools["p"].balancer.name, "weighted-round-robin");
    let (status, _) = call(admin, Method::POST, "/api/v1/pools/p/balancer/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// Runs the weir binary with `args`; returns whether it succeeded, and its stdout and stderr.
async fn weir(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_status_swaps_and_rolls_back_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "cli-token\n").unwrap();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let table = admin_table(&format!("token_file = {:?}", token.display().to_string()));
    let server = support::start(&format!("{table}{}", support::config_text(&[a.addr, b.addr], ""))).await;
    let url = format!("http://{}", server.admin_addr().unwrap());
    let token = token.display().to_string();
    let proxy = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();

    let (ok, out, err) = weir(&["status", "--admin", &url]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pool p: 2 eligible"), "{out}");
    assert!(out.contains("balancer  round-robin"), "{out}");
    assert!(out.contains(&a.addr.to_string()) && out.contains(&b.addr.to_string()), "{out}");

    // Without the token a swap is refused with the API's reason.
    let (ok, _, err) = weir(&["plugin", "swap", "--admin", &url, "--pool", "p", "--balancer", "first"]).await;
    assert!(!ok);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");

    let (ok, out, err) =
        weir(&["plugin", "swap", "--admin", &url, "--token-file", &token, "--pool", "p", "--balancer", "first"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("swapped: pool p balancer is now first"), "{out}");
    assert_eq!(names(&client, &proxy, 2).await, ["a", "a"]);

    // A file is uploaded, with its config.
    let counter = support::fixture("counter").display().to_string();
    let args = ["plugin", "swap", "--admin", &url, "--token-file", &token, "--pool", "p", "--balancer", &counter];
    let (ok, out, err) = weir(&[&args[..], &["--config", r#"{"fixed": 1}"#]].concat()).await;
    assert!(ok, "{err}");
    assert!(out.contains("is now counter.wasm"), "{out}");
    assert_eq!(names(&client, &proxy, 2).await, ["b", "b"]);

    let (ok, out, err) =
        weir(&["plugin", "rollback", "--admin", &url, "--token-file", &token, "--pool", "p", "--balancer"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("rolled back: pool p balancer is now first"), "{out}");
    assert_eq!(names(&client, &proxy, 2).await, ["a", "a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_plugin_file_that_changes_is_swapped_and_a_bad_one_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let plugin = dir.path().join("balancer.wasm");
    std::fs::copy(support::fixture("first-backend"), &plugin).unwrap();
    let pool = format!("balancer = {{ plugin = {:?}, config = {{ fixed = 1 }} }}", plugin.display().to_string());
    let text = support::config_text(&[a.addr, b.addr], &pool).replace("[plugins]\n", "[plugins]\nwatch = true\n");
    let server = support::start(&text).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    assert_eq!(names(&client, &url, 2).await, ["a", "a"], "first-backend answers backend 0");

    // A file that is not a component is logged and ignored.
    std::fs::write(&plugin, b"not wasm").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(names(&client, &url, 2).await, ["a", "a"], "the bad file changed nothing");

    // The counter fixture with `fixed = 1` (from the config) answers backend 1.
    let bytes = std::fs::read(support::fixture("counter")).unwrap();
    std::fs::write(&plugin, bytes).unwrap();
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen = names(&client, &url, 2).await;
        if seen == ["b", "b"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["b", "b"], "the changed file was swapped in");
}

/// The file watch follows health evaluators named by a path too: the pool's list is
/// swapped when one of its files changes. `teapot` holds a backend answering 500 healthy;
/// the pack's `threshold` written over the same file takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_health_plugin_file_that_changes_is_swapped() {
    use weir::core::Verdict;
    let dir = tempfile::tempdir().unwrap();
    let b0 = weir::demo::Backend::start("b0").await.unwrap();
    let b1 = weir::demo::Backend::start("b1").await.unwrap();
    let plugin = dir.path().join("health.wasm");
    std::fs::copy(support::fixture("teapot"), &plugin).unwrap();
    let pool = format!(
        "probe = {{ kind = \"http\", path = \"/healthz\", interval_ms = 50, timeout_ms = 40 }}\nhealth = [{{ plugin = {:?} }}]",
        plugin.display().to_string()
    );
    let text = support::config_text(&[b0.addr, b1.addr], &pool).replace("[plugins]\n", "[plugins]\nwatch = true\n");
    let server = support::start(&text).await;
    b0.set_health(500);
    // Under teapot only 418 is unhealthy: b0 keeps serving while its probes answer 500.
    // A second is twenty probes, where threshold (fall 3) takes b0 out in three.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(verdict(&server, 0), Verdict::Healthy, "teapot keeps b0");

    std::fs::write(&plugin, weir::plugin::pack::get("threshold").unwrap()).unwrap();
    within(10, "b0 unhealthy once threshold is swapped in", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let names = server.control().health_plugins("p");
    assert_eq!(names.len(), 1);
    assert_eq!(verdict(&server, 1), Verdict::Healthy, "b1 was never out");
}

/// A pool `p` over two demo backends probed every 50 ms on `/healthz` (200-399 pass), with
/// the pool's default evaluator (`threshold`), and the admin API.
async fn probed_pool() -> (Vec<weir::demo::Backend>, weir::Server) {
    let b0 = weir::demo::Backend::start("b0").await.unwrap();
    let b1 = weir::demo::Backend::start("b1").await.unwrap();
    let probe = r#"probe = { kind = "http", path = "/healthz", interval_ms = 50, timeout_ms = 40 }"#;
    let text = format!("{}{}", admin_table(""), support::config_text(&[b0.addr, b1.addr], probe))
        .replace("call_timeout_ms = 50", "call_timeout_ms = 50\nrebuild_timeout_ms = 200");
    let server = support::start(&text).await;
    (vec![b0, b1], server)
}

fn verdict(server: &weir::Server, i: usize) -> weir::core::Verdict {
    server.snapshot().pools["p"].view.members[i].live.verdict()
}

/// Polls `f` every 10 ms for up to `secs` seconds.
async fn within(secs: u64, what: &str, f: impl Fn() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not within {secs} s: {what}");
}

/// A health swap changes verdicts for real: a backend whose probe answers 500 is
/// unhealthy under `threshold` (500 is outside 200-399), healthy under the `teapot`
/// fixture (only 418 is unhealthy there), and unhealthy again after a rollback. The
/// health task keeps its probers through both (the probe count goes on), and status
/// shows the plugins in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_swap_changes_verdicts_and_a_rollback_restores_them() {
    use weir::core::Verdict;
    let (b, server) = probed_pool().await;
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    b[0].set_health(500);
    within(5, "b0 unhealthy under threshold", || verdict(&server, 0) == Verdict::Unhealthy).await;
    assert_eq!(names(&client, &url, 4).await, ["b1", "b1", "b1", "b1"]);

    // The swap itself changes no verdict: b0 stays out until teapot judges it.
    let (status, body) =
        swap_json(admin, "p", "health", serde_json::json!({ "plugin": support::fixture("teapot") })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "health");
    assert!(body["plugin"][0]["name"].as_str().unwrap().ends_with("teapot.wasm"), "{body}");
    assert_eq!(body["plugin"][0]["world"], "health-plugin");
    for key in ["load_ms", "dry_run_ms", "switch_ms"] {
        assert!(body[key].as_f64().unwrap() >= 0.0, "{key}: {body}");
    }
    within(5, "b0 healthy under teapot", || verdict(&server, 0) == Verdict::Healthy).await;
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("the probe answered 500"), "teapot decided: {reason}");
    let mut seen = names(&client, &url, 4).await;
    seen.sort();
    assert_eq!(seen, ["b0", "b0", "b1", "b1"]);
    let (_, s) = call(admin, Method::GET, "/api/v1/status", None, support::empty()).await;
    let health = s["pools"][0]["health"].as_array().unwrap();
    assert_eq!(health.len(), 1, "{s}");
    assert!(health[0]["name"].as_str().unwrap().ends_with("teapot.wasm"));
    assert_eq!(health[0]["sha256"].as_str().unwrap().len(), 64);
    assert!(health[0]["calls"].as_u64().unwrap() > 0, "the task calls the new plugin: {s}");
    assert!(health[0]["loaded_at"].as_str().unwrap().ends_with('Z'));

    // Back to threshold: a fresh instance, which finds b0's 500s again.
    let (status, body) = call(admin, Method::POST, "/api/v1/pools/p/health/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plugin"][0]["name"], "threshold");
    assert_eq!(body["plugin"][0]["world"], "health-batch-plugin");
    within(5, "b0 unhealthy under threshold again", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("consecutive probe failures (last: status 500)"), "{reason}");
    assert_eq!(verdict(&server, 1), Verdict::Healthy, "b1 was never out");
    // A list replaces the pool's whole list of evaluators.
    let list = serde_json::json!([{ "plugin": "threshold", "config": { "fall": 2 } }, { "plugin": "outlier" }]);
    let (status, body) = swap_json(admin, "p", "health", list).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.control().health_plugins("p").len(), 2);
    assert_eq!(verdict(&server, 0), Verdict::Unhealthy, "the swap kept b0's verdict");
}

/// A health swap that fails any step answers 4xx with the reason, and the evaluators in
/// force keep judging: a backend they hold unhealthy stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_swap_that_fails_any_step_is_refused_and_the_old_plugins_keep_judging() {
    use weir::core::Verdict;
    let (b, server) = probed_pool().await;
    let admin = server.admin_addr().unwrap();
    b[0].set_health(500);
    within(5, "b0 unhealthy under threshold", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let still = |when: &'static str| {
        let server = &server;
        async move {
            let plugins = server.control().health_plugins("p");
            assert_eq!(plugins.len(), 1, "{when}");
            assert_eq!(&*plugins[0].name, "threshold", "{when}");
            assert_eq!(verdict(server, 0), Verdict::Unhealthy, "{when}");
            // The probes go on and threshold still hears of them.
            let calls = plugins[0].stats.calls.get();
            within(5, when, || plugins[0].stats.calls.get() > calls).await;
        }
    };
    let health = |body: Body| call(admin, Method::PUT, "/api/v1/pools/p/health", None, body);

    let (status, body) = health(full(&b"\0asm\x0d\0\x01\0garbage"[..])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not a valid component"), "{body}");
    still("a bad component").await;

    // A balancer component is no health plugin.
    let (status, body) = health(full(std::fs::read(support::fixture("bad-pick")).unwrap())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not a usable health component"), "{body}");
    still("a wrong world").await;

    let (status, body) =
        swap_json(admin, "p", "health", serde_json::json!({ "plugin": "threshold", "config": { "rise": 0 } })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("invalid config: rise"), "{body}");
    still("a failing configure").await;

    // Loads and configures, then judges a backend the pool does not have.
    let stranger = serde_json::json!({ "plugin": support::fixture("health-broken"), "config": { "mode": "stranger" } });
    let (status, body) = swap_json(admin, "p", "health", stranger).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("dry run of health plugin") && error.contains("backend 4000000"), "{body}");
    still("a dry run naming a stranger").await;

    // One that traps in its dry run, inside a list: the whole list is refused.
    let list = serde_json::json!([{ "plugin": "outlier" }, { "plugin": support::fixture("health-broken") }]);
    let (status, body) = swap_json(admin, "p", "health", list).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("trapped"), "{body}");
    still("a dry run that traps").await;

    // Malformed bodies, limits out of range, nothing to roll back to.
    let (status, body) = swap_json(admin, "p", "health", serde_json::json!([])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let timeout = serde_json::json!({ "plugin": "threshold", "call_timeout_ms": 5 });
    let (status, body) = swap_json(admin, "p", "health", timeout).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("rebuild_timeout_ms"), "{body}");
    let memory = serde_json::json!({ "plugin": "threshold", "memory_limit_mib": 2048 });
    let (status, body) = swap_json(admin, "p", "health", memory).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("memory_limit_mib: 2048 is out of range"), "{body}");
    let (status, _) = call(admin, Method::POST, "/api/v1/pools/p/health/rollback", None, support::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing was swapped: nothing to roll back to");
    still("refused calls").await;
}

/// A pool that no health task watches (no probe, no health plugins) refuses a health
/// swap with 409 and says how to add checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_swap_on_a_pool_without_health_checks_is_refused() {
    let a = Upstream::start("a").await;
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let (status, body) = swap_json(admin, "p", "health", serde_json::json!({ "plugin": "outlier" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("has no health checks"), "{body}");
    assert!(server.control().health_plugins("p").is_empty());
}

/// An API swap takes the plugin's own limits, with the names and ranges of the file's
/// plugin entries; the swapped version runs under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_swap_takes_its_own_limits() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let body = serde_json::json!({ "plugin": "first", "memory_limit_mib": 8, "call_timeout_ms": "7ms" });
    let (status, answer) = swap_json(admin, "p", "balancer", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let balancer = server.snapshot().pools["p"].balancer.clone();
    assert_eq!(balancer.memory_limit(), 8 << 20);
    assert_eq!(balancer.call_timeout(), std::time::Duration::from_millis(7));
    let (status, answer) = swap_upload(admin, "p", &support::fixture("lenient"), "?memory_limit_mib=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let canary = serde_json::json!({ "plugin": "random", "percent": 10, "memory_limit_mib": 4, "call_timeout_ms": 3 });
    let (status, answer) = call(admin, Method::PUT, "/api/v1/pools/p/canary", None, full(canary.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let snapshot = server.snapshot();
    let limits = snapshot.pools["p"].config.canary.as_ref().unwrap().plugin.limits;
    assert_eq!(limits.memory_limit, Some(4 << 20));
    assert_eq!(limits.call_timeout, Some(std::time::Duration::from_millis(3)));
}

/// A dry run uses instances of its own: its picks are not counted as the plugin's calls,
/// and it does not move the pool's shared round-robin counter (the next live requests
/// go on where the rotation was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_not_counted_and_does_not_move_the_rotation() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let server =
        support::start(&format!("{}{}", admin_table(""), support::config_text(&[a.addr, b.addr, c.addr], ""))).await;
    let admin = server.admin_addr().unwrap();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    assert_eq!(names(&client, &url, 1).await, ["a"]);
    // 64 dry-run picks of a fresh round-robin would move a shared rotation by 64 (1 mod 3).
    let (status, body) = swap_json(admin, "p", "balancer", serde_json::json!({ "plugin": "round-robin" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plugin"]["calls"], 0, "{body}");
    assert_eq!(names(&client, &url, 3).await, ["b", "c", "a"], "the rotation goes on where it was");
    assert_eq!(server.snapshot().pools["p"].balancer.stats.calls.get(), 3);
}

/// The CLI swaps and rolls back health plugins; the plugin's config is `--plugin-config`
/// or `--config` (JSON, or a `.json` file), and a config file given as `--config` is
/// refused with a message that says what `--config` means here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_swaps_health_plugins_and_takes_the_plugin_config_as_json() {
    use weir::core::Verdict;
    let (b, server) = probed_pool().await;
    let url = format!("http://{}", server.admin_addr().unwrap());
    b[0].set_health(500);
    within(5, "b0 unhealthy under threshold", || verdict(&server, 0) == Verdict::Unhealthy).await;

    let teapot = support::fixture("teapot").display().to_string();
    let (ok, out, err) = weir(&["plugin", "swap", "--admin", &url, "--pool", "p", "--health", &teapot]).await;
    assert!(ok, "{err}");
    assert!(out.contains("swapped: pool p health is now teapot.wasm"), "{out}");
    within(5, "b0 healthy under teapot", || verdict(&server, 0) == Verdict::Healthy).await;

    let (ok, out, err) = weir(&["plugin", "rollback", "--admin", &url, "--pool", "p", "--health"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("rolled back: pool p health is now threshold"), "{out}");
    within(5, "b0 unhealthy again", || verdict(&server, 0) == Verdict::Unhealthy).await;

    // The plugin's config three ways; a refused one shows the plugin's reason.
    let swap = ["plugin", "swap", "--admin", &url, "--pool", "p", "--health", "threshold"];
    let (ok, _, err) = weir(&[&swap[..], &["--plugin-config", r#"{"rise": 0}"#]].concat()).await;
    assert!(!ok);
    assert!(err.contains("invalid config: rise"), "{err}");
    let (ok, out, err) = weir(&[&swap[..], &["--config", r#"{"rise": 3}"#]].concat()).await;
    assert!(ok, "{err}");
    assert!(out.contains("health is now threshold"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("threshold.json");
    std::fs::write(&json, r#"{"fall": 2}"#).unwrap();
    let (ok, _, err) = weir(&[&swap[..], &["--config", &json.display().to_string()]].concat()).await;
    assert!(ok, "{err}");
    let toml = dir.path().join("weir.toml");
    std::fs::write(&toml, "").unwrap();
    let (ok, _, err) = weir(&[&swap[..], &["--config", &toml.display().to_string()]].concat()).await;
    assert!(!ok);
    assert!(err.contains("--config is the plugin's config as JSON"), "{err}");
    let list = r#"[{"plugin": "threshold"}, {"plugin": "outlier"}]"#;
    let (ok, out, err) = weir(&["plugin", "swap", "--admin", &url, "--pool", "p", "--health", list]).await;
    assert!(ok, "{err}");
    assert!(out.contains("health is now threshold, outlier"), "{out}");
    assert_eq!(server.control().health_plugins("p").len(), 2);
}

/// A swap changes no verdict by itself: a backend the old evaluators hold unhealthy stays
/// out until the new ones judge it, or, when they say nothing about it (`outlier` ignores
/// probes), for `HOLD_ROUNDS` rounds of the larger of the tick and the probe interval;
/// then their silence counts as healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_swap_keeps_verdicts_until_the_new_plugins_judge() {
    use weir::core::Verdict;
    let b0 = weir::demo::Backend::start("b0").await.unwrap();
    let b1 = weir::demo::Backend::start("b1").await.unwrap();
    let extra =
        "probe = { kind = \"http\", path = \"/healthz\", interval_ms = 50, timeout_ms = 40 }\nhealth_tick_ms = 100";
    let text = format!("{}{}", admin_table(""), support::config_text(&[b0.addr, b1.addr], extra));
    let server = support::start(&text).await;
    let admin = server.admin_addr().unwrap();
    b0.set_health(500);
    within(5, "b0 unhealthy under threshold", || verdict(&server, 0) == Verdict::Unhealthy).await;

    let swapped = std::time::Instant::now();
    let (status, body) = swap_json(admin, "p", "health", serde_json::json!({ "plugin": "outlier" })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Held for 5 rounds of 100 ms from when the task took the new plugin over.
    let hold = std::time::Duration::from_millis(100) * weir::health::HOLD_ROUNDS;
    while swapped.elapsed() < hold / 2 {
        assert_eq!(verdict(&server, 0), Verdict::Unhealthy, "kept across the swap");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    within(5, "b0 healthy once the hold ends", || verdict(&server, 0) == Verdict::Healthy).await;
    assert!(swapped.elapsed() >= hold, "not before the hold ended: {:?}", swapped.elapsed());
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("outlier found nothing wrong since it was swapped in"), "{reason}");
    assert_eq!(verdict(&server, 1), Verdict::Healthy);
}
