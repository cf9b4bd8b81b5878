//! Test upstreams, a client, and config helpers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A backend started in-process. It answers:
/// - `/upload`: reads the whole body, answers with its length;
/// - `/download?bytes=N`: streams N bytes in 64 KiB chunks;
/// - `/headers`: the request headers, one `name: value` per line;
/// - `/stall`: answers after 30 s;
/// - anything else: its own name.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(name.clone(), req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, task }
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|e: Infallible| match e {}).boxed()
}

async fn serve(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let res = match path.as_str() {
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(total.to_string()))
        }
        "/download" => {
            let n: u64 =
                req.uri().query().and_then(|q| q.strip_prefix("bytes=")).and_then(|v| v.parse().ok()).unwrap_or(0);
            Response::new(Repeat::new(n).boxed())
        }
        "/headers" => {
            let text: String =
                req.headers().iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?"))).collect();
            Response::new(full(text))
        }
        "/stall" => {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            Response::new(full("late"))
        }
        _ => Response::new(full(name.to_string())),
    };
    Ok(res)
}

/// A body of `left` bytes produced lazily in 64 KiB chunks, never held whole.
pub struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Repeat {
    pub fn new(bytes: u64) -> Self {
        Self { left: bytes, chunk: Bytes::from(vec![b'x'; 64 << 10]) }
    }
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// A real HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An empty request body.
pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// A response's whole body, as text.
pub async fn body_text(res: Response<Incoming>) -> String {
    String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// GETs `url`; returns status and body text.
pub async fn get(client: &Client<HttpConnector, Body>, url: &str) -> (StatusCode, String) {
    let res = client.request(Request::get(url).body(empty()).unwrap()).await.unwrap();
    (res.status(), body_text(res).await)
}

/// Where compiled plugins are cached for the tests (shared by every test, inside target/).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// A test fixture plugin (`tests/fixtures/NAME`), built by host/build.rs.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("WEIR_FIXTURES_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// Config text for one listener on 127.0.0.1:0 in front of one pool `p` with `backends`;
/// `pool_extra` is added to the `[pool.p]` table. Plugin calls get a 50 ms deadline instead
/// of 2 ms: the tests run many proxies at once on two cores, where a thread preempted in
/// the middle of a decision would otherwise blow a 2 ms wall-clock deadline and have its
/// request placed by the fallback, which tests of exact distributions cannot tell apart.
pub fn config_text(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{}]\n{pool_extra}\n",
        cache_dir().display().to_string(),
        list.join(", ")
    )
}

/// Starts weir in-process on a config.
pub async fn start(text: &str) -> weir::Server {
    let config = weir::config::Config::parse(text, None).unwrap();
    weir::Server::start(config).await.unwrap()
}

/// A local address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
