//! `weir demo`: three in-process demo backends behind the proxy, from an embedded config,
//! so a new user sees load balancing work with one command and nothing to write. Each
//! backend answers HTTP with its name and echoes WebSocket messages, prefixed with it;
//! its `/healthz` can be told to fail, to watch health checks take it out and put it back.
//! The same [`Backend`] serves the tests and benchmarks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

use crate::net::listen::Acceptor;

/// The demo's config; `{backends}` is replaced by the demo backends' addresses and
/// `{listen}` by the proxy address.
pub const CONFIG_TEMPLATE: &str = r#"
[[listener]]
name = "demo"
listen = "{listen}"
pool = "demo"
[[listener.route]]
path_prefix = "/sticky"
pool = "sticky"

[pool.demo]
backends = [{backends}]
balancer = { plugin = "round-robin" }
# Every backend's /healthz is probed twice a second: three failures in a row take it out of
# the rotation, two passes put it back, and its share then ramps up over 5 s.
probe = { kind = "http", path = "/healthz", interval_ms = 500, timeout_ms = 250 }
health = [{ plugin = "threshold", config = { rise = 2, fall = 3 } }]
slow_start_ms = 5000
# A candidate tried beside round-robin on half of the decisions: it never acts; the
# dashboard shows how often it agrees (promote it through the admin API).
shadow = { plugin = "p2c", sample_percent = 50 }

# The same backends, but a returning client (a WebSocket reconnect included) is pinned to
# its backend by a signed cookie.
[pool.sticky]
backends = [{backends}]
balancer = { plugin = "least-connections" }
affinity = { plugin = "cookie", config = { name = "WEIR_AFFINITY", max_age_s = 3600 } }
"#;

/// A demo backend on 127.0.0.1, the one the tests use too. It answers:
/// - a WebSocket upgrade: echoes text (prefixed with its name) and binary messages;
/// - `/healthz`: `ok` with status 200, or the status set by `/healthz/set?status=N`
///   ([`Backend::set_health`]): what a health probe reads;
/// - `/answer/set?status=N`: from now on every other answer has that status
///   ([`Backend::set_answer`]), e.g. 500 for a backend that fails all it serves;
/// - `/upload`: reads the whole body, answers with its length;
/// - `/download?bytes=N`: streams N bytes in 64 KiB chunks, never held whole;
/// - `/headers`: the request headers, one `name: value` per line;
/// - `/delay?ms=N`: its name, after N ms;
/// - `/stall`: answers after 30 s;
/// - anything else: `NAME: METHOD URI`.
///
/// Dropping it stops it (its accept loop; connections already open finish).
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

/// What a backend's answers can be told to be.
#[derive(Debug)]
struct State {
    name: Arc<str>,
    /// Status of `/healthz`.
    health: AtomicU16,
    /// Status of every other answer.
    answer: AtomicU16,
    /// Set by [`Backend::stop`]: open connections close.
    stopped: tokio::sync::watch::Sender<bool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend named `name` on 127.0.0.1:0.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a backend named `name` on `addr` (a stopped backend's, to restart it).
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.into(),
            health: AtomicU16::new(200),
            answer: AtomicU16::new(200),
            stopped: tokio::sync::watch::Sender::new(false),
        });
        let mut acceptor = Acceptor::new(listener, format!("demo backend {name}"));
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = acceptor.accept().await;
                let state = serving.clone();
                let mut stopped = state.stopped.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Ok(Self { addr, task, state })
    }

    /// Makes `/healthz` answer `status` (200: healthy again).
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::Relaxed);
    }

    /// Makes every ordinary answer carry `status` (200: as usual).
    pub fn set_answer(&self, status: u16) {
        self.state.answer.store(status, Ordering::Relaxed);
    }

    /// Stops the backend for real: it accepts no more and closes the connections it has
    /// open (keep-alive ones included), as a crashed or stopped server would. Its port is
    /// free for [`Backend::start_on`].
    pub fn stop(self) {
        self.state.stopped.send_replace(true);
    }

    /// Starts a backend that lives as long as the process (the demo's), returning its
    /// address.
    pub async fn spawn(name: &str) -> std::io::Result<SocketAddr> {
        let backend = Self::start(name).await?;
        let addr = backend.addr;
        std::mem::forget(backend);
        Ok(addr)
    }
}

/// Starts a demo backend on 127.0.0.1:0 for the life of the process; see [`Backend`].
pub async fn spawn_backend(name: &str) -> std::io::Result<SocketAddr> {
    Backend::spawn(name).await
}

type DemoBody = BoxBody<Bytes, Infallible>;

fn full(text: impl Into<Bytes>) -> DemoBody {
    Full::new(text.into()).boxed()
}

/// The status in `?status=N`, if it is one.
fn status_query(req: &http::Request<Incoming>) -> Option<u16> {
    let q = req.uri().query()?;
    let v = q.split('&').find_map(|kv| kv.strip_prefix("status="))?;
    v.parse::<u16>().ok().filter(|s| (100..=999).contains(s))
}

/// One demo request.
async fn answer(state: Arc<State>, mut req: http::Request<Incoming>) -> Result<http::Response<DemoBody>, Infallible> {
    let name = state.name.clone();
    let key = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()));
    let upgrade =
        req.headers().get(http::header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let (true, Some(accept)) = (upgrade, key) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let echo_name = name.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                let reply = match msg {
                    Message::Text(t) => Message::text(format!("{echo_name}: {}", t.as_str())),
                    Message::Binary(b) => Message::Binary(b),
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
        let mut res = http::Response::new(full(Bytes::new()));
        *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        if let Ok(v) = http::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(res);
    }
    let query = |key: &str| -> u64 {
        req.uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = |s: u16| http::StatusCode::from_u16(s).unwrap_or(http::StatusCode::OK);
    let mut res = match req.uri().path() {
        "/healthz" => {
            let code = status(state.health.load(Ordering::Relaxed));
            let mut res = http::Response::new(full(if code.is_success() { "ok\n" } else { "failing\n" }));
            *res.status_mut() = code;
            res
        }
        "/healthz/set" | "/answer/set" => match status_query(&req) {
            Some(s) => {
                let which = if req.uri().path() == "/healthz/set" { &state.health } else { &state.answer };
                which.store(s, Ordering::Relaxed);
                http::Response::new(full(format!(
                    "{name}: {} now answers {s}\n",
                    req.uri().path().trim_end_matches("/set")
                )))
            }
            None => {
                let mut res = http::Response::new(full("give ?status=N (100 to 999)\n"));
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                res
            }
        },
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            http::Response::new(full(total.to_string()))
        }
        "/download" => http::Response::new(Repeat::new(query("bytes")).boxed()),
        "/headers" => {
            let text: String =
                req.headers().iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?"))).collect();
            http::Response::new(full(text))
        }
        "/delay" => {
            tokio::time::sleep(std::time::Duration::from_millis(query("ms"))).await;
            http::Response::new(full(name.to_string()))
        }
        "/stall" => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            http::Response::new(full("late"))
        }
        _ => {
            let mut res = http::Response::new(full(format!("{name}: {} {}\n", req.method(), req.uri())));
            *res.status_mut() = status(state.answer.load(Ordering::Relaxed));
            res
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        res.headers_mut().insert("x-backend", v);
    }
    Ok(res)
}

/// A body of `left` bytes produced lazily in 64 KiB chunks, never held whole.
#[derive(Debug)]
pub struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Repeat {
    /// `bytes` bytes of `x`.
    pub fn new(bytes: u64) -> Self {
        Self { left: bytes, chunk: Bytes::from(vec![b'x'; 64 << 10]) }
    }
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= take as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// Starts three demo backends and returns the demo config text for them.
pub async fn config(listen: SocketAddr) -> std::io::Result<String> {
    let mut backends = Vec::new();
    for i in 1..=3 {
        let addr = spawn_backend(&format!("demo-{i}")).await?;
        backends.push(format!("{{ address = \"{addr}\" }}"));
    }
    Ok(CONFIG_TEMPLATE.replace("{listen}", &listen.to_string()).replace("{backends}", &backends.join(", ")))
}
