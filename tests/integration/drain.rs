//! Graceful drain of WebSockets: a backend that leaves the pool on a reload, or weir
//! shutting down on SIGTERM, sends each open WebSocket a close frame `1001`, spread over
//! `drain_spread_ms`; tunnels still open at `drain_deadline_ms` are cut; a reload that
//! keeps a backend touches none of its tunnels.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket through `proxy` and returns it with the backend that echoed a line.
async fn open(proxy: SocketAddr) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let backend = echo.strip_suffix(": hi").unwrap().to_owned();
    (ws, backend)
}

/// Waits for the next message and returns the close code if it is a close frame.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => Some(frame.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Waits for every client's close frame, asserts each is `1001 Going Away`, lets each
/// client answer it (tungstenite does) until its connection ends, and returns when each
/// close arrived after `started`, sorted.
async fn closed_with_1001(clients: Vec<Ws>, started: Instant) -> Vec<Duration> {
    let waits = clients.into_iter().map(|mut ws| async move {
        let code = close_code(&mut ws).await;
        let at = started.elapsed();
        while let Some(Ok(_)) = ws.next().await {}
        (code, at)
    });
    let results = futures_util::future::join_all(waits).await;
    assert!(results.iter().all(|(code, _)| *code == Some(CloseCode::Away)), "{results:?}");
    let mut times: Vec<Duration> = results.into_iter().map(|(_, at)| at).collect();
    times.sort();
    times
}

fn pool(drain: &str) -> String {
    format!("balancer = {{ plugin = \"first\" }}\n{drain}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_backend_closes_its_websockets_with_1001_spread_over_the_window() {
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 1000\ndrain_deadline_ms = 4000";
    let server = support::start(&support::config_text(&[a, b], &pool(drain))).await;
    let proxy = server.addr("main").unwrap();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (ws, backend) = open(proxy).await;
        assert_eq!(backend, "demo-a", "`first` fills the first backend");
        clients.push(ws);
    }
    let live_a = server.snapshot().pools["p"].view.members[0].live.clone();
    assert_eq!(live_a.tunnels(), 20);

    let started = Instant::now();
    let config = weir::config::Config::parse(&support::config_text(&[b], &pool(drain)), None).unwrap();
    server.reload(config).await.unwrap();
    let times = closed_with_1001(clients, started).await;
    assert!(*times.last().unwrap() < Duration::from_millis(1_500), "all within the 1 s window (+slack): {times:?}");
    let early = times.iter().filter(|t| **t < Duration::from_millis(100)).count();
    assert!(early <= 4, "{early} of 20 closed in the first 10% of the window: {times:?}");
    assert!(times[19] - times[0] >= Duration::from_millis(700), "not spread: {times:?}");

    // New work goes to the remaining backend; the drained tunnels are gone.
    assert_eq!(open(proxy).await.1, "demo-b");
    support::eventually("demo-a's tunnels ended", || live_a.tunnels() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_backend_touches_none_of_its_tunnels() {
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 0\ndrain_deadline_ms = 100";
    let server = support::start(&support::config_text(&[a], &pool(drain))).await;
    let (mut ws, _) = open(server.addr("main").unwrap()).await;
    // Add a backend and change the balancer: `a` stays, so its tunnel stays.
    let config = weir::config::Config::parse(
        &support::config_text(&[b, a], &format!("balancer = {{ plugin = \"least-connections\" }}\n{drain}")),
        None,
    )
    .unwrap();
    server.reload(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-a: still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_the_close_is_cut_at_the_deadline() {
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 0\ndrain_deadline_ms = 600";
    let server = support::start(&support::config_text(&[a, b], &pool(drain))).await;
    // This client never reads again, so it never answers the close frame.
    let (mut deaf, _) = open(server.addr("main").unwrap()).await;
    let live_a = server.snapshot().pools["p"].view.members[0].live.clone();
    let config = weir::config::Config::parse(&support::config_text(&[b], &pool(drain)), None).unwrap();
    server.reload(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live_a.tunnels(), 1, "held until the deadline");
    support::eventually("the deaf tunnel was cut", || live_a.tunnels() == 0).await;
    // What it was sent before the cut: the close frame, then the end of the connection.
    assert_eq!(close_code(&mut deaf).await, Some(CloseCode::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_8_mib_echo_arrives_whole_before_the_close() {
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 0\ndrain_deadline_ms = 10000";
    let server = support::start(&support::config_text(&[a, b], &pool(drain))).await;
    let (mut ws, _) = open(server.addr("main").unwrap()).await;
    // An 8 MiB echo: the client does not read it yet, so it stalls in the socket buffers
    // with the proxy part-way through the frame when the drain begins.
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config = weir::config::Config::parse(&support::config_text(&[b], &pool(drain)), None).unwrap();
    server.reload(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The whole frame first, intact (tungstenite checks the framing), then the close.
    let echo = ws.next().await.unwrap().unwrap();
    assert!(echo.is_binary());
    assert!(echo.into_data() == big, "the echo arrived damaged");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_websocket_then_exits() {
    let backend = weir::demo::spawn_backend("demo-a").await.unwrap();
    let listen = support::dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"{listen}\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{backend}\" }}]\ndrain_spread_ms = 800\ndrain_deadline_ms = 5000\n",
        support::cache_dir().display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..100 {
        if let Ok(Ok(pair)) = tokio::time::timeout(Duration::from_millis(200), async {
            tokio_tungstenite::connect_async(format!("ws://{listen}/chat")).await
        })
        .await
        {
            clients.push(pair.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clients.len(), 1, "weir did not start listening");
    for _ in 0..9 {
        clients.push(open(listen).await.0);
    }
    let started = Instant::now();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let times = closed_with_1001(clients, started).await;
    assert!(times[9] - times[0] >= Duration::from_millis(500), "not spread: {times:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

/// A WebSocket backend that, once a client connects, sends one 100,000-byte binary frame
/// slowly: its header, then ten pieces of payload 100 ms apart.
async fn slow_frame_backend() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                let raw = ws.get_mut();
                let mut header = vec![0x82, 127];
                header.extend(100_000u64.to_be_bytes());
                raw.write_all(&header).await.unwrap();
                for i in 0..10u8 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = raw.write_all(&[i; 10_000]).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_due_in_the_middle_of_a_frame_waits_for_its_end() {
    let slow = slow_frame_backend().await;
    let other = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 0\ndrain_deadline_ms = 10000";
    let server = support::start(&support::config_text(&[slow, other], &pool(drain))).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/", server.addr("main").unwrap())).await.unwrap();
    // The frame is a third through when the drain begins.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let config = weir::config::Config::parse(&support::config_text(&[other], &pool(drain)), None).unwrap();
    server.reload(config).await.unwrap();
    let frame = ws.next().await.unwrap().unwrap().into_data();
    let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 10_000]).collect();
    assert!(frame == expected, "the frame in flight arrived damaged");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
}

/// A WebSocket backend for one client: says when the proxy has connected (the backend is
/// picked), and answers the upgrade only when released, so a test can act in between.
async fn held_backend() -> (SocketAddr, tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = arrived_tx.send(());
        let _ = released.await;
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    (addr, arrived, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_backend_left_during_its_upgrade_is_drained_too() {
    let (held, arrived, release) = held_backend().await;
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let drain = "drain_spread_ms = 0\ndrain_deadline_ms = 600";
    let server = support::start(&support::config_text(&[held, b], &pool(drain))).await;
    let proxy = server.addr("main").unwrap();
    let client = tokio::spawn(tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")));
    arrived.await.unwrap();
    let live = server.snapshot().pools["p"].view.members[0].live.clone();
    // The backend is picked and its upgrade not answered yet: removed now, drained now,
    // while it has no tunnel for the drain to find.
    let config = weir::config::Config::parse(&support::config_text(&[b], &pool(drain)), None).unwrap();
    server.reload(config).await.unwrap();
    release.send(()).unwrap();
    let (mut ws, _) = client.await.unwrap().unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away), "the drain it missed reaches it");
    support::eventually("the late tunnel was cut", || live.tunnels() == 0).await;
}
