//! Timed health probes (`weir::health::probe`) against real sockets on 127.0.0.1: the demo
//! backend where it fits, else raw servers that answer exactly what each case needs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use weir::config::{MAX_PROBE_BODY, ProbeConfig, ProbeKind, StatusSet};
use weir::health::Failure;
use weir::health::probe::{ProbeResult, probe};

use crate::support::{self, Upstream};

/// A probe of `kind` with the config's defaults (path `/`, statuses 200-399) and a
/// generous timeout: only the timeout tests wait for it.
fn config(kind: ProbeKind) -> ProbeConfig {
    ProbeConfig {
        kind,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        port: None,
        path: "/".to_owned(),
        host: None,
        expect_status: StatusSet::parse("200-399").unwrap(),
        expect_body: None,
        // `probe` (one connection per probe) ignores it.
        reuse_connection: true,
    }
}

/// Probes `addr` with its address as the Host header.
async fn run(config: &ProbeConfig, addr: SocketAddr) -> ProbeResult {
    probe(config, addr, &addr.to_string()).await
}

fn assert_passed(r: &ProbeResult) {
    assert!(r.passed(), "expected a pass, got {r:?}");
    assert!(r.detail.is_empty(), "{r:?}");
}

fn assert_failed(r: &ProbeResult, failure: Failure) {
    assert_eq!(r.failure, Some(failure), "{r:?}");
    assert!(!r.detail.is_empty() && !r.detail.contains('\n'), "detail: {:?}", r.detail);
}

/// A raw TCP server on 127.0.0.1:0. For each connection it reads the request head (up to
/// the blank line; all of what came for a connection that sends none), reports it on the
/// returned channel, then hands the stream to `then`.
async fn raw_server<F, Fut>(then: F) -> (SocketAddr, mpsc::UnboundedReceiver<String>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let then = Arc::new(then);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (tx, then) = (tx.clone(), then.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                then(stream).await;
            });
        }
    });
    (addr, rx)
}

/// Waits until the client closes (or resets) the connection.
async fn until_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

/// A raw server that answers every request with `answer` and keeps the connection open
/// until the client closes it.
async fn fixed(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    raw_server(move |mut stream| async move {
        let _ = stream.write_all(answer).await;
        until_closed(stream).await;
    })
    .await
}

#[tokio::test]
async fn tcp_passes_against_a_listener_and_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = config(ProbeKind::Tcp);
    let (r, accepted) = tokio::join!(run(&c, addr), listener.accept());
    assert_passed(&r);
    assert!(r.latency > Duration::ZERO && r.status.is_none(), "{r:?}");
    // The probe closed its side: the server reads an end of stream, not a hang.
    let (mut stream, _) = accepted.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn tcp_to_a_closed_port_is_a_connect_failure() {
    let r = run(&config(ProbeKind::Tcp), support::dead_addr().await).await;
    assert_failed(&r, Failure::Connect);
    assert_eq!(r.detail, "connect: connection refused");
    assert_eq!(r.latency, Duration::ZERO);
}

#[tokio::test]
async fn http_200_passes_with_its_status_and_latency() {
    let up = Upstream::start("alpha").await;
    let r = run(&config(ProbeKind::Http), up.addr).await;
    assert_passed(&r);
    assert_eq!(r.status, Some(200));
    assert!(r.latency > Duration::ZERO && r.latency < Duration::from_secs(5), "{r:?}");
}

#[tokio::test]
async fn http_to_a_closed_port_is_a_connect_failure() {
    let r = run(&config(ProbeKind::Http), support::dead_addr().await).await;
    assert_failed(&r, Failure::Connect);
    assert_eq!(r.status, None);
}

#[tokio::test]
async fn http_status_outside_the_expected_set_is_a_status_failure() {
    let (addr, _) = fixed(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy").await;
    let r = run(&config(ProbeKind::Http), addr).await;
    assert_failed(&r, Failure::Status);
    assert_eq!(r.status, Some(503));
    assert_eq!(r.detail, "status 503 is not in 200-399");
    assert!(r.latency > Duration::ZERO);
    // The same answer passes a probe that expects it.
    let mut c = config(ProbeKind::Http);
    c.expect_status = StatusSet::parse("200,500-503").unwrap();
    assert_passed(&run(&c, addr).await);
}

#[tokio::test]
async fn http_expect_body_found_passes_and_missing_is_a_body_failure() {
    let up = Upstream::start("alpha").await;
    let mut c = config(ProbeKind::Http);
    c.path = "/status".to_owned();
    c.expect_body = Some("alpha: GET /status".to_owned());
    let r = run(&c, up.addr).await;
    assert_passed(&r);
    assert_eq!(r.status, Some(200));

    c.expect_body = Some("beta".to_owned());
    let r = run(&c, up.addr).await;
    assert_failed(&r, Failure::Body);
    assert_eq!(r.detail, "body does not contain `beta`");
    assert_eq!(r.status, Some(200));
}

#[tokio::test]
async fn http_a_body_over_64_kib_without_the_text_is_a_body_failure() {
    // The demo backend streams a megabyte of `x`.
    let up = Upstream::start("alpha").await;
    let mut c = config(ProbeKind::Http);
    c.path = "/download?bytes=1000000".to_owned();
    c.expect_body = Some("ok".to_owned());
    let r = run(&c, up.addr).await;
    assert_failed(&r, Failure::Body);
    assert_eq!(r.detail, "body does not contain `ok` in its first 64 KiB");
}

#[tokio::test]
async fn http_the_body_is_read_no_further_than_64_kib() {
    // 64 KiB of `x`, then `ok` without end: a probe that read past its cap would find the
    // text (or, reading forever, time out).
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    let (addr, _) = raw_server(move |mut stream| {
        let count = count.clone();
        async move {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
            if stream.write_all(head).await.is_err() || stream.write_all(&vec![b'x'; MAX_PROBE_BODY]).await.is_err() {
                return;
            }
            let oks = b"ok".repeat(8 << 10);
            while stream.write_all(&oks).await.is_ok() {
                count.fetch_add(oks.len() as u64, Ordering::Relaxed);
            }
        }
    })
    .await;
    let mut c = config(ProbeKind::Http);
    c.expect_body = Some("ok".to_owned());
    let started = Instant::now();
    let r = run(&c, addr).await;
    assert_failed(&r, Failure::Body);
    assert_eq!(r.status, Some(200));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    // What the server could write past the cap is what the socket buffers held, not more.
    let past_cap = written.load(Ordering::Relaxed);
    assert!(past_cap < 32 << 20, "the server wrote {past_cap} bytes past the first 64 KiB");
}

#[tokio::test]
async fn http_a_backend_that_never_answers_times_out_on_time() {
    let (addr, _) = raw_server(until_closed).await;
    let mut c = config(ProbeKind::Http);
    c.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = run(&c, addr).await;
    let took = started.elapsed();
    assert_failed(&r, Failure::Timeout);
    assert_eq!(r.detail, "no answer within 300 ms");
    assert_eq!((r.status, r.latency), (None, Duration::ZERO));
    assert!(took >= c.timeout && took < c.timeout + Duration::from_millis(600), "took {took:?}");
}

#[tokio::test]
async fn http_a_body_that_stalls_times_out_with_the_status_it_had() {
    let (addr, _) = fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nnot yet").await;
    let mut c = config(ProbeKind::Http);
    c.timeout = Duration::from_millis(300);
    c.expect_body = Some("ok".to_owned());
    let r = run(&c, addr).await;
    assert_failed(&r, Failure::Timeout);
    assert_eq!(r.detail, "body not complete within 300 ms");
    assert_eq!(r.status, Some(200));
    assert!(r.latency > Duration::ZERO);
}

#[tokio::test]
async fn http_garbage_instead_of_http_is_a_protocol_failure() {
    let (addr, _) = fixed(b"\x00\x01\x02 this is not http\xff\r\n\r\n").await;
    let r = run(&config(ProbeKind::Http), addr).await;
    assert_failed(&r, Failure::Protocol);
    assert_eq!(r.status, None);
    let (addr, _) = fixed(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    assert_failed(&run(&config(ProbeKind::Http), addr).await, Failure::Protocol);
}

#[tokio::test]
async fn http_a_server_that_speaks_first_is_a_protocol_failure() {
    // As an SSH server does: its banner goes out on accept, before any request.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
                until_closed(stream).await;
            });
        }
    });
    for _ in 0..20 {
        let r = run(&config(ProbeKind::Http), addr).await;
        assert_failed(&r, Failure::Protocol);
    }
}

#[tokio::test]
async fn http_a_reset_mid_body_is_a_reset_failure() {
    let (addr, _) = raw_server(|mut stream| async move {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789").await;
        let _ = stream.flush().await;
        // SO_LINGER 0: the close is a RST.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    })
    .await;
    let mut c = config(ProbeKind::Http);
    c.expect_body = Some("ok".to_owned());
    let r = run(&c, addr).await;
    assert_failed(&r, Failure::Reset);
}

#[tokio::test]
async fn http_a_close_mid_body_is_a_reset_failure() {
    let (addr, _) = raw_server(|mut stream| async move {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789").await;
        let _ = stream.shutdown().await;
        until_closed(stream).await;
    })
    .await;
    let mut c = config(ProbeKind::Http);
    c.expect_body = Some("ok".to_owned());
    let r = run(&c, addr).await;
    assert_failed(&r, Failure::Reset);
    assert_eq!(r.status, Some(200));
    // Without expect_body the body is not needed: the status is enough.
    c.expect_body = None;
    assert_passed(&run(&c, addr).await);
}

#[tokio::test]
async fn http_a_close_before_any_answer_is_a_reset_failure() {
    let (addr, _) = raw_server(|stream| async move { drop(stream) }).await;
    let r = run(&config(ProbeKind::Http), addr).await;
    assert_failed(&r, Failure::Reset);
    assert_eq!(r.status, None);
}

#[tokio::test]
async fn the_port_override_probes_the_other_port() {
    let up = Upstream::start("alpha").await;
    let dead = support::dead_addr().await;
    for kind in [ProbeKind::Tcp, ProbeKind::Http, ProbeKind::WebSocket] {
        let mut c = config(kind);
        c.port = Some(up.addr.port());
        assert_passed(&run(&c, dead).await);
        c.port = Some(dead.port());
        assert_failed(&run(&c, up.addr).await, Failure::Connect);
    }
}

#[tokio::test]
async fn http_sends_the_host_header_and_path_given() {
    let (addr, mut heads) = fixed(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let mut c = config(ProbeKind::Http);
    c.path = "/health/check?deep=1".to_owned();
    let r = probe(&c, addr, "example.test:8080").await;
    assert_passed(&r);
    assert_eq!(r.status, Some(204));
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("get /health/check?deep=1 http/1.1"));
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    for expected in [
        "host: example.test:8080".to_owned(),
        format!("user-agent: weir-health/{}", env!("CARGO_PKG_VERSION")),
        "accept: */*".to_owned(),
        "connection: close".to_owned(),
    ] {
        assert!(headers.contains(&expected.as_str()), "{expected:?} not in {headers:?}");
    }
    assert_eq!(headers.len(), 4, "{headers:?}");
}

#[tokio::test]
async fn websocket_passes_against_an_echo_server() {
    let up = Upstream::start("alpha").await;
    let r = run(&config(ProbeKind::WebSocket), up.addr).await;
    assert_passed(&r);
    assert_eq!(r.status, Some(101));
    assert!(r.latency > Duration::ZERO);
}

/// A WebSocket server on 127.0.0.1:0 that reports each upgrade request (path and `Host`)
/// and hands each connection to `then`.
async fn ws_server<F, Fut>(then: F) -> (SocketAddr, mpsc::UnboundedReceiver<(String, String)>)
where
    F: Fn(tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let then = Arc::new(then);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, then) = (tx.clone(), then.clone());
            tokio::spawn(async move {
                // The error type is tungstenite's, whatever its size.
                #[allow(clippy::result_large_err)]
                let record = |req: &Request, res: Response| {
                    let host = req.headers().get("host").map(|h| h.to_str().unwrap_or("?").to_owned());
                    let _ = tx.send((req.uri().to_string(), host.unwrap_or_default()));
                    Ok(res)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await {
                    then(ws).await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn websocket_sends_the_host_header_and_path_given_and_ignores_other_messages() {
    let (addr, mut requests) = ws_server(|mut ws| async move {
        // Other messages first, an unsolicited pong among them; then pings are answered.
        let _ = ws.send(Message::text("welcome")).await;
        let _ = ws.send(Message::Pong(b"not yours".to_vec().into())).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let mut c = config(ProbeKind::WebSocket);
    c.path = "/live?x=1".to_owned();
    let r = probe(&c, addr, "chat.example.test").await;
    assert_passed(&r);
    assert_eq!(requests.recv().await.unwrap(), ("/live?x=1".to_owned(), "chat.example.test".to_owned()));
}

#[tokio::test]
async fn websocket_against_a_plain_http_404_is_a_status_failure() {
    let (addr, _) = fixed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found").await;
    let r = run(&config(ProbeKind::WebSocket), addr).await;
    assert_failed(&r, Failure::Status);
    assert_eq!(r.status, Some(404));
    assert_eq!(r.detail, "websocket upgrade answered 404");
}

#[tokio::test]
async fn websocket_garbage_instead_of_an_upgrade_is_a_protocol_failure() {
    let (addr, _) = fixed(b"\x00\x01\x02 this is not http\xff\r\n\r\n").await;
    let r = run(&config(ProbeKind::WebSocket), addr).await;
    assert_failed(&r, Failure::Protocol);
}

#[tokio::test]
async fn websocket_a_close_before_the_answer_is_a_reset_failure() {
    let (addr, _) = raw_server(|stream| async move { drop(stream) }).await;
    let r = run(&config(ProbeKind::WebSocket), addr).await;
    assert_failed(&r, Failure::Reset);
    assert_eq!(r.status, None);
}

#[tokio::test]
async fn websocket_without_a_pong_times_out() {
    // Upgrades, then never reads: pings stay unanswered.
    let (addr, _) = ws_server(|ws| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    })
    .await;
    let mut c = config(ProbeKind::WebSocket);
    c.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = run(&c, addr).await;
    let took = started.elapsed();
    assert_failed(&r, Failure::Timeout);
    assert_eq!(r.detail, "no pong within 300 ms");
    assert_eq!(r.status, Some(101));
    assert!(took >= c.timeout && took < c.timeout + Duration::from_millis(600), "took {took:?}");
}

#[tokio::test]
async fn websocket_only_the_matching_pong_counts() {
    // An unsolicited pong with another payload, then silence: no pass.
    let (addr, _) = ws_server(|mut ws| async move {
        let _ = ws.send(Message::Pong(b"not yours".to_vec().into())).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let mut c = config(ProbeKind::WebSocket);
    c.timeout = Duration::from_millis(300);
    assert_failed(&run(&c, addr).await, Failure::Timeout);
}

#[tokio::test]
async fn websocket_closed_before_the_pong_is_a_protocol_failure() {
    let (addr, _) = ws_server(|mut ws| async move {
        let _ = ws.close(None).await;
    })
    .await;
    let r = run(&config(ProbeKind::WebSocket), addr).await;
    assert_failed(&r, Failure::Protocol);
    assert_eq!(r.status, Some(101));
}
