//! The HTTP/1.1 proxy: balancing, retries, errors, headers and streaming.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use weir::demo::Repeat;

use crate::support::{self, Upstream, Weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_300_requests_exactly() {
    let ups = [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = support::start(&support::config_text(&addrs, "balancer = { plugin = \"round-robin\" }")).await;
    let url = format!("http://{}/", server.addr("main").unwrap());

    // Concurrent clients, so the picks run on both worker threads' plugin instances.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = support::client();
            let mut seen = Vec::new();
            for _ in 0..50 {
                let (status, body) = support::get(&client, &url).await;
                assert_eq!(status, StatusCode::OK);
                seen.push(support::name_of(&body).to_owned());
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for name in t.await.unwrap() {
            *counts.entry(name).or_default() += 1;
        }
    }
    let runtime = server.snapshot();
    let stats = &runtime.pools["p"].balancer.stats;
    let failed = stats.traps.load(std::sync::atomic::Ordering::Relaxed)
        + stats.errors.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "every request was placed by the plugin, none by the fallback");
    // One call per request, counted on whichever worker thread made it.
    assert_eq!(stats.calls.get(), 300);
    assert_eq!(counts, HashMap::from([("a".into(), 100), ("b".into(), 100), ("c".into(), 100)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_backend() {
    let up = Upstream::start("alive").await;
    let dead = support::dead_addr().await;
    let server = support::start(&support::config_text(&[dead, up.addr], "")).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..10 {
        let (status, body) = support::get(&client, &url).await;
        assert_eq!((status, support::name_of(&body)), (StatusCode::OK, "alive"));
    }
    let runtime = server.snapshot();
    let pool = &runtime.pools["p"];
    let failures = pool.view.members[0].live.connect_failures.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        failures >= 5,
        "the dead backend was tried ({failures} connect failures) and every request still succeeded"
    );
}

#[tokio::test]
async fn only_dead_backends_give_502_and_no_eligible_gives_503() {
    let dead = support::dead_addr().await;
    let server = support::start(&support::config_text(&[dead], "")).await;
    let client = support::client();
    let (status, body) = support::get(&client, &format!("http://{}/", server.addr("main").unwrap())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with("weir: cannot connect"), "{body}");
    assert_eq!(body.lines().count(), 1);

    let up = Upstream::start("x").await;
    let text = support::config_text(&[up.addr], "")
        .replace(&format!("\"{}\" }}", up.addr), &format!("\"{}\", weight = 0 }}", up.addr));
    let server = support::start(&text).await;
    let (status, body) = support::get(&client, &format!("http://{}/", server.addr("main").unwrap())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "weir: no eligible backend in pool `p`\n");
}

#[tokio::test]
async fn forwarded_headers_reach_the_backend_and_hop_by_hop_do_not() {
    let up = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let req = Request::get(format!("http://{proxy}/headers"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "192.0.2.9")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .body(http_body_util::Empty::new().map_err(|e: std::convert::Infallible| match e {}).boxed())
        .unwrap();
    let res = support::client().request(req).await.unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("x-forwarded-for: 192.0.2.9, 127.0.0.1\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: http\n"), "{text}");
    assert!(text.contains("x-forwarded-host: shop.example\n"), "{text}");
    assert!(text.contains("host: shop.example\n"), "{text}");
    assert!(!text.contains("x-private"), "{text}");
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let up = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let raw = move |head: String| {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let big = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(70 << 10));
    let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    let (big, many) = tokio::task::spawn_blocking(move || (raw(big), raw(many))).await.unwrap();
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert!(many.starts_with("HTTP/1.1 431"), "{many}");
}

/// Resident memory figures of a process, in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mib_both_ways_with_bounded_memory() {
    const SIZE: u64 = 100 << 20;
    let up = Upstream::start("s").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, support::config_text(&[up.addr], "")).unwrap();
    let weir = tokio::task::spawn_blocking(move || Weir::run(&path)).await.unwrap();
    let (pid, addr) = (weir.pid(), weir.addr());
    let client = support::client();
    // Warm up (loads the plugin instance on the worker threads), then take the baseline.
    for _ in 0..4 {
        support::get(&client, &format!("http://{addr}/")).await;
    }
    let baseline = vm_kib(pid, "VmRSS:");
    // Reset the peak-RSS mark, so start-up (compiling a plugin) does not count.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    let req = Request::post(format!("http://{addr}/upload"))
        .body(Repeat::new(SIZE).map_err(|e: std::convert::Infallible| match e {}).boxed())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let got = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&got).unwrap(), SIZE.to_string());

    let req = Request::get(format!("http://{addr}/download?bytes={SIZE}"))
        .body(http_body_util::Empty::new().map_err(|e: std::convert::Infallible| match e {}).boxed())
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(total, SIZE);

    let peak = vm_kib(pid, "VmHWM:");
    drop(weir);
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    assert!(grew_mib < 32, "proxy peak RSS grew {grew_mib} MiB while streaming 2 x 100 MiB (baseline {baseline} KiB)");
}

#[tokio::test]
async fn slow_backend_gets_504_and_idle_client_is_closed() {
    let up = Upstream::start("slow").await;
    let text = support::config_text(&[up.addr], "response_timeout_ms = 300")
        .replace("listen = \"127.0.0.1:0\"\n", "listen = \"127.0.0.1:0\"\nheader_read_timeout_ms = 300\n");
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let (status, body) = support::get(&support::client(), &format!("http://{proxy}/stall")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.starts_with("weir: backend"), "{body}");

    // A client that connects and says nothing is closed by the header-read timeout.
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        (n, started.elapsed())
    })
    .await
    .unwrap();
    assert!(closed.1 < std::time::Duration::from_secs(5), "idle connection was held {:?}", closed.1);
}

/// `worker_threads = 1` runs weir on tokio's current-thread runtime (issue 16): the binary
/// on it proxies 64 requests at once on kept connections, balances them exactly, reloads
/// its file on SIGHUP (the reload runs beside the traffic on the one thread) and stops on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_proxies_concurrent_requests_reloads_and_stops() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = |addrs: &[std::net::SocketAddr]| {
        format!(
            "[runtime]\nworker_threads = 1\n\n{}",
            support::config_text(addrs, "balancer = { plugin = \"round-robin\" }")
        )
    };
    std::fs::write(&path, text(&[a.addr, b.addr])).unwrap();
    let run_path = path.clone();
    let mut weir = tokio::task::spawn_blocking(move || Weir::run(&run_path)).await.unwrap();
    let (pid, addr) = (weir.pid().to_string(), weir.addr());
    let running = weir.start_logs.last().unwrap();
    let workers = running["fields"]["worker_threads"].as_u64().unwrap();
    assert_eq!(workers, 1);
    let client = support::client();
    let url = format!("http://{addr}/");
    let mut batch = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, url) = (client.clone(), url.clone());
        batch.spawn(async move { support::get(&client, &url).await });
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Some(r) = batch.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        *seen.entry(support::name_of(&body).to_owned()).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([("a".to_owned(), 32), ("b".to_owned(), 32)]));

    std::fs::write(&path, text(&[b.addr])).unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut only_b = false;
    for _ in 0..100 {
        let (_, first) = support::get(&client, &url).await;
        let (_, second) = support::get(&client, &url).await;
        if support::name_of(&first) == "b" && support::name_of(&second) == "b" {
            only_b = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(only_b, "SIGHUP did not reload the file");

    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || weir.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status}");
}
