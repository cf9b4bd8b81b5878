//! HTTP/2 on an http listener: h2c with prior knowledge beside HTTP/1.1 on one port
//! (hyper's client and curl), `request.protocol` as plugins see it, WebSockets over
//! HTTP/2 (RFC 8441), and floods of reset streams and CONTINUATION frames written frame
//! by frame as an attacker writes them, while an honest client keeps being served.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::support::{self, Upstream};

type H2Sender = http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection with prior knowledge to `addr` (hyper's client).
async fn h2c(addr: SocketAddr) -> H2Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GETs `path` on an HTTP/2 connection; status and body text.
async fn h2_get(sender: &mut H2Sender, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://{addr}{path}")).body(Full::default()).unwrap();
    sender.ready().await.unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let status = res.status();
    (status, String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_and_http1_share_a_port() {
    let backend = Upstream::start("b").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();

    let mut h2 = h2c(proxy).await;
    assert_eq!(h2_get(&mut h2, proxy, "/x?y=1").await, (StatusCode::OK, "b: GET /x?y=1\n".to_owned()));
    // The backend gets HTTP/1.1 with the client's authority as Host.
    let (status, headers) = h2_get(&mut h2, proxy, "/headers").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains(&format!("host: {proxy}")), "{headers}");
    assert!(headers.contains("x-forwarded-proto: http"), "{headers}");

    // Many streams at once on the one connection, each its own request.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut sender = h2.clone();
        tasks.push(tokio::spawn(async move { h2_get(&mut sender, proxy, &format!("/n/{i}")).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, format!("b: GET /n/{i}\n")));
    }

    // A request body streams through.
    let body = Bytes::from(vec![7u8; 3 << 20]);
    let req = Request::post(format!("http://{proxy}/upload")).body(Full::new(body)).unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(text.contains(&(3 << 20).to_string()), "{text}");

    // HTTP/1.1 on the same port is untouched, malformed heads still get weir's answer.
    let (status, body) = support::get(&support::client(), &format!("http://{proxy}/one")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b: GET /one\n"));
    let mut raw = TcpStream::connect(proxy).await.unwrap();
    raw.write_all(b"PRI / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.ends_with("weir: the request head is malformed\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2c_with_prior_knowledge_and_http1_on_one_port() {
    let backend = Upstream::start("c").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    for (flag, version) in [("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "-w", "%{http_version} %{http_code}", &format!("http://{proxy}/via-curl")])
            .output()
            .await
            .expect("curl is installed (.ci/run installs it)");
        assert!(out.status.success(), "curl {flag}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, format!("c: GET /via-curl\n{version} 200"), "curl {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_http2_as_the_request_protocol() {
    let (h1, h2) = (Upstream::start("one").await, Upstream::start("two").await);
    let text = format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{}\", labels = {{ match = \"http1\" }} }}, {{ address = \"{}\", labels = {{ match = \"http2\" }} }}]\nbalancer = {{ plugin = {:?} }}\n",
        support::cache_dir().display().to_string(),
        h1.addr,
        h2.addr,
        support::fixture("by-protocol").display().to_string(),
    );
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let mut sender = h2c(proxy).await;
    for _ in 0..3 {
        assert_eq!(h2_get(&mut sender, proxy, "/p").await, (StatusCode::OK, "two: GET /p\n".to_owned()));
        let (status, body) = support::get(&support::client(), &format!("http://{proxy}/p")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "one: GET /p\n"));
    }
    // Each stream was one decision and one request of its backend.
    let snapshot = server.snapshot();
    let members = &snapshot.pools["p"].view.members;
    assert_eq!(members[1].live.requests.load(Ordering::Relaxed), 3);
    assert_eq!(members[0].live.requests.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_echoes_through_a_backend_upgrade() {
    let backend = weir::demo::spawn_backend("demo-w").await.unwrap();
    let extra = "affinity = { plugin = \"cookie\", config = { name = \"WEIR_AFFINITY\" } }";
    let server = support::start(&support::config_text(&[backend], extra)).await;
    let proxy = server.addr("main").unwrap();
    let live = server.snapshot().pools["p"].view.members[0].live.clone();

    let mut sender = h2c(proxy).await;
    // A first exchange, so the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) are in.
    let warm = Request::get(format!("http://{proxy}/warm")).body(Full::default()).unwrap();
    let res = sender.send_request(warm).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{proxy}/chat"))
        .header("sec-websocket-version", "13")
        .body(Full::default())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "RFC 8441: a 2xx opens the tunnel");
    let cookie = res.headers().get("set-cookie").expect("the affinity cookie is on the response");
    assert!(cookie.to_str().unwrap().starts_with("WEIR_AFFINITY="), "{cookie:?}");
    assert!(res.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;

    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-w: over h2"));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);
    // The tunnel is an active connection of its backend, as an HTTP/1.1 one is.
    assert_eq!(live.active.load(Ordering::Relaxed), 1);
    // The connection still carries plain requests beside the tunnel.
    let mut other = sender.clone();
    let res = other.send_request(Request::get(format!("http://{proxy}/x")).body(Full::default()).unwrap()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);

    // A CONNECT for anything but a WebSocket is no tunnel here.
    let mut req = Request::builder().method(Method::CONNECT).uri(format!("{proxy}")).body(Full::default()).unwrap();
    *req.version_mut() = http::Version::HTTP_2;
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    support::eventually("the closed tunnel no longer counts", || live.active.load(Ordering::Relaxed) == 0).await;
}

/// A WebSocket over HTTP/2 (RFC 8441) through `proxy`, on a connection of its own.
async fn h2_websocket(proxy: SocketAddr) -> tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut sender = h2c(proxy).await;
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive with the first answer.
    let (status, _) = h2_get(&mut sender, proxy, "/").await;
    assert_eq!(status, StatusCode::OK);
    let mut req =
        Request::builder().method(Method::CONNECT).uri(format!("http://{proxy}/chat")).body(Full::default()).unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_is_drained_with_1001_like_any_other() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let pool = "balancer = { plugin = \"first\" }\ndrain_spread_ms = 0\ndrain_deadline_ms = 4000";
    let server = support::start(&support::config_text(&[a, b], pool)).await;
    let proxy = server.addr("main").unwrap();
    let mut ws = h2_websocket(proxy).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-a: hi"));
    let live_a = server.snapshot().pools["p"].view.members[0].live.clone();
    assert_eq!(live_a.tunnels(), 1);

    // demo-a leaves the pool: its tunnel gets the close frame, then ends.
    let config = weir::config::Config::parse(&support::config_text(&[b], pool), None).unwrap();
    server.reload(config).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    while let Some(Ok(_)) = ws.next().await {}
    support::eventually("demo-a's tunnel ended", || live_a.tunnels() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_streams_in_flight_finish_and_sends_goaway() {
    let backend = Upstream::start("g").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(h2_get(&mut sender, proxy, "/a").await, (StatusCode::OK, "g: GET /a\n".to_owned()));
    let slow = {
        let mut sender = sender.clone();
        tokio::spawn(async move { h2_get(&mut sender, proxy, "/delay?ms=500").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = server.shutdown();
    let (drained, answer) = tokio::join!(shutdown, slow);
    assert_eq!(drained, 0);
    assert_eq!(answer.unwrap(), (StatusCode::OK, "g".to_owned()));
    // The server said GOAWAY and closed: the client's connection ends cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the connection ended");
    assert!(ended.unwrap().is_ok(), "a GOAWAY, not an error");
}

/// One HTTP/2 frame: 9-byte header and payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// `GET /` for `localhost` in HPACK: indexed :method, :scheme, :path; a literal
/// :authority, not indexed.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"localhost");
    b
}

/// The client preface and an empty SETTINGS.
fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// Reads frames until the server sends GOAWAY (its error code) or closes (`None`), for at
/// most `within`; panics if it does neither.
pub(crate) async fn until_goaway(read: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Option<u32> {
    let read_all = async {
        let mut head = [0u8; 9];
        loop {
            if read.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if read.read_exact(&mut payload).await.is_err() {
                return None;
            }
            if head[3] == GOAWAY && payload.len() >= 8 {
                return Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
        }
    };
    tokio::time::timeout(within, read_all).await.expect("the flooding connection was neither told off nor closed")
}

/// CVE-2023-44487 as an attacker writes it: the preface, then a stream opened and reset
/// at once, 50,000 times, for one write.
pub(crate) fn rapid_reset_flood() -> Vec<u8> {
    let mut flood = preface();
    let block = get_block();
    for i in 0..50_000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    flood
}

/// An honest HTTP/2 client's `count` requests, one after the other, each answered in full.
async fn honest(proxy: SocketAddr, count: usize) {
    let mut sender = h2c(proxy).await;
    for i in 0..count {
        let (status, body) = h2_get(&mut sender, proxy, &format!("/honest/{i}")).await;
        assert_eq!((status, body), (StatusCode::OK, format!("h: GET /honest/{i}\n")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_and_does_not_starve_other_clients() {
    let backend = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let live = server.snapshot().pools["p"].view.members[0].live.clone();

    let flood = rapid_reset_flood();
    let attacker = async {
        let (mut read, mut write) = TcpStream::connect(proxy).await.unwrap().into_split();
        let writer = tokio::spawn(async move {
            // The server may close before all of it is out.
            let _ = write.write_all(&flood).await;
            write
        });
        let code = until_goaway(&mut read, Duration::from_secs(20)).await;
        drop(writer);
        code
    };
    let (code, ()) = tokio::join!(attacker, honest(proxy, 200));
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "the flooding connection gets GOAWAY (ENHANCE_YOUR_CALM)");
    // The flood cost next to nothing: few of its streams ever became requests.
    let forwarded = live.requests.load(Ordering::Relaxed);
    assert!(forwarded < 200 + 1000, "{forwarded} requests reached the backend");
    honest(proxy, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_does_not_starve_other_clients() {
    let backend = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();

    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of 16 KiB each, 64 MiB in all, never END_HEADERS.
    let attacker = async {
        let (mut read, mut write) = TcpStream::connect(proxy).await.unwrap().into_split();
        let writer = tokio::spawn(async move {
            let mut first = preface();
            first.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
            write.write_all(&first).await.unwrap();
            // Literal headers without indexing, new names: `x-aaaa…: bbbb…`.
            let mut chunk = Vec::new();
            while chunk.len() < 16_000 {
                chunk.extend_from_slice(&[0x00, 100]);
                chunk.extend_from_slice(&[b'a'; 100]);
                chunk.extend_from_slice(&[100]);
                chunk.extend_from_slice(&[b'b'; 100]);
            }
            let continuation = frame(CONTINUATION, 0, 1, &chunk);
            for _ in 0..4096 {
                if write.write_all(&continuation).await.is_err() {
                    return true;
                }
            }
            false
        });
        let code = until_goaway(&mut read, Duration::from_secs(20)).await;
        let cut_short = writer.await.unwrap();
        (code, cut_short)
    };
    let ((code, cut_short), ()) = tokio::join!(attacker, honest(proxy, 200));
    assert_ne!(code, Some(0), "the connection ends in an error, not a clean GOAWAY");
    assert!(cut_short, "the server closed long before 64 MiB of header block (GOAWAY code {code:?})");
    honest(proxy, 5).await;
}

const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

/// Reads one frame: (type, flags, stream, payload).
async fn read_frame(read: &mut (impl AsyncReadExt + Unpin)) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    let within = Duration::from_secs(5);
    tokio::time::timeout(within, read.read_exact(&mut head)).await.expect("a frame in time").unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    tokio::time::timeout(within, read.read_exact(&mut payload)).await.expect("a frame in time").unwrap();
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}

/// `[listener.http2]` reaches the wire and is held to: the server's SETTINGS carry the
/// configured stream limit, header list size and stream window, and its first
/// WINDOW_UPDATE raises the connection window to the configured size; a stream past the
/// limit is refused (`REFUSED_STREAM`) while the others wait on their backend; a header
/// list over the size is answered `431` and never reaches the backend, one under it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_told_in_settings_and_held_to() {
    // A backend that takes connections and never answers: every stream stays open. It
    // counts the request heads it was sent.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
                    head.push(b[0]);
                }
                counted.fetch_add(1, Ordering::SeqCst);
                // Held open, unanswered, until the test ends.
                std::future::pending::<()>().await;
            });
        }
    });
    let limits = "http2 = { max_concurrent_streams = 3, max_header_list_size = 2048, \
                  initial_stream_window_size = 100000, initial_connection_window_size = 1000000 }";
    let with_limits = |text: String| text.replace("pool = \"p\"\n\n", &format!("pool = \"p\"\n{limits}\n\n"));
    let server = support::start(&with_limits(support::config_text(&[silent_addr], ""))).await;
    let proxy = server.addr("main").unwrap();

    let (mut read, mut write) = TcpStream::connect(proxy).await.unwrap().into_split();
    write.write_all(&preface()).await.unwrap();
    let (mut settings, mut window) = (None, None);
    while settings.is_none() || window.is_none() {
        let (kind, flags, stream, payload) = read_frame(&mut read).await;
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                let pairs = payload.chunks_exact(6);
                settings = Some(
                    pairs
                        .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                );
            }
            (WINDOW_UPDATE, 0) => window = Some(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
            _ => {}
        }
    }
    let settings = settings.unwrap();
    // SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE.
    assert_eq!((settings.get(&0x3), settings.get(&0x4), settings.get(&0x6)), (Some(&3), Some(&100_000), Some(&2048)));
    assert_eq!(window, Some(1_000_000 - 65_535), "the connection window's first raise");
    write.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();

    // Four POSTs whose bodies never end: the fourth is past the limit.
    let mut post = get_block();
    post[0] = 0x83; // :method POST
    for id in [1, 3, 5, 7] {
        write.write_all(&frame(HEADERS, END_HEADERS, id, &post)).await.unwrap();
    }
    let refused = loop {
        let (kind, _, stream, payload) = read_frame(&mut read).await;
        assert!(kind != HEADERS, "stream {stream} was answered; it should wait on its backend");
        if kind == RST_STREAM {
            break (stream, u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
        }
    };
    assert_eq!(refused, (7, REFUSED_STREAM));
    support::eventually("the three streams under the limit reach the backend", || heads.load(Ordering::SeqCst) == 3)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(heads.load(Ordering::SeqCst), 3, "the refused stream reached the backend");

    // The header list size, on a backend that answers.
    let backend = Upstream::start("h").await;
    let server = support::start(&with_limits(support::config_text(&[backend.addr], ""))).await;
    let proxy = server.addr("main").unwrap();
    let live = server.snapshot().pools["p"].view.members[0].live.clone();
    let mut sender = h2c(proxy).await;
    for (size, status) in [(3000, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE), (1000, StatusCode::OK)] {
        let req = Request::get(format!("http://{proxy}/")).header("x-big", "v".repeat(size));
        sender.ready().await.unwrap();
        let res = sender.send_request(req.body(Full::default()).unwrap()).await.unwrap();
        assert_eq!(res.status(), status, "a {size}-byte header");
    }
    assert_eq!(live.requests.load(Ordering::Relaxed), 1, "only the request under the size reached the backend");
}
