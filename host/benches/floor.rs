//! The floor of a proxied HTTP/1.1 request (issue 16): two proxies that do nothing but
//! forward, run by the peer bench (`host/benches/peers/`) beside nginx, HAProxy and weir,
//! so weir's CPU per request can be read against what the same stack costs with no
//! routing, no plugin and no header rewriting.
//!
//! ```text
//! cargo bench --bench floor --no-run          # builds target/release/deps/floor-<hash>
//! floor hyper    --listen 127.0.0.1:8087 --upstream 127.0.0.1:9001,127.0.0.1:9002
//! floor httparse --listen 127.0.0.1:8089 --upstream 127.0.0.1:9001,127.0.0.1:9002
//! floor hyper-h2c --listen 127.0.0.1:8085 --upstream 127.0.0.1:9001,127.0.0.1:9002
//!       [--runtime current|multi]            # current (default): a current-thread tokio
//!                                            # runtime; multi: weir's, multi-thread with
//!                                            # one worker
//!       [--burn-ns N]                        # spin N ns of user time per request (0):
//!                                            # a proxy as slow as weir, with the floor's
//!                                            # syscalls, to see what user time alone does
//!                                            # to the kernel's part
//! ```
//!
//! - `hyper`: hyper 1.x's HTTP/1 server; each client connection gets one upstream
//!   connection (hyper's `client::conn::http1`), kept for the life of the client
//!   connection, and each request is handed to it as it came and the upstream's response
//!   (head and streamed body) handed back as it came.
//! - `httparse`: tokio and httparse by hand: the request head is read into the client
//!   connection's buffer and parsed, its bytes written unchanged to the connection's
//!   upstream connection with the request body (Content-Length or chunked), then the
//!   response head is read and parsed and forwarded with its body (Content-Length,
//!   chunked, or until the upstream closes), in one write when it is all buffered.
//! - `hyper-h2c` (issue 13's floor): hyper 1.x's HTTP/2 server (prior knowledge, as the
//!   peer bench's h2c clients speak) in front of hyper-util's pooled HTTP/1.1 client, the
//!   stack weir's HTTP/2 listener is built on: each stream's request goes out with its
//!   target made absolute for the client connection's upstream and its version HTTP/1.1,
//!   on a kept upstream connection from the pool (a new one when none is idle), and the
//!   response comes back as it came (hyper's HTTP/2 server drops the connection fields).
//!
//! Both: `TCP_NODELAY` on both sides; client connections are given the upstreams in turn
//! (connection i gets upstream i mod n, as weir's round-robin spreads them over the
//! same two origin ports); an upstream that fails answers `502` and closes the client
//! connection. These are measuring instruments, not products: no limits, no timeouts.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hyper,
    Httparse,
    HyperH2c,
}

#[derive(Debug)]
struct Args {
    kind: Kind,
    listen: SocketAddr,
    upstreams: Vec<SocketAddr>,
    multi: bool,
    burn: Duration,
}

const USAGE: &str = "usage: floor hyper|httparse|hyper-h2c --listen ADDR --upstream ADDR[,ADDR...] [--runtime current|multi] [--burn-ns N]";

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let kind = match it.next().as_deref() {
        Some("hyper") => Kind::Hyper,
        Some("httparse") => Kind::Httparse,
        Some("hyper-h2c") => Kind::HyperH2c,
        other => return Err(format!("unknown floor {other:?}")),
    };
    let (mut listen, mut upstreams, mut multi, mut burn) = (None, Vec::new(), false, Duration::ZERO);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen {value}: {e}"))?),
            "--upstream" => {
                for a in value.split(',') {
                    upstreams.push(a.parse().map_err(|e| format!("--upstream {a}: {e}"))?);
                }
            }
            "--runtime" => {
                multi = match value.as_str() {
                    "current" => false,
                    "multi" => true,
                    _ => return Err(format!("--runtime {value}: current or multi")),
                }
            }
            "--burn-ns" => burn = Duration::from_nanos(value.parse().map_err(|e| format!("--burn-ns {value}: {e}"))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    if upstreams.is_empty() {
        return Err("--upstream is required".into());
    }
    Ok(Args { kind, listen, upstreams, multi, burn })
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("floor: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let rt = if args.multi {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    // The accept loop is a task, so with `multi` it runs on the worker as weir's do.
    let served = rt.block_on(async move { tokio::spawn(serve(args)).await });
    match served {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("floor: the accept loop failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "floor {:?} on {} -> {:?} (runtime {})",
        args.kind,
        args.listen,
        args.upstreams,
        if args.multi { "multi-thread, 1 worker" } else { "current-thread" }
    );
    let mut next = 0usize;
    let pool = h1_pool();
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let upstream = args.upstreams[next % args.upstreams.len()];
        next = next.wrapping_add(1);
        match args.kind {
            Kind::Hyper => tokio::spawn(hyper_conn(client, upstream, args.burn)),
            Kind::Httparse => tokio::spawn(httparse_conn(client, upstream, args.burn)),
            Kind::HyperH2c => tokio::spawn(h2c_conn(client, upstream, pool.clone(), args.burn)),
        };
    }
}

/// Spins for `d` (user time, no syscall: the vDSO clock).
fn burn(d: Duration) {
    if d.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

// ------------------------------------------------------------------------ hyper

async fn hyper_handshake(addr: SocketAddr) -> Option<SendRequest<Incoming>> {
    let io = connect(addr).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

type FloorBody = Either<Incoming, Empty<Bytes>>;

fn bad_gateway() -> Response<FloorBody> {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r
}

async fn hyper_conn(client: TcpStream, upstream: SocketAddr, spin: Duration) {
    // The one upstream connection of this client connection (made again by the next
    // request when it failed): taken by a request, put back as soon as the request is
    // handed to it (its next `ready` waits for the response's end). Requests on one HTTP/1 connection come one at a time, so the lock is never
    // contended; it is there because hyper's service is `Fn`.
    let slot = Arc::new(Mutex::new(hyper_handshake(upstream).await));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let slot = slot.clone();
        async move {
            burn(spin);
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            let ready = match taken {
                Some(mut s) => s.ready().await.is_ok().then_some(s),
                None => None,
            };
            let mut sender = match ready {
                Some(s) => s,
                None => match hyper_handshake(upstream).await {
                    Some(s) => s,
                    None => return Ok::<_, Infallible>(bad_gateway()),
                },
            };
            let response = sender.send_request(req);
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
            Ok(match response.await {
                Ok(r) => r.map(Either::Left),
                Err(_) => bad_gateway(),
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service).await;
}

// ------------------------------------------------------------------------ hyper h2c

type H1Pool = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>;

/// hyper-util's pooled HTTP/1.1 client: `TCP_NODELAY`, idle connections kept without a
/// limit (as weir keeps them for its backends).
fn h1_pool() -> H1Pool {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

async fn h2c_conn(client: TcpStream, upstream: SocketAddr, pool: H1Pool, spin: Duration) {
    let authority: Arc<str> = upstream.to_string().into();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (pool, authority) = (pool.clone(), authority.clone());
        async move {
            burn(spin);
            let (mut parts, body) = req.into_parts();
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = match hyper::Uri::builder().scheme("http").authority(&*authority).path_and_query(target).build()
            {
                Ok(uri) => uri,
                Err(_) => return Ok::<_, Infallible>(bad_gateway()),
            };
            parts.version = hyper::Version::HTTP_11;
            Ok(match pool.request(Request::from_parts(parts, body)).await {
                Ok(r) => r.map(Either::Left),
                Err(_) => bad_gateway(),
            })
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(client), service)
        .await;
}

// ------------------------------------------------------------------------ httparse

/// The most headers a head may have.
const MAX_HEADERS: usize = 64;
/// A connection's buffer, each way; a head must fit in it.
const BUF: usize = 16 * 1024;

/// One direction's bytes read and not yet forwarded: `buf[start..end]`.
struct Buf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new() -> Self {
        Self { buf: vec![0; BUF].into_boxed_slice(), start: 0, end: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more from `from`; the number of bytes (0: closed), or `None` when the buffer
    /// is full.
    async fn fill(&mut self, from: &mut TcpStream) -> std::io::Result<Option<usize>> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Ok(None);
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = from.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(Some(n))
    }
}

/// How a message's body ends.
#[derive(Debug)]
enum Body {
    /// After this many more bytes (0: no body).
    Length(u64),
    Chunked(Chunked),
    /// When the sender closes (a response with neither length nor chunking).
    UntilClose,
}

/// Where in chunked framing the bytes so far end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size { size: u64, digits: bool },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
struct Malformed;

impl Body {
    fn done(&self) -> bool {
        matches!(self, Body::Length(0) | Body::Chunked(Chunked::Done))
    }

    /// How many of `data` (the bytes that follow what was seen so far) are this body's.
    fn take(&mut self, data: &[u8]) -> Result<usize, Malformed> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Body::UntilClose => Ok(data.len()),
            Body::Chunked(state) => {
                let mut i = 0;
                while i < data.len() && *state != Chunked::Done {
                    if let Chunked::Data(left) = *state {
                        let n = left.min((data.len() - i) as u64);
                        i += n as usize;
                        *state = if left == n { Chunked::DataCr } else { Chunked::Data(left - n) };
                        continue;
                    }
                    *state = chunked_step(*state, data[i])?;
                    i += 1;
                }
                Ok(i)
            }
        }
    }
}

fn chunked_step(state: Chunked, b: u8) -> Result<Chunked, Malformed> {
    Ok(match (state, b) {
        (Chunked::Size { size, .. }, b) if b.is_ascii_hexdigit() => {
            let d = (b as char).to_digit(16).ok_or(Malformed)? as u64;
            let size = size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or(Malformed)?;
            Chunked::Size { size, digits: true }
        }
        (Chunked::Size { size, digits: true }, b';' | b' ' | b'\t') => Chunked::Extension { size },
        (Chunked::Size { size, digits: true }, b'\r') => Chunked::SizeLf { size },
        (Chunked::Extension { size }, b'\r') => Chunked::SizeLf { size },
        (Chunked::Extension { size }, _) => Chunked::Extension { size },
        (Chunked::SizeLf { size: 0 }, b'\n') => Chunked::LineStart,
        (Chunked::SizeLf { size }, b'\n') => Chunked::Data(size),
        (Chunked::DataCr, b'\r') => Chunked::DataLf,
        (Chunked::DataLf, b'\n') => Chunked::Size { size: 0, digits: false },
        (Chunked::LineStart, b'\r') => Chunked::EndLf,
        (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
        (Chunked::LineStart | Chunked::Trailer, _) => Chunked::Trailer,
        (Chunked::TrailerLf, b'\n') => Chunked::LineStart,
        (Chunked::EndLf, b'\n') => Chunked::Done,
        _ => return Err(Malformed),
    })
}

/// The framing of a head's body and whether the connection closes after this message.
fn framing(headers: &[httparse::Header<'_>], version: u8) -> Result<(Body, bool), Malformed> {
    let mut length = None;
    let mut chunked = false;
    let mut close = version == 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| Malformed)?.trim();
            let n: u64 = v.parse().map_err(|_| Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked =
                h.value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    let body = if chunked {
        Body::Chunked(Chunked::Size { size: 0, digits: false })
    } else {
        match length {
            Some(n) => Body::Length(n),
            None => Body::UntilClose,
        }
    };
    Ok((body, close))
}

/// Why a connection ended early.
enum End {
    /// The client closed, or sent what cannot be forwarded (answered, then closed).
    Client,
    /// The upstream failed: the client gets a 502 if nothing of the response was sent.
    Upstream { answered: bool },
}

const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

async fn httparse_conn(mut client: TcpStream, upstream: SocketAddr, spin: Duration) {
    let Ok(mut up) = connect(upstream).await else {
        let _ = client.write_all(BAD_GATEWAY).await;
        return;
    };
    let (mut cbuf, mut ubuf) = (Buf::new(), Buf::new());
    loop {
        match exchange(&mut client, &mut up, &mut cbuf, &mut ubuf, spin).await {
            Ok(true) => continue,
            Ok(false) | Err(End::Client) => return,
            Err(End::Upstream { answered }) => {
                if !answered {
                    let _ = client.write_all(BAD_GATEWAY).await;
                }
                return;
            }
        }
    }
}

/// Forwards one request and its response; whether the connection stays open.
async fn exchange(
    client: &mut TcpStream,
    up: &mut TcpStream,
    cbuf: &mut Buf,
    ubuf: &mut Buf,
    spin: Duration,
) -> Result<bool, End> {
    // The request head.
    let (head_len, mut body, close, head_request) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(cbuf.data()) {
            Ok(httparse::Status::Complete(n)) => {
                let (mut body, close) = match framing(req.headers, req.version.unwrap_or(1)) {
                    Ok(f) => f,
                    Err(Malformed) => return refuse(client).await,
                };
                if matches!(body, Body::UntilClose) {
                    body = Body::Length(0); // a request without framing has no body
                }
                break (n, body, close, req.method == Some("HEAD"));
            }
            Ok(httparse::Status::Partial) => match cbuf.fill(client).await {
                Ok(Some(0)) | Err(_) => return Err(End::Client),
                Ok(Some(_)) => {}
                Ok(None) => return refuse(client).await,
            },
            Err(_) => return refuse(client).await,
        }
    };
    burn(spin);
    // The head as it came, and the body bytes already read.
    let mut n = head_len;
    n += body.take(&cbuf.data()[n..]).map_err(|_| End::Client)?;
    up.write_all(&cbuf.data()[..n]).await.map_err(|_| End::Upstream { answered: false })?;
    cbuf.consume(n);
    while !body.done() {
        match cbuf.fill(client).await {
            Ok(Some(0)) | Err(_) => return Err(End::Client),
            Ok(_) => {}
        }
        let n = body.take(cbuf.data()).map_err(|_| End::Client)?;
        up.write_all(&cbuf.data()[..n]).await.map_err(|_| End::Upstream { answered: false })?;
        cbuf.consume(n);
    }
    // The response head (after any 1xx, forwarded as they come).
    let upstream_failed = End::Upstream { answered: false };
    let (mut n, mut body, up_close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(ubuf.data()) {
            Ok(httparse::Status::Complete(n)) => {
                let code = res.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    client.write_all(&ubuf.data()[..n]).await.map_err(|_| End::Client)?;
                    ubuf.consume(n);
                    continue;
                }
                let Ok((body, close)) = framing(res.headers, res.version.unwrap_or(1)) else {
                    return Err(upstream_failed);
                };
                if code == 101 {
                    return Err(upstream_failed); // no upgrades through the floor
                }
                let body = if head_request || code == 204 || code == 304 { Body::Length(0) } else { body };
                let close = close || matches!(body, Body::UntilClose);
                break (n, body, close);
            }
            Ok(httparse::Status::Partial) => match ubuf.fill(up).await {
                Ok(Some(n)) if n > 0 => {}
                _ => return Err(upstream_failed),
            },
            Err(_) => return Err(upstream_failed),
        }
    };
    // The head and the body bytes already read, in one write; then the rest as it comes.
    n += body.take(&ubuf.data()[n..]).map_err(|_| End::Upstream { answered: false })?;
    client.write_all(&ubuf.data()[..n]).await.map_err(|_| End::Client)?;
    ubuf.consume(n);
    while !body.done() {
        match ubuf.fill(up).await {
            Ok(Some(0)) if matches!(body, Body::UntilClose) => return Ok(false),
            Ok(Some(0)) | Err(_) => return Err(End::Upstream { answered: true }),
            Ok(_) => {}
        }
        let n = body.take(ubuf.data()).map_err(|_| End::Upstream { answered: true })?;
        client.write_all(&ubuf.data()[..n]).await.map_err(|_| End::Client)?;
        ubuf.consume(n);
    }
    Ok(!(close || up_close))
}

async fn refuse(client: &mut TcpStream) -> Result<bool, End> {
    let _ = client.write_all(BAD_REQUEST).await;
    Err(End::Client)
}
