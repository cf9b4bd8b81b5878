//! Session affinity through the proxy: the `cookie`, `header` and `source-ip` plugins
//! pin returning clients (WebSocket reconnects included) to their backend, with real
//! WebSocket clients and the demo backends, which prefix every echo with their name.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support;

/// Three demo backends.
async fn backends() -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for name in ["demo-1", "demo-2", "demo-3"] {
        addrs.push(weir::demo::spawn_backend(name).await.unwrap());
    }
    addrs
}

/// A signing key in a file of its own; the directory lives as long as the returned guard.
fn key_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("affinity.key");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    let path = path.display().to_string();
    (dir, path)
}

fn cookie_pool(key_file: &str) -> String {
    format!(
        "balancer = {{ plugin = \"round-robin\" }}\naffinity = {{ plugin = \"cookie\", config = {{ name = \"W\", key_file = {key_file:?} }} }}"
    )
}

/// Opens a WebSocket through `proxy` with an optional `Cookie` header, sends one line and
/// returns the backend that echoed it and the `Set-Cookie` the `101` carried.
async fn ws_visit(proxy: SocketAddr, cookie: Option<&str>) -> (String, Option<String>) {
    let mut req = format!("ws://{proxy}/chat").into_client_request().unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", HeaderValue::from_str(c).unwrap());
    }
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    let set_cookie = res.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    ws.send(Message::text("hi")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let backend = echo.strip_suffix(": hi").unwrap().to_owned();
    let _ = ws.close(None).await;
    (backend, set_cookie)
}

/// `W=value` from a `Set-Cookie` line.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_pins_websocket_reconnects_and_ignores_forgeries() {
    let addrs = backends().await;
    let (_dir, key) = key_file();
    let server = support::start(&support::config_text(&addrs, &cookie_pool(&key))).await;
    let proxy = server.addr("main").unwrap();

    let (home, set_cookie) = ws_visit(proxy, None).await;
    let set_cookie = set_cookie.expect("the 101 of a first visit sets the affinity cookie");
    assert!(set_cookie.starts_with("W="), "{set_cookie}");
    assert!(set_cookie.contains("; Path=/") && set_cookie.contains("; HttpOnly"), "{set_cookie}");
    let cookie = cookie_pair(&set_cookie);

    // Round robin alone would rotate over the three; the cookie holds every reconnect.
    for i in 0..20 {
        let (backend, again) = ws_visit(proxy, Some(&cookie)).await;
        assert_eq!(backend, home, "reconnect {i} left its backend");
        assert_eq!(again, None, "a pinned client is not sent a new cookie");
    }

    // A forged cookie (another backend's id, this tag) is ignored: the balancer picks and
    // a fresh, valid cookie replaces it. Round robin then visits every backend.
    let value = cookie.strip_prefix("W=").unwrap();
    let (_, rest) = value.split_once('.').unwrap();
    let forged = format!("W={}.{rest}", "0123456789abcdef");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (backend, fresh) = ws_visit(proxy, Some(&forged)).await;
        let fresh = fresh.expect("a forged cookie is replaced");
        assert_ne!(cookie_pair(&fresh), forged);
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 3, "forged cookies were placed by round robin: {seen:?}");
    // So is a tampered tag, and garbage.
    let tampered = format!("{}{}", &cookie[..cookie.len() - 1], if cookie.ends_with('0') { '1' } else { '0' });
    for bad in [tampered.as_str(), "W=", "W=zz.zz.zz", "W=..........", "W=%00&x"] {
        let (_, fresh) = ws_visit(proxy, Some(bad)).await;
        assert!(fresh.is_some(), "{bad:?} was accepted");
    }
    let stats = &server.snapshot().pools["p"].affinity.clone().unwrap().stats;
    assert_eq!(stats.traps.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_moves_when_its_backend_is_removed_and_survives_restart_and_reordering() {
    let addrs = backends().await;
    let (_dir, key) = key_file();
    let server = support::start(&support::config_text(&addrs, &cookie_pool(&key))).await;
    let proxy = server.addr("main").unwrap();
    let (home, set_cookie) = ws_visit(proxy, None).await;
    let cookie = cookie_pair(&set_cookie.unwrap());

    // Another weir sharing the key, with the backends listed in reverse: the cookie names
    // the backend by its address, so it still lands home.
    let reversed: Vec<SocketAddr> = addrs.iter().rev().copied().collect();
    let other = support::start(&support::config_text(&reversed, &cookie_pool(&key))).await;
    for _ in 0..5 {
        let (backend, again) = ws_visit(other.addr("main").unwrap(), Some(&cookie)).await;
        assert_eq!((backend.as_str(), again), (home.as_str(), None));
    }

    // Remove the pinned backend: the next connect goes elsewhere and gets a new cookie,
    // which then pins there.
    let home_index: usize = home.strip_prefix("demo-").unwrap().parse::<usize>().unwrap() - 1;
    let rest: Vec<SocketAddr> = addrs.iter().enumerate().filter(|(i, _)| *i != home_index).map(|(_, a)| *a).collect();
    let config = weir::config::Config::parse(&support::config_text(&rest, &cookie_pool(&key)), None).unwrap();
    server.reload(config).await.unwrap();
    let (moved, fresh) = ws_visit(proxy, Some(&cookie)).await;
    assert_ne!(moved, home);
    let fresh = cookie_pair(&fresh.expect("a client whose backend left gets a new cookie"));
    assert_ne!(fresh, cookie);
    for _ in 0..5 {
        assert_eq!(ws_visit(proxy, Some(&fresh)).await, (moved.clone(), None));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_options_shape_the_header_and_a_fresh_cookie_is_not_reissued() {
    let addrs = backends().await;
    let (_dir, key) = key_file();
    let pool = format!(
        "affinity = {{ plugin = \"cookie\", config = {{ name = \"S\", key_file = {key:?}, max_age_s = 600, secure = true, http_only = false, same_site = \"Strict\", domain = \"example.com\", path = \"/app\" }} }}"
    );
    let server = support::start(&support::config_text(&addrs, &pool)).await;
    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let req = http::Request::get(&url).body(support::empty()).unwrap();
    let res = client.request(req).await.unwrap();
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("S="), "{set_cookie}");
    for part in ["; Path=/app", "; Max-Age=600", "; Domain=example.com", "; Secure", "; SameSite=Strict"] {
        assert!(set_cookie.contains(part), "{part} missing: {set_cookie}");
    }
    assert!(!set_cookie.contains("HttpOnly"), "{set_cookie}");
    // Plain HTTP requests with the cookie stay pinned and get no new cookie while it is
    // fresh (less than half its max age old).
    let cookie = cookie_pair(&set_cookie);
    drop(res);
    let mut bodies = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let req = http::Request::get(&url).header("cookie", &cookie).body(support::empty()).unwrap();
        let res = client.request(req).await.unwrap();
        assert!(res.headers().get("set-cookie").is_none());
        bodies.insert(support::body_text(res).await);
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cookie_config_is_a_load_error_naming_pool_and_key() {
    let addrs = backends().await;
    for (config, expected) in [
        ("{ key = \"short\" }", "key: 5 bytes"),
        ("{ same_site = \"None\" }", "same_site"),
        ("{ name = \"a b\" }", "name"),
        ("{ nmae = \"x\" }", "nmae"),
    ] {
        let text = support::config_text(&addrs, &format!("affinity = {{ plugin = \"cookie\", config = {config} }}"));
        let config = weir::config::Config::parse(&text, None).unwrap();
        let err = weir::Server::start(config).await.unwrap_err().to_string();
        assert!(err.contains("pool `p`") && err.contains("affinity `cookie`") && err.contains(expected), "{err}");
    }
    // A balancer is not an affinity plugin and vice versa: an error naming the key and line.
    let text = support::config_text(&addrs, "affinity = { plugin = \"p2c\" }");
    let config = weir::config::Config::parse(&text, None).unwrap();
    let err = weir::Server::start(config).await.unwrap_err().to_string();
    assert!(err.starts_with("<inline>:12:"), "{err}");
    assert!(err.contains("pool.p.affinity.plugin") && err.contains("`p2c` is for `balancer`"), "{err}");
    let text = support::config_text(&addrs, "balancer = { plugin = \"round-rabin\" }");
    let err = weir::Server::start(weir::config::Config::parse(&text, None).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("pool.p.balancer.plugin") && err.contains("no plugin `round-rabin` in the pack"), "{err}");
    assert!(err.contains("the pack's balancer plugins: ") && err.contains("round-robin"), "{err}");
    let text =
        support::config_text(&addrs, "affinity = { plugin = \"cookie\", config = { key_file = \"/nonexistent/k\" } }");
    let err = weir::config::Config::parse(&text, None).unwrap_err().to_string();
    assert!(err.contains("pool.p.affinity.config.key_file") && err.contains("cannot read /nonexistent/k"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_stick_table_pins_sessions_and_open_tunnels_keep_entries_alive() {
    let addrs = backends().await;
    let pool = "balancer = { plugin = \"round-robin\" }\naffinity = { plugin = \"header\", config = { name = \"X-Session\", ttl_s = 1 } }";
    let server = support::start(&support::config_text(&addrs, pool)).await;
    let proxy = server.addr("main").unwrap();
    let client = support::client();
    let url = format!("http://{proxy}/");
    let visit = |session: Option<&'static str>| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut req = http::Request::get(&url);
            if let Some(s) = session {
                req = req.header("x-session", s);
            }
            support::body_text(client.request(req.body(support::empty()).unwrap()).await.unwrap()).await
        }
    };
    // Each session stays on its backend; without the header round robin rotates.
    let a = visit(Some("alice")).await;
    let b = visit(Some("bob")).await;
    for _ in 0..10 {
        assert_eq!(visit(Some("alice")).await, a);
        assert_eq!(visit(Some("bob")).await, b);
    }
    let anonymous: std::collections::BTreeSet<String> =
        futures_util::future::join_all((0..6).map(|_| visit(None))).await.into_iter().collect();
    assert_eq!(anonymous.len(), 3, "{anonymous:?}");

    // A WebSocket opened in session `carol` holds its entry past the 1 s TTL.
    let table = server.snapshot().pools["p"].view.live.stick_table_named("header:x-session").unwrap();
    let mut req = format!("ws://{proxy}/chat").into_client_request().unwrap();
    req.headers_mut().insert("x-session", HeaderValue::from_static("carol"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let carol = ws.next().await.unwrap().unwrap().into_text().unwrap().strip_suffix(": hi").unwrap().to_owned();
    assert_eq!(table.holds.load(std::sync::atomic::Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(visit(Some("carol")).await.trim_end(), format!("{carol}: GET /"), "the open tunnel kept carol's entry");
    assert_eq!(table.len(), 1, "alice's and bob's entries expired, carol's is held");
    let _ = ws.close(None).await;
    drop(ws);
    // Closing the tunnel starts the TTL; then the entry goes.
    for _ in 0..100 {
        if table.holds.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(table.holds.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(table.len(), 1, "the TTL runs from the tunnel's close");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(table.is_empty(), "{} entries left", table.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_pins_every_request_of_a_client() {
    let addrs = backends().await;
    let pool = "balancer = { plugin = \"round-robin\" }\naffinity = { plugin = \"source-ip\" }";
    let server = support::start(&support::config_text(&addrs, pool)).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    let first = support::get(&client, &url).await.1;
    for _ in 0..10 {
        assert_eq!(support::get(&support::client(), &url).await.1, first, "same client IP, same backend");
    }
    let (backend, _) = ws_visit(server.addr("main").unwrap(), None).await;
    assert_eq!(format!("{backend}: GET /\n"), first);
}

/// `weir demo`'s sticky route, with the example script it prints (Python's `websockets`
/// as the client): every reconnect lands on the first visit's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_sticky_websocket() {
    let text = weir::demo::config("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = weir::Server::start(weir::config::Config::parse(&text, None).unwrap()).await.unwrap();
    let url = format!("ws://{}/sticky", server.addr("demo").unwrap());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sticky_websocket.py");
    let out = tokio::process::Command::new("/usr/bin/python3").args([script, &url, "5"]).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("5 of 5 reconnects landed on demo-"), "{stdout}");
    assert!(!stdout.contains("new cookie"), "{stdout}");
    // The demo's default route still rotates.
    let proxy = server.addr("demo").unwrap();
    let (a, _) = ws_visit(proxy, None).await;
    let (b, _) = ws_visit(proxy, None).await;
    assert_ne!(a, b, "round robin on /");
}
