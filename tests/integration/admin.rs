//! The admin API on a real listener: status, bearer tokens, reloads, limits and errors.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
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
