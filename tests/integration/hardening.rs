//! Hardening of the HTTP/1.1 proxy against hostile or careless clients: `Host` validation
//! (RFC 9112 §3.2), malformed bodies blamed on the client, request smuggling, half-closed
//! clients, `X-Forwarded-For` chains, weir's own error bodies, slowloris clients, the
//! per-listener connection limit, and running out of file descriptors.
//!
//! Raw sockets send the exact bytes a well-behaved client library would refuse to send.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, Upstream};

/// A request as a backend received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of header `name`, in order.
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// A backend that records every request it receives (path and headers), reads its body to
/// the end and answers with its name; `/slow` answers after 200 ms, as a backend that takes
/// its time does.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                                })
                                .collect();
                            log.lock().unwrap().push(Seen { path: path.clone(), headers });
                            let _ = req.into_body().collect().await;
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

/// One HTTP/1.x response parsed from raw bytes.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the first response in `bytes`: the response and the bytes it took, or `None` if
/// it is not complete yet (`eof`: no more bytes will come, so a body without a length ends
/// here).
fn parse_one(bytes: &[u8], eof: bool) -> Option<(Raw, usize)> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let rest = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut raw = Raw { status, headers, body: String::new() };
    if let Some(len) = raw.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let body = rest.get(..len)?;
        raw.body = String::from_utf8_lossy(body).into_owned();
        return Some((raw, end + 4 + len));
    }
    if raw.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = 0;
        let mut body = Vec::new();
        loop {
            let line_end = find(&rest[at..], b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..at + line_end]).ok()?.trim(), 16).ok()?;
            at += line_end + 2;
            if size == 0 {
                let trailer_end = find(&rest[at..], b"\r\n")?;
                raw.body = String::from_utf8_lossy(&body).into_owned();
                return Some((raw, end + 4 + at + trailer_end + 2));
            }
            body.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
    }
    if !eof {
        return None;
    }
    raw.body = String::from_utf8_lossy(rest).into_owned();
    Some((raw, bytes.len()))
}

/// Every response in `bytes`, which ended with the connection.
fn parse_all(mut bytes: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while let Some((raw, used)) = parse_one(bytes, true) {
        out.push(raw);
        bytes = &bytes[used..];
    }
    out
}

/// Reads until the proxy closes the connection or `within` passes; returns what came and
/// whether the connection was closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Reads one whole response (at most 10 s).
async fn read_response(s: &mut TcpStream) -> Raw {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((raw, _)) = parse_one(&got, false) {
            return raw;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return parse_one(&got, true).map(|(raw, _)| raw).unwrap_or_else(|| {
                    panic!("connection closed without a whole response: {:?}", String::from_utf8_lossy(&got))
                });
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no whole response within 10 s: {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// Sends `bytes` on a new connection and reads the first response.
async fn exchange(proxy: SocketAddr, bytes: &str) -> Raw {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// Asserts `res` carries weir's documented error body: one plain-text line starting `weir: `.
fn assert_weir_body(res: &Raw, what: &str) {
    assert!(res.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{what}: content type: {res:?}");
    assert!(res.body.starts_with("weir: "), "{what}: body: {res:?}");
    assert!(res.body.ends_with('\n') && res.body.lines().count() == 1, "{what}: one line: {res:?}");
}

/// Config for one listener in front of pools `a` and `b` (`b` is the default), routing
/// `a.example` to `a` and `b.example` to `b`.
fn routed_config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"b\"\n\
         [[listener.route]]\nhost = \"a.example\"\npool = \"a\"\n[[listener.route]]\nhost = \"b.example\"\npool = \"b\"\n\n\
         [pool.a]\nbackends = [{{ address = \"{a}\" }}]\n\n[pool.b]\nbackends = [{{ address = \"{b}\" }}]\n",
        support::cache_dir().display().to_string()
    )
}

/// `config_text` with `extra` added to the `[[listener]]` table.
fn listener_config(backends: &[SocketAddr], extra: &str) -> String {
    support::config_text(backends, "")
        .replace("listen = \"127.0.0.1:0\"\n", &format!("listen = \"127.0.0.1:0\"\n{extra}\n"))
}

#[tokio::test]
async fn a_missing_duplicate_or_malformed_host_gets_400() {
    let rec = Recorder::start("r").await;
    let server = support::start(&support::config_text(&[rec.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let cases = [
        ("missing", "GET /x HTTP/1.1\r\n\r\n"),
        ("duplicate", "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
        ("duplicate with one value", "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n"),
        ("a space", "GET /x HTTP/1.1\r\nHost: a example\r\n\r\n"),
        ("a list", "GET /x HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n"),
        ("userinfo", "GET /x HTTP/1.1\r\nHost: user@a.example\r\n\r\n"),
        ("a path", "GET /x HTTP/1.1\r\nHost: a.example/x\r\n\r\n"),
        ("a port that is not a number", "GET /x HTTP/1.1\r\nHost: a.example:http\r\n\r\n"),
        ("an unclosed IPv6 literal", "GET /x HTTP/1.1\r\nHost: [::1\r\n\r\n"),
        ("absolute form with userinfo", "GET http://user@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        (
            "absolute form, duplicate Host",
            "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        let res = exchange(proxy, req).await;
        assert_eq!(res.status, 400, "{what}: {res:?}");
        assert_weir_body(&res, what);
    }
    assert!(rec.paths().is_empty(), "no bad Host reached the backend: {:?}", rec.seen());

    // Well-formed hosts still pass, and an HTTP/1.0 request needs none.
    let fine = [
        "GET /ok HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
        "GET /ok HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        "GET /ok HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n",
        "GET /ok HTTP/1.0\r\n\r\n",
    ];
    for req in fine {
        let res = exchange(proxy, req).await;
        assert_eq!((res.status, res.body.as_str()), (200, "r"), "{req:?}: {res:?}");
    }
    assert_eq!(rec.paths().len(), fine.len());
}

#[tokio::test]
async fn an_absolute_form_target_replaces_host() {
    let up = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    for (target, host) in
        [("http://a.example/headers", "a.example"), ("http://a.example:8080/headers", "a.example:8080")]
    {
        let res = exchange(proxy, &format!("GET {target} HTTP/1.1\r\nHost: b.example\r\n\r\n")).await;
        assert_eq!(res.status, 200, "{res:?}");
        let hosts: Vec<&str> = res.body.lines().filter_map(|l| l.strip_prefix("host: ")).collect();
        assert_eq!(hosts, [host], "the backend sees the target's authority as Host: {}", res.body);
        assert!(res.body.contains(&format!("x-forwarded-host: {host}\n")), "{}", res.body);
    }
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_and_forwarded_by_its_authority() {
    let (a, b) = (Recorder::start("A").await, Recorder::start("B").await);
    let server = support::start(&routed_config(a.addr, b.addr)).await;
    let proxy = server.addr("main").unwrap();

    let res = exchange(proxy, "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n").await;
    assert_eq!((res.status, res.body.as_str()), (200, "A"), "{res:?}");
    let res = exchange(proxy, "GET http://b.example/y HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!((res.status, res.body.as_str()), (200, "B"), "{res:?}");

    let (a, b) = (a.seen(), b.seen());
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].path.as_str(), a[0].values("host")), ("/x", vec!["a.example"]));
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!((b[0].path.as_str(), b[0].values("host")), ("/y", vec!["b.example"]));
}

#[tokio::test]
async fn a_malformed_request_body_gets_400_not_502() {
    let rec = Recorder::start("r").await;
    let server = support::start(&support::config_text(&[rec.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let bodies = [
        ("a chunk size that is not hex", "zz\r\n"),
        ("a bad size after a good chunk", "5\r\nhello\r\nzz\r\n"),
        ("chunk data longer than its size", "5\r\nhelloXX\r\n"),
        ("a chunk size that overflows", "fffffffffffffffffffff\r\n"),
    ];
    for (what, body) in bodies {
        let req = format!("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let res = exchange(proxy, &req).await;
        assert_eq!(res.status, 400, "{what}: the client's fault, not the backend's: {res:?}");
        assert_weir_body(&res, what);
        assert!(res.body.starts_with("weir: the request body could not be read: "), "{what}: {}", res.body);
        assert_eq!(res.header("connection"), Some("close"), "{what}: {res:?}");
    }
}

#[tokio::test]
async fn smuggling_attempts_never_reach_a_backend() {
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let rec = Recorder::start("r").await;
    let server = support::start(&support::config_text(&[rec.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let chunked_smuggled = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let attempts = [
        (
            "Content-Length, then Transfer-Encoding",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "Transfer-Encoding, then Content-Length covering the smuggled request",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
        (
            "a Content-Length list",
            format!("POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        ),
        (
            "a bad chunk size",
            format!("POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a negative chunk size",
            format!("POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a chunk size that overflows",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n{SMUGGLED}"
            ),
        ),
        (
            "obs-fold in Transfer-Encoding",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
        ),
        (
            "obs-fold in another header",
            format!("GET /first HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a space before the colon",
            format!("POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunked not the last coding",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST /first HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a chunked GET whose body is a request",
            format!("GET /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"),
        ),
        (
            "Connection naming Content-Length",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
    ];
    for (what, bytes) in &attempts {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(bytes.as_bytes()).await.unwrap();
        // A smuggled request would be answered, then the connection closed (it asks to be).
        let (got, _closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        let responses = parse_all(&got);
        let paths = rec.paths();
        assert!(
            !paths.iter().any(|p| p == "/smuggled"),
            "{what}: the smuggled request reached the backend: {paths:?}; responses {responses:?}"
        );
        assert!(responses.len() <= 1, "{what}: one request, at most one response: {responses:?}");
    }
    assert!(rec.paths().iter().all(|p| p == "/first"), "{:?}", rec.paths());
    let res = exchange(proxy, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((res.status, res.body.as_str()), (200, "r"), "{res:?}");
}

#[tokio::test]
async fn a_half_closed_client_still_gets_the_response() {
    let rec = Recorder::start("r").await;
    let server = support::start(&support::config_text(&[rec.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    for path in ["/", "/slow"] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let responses = parse_all(&got);
        assert!(closed, "{path}: the connection ends after the response");
        assert_eq!(responses.len(), 1, "{path}: {:?}", String::from_utf8_lossy(&got));
        assert_eq!((responses[0].status, responses[0].body.as_str()), (200, "r"), "{path}: {responses:?}");
    }
}

#[tokio::test]
async fn every_x_forwarded_for_line_is_kept_in_order_then_the_peer() {
    let up = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let res = exchange(
        proxy,
        "GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\nX-Other: 1\r\n\
         X-Forwarded-For: 192.0.2.2, 192.0.2.3\r\nx-forwarded-for: 2001:db8::1\r\n\r\n",
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    let chain: Vec<&str> = res.body.lines().filter_map(|l| l.strip_prefix("x-forwarded-for: ")).collect();
    assert_eq!(chain.join(", "), "192.0.2.1, 192.0.2.2, 192.0.2.3, 2001:db8::1, 127.0.0.1", "{}", res.body);
}

#[tokio::test]
async fn every_error_weir_answers_has_a_one_line_body() {
    let up = Upstream::start("h").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases = [
        (
            431,
            "a head over max_header_bytes",
            format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(70 << 10)),
        ),
        (
            431,
            "a head far over max_header_bytes",
            format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n", "a".repeat(1 << 20)),
        ),
        (431, "more headers than max_headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
        (431, "far more headers than max_headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", many.repeat(20))),
        (400, "a malformed request line", "GET /\r\n\r\n".to_owned()),
        (400, "a malformed header name", "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n".to_owned()),
        (400, "obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_owned()),
        (
            400,
            "two Content-Lengths",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_owned(),
        ),
        (400, "no Host", "GET / HTTP/1.1\r\n\r\n".to_owned()),
    ];
    for (status, what, req) in cases {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        // The proxy may answer and close before it has read all of a large head.
        let _ = s.write_all(req.as_bytes()).await;
        let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        let res = parse_one(&got, true).map(|(r, _)| r);
        let Some(res) = res else { panic!("{what}: no response: {:?}", String::from_utf8_lossy(&got)) };
        assert_eq!(res.status, status, "{what}: {res:?}");
        assert_weir_body(&res, what);
    }
    // A keep-alive connection that sends a bad head after a good request gets the body too.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let first = read_response(&mut s).await;
    assert_eq!((first.status, support::name_of(&first.body)), (200, "h"));
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await.unwrap();
    let second = read_response(&mut s).await;
    assert_eq!(second.status, 431, "{second:?}");
    assert_weir_body(&second, "431 on a reused connection");
}

/// A backend's own bare 400 passes through untouched: weir only dresses its own errors.
#[tokio::test]
async fn a_backends_bare_error_is_forwarded_as_it_is() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut res = http::Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = http::StatusCode::BAD_REQUEST;
                    Ok::<_, std::convert::Infallible>(res)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let server = support::start(&support::config_text(&[backend], "")).await;
    let proxy = server.addr("main").unwrap();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let res = read_response(&mut s).await;
        assert_eq!((res.status, res.body.as_str()), (400, ""), "{res:?}");
    }
    task.abort();
}

/// Raises this process's soft open-file limit to its hard limit, and returns the limit.
#[allow(unsafe_code)]
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_clients_do_not_stop_a_normal_client() {
    // Each slow client is two descriptors in this process, its socket and weir's; 1,000
    // of them unless the hard open-file limit is too low for that.
    let limit = raise_fd_limit();
    let slow_clients = 1000.min(usize::try_from(limit.saturating_sub(256) / 2).unwrap_or(usize::MAX));
    assert!(slow_clients >= 200, "the open-file limit ({limit}) is too low even for 200 slow clients");
    if slow_clients < 1000 {
        eprintln!("open-file limit {limit}: {slow_clients} slow clients instead of 1,000");
    }
    let up = Upstream::start("ok").await;
    let server = support::start(&support::config_text(&[up.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    let mut slow = Vec::with_capacity(slow_clients);
    for _ in 0..slow_clients {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(s);
    }
    // They keep the heads coming, a byte each every 100 ms, while the normal client is served.
    let trickle = tokio::spawn(async move {
        loop {
            for s in &mut slow {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let client = support::client();
    let started = Instant::now();
    for _ in 0..5 {
        let got =
            tokio::time::timeout(Duration::from_secs(5), support::get(&client, &format!("http://{proxy}/"))).await;
        let (status, body) = got.unwrap_or_else(|_| panic!("not served within 5 s beside {slow_clients} slow clients"));
        assert_eq!((status.as_u16(), support::name_of(&body)), (200, "ok"));
    }
    assert!(started.elapsed() < Duration::from_secs(5), "5 requests took {:?}", started.elapsed());
    trickle.abort();
}

#[tokio::test]
async fn max_connections_holds_new_connections_at_accept_until_one_closes() {
    let up = Upstream::start("ok").await;
    let server = support::start(&listener_config(&[up.addr], "max_connections = 2")).await;
    let proxy = server.addr("main").unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(request).await.unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        open.push(s);
    }
    // The third connects (the kernel queues it) but is not served while two are open.
    let mut third = TcpStream::connect(proxy).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "the third connection was served while two were open: {early:?}");
    // The two open ones keep being served.
    open[1].write_all(request).await.unwrap();
    assert_eq!(read_response(&mut open[1]).await.status, 200);
    // One closes: the third is accepted and served.
    drop(open.remove(0));
    let res = read_response(&mut third).await;
    assert_eq!((res.status, support::name_of(&res.body)), (200, "ok"));
}

#[tokio::test]
async fn a_websocket_holds_its_connection_slot_while_its_tunnel_is_open() {
    use futures_util::{SinkExt, StreamExt};
    let up = Upstream::start("ok").await;
    let server = support::start(&listener_config(&[up.addr], "max_connections = 1")).await;
    let proxy = server.addr("main").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi")).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text());
    let mut other = TcpStream::connect(proxy).await.unwrap();
    other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), other.read(&mut buf)).await;
    assert!(early.is_err(), "served while the WebSocket held the only slot: {early:?}");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // The close handshake is done; the client's connection closes with it.
    drop(ws);
    let res = read_response(&mut other).await;
    assert_eq!((res.status, support::name_of(&res.body)), (200, "ok"));
}

#[tokio::test]
async fn a_reload_that_raises_max_connections_lets_a_waiting_client_in() {
    let up = Upstream::start("ok").await;
    let server = support::start(&listener_config(&[up.addr], "max_connections = 1")).await;
    let proxy = server.addr("main").unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(proxy).await.unwrap();
    first.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut first).await.status, 200);
    let mut second = TcpStream::connect(proxy).await.unwrap();
    second.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections = 1: {early:?}");
    let raised = weir::config::Config::parse(&listener_config(&[up.addr], "max_connections = 2"), None).unwrap();
    server.reload(raised).await.unwrap();
    let res = read_response(&mut second).await;
    assert_eq!((res.status, support::name_of(&res.body)), (200, "ok"), "served with the first still open");
    drop(first);
}

#[test]
fn max_connections_is_range_checked() {
    let backend: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for bad in ["0", "-1", "1000001"] {
        let text = listener_config(&[backend], &format!("max_connections = {bad}"));
        let err = weir::config::Config::parse(&text, None).unwrap_err().to_string();
        assert!(err.contains("listener[0].max_connections"), "{bad}: {err}");
        assert!(err.starts_with("<inline>:8:"), "{bad}: names the line of the key: {err}");
    }
    for good in ["1", "10000", "1000000"] {
        let text = listener_config(&[backend], &format!("max_connections = {good}"));
        assert!(weir::config::Config::parse(&text, None).is_ok(), "{good}");
    }
}

/// A child process killed when dropped, so a failed assertion leaves no `weir` behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) a process has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses); utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let up = Upstream::start("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, support::config_text(&[up.addr], "")).unwrap();
    // The real binary, with 64 descriptors.
    let mut child = Child(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" run --log-format json --config \"$1\"")
            .arg(env!("CARGO_BIN_EXE_weir"))
            .arg(&path)
            .env("RUST_LOG", "warn,weir=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("weir logged nothing for 20 s")
            .expect("weir exited")
    };
    let addr: SocketAddr = loop {
        let line = next_line().await;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    let client = support::client();
    let url = format!("http://{addr}/");
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "ok");

    // More idle connections than weir has descriptors: it accepts until it runs out, the
    // rest wait in the listen queue (100 stays within the smallest usual queue, 128).
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    loop {
        let line = next_line().await;
        if line.contains("accept failed") {
            assert!(line.contains("Too many open files"), "{line}");
            break;
        }
    }
    // While out of descriptors the accept loop backs off rather than spinning.
    let before = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    let elapsed_ticks = window.elapsed().as_millis() as u64 / 10;
    assert!(used * 5 < elapsed_ticks, "weir used {used} of {elapsed_ticks} ticks while out of descriptors");

    // Once the descriptors are free again, weir serves by itself.
    drop(idle);
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let client = support::client();
        support::get(&client, &url).await
    })
    .await
    .expect("weir served nothing within 10 s of descriptors coming free");
    assert_eq!(support::name_of(&served.1), "ok");
}
