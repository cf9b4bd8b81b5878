//! More than one worker (`[runtime] worker_threads = 2`): each a thread with a runtime of
//! its own and an accept loop for every listener. Both take connections; a reload adds and
//! removes listeners on all of them; `max_connections` holds across them; a graceful
//! shutdown lets requests in flight on any of them finish; dropping the server ends them;
//! a WebSocket's tunnel counts in its worker's load for the hand-off of new connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, Upstream};

const TWO_WORKERS: &str = "\n[runtime]\nworker_threads = 2\n";

fn config(text: &str) -> weir::config::Config {
    weir::config::Config::parse(text, None).unwrap()
}

/// One request on a new connection (`connection: close`): the backend's answer, or
/// `None` when nothing answered within 2 s.
async fn once(addr: SocketAddr, path: &str) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(addr);
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), connect).await else { return None };
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await.ok()?.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

#[tokio::test]
async fn both_workers_take_connections() {
    let a = Upstream::start("a").await;
    let server = support::start(&(support::config_text(&[a.addr], "") + TWO_WORKERS)).await;
    let proxy = server.addr("main").unwrap();
    assert_eq!(server.control().worker_connections(), vec![0, 0]);
    // Rounds of 32 clients at once, until each worker has taken some (a shared listener
    // gives each connection to whichever worker's accept comes first).
    let mut taken = Vec::new();
    for _ in 0..20 {
        let clients: Vec<_> = (0..32).map(|_| tokio::spawn(once(proxy, "/"))).collect();
        for c in clients {
            assert!(c.await.unwrap().is_some_and(|body| body.contains("a: GET /")), "every client is served");
        }
        taken = server.control().worker_connections();
        if taken.iter().all(|&n| n > 0) {
            break;
        }
    }
    assert!(taken.iter().all(|&n| n > 0), "each worker accepted connections: {taken:?}");
    assert_eq!(taken.iter().sum::<u64>() % 32, 0, "every connection counted once: {taken:?}");
}

/// Opens a connection and has one keep-alive request answered on it; the connection is
/// kept open.
async fn kept(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /kept HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("a: GET /kept") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before its answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    s
}

#[tokio::test]
async fn a_burst_of_keep_alive_connections_is_spread_over_the_workers() {
    let a = Upstream::start("a").await;
    let server = support::start(&(support::config_text(&[a.addr], "") + TWO_WORKERS)).await;
    let proxy = server.addr("main").unwrap();
    // 16 connections at once, as a client pool opens them, all kept: whichever worker
    // accepts first takes the burst from the shared socket, and hands each connection
    // to the other worker while it serves more than one more than it.
    let connections = futures_util::future::join_all((0..16).map(|_| kept(proxy))).await;
    let taken = server.control().worker_connections();
    assert_eq!(taken.iter().sum::<u64>(), 16, "{taken:?}");
    assert!(taken.iter().all(|&n| n >= 6), "each worker serves a fair share: {taken:?}");
    // Both serve their connections' next requests.
    for mut c in connections {
        c.write_all(b"GET /again HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("a: GET /again"), "{}", String::from_utf8_lossy(&answer));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_in_their_workers_load() {
    let backend = support::websocket_echo().await;
    let server = support::start(&(support::config_text(&[backend], "") + TWO_WORKERS)).await;
    let proxy = server.addr("main").unwrap();
    // Opened one after another: each HTTP/1.1 connection ends at its upgrade, and its
    // tunnel stays on the worker that served it, for as long as the client keeps it.
    let mut open = Vec::new();
    for i in 0..6 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/")).await.unwrap();
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), format!("hello {i}"));
        open.push(ws);
    }
    let control = server.control();
    support::eventually("the six tunnels are what the workers serve", || {
        control.worker_serving().iter().sum::<usize>() == 6
    })
    .await;
    // So new connections went to the worker with fewer tunnels, not to whichever
    // accepted first.
    let serving = control.worker_serving();
    assert!(serving.iter().all(|&n| n >= 2), "each worker carries a share of the tunnels: {serving:?}");
    for mut ws in open {
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    support::eventually("closed tunnels are no longer counted", || control.worker_serving().iter().sum::<usize>() == 0)
        .await;
}

#[tokio::test]
async fn a_reload_adds_and_removes_a_listener_on_every_worker() {
    let a = Upstream::start("workers-reload").await;
    let listener = |name: &str| format!("[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n");
    let pool = format!("[pool.p]\nbackends = [{{ address = \"{}\" }}]\n{TWO_WORKERS}", a.addr);
    let server = support::start(&format!("{}\n{pool}", listener("one"))).await;
    let one = server.addr("one").unwrap();

    let applied = server.reload(config(&format!("{}\n{}\n{pool}", listener("one"), listener("two")))).await.unwrap();
    assert_eq!(applied.listeners_bound, 1);
    let two = server.addr("two").expect("the added listener is bound");
    // Many connections, so that both workers' accept loops serve the new listener.
    let served = futures_util::future::join_all((0..32).map(|_| once(two, "/"))).await;
    assert!(served.iter().all(|s| s.as_ref().is_some_and(|b| b.contains("workers-reload"))), "{served:?}");

    let applied = server.reload(config(&format!("{}\n{pool}", listener("two")))).await.unwrap();
    assert_eq!(applied.listeners_closed, 1);
    assert!(server.addr("one").is_none());
    // No worker still accepts on the removed listener.
    for _ in 0..8 {
        assert!(once(one, "/").await.is_none_or(|b| !b.contains("workers-reload")), "the removed listener serves");
    }
    let served = futures_util::future::join_all((0..32).map(|_| once(two, "/"))).await;
    assert!(served.iter().all(Option::is_some), "the kept listener still serves on every worker");
}

#[tokio::test]
async fn max_connections_holds_across_the_workers() {
    let a = Upstream::start("a").await;
    let mut text = support::config_text(&[a.addr], "");
    text = text.replace("pool = \"p\"\n\n[pool.p]", "pool = \"p\"\nmax_connections = 2\n\n[pool.p]") + TWO_WORKERS;
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    // Two slow requests hold the two slots; a third client waits in the listen queue.
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(once(proxy, "/delay?ms=800"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let third = once(proxy, "/").await;
    assert!(third.is_some(), "the third client is served once a slot is free");
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited for a slot: {:?}", started.elapsed());
    for s in slow {
        assert!(s.await.unwrap().is_some());
    }
    // With the slots free again, clients at once up to the limit are served together.
    let served = futures_util::future::join_all((0..2).map(|_| once(proxy, "/delay?ms=100"))).await;
    assert!(served.iter().all(Option::is_some), "{served:?}");
}

#[tokio::test]
async fn a_graceful_shutdown_lets_requests_in_flight_on_every_worker_finish() {
    let a = Upstream::start("workers-shutdown").await;
    let server = Arc::new(support::start(&(support::config_text(&[a.addr], "") + TWO_WORKERS)).await);
    let proxy = server.addr("main").unwrap();
    let slow: Vec<_> = (0..16).map(|_| tokio::spawn(once(proxy, "/delay?ms=600"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let taken = server.control().worker_connections();
    assert_eq!(taken.iter().sum::<u64>(), 16, "{taken:?}");
    let started = std::time::Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() >= Duration::from_millis(250), "shutdown waited for them: {:?}", started.elapsed());
    for s in slow {
        let body = s.await.unwrap();
        assert!(body.is_some_and(|b| b.contains("workers-shutdown")), "a request in flight was answered");
    }
    assert!(once(proxy, "/").await.is_none_or(|b| !b.contains("workers-shutdown")), "no longer serving");
}

#[tokio::test]
async fn dropping_the_server_ends_its_workers_connections() {
    let a = Upstream::start("a").await;
    let server = support::start(&(support::config_text(&[a.addr], "") + TWO_WORKERS)).await;
    let proxy = server.addr("main").unwrap();
    let slow: Vec<_> = (0..8).map(|_| tokio::spawn(once(proxy, "/delay?ms=5000"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    drop(server);
    for s in slow {
        assert!(s.await.unwrap().is_none(), "a dropped server answers nothing more");
    }
    assert!(started.elapsed() < Duration::from_millis(1500), "its connections closed at once: {:?}", started.elapsed());
}
