//! Test upstreams, a client, and config helpers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A backend started in-process: weir's demo backend (see `weir::demo::Backend` for what
/// it answers; anything but its special paths gets `NAME: METHOD URI`). Stops on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    _backend: weir::demo::Backend,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let backend = weir::demo::Backend::start(name).await.unwrap();
        Self { addr: backend.addr, _backend: backend }
    }
}

/// The backend's name in a demo backend's default answer (`NAME: METHOD URI`).
pub fn name_of(body: &str) -> &str {
    body.split(": ").next().unwrap_or(body)
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

/// A test fixture plugin (`tests/fixtures/NAME`), built by the `weir-fixtures` dev-dependency.
pub fn fixture(name: &str) -> PathBuf {
    weir_fixtures::path(name)
}

/// Config text for one listener on 127.0.0.1:0 in front of one pool `p` with `backends`;
/// `pool_extra` is added to the `[pool.p]` table. Plugin calls get a 50 ms deadline instead
/// of 2 ms: the tests run many proxies at once on two cores. A deadline counts the CPU time
/// a call ran, so a preempted call is not cut, but it gives up after 100 deadlines of wall
/// time whatever the call ran (200 ms at 2 ms, 5 s at 50 ms), and a request placed by the
/// fallback is one that tests of exact distributions cannot tell apart.
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

/// Polls until `f` holds, for up to 5 s.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// Runs the weir binary on the config file at `path` with JSON logs, reads its log lines
/// up to and including "weir is running", then stops it; the lines, parsed.
pub fn start_logs(path: &std::path::Path) -> Vec<serde_json::Value> {
    let weir = Weir::run(path);
    weir.start_logs.clone()
}

/// A `weir run` process (JSON logs) on a config file, read up to its "weir is running"
/// line, then its logs drained on a thread so it never blocks on a full pipe. Killed and
/// waited for when dropped: a failed assertion leaves no weir behind (holding cargo
/// test's pipe). Starting blocks: in an async test, start it in `spawn_blocking`.
pub struct Weir {
    /// The process.
    pub child: std::process::Child,
    /// Its log lines up to and including "weir is running", parsed.
    pub start_logs: Vec<serde_json::Value>,
    /// The address of its last "listening" line.
    pub addr: Option<SocketAddr>,
    /// Its log lines after "weir is running", as they come.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Weir {
    /// Runs weir on the config file at `path`.
    pub fn run(path: &std::path::Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (mut start_logs, mut addr, mut line) = (Vec::new(), None, String::new());
        loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("weir exited before running: {start_logs:?}");
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["fields"]["message"] == "listening" {
                addr = v["fields"]["addr"].as_str().map(|a| a.parse().unwrap());
            }
            let running = v["fields"]["message"] == "weir is running";
            start_logs.push(v);
            if running {
                break;
            }
        }
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            // Split on newlines as bytes: a line that is not UTF-8 is kept lossily, never a
            // reason to stop reading (weir would block on a full pipe).
            for line in std::io::BufRead::split(&mut stderr, b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                kept.lock().unwrap().push(v);
            }
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        Self { child, start_logs, addr, logs, _dir: None }
    }

    /// Runs weir on `text`, written to a temporary directory it keeps, with `files` written
    /// beside it first.
    pub fn run_text(text: &str, files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, text).unwrap();
        let mut weir = Self::run(&path);
        weir._dir = Some(dir);
        weir
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many of its log lines since "weir is running" `matches` says yes to.
    pub fn logged(&self, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.logs.lock().unwrap().iter().filter(|v| matches(v)).count()
    }

    /// The address it listens on (its last "listening" line).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("weir logged a listener's address")
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket echo server on 127.0.0.1:0: every text or binary message comes back.
pub async fn websocket_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
