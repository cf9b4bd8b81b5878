//! Probe sessions (`weir::health::probe::Session`): an http probe that keeps its
//! connection open between probes (`reuse_connection`), against real sockets on 127.0.0.1.
//! Connections are counted where they are accepted, by a relay in front of a demo backend
//! or by a raw server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weir::config::{ProbeConfig, ProbeKind, StatusSet};
use weir::health::Failure;
use weir::health::probe::{ProbeResult, Session};

/// An http probe of `path` that keeps its connection, with a generous timeout.
fn config(path: &str) -> ProbeConfig {
    ProbeConfig {
        kind: ProbeKind::Http,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        port: None,
        path: path.to_owned(),
        host: None,
        expect_status: StatusSet::parse("200-399").unwrap(),
        expect_body: None,
        reuse_connection: true,
    }
}

async fn run(session: &mut Session, config: &ProbeConfig, addr: SocketAddr) -> ProbeResult {
    session.probe(config, addr, &addr.to_string()).await
}

fn assert_passed(r: &ProbeResult) {
    assert!(r.passed(), "expected a pass, got {r:?}");
    assert!(r.detail.is_empty(), "{r:?}");
    assert_eq!(r.status, Some(200), "{r:?}");
}

/// A TCP relay on 127.0.0.1:0 in front of `to`, counting the connections it accepts.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// How a raw server's connection ended, as it saw it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed it (FIN).
    Closed,
    /// The client reset it.
    Reset,
    /// The server closed it (after its answer).
    ByServer,
}

/// A raw HTTP/1.1 server on 127.0.0.1:0 that answers each request on a connection with
/// `answer`, then keeps the connection for the next request, or (with `close_after`)
/// closes it. Reports each request head (with its connection's number) and how each
/// connection ended.
async fn raw_keepalive(
    answer: &'static [u8],
    close_after: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<(u64, String)>, mpsc::UnboundedReceiver<End>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, heads_rx) = mpsc::unbounded_channel();
    let (ends, ends_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            let (heads, ends) = (heads.clone(), ends.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let end = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break End::Closed,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
                        Err(e) => panic!("{e}"),
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                    if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let rest = head.split_off(at + 4);
                        let _ = heads.send((n, String::from_utf8_lossy(&head).into_owned()));
                        head = rest;
                        let _ = stream.write_all(answer).await;
                        if close_after {
                            break End::ByServer;
                        }
                    }
                };
                let _ = ends.send(end);
            });
        }
    });
    (addr, heads_rx, ends_rx)
}

/// Everything a channel holds now.
fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn five_probes_of_a_demo_backend_use_one_connection() {
    let up = weir::demo::Backend::start("alpha").await.unwrap();
    let (addr, accepted) = counting_relay(up.addr).await;
    let mut session = Session::new();
    let c = config("/healthz");
    for i in 0..5 {
        assert_passed(&run(&mut session, &c, addr).await);
        assert!(session.is_connected(), "after probe {i}");
    }
    // With `expect_body`, the body is read to its end: the connection still serves.
    let mut c = config("/status");
    c.expect_body = Some("alpha: GET".to_owned());
    for _ in 0..3 {
        assert_passed(&run(&mut session, &c, addr).await);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_reuse_each_probe_has_a_connection_of_its_own() {
    let up = weir::demo::Backend::start("alpha").await.unwrap();
    let (addr, accepted) = counting_relay(up.addr).await;
    let mut session = Session::new();
    let mut c = config("/healthz");
    c.reuse_connection = false;
    for _ in 0..5 {
        assert_passed(&run(&mut session, &c, addr).await);
        assert!(!session.is_connected());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_request_asks_to_close_only_without_reuse() {
    let (addr, mut heads, _) = raw_keepalive(OK, false).await;
    let mut session = Session::new();
    let mut c = config("/healthz");
    for _ in 0..3 {
        assert_passed(&run(&mut session, &c, addr).await);
    }
    let seen = drain(&mut heads);
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 1, 1], "{seen:?}");
    assert!(seen.iter().all(|(_, h)| h.starts_with("GET /healthz HTTP/1.1\r\n")), "{seen:?}");
    assert!(seen.iter().all(|(_, h)| !h.to_ascii_lowercase().contains("connection:")), "{seen:?}");
    c.reuse_connection = false;
    assert!(run(&mut session, &c, addr).await.passed());
    let (n, head) = heads.recv().await.unwrap();
    assert_eq!(n, 2);
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
}

#[tokio::test]
async fn a_backend_that_answers_connection_close_passes_on_a_new_connection_each_time() {
    let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
    let (addr, mut heads, _) = raw_keepalive(answer, true).await;
    let mut session = Session::new();
    let c = config("/healthz");
    for _ in 0..5 {
        assert_passed(&run(&mut session, &c, addr).await);
        assert!(!session.is_connected());
    }
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_backend_that_closes_idle_connections_is_not_a_failure() {
    // It answers as if it kept the connection, then closes it: the next probe finds it
    // closed, at once or after the backend's FIN has arrived.
    let (addr, mut heads, _) = raw_keepalive(OK, true).await;
    let mut session = Session::new();
    let c = config("/healthz");
    for i in 0..6 {
        let r = run(&mut session, &c, addr).await;
        assert_passed(&r);
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 2, 3, 4, 5, 6], "one request per connection");
}

#[tokio::test]
async fn a_probe_after_the_backend_restarted_on_its_port_passes() {
    let up = weir::demo::Backend::start("alpha").await.unwrap();
    let addr = up.addr;
    let mut session = Session::new();
    let c = config("/healthz");
    assert_passed(&run(&mut session, &c, addr).await);
    assert!(session.is_connected());
    up.stop();
    // Stopped: the kept connection is closed and nothing listens. A failure, not a pass.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = run(&mut session, &c, addr).await;
    assert_eq!(r.failure, Some(Failure::Connect), "{r:?}");
    assert!(!session.is_connected());
    let _up = weir::demo::Backend::start_on("alpha", addr).await.unwrap();
    assert_passed(&run(&mut session, &c, addr).await);
    assert!(session.is_connected());
}

#[tokio::test]
async fn a_restart_between_two_probes_is_not_a_failure() {
    let up = weir::demo::Backend::start("alpha").await.unwrap();
    let addr = up.addr;
    let mut session = Session::new();
    let c = config("/healthz");
    assert_passed(&run(&mut session, &c, addr).await);
    up.stop();
    // Its accept loop ends (freeing the port) when its task next runs.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _up = weir::demo::Backend::start_on("alpha", addr).await.unwrap();
    assert_passed(&run(&mut session, &c, addr).await);
    assert!(session.is_connected());
}

#[tokio::test]
async fn a_failure_drops_the_connection_and_the_next_probe_starts_afresh() {
    let up = weir::demo::Backend::start("alpha").await.unwrap();
    let (addr, accepted) = counting_relay(up.addr).await;
    let mut session = Session::new();
    let c = config("/healthz");
    assert_passed(&run(&mut session, &c, addr).await);
    up.set_health(503);
    let r = run(&mut session, &c, addr).await;
    assert_eq!((r.failure, r.status), (Some(Failure::Status), Some(503)), "{r:?}");
    assert!(!session.is_connected());
    up.set_health(200);
    assert_passed(&run(&mut session, &c, addr).await);
    assert_passed(&run(&mut session, &c, addr).await);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reset_mid_body_on_a_kept_connection_drops_it() {
    // The first answer is whole; the second promises a body it never sends, and resets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        stream.write_all(OK).await.unwrap();
        let _ = stream.read(&mut buf).await;
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok").await.unwrap();
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream);
    });
    let mut session = Session::new();
    let c = config("/healthz");
    assert_passed(&run(&mut session, &c, addr).await);
    assert!(session.is_connected());
    // The status passed, which is the verdict without `expect_body`; the rest of the body
    // only decides whether the connection is kept: it is not.
    let r = run(&mut session, &c, addr).await;
    assert!(r.passed(), "{r:?}");
    assert!(!session.is_connected());
}

#[tokio::test]
async fn a_dropped_session_resets_its_connection() {
    let (addr, _heads, mut ends) = raw_keepalive(OK, false).await;
    let mut session = Session::new();
    assert_passed(&run(&mut session, &config("/healthz"), addr).await);
    drop(session);
    let end = tokio::time::timeout(Duration::from_secs(5), ends.recv()).await.unwrap().unwrap();
    assert_eq!(end, End::Reset);
}

#[tokio::test]
async fn a_new_connection_closed_before_the_answer_is_a_reset_failure() {
    // Closing a kept connection is retried; closing a new one is the backend's failure.
    let (addr, _heads, _) = raw_keepalive(b"", true).await;
    let r = run(&mut Session::new(), &config("/healthz"), addr).await;
    assert_eq!(r.failure, Some(Failure::Reset), "{r:?}");
    assert!(r.detail.starts_with("response: "), "{r:?}");
}

#[tokio::test]
async fn a_chunked_body_is_searched_across_chunks_and_read_to_its_end() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        3\r\nhel\r\n4;ext=1\r\nlo w\r\n4\r\norld\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (addr, mut heads, _) = raw_keepalive(answer, false).await;
    let mut session = Session::new();
    let mut c = config("/healthz");
    c.expect_body = Some("hello world".to_owned());
    for _ in 0..3 {
        assert_passed(&run(&mut session, &c, addr).await);
        assert!(session.is_connected());
    }
    // Without expect_body, the body is still read to its end: the connection carries on.
    c.expect_body = None;
    assert_passed(&run(&mut session, &c, addr).await);
    c.expect_body = Some("goodbye".to_owned());
    let r = run(&mut session, &c, addr).await;
    assert_eq!(r.failure, Some(Failure::Body), "{r:?}");
    assert_eq!(r.detail, "body does not contain `goodbye`");
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 1, 1, 1, 1]);
}

#[tokio::test]
async fn an_informational_answer_is_skipped() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, mut heads, _) = raw_keepalive(answer, false).await;
    let mut session = Session::new();
    for _ in 0..2 {
        assert_passed(&run(&mut session, &config("/healthz"), addr).await);
    }
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 1]);
}

#[tokio::test]
async fn http_1_0_and_bodies_that_end_with_the_connection_are_not_kept() {
    let (addr, mut heads, _) = raw_keepalive(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let mut session = Session::new();
    for _ in 0..2 {
        assert_passed(&run(&mut session, &config("/healthz"), addr).await);
        assert!(!session.is_connected());
    }
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 2]);
    // No length: the body ends when the backend closes (which it does after answering).
    let (addr, mut heads, _) = raw_keepalive(b"HTTP/1.1 200 OK\r\n\r\nall is ok", true).await;
    let mut c = config("/healthz");
    c.expect_body = Some("is ok".to_owned());
    for _ in 0..2 {
        assert_passed(&run(&mut session, &c, addr).await);
        assert!(!session.is_connected());
    }
    let seen: Vec<u64> = drain(&mut heads).into_iter().map(|(n, _)| n).collect();
    assert_eq!(seen, [1, 2]);
}

#[tokio::test]
async fn bad_framing_is_a_protocol_failure() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    ] {
        let (addr, _heads, _) = raw_keepalive(answer, false).await;
        let mut c = config("/healthz");
        c.expect_body = Some("nowhere".to_owned());
        let r = run(&mut Session::new(), &c, addr).await;
        assert_eq!(r.failure, Some(Failure::Protocol), "{} gave {r:?}", String::from_utf8_lossy(answer));
    }
}
