//! WebSockets through the proxy: the upgrade is passed through and the two connections
//! are joined in a tunnel that counts as an active connection of its backend.

use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_text_binary_and_ping_through_the_proxy() {
    let backend = support::websocket_echo().await;
    let server =
        support::start(&support::config_text(&[backend], "balancer = { plugin = \"least-connections\" }")).await;
    let proxy = server.addr("main").unwrap();
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    assert_eq!(response.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);

    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec().into()));

    // The open tunnel is load on its backend, as least-connections and p2c see it.
    let runtime = server.snapshot();
    let live = runtime.pools["p"].view.members[0].live.clone();
    assert_eq!(live.active.load(Ordering::Relaxed), 1);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    for _ in 0..200 {
        if live.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the closed tunnel still counts as active");
}

#[tokio::test]
async fn demo_backends_echo_websockets_through_the_proxy() {
    let backend = weir::demo::spawn_backend("demo-x").await.unwrap();
    let server = support::start(&support::config_text(&[backend], "")).await;
    let proxy = server.addr("main").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-x: hi"));
    // Plain HTTP to the same backend still answers with its name.
    let (status, body) = support::get(&support::client(), &format!("http://{proxy}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "demo-x: GET /\n"));
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket through the proxy and returns it with the backend that answered.
async fn open(proxy: std::net::SocketAddr) -> (Client, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/")).await.unwrap();
    ws.send(Message::text("who")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let name = reply.as_str().split(':').next().unwrap().to_owned();
    (ws, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_balances_open_tunnels() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(weir::demo::spawn_backend(name).await.unwrap());
    }
    let server =
        support::start(&support::config_text(&backends, "balancer = { plugin = \"least-connections\" }")).await;
    let proxy = server.addr("main").unwrap();
    let count = |open: &[(Client, String)], name: &str| open.iter().filter(|(_, n)| n == name).count();

    let mut tunnels = Vec::new();
    for _ in 0..30 {
        tunnels.push(open(proxy).await);
    }
    assert_eq!([count(&tunnels, "a"), count(&tunnels, "b"), count(&tunnels, "c")], [10, 10, 10]);

    // Close the 10 tunnels on `b`: the next 10 all go there.
    let (on_b, mut rest): (Vec<_>, Vec<_>) = tunnels.into_iter().partition(|(_, n)| n == "b");
    let runtime = server.snapshot();
    let b_live = runtime.pools["p"].view.members[1].live.clone();
    for (mut ws, _) in on_b {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    for _ in 0..200 {
        if b_live.active.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(b_live.active.load(Ordering::Relaxed), 0);
    for _ in 0..10 {
        rest.push(open(proxy).await);
    }
    assert_eq!([count(&rest, "a"), count(&rest, "b"), count(&rest, "c")], [10, 10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_a_half_handshake_affects_no_other_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = weir::demo::spawn_backend("solo").await.unwrap();
    let server = support::start(&support::config_text(&[backend], "")).await;
    let proxy = server.addr("main").unwrap();
    let (mut healthy, _) = open(proxy).await;

    // A client that completes the upgrade, then sends bytes that are not WebSocket frames.
    let (garbage_ws, _) = open(proxy).await;
    let mut raw = garbage_ws.into_inner();
    let tokio_tungstenite::MaybeTlsStream::Plain(ref mut tcp) = raw else { panic!("plain TCP expected") };
    tcp.write_all(&[0xff; 4096]).await.unwrap();
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read(&mut sink)).await;

    // A client that closes in the middle of its handshake.
    let mut half = tokio::net::TcpStream::connect(proxy).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-ver")
        .await
        .unwrap();
    drop(half);

    for i in 0..20 {
        healthy.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(healthy.next().await.unwrap().unwrap(), Message::text(format!("solo: m{i}")));
    }
}

/// A client nobody here wrote: Python's `websockets` (Debian's python3-websockets, which
/// `.ci/run` installs) talks to a demo backend through weir.
#[tokio::test]
async fn python_websockets_client_through_weir() {
    const SCRIPT: &str = "import asyncio, sys, websockets
async def main(url):
    async with websockets.connect(url) as ws:
        await ws.send('from python')
        print(await ws.recv())
asyncio.run(main(sys.argv[1]))
";
    let backend = weir::demo::spawn_backend("py").await.unwrap();
    let server = support::start(&support::config_text(&[backend], "")).await;
    let url = format!("ws://{}/py", server.addr("main").unwrap());
    let out = tokio::process::Command::new("/usr/bin/python3").args(["-c", SCRIPT, &url]).output().await;
    let out = out.expect("/usr/bin/python3 must exist (Debian's python3)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'websockets'"),
        "install Debian's python3-websockets (apt-get install python3-websockets), as .ci/run does"
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "py: from python\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed_and_busy_ones_are_not() {
    let backend = weir::demo::spawn_backend("t").await.unwrap();
    let text = support::config_text(&[backend], "")
        .replace("listen = \"127.0.0.1:0\"\n", "listen = \"127.0.0.1:0\"\ntunnel_idle_timeout_ms = 300\n");
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let (mut busy, _) = open(proxy).await;
    let (mut idle, _) = open(proxy).await;

    // Busy: a message every 100 ms for 900 ms, three idle timeouts' worth.
    for i in 0..9 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        busy.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(busy.next().await.unwrap().unwrap(), Message::text(format!("t: {i}")));
    }
    // Idle since it opened: the proxy has closed it.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), idle.next()).await.unwrap();
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_end_at_their_max_lifetime_even_when_busy() {
    let backend = weir::demo::spawn_backend("l").await.unwrap();
    let text = support::config_text(&[backend], "")
        .replace("listen = \"127.0.0.1:0\"\n", "listen = \"127.0.0.1:0\"\ntunnel_max_lifetime_ms = 400\n");
    let server = support::start(&text).await;
    let (mut ws, _) = open(server.addr("main").unwrap()).await;
    let started = std::time::Instant::now();
    let mut echoed = 0;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        if ws.send(Message::text("ping")).await.is_err() {
            break;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => echoed += 1,
            _ => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lived = started.elapsed();
    assert!(echoed >= 3, "the tunnel worked before its end ({echoed} echoes)");
    assert!(lived < std::time::Duration::from_secs(3), "the tunnel outlived its 400 ms lifetime: {lived:?}");
}

/// A WebSocket backend that never pauses: after the upgrade it writes 16 KiB binary
/// frames as fast as its socket takes them, so weir always has bytes ready from it.
async fn firehose_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let key = text.lines().find_map(|l| l.strip_prefix("sec-websocket-key:")).unwrap_or("").trim();
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let mut frame = vec![0x82, 126, 0x40, 0x00];
                frame.extend(std::iter::repeat_n(b'f', 16 << 10));
                while stream.write_all(&frame).await.is_ok() {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_backend_never_pauses_is_never_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = firehose_backend().await;
    let text = support::config_text(&[backend], "")
        .replace("listen = \"127.0.0.1:0\"\n", "listen = \"127.0.0.1:0\"\ntunnel_idle_timeout_ms = 600\n");
    let server = support::start(&text).await;
    let mut client = tokio::net::TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    // A client that reads slower than the backend writes, so weir always has bytes ready
    // from the backend and waits on the client: first it reads nothing for 100 ms (every
    // buffer between them fills), then 64 KiB every 5 ms, for 2.4 s, four idle timeouts.
    // Bytes move the whole time, so the tunnel must stay open. (The timeout is 600 ms, not
    // less, so that a test process starved of CPU for a moment on a busy machine does not
    // itself stop the bytes for a whole timeout.)
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    while started.elapsed() < std::time::Duration::from_millis(2_400) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the busy tunnel was cut after {:?} ({total} bytes)", started.elapsed());
        total += n;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(total > 1 << 20, "{total}");
}
