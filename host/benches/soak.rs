//! Soak: connection churn through a real `weir` process for a long time (default 10
//! minutes), to show that its memory and file descriptors stay flat.
//!
//! Three demo backends run in this process (on a thread of their own), behind a `weir`
//! with two pools: `/ws` goes to a least-connections pool, everything else to round robin.
//! A load generator (one more thread) runs, all at once:
//! - `SHORT` tasks that each open a connection, send one request and close it, in a loop;
//! - `KEEPALIVE` connections that each send `KA_REQUESTS` requests `KA_PAUSE_MS` apart,
//!   then close and reconnect;
//! - `WS` tasks that open a WebSocket, echo `WS_MESSAGES` messages `WS_PAUSE_MS` apart,
//!   close it and start again;
//! - a burst of `BURST` connections arriving at once every `BURST_EVERY_S`, one request
//!   each.
//!
//! The proxy's RSS (VmRSS) and open file descriptors are taken after a warm-up of the
//! same load (`WARMUP_S`, default 30, so that allocator arenas, the idle upstream stacks
//! and the splice pipe pool have reached their working size) and a settle, and again after
//! the soak (`SOAK_S`, default 600) and the same settle: both are taken with no load. A
//! sample is printed every `SAMPLE_S` (default 60) under load.
//!
//! Run with `just soak`, or `SOAK_S=60 cargo bench --bench soak` for a short one.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Fds, Weir, env_or, rss_kib};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Longest any one operation (connect, request, echo) may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, counted by kind.
#[derive(Debug, Clone, Copy)]
enum Fail {
    Connect,
    Http,
    Status,
    Body,
    WsHandshake,
    WsEcho,
    Timeout,
}

const FAILS: [&str; 7] = ["connect", "http", "status", "body", "ws-handshake", "ws-echo", "timeout"];

#[derive(Default)]
struct Counts {
    /// HTTP requests answered 200 by a backend.
    requests: AtomicU64,
    /// Client connections opened to the proxy (HTTP and WebSocket).
    connections: AtomicU64,
    /// WebSocket sessions opened, echoed and closed.
    websockets: AtomicU64,
    /// WebSocket messages echoed.
    messages: AtomicU64,
    errors: [AtomicU64; 7],
}

impl Counts {
    fn fail(&self, f: Fail) {
        self.errors[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            websockets: self.websockets.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            errors: self.errors.iter().map(|e| e.load(Ordering::Relaxed)).collect(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    requests: u64,
    connections: u64,
    websockets: u64,
    messages: u64,
    errors: Vec<u64>,
}

impl Snapshot {
    fn since(&self, start: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests - start.requests,
            connections: self.connections - start.connections,
            websockets: self.websockets - start.websockets,
            messages: self.messages - start.messages,
            errors: self.errors.iter().zip(&start.errors).map(|(a, b)| a - b).collect(),
        }
    }

    fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn errors_by_kind(&self) -> String {
        let kinds: Vec<String> =
            FAILS.iter().zip(&self.errors).filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        if kinds.is_empty() { "none".into() } else { kinds.join(", ") }
    }
}

/// The load's shape, from the environment.
#[derive(Debug, Clone, Copy)]
struct Shape {
    short: usize,
    short_pause: Duration,
    keepalive: usize,
    ka_requests: usize,
    ka_pause: Duration,
    ws: usize,
    ws_messages: usize,
    ws_pause: Duration,
    burst: usize,
    burst_every: Duration,
}

impl Shape {
    fn from_env() -> Self {
        Self {
            short: env_or("SHORT", 16),
            short_pause: Duration::from_millis(env_or("SHORT_PAUSE_MS", 40)),
            keepalive: env_or("KEEPALIVE", 200),
            ka_requests: env_or("KA_REQUESTS", 100),
            ka_pause: Duration::from_millis(env_or("KA_PAUSE_MS", 200)),
            ws: env_or("WS", 100),
            ws_messages: env_or("WS_MESSAGES", 5),
            ws_pause: Duration::from_millis(env_or("WS_PAUSE_MS", 100)),
            burst: env_or("BURST", 300),
            burst_every: Duration::from_secs(env_or("BURST_EVERY_S", 10)),
        }
    }
}

/// Opens an HTTP/1.1 connection to `addr`; the connection runs in a task of its own.
async fn connect(addr: SocketAddr, counts: &Counts) -> Result<SendRequest<Empty<Bytes>>, Fail> {
    let stream = TcpStream::connect(addr).await.map_err(|_| Fail::Connect)?;
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| Fail::Http)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET on `sender`, its whole body read and checked to come from a demo backend.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Result<(), Fail> {
    sender.ready().await.map_err(|_| Fail::Http)?;
    let req = http::Request::get(path).header(http::header::HOST, "soak.test").body(Empty::new()).unwrap();
    let res = sender.send_request(req).await.map_err(|_| Fail::Http)?;
    let ok = res.status() == http::StatusCode::OK;
    let body = res.into_body().collect().await.map_err(|_| Fail::Http)?.to_bytes();
    if !ok {
        return Err(Fail::Status);
    }
    // The demo backends answer `NAME: GET PATH`.
    if !body.starts_with(b"b") || !body.windows(path.len()).any(|w| w == path.as_bytes()) {
        return Err(Fail::Body);
    }
    Ok(())
}

async fn timed<T>(f: impl Future<Output = Result<T, Fail>>) -> Result<T, Fail> {
    tokio::time::timeout(OP_TIMEOUT, f).await.unwrap_or(Err(Fail::Timeout))
}

/// One connection, one request, closed.
async fn one_shot(addr: SocketAddr, path: &str, counts: &Counts) {
    let r = timed(async {
        let mut sender = connect(addr, counts).await?;
        get(&mut sender, path).await
    })
    .await;
    match r {
        Ok(()) => {
            counts.requests.fetch_add(1, Ordering::Relaxed);
        }
        Err(f) => counts.fail(f),
    }
}

async fn short_loop(addr: SocketAddr, shape: Shape, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        one_shot(addr, &format!("/short/{i}"), &counts).await;
        i += 1;
        tokio::time::sleep(shape.short_pause).await;
    }
}

async fn keepalive_loop(addr: SocketAddr, shape: Shape, counts: Arc<Counts>, stop: Arc<AtomicBool>, n: usize) {
    // Spread the first requests so the connections do not march in step.
    tokio::time::sleep(shape.ka_pause.mul_f64(n as f64 / shape.keepalive.max(1) as f64)).await;
    while !stop.load(Ordering::Relaxed) {
        let mut sender = match timed(connect(addr, &counts)).await {
            Ok(s) => s,
            Err(f) => {
                counts.fail(f);
                tokio::time::sleep(shape.ka_pause).await;
                continue;
            }
        };
        for r in 0..shape.ka_requests {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match timed(get(&mut sender, &format!("/keepalive/{n}/{r}"))).await {
                Ok(()) => {
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    counts.fail(f);
                    break;
                }
            }
            tokio::time::sleep(shape.ka_pause).await;
        }
    }
}

/// One WebSocket: open, echo `messages` messages, close.
async fn ws_session(url: &str, shape: Shape, counts: &Counts, n: u64) -> Result<(), Fail> {
    let (mut ws, _) =
        timed(async { tokio_tungstenite::connect_async(url).await.map_err(|_| Fail::WsHandshake) }).await?;
    counts.connections.fetch_add(1, Ordering::Relaxed);
    for m in 0..shape.ws_messages {
        let text = format!("{n}.{m}");
        timed(async {
            ws.send(Message::text(text.clone())).await.map_err(|_| Fail::WsEcho)?;
            match ws.next().await {
                // The demo backends echo `NAME: TEXT`.
                Some(Ok(Message::Text(t))) if t.as_str().ends_with(&format!(": {text}")) => Ok(()),
                _ => Err(Fail::WsEcho),
            }
        })
        .await?;
        counts.messages.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(shape.ws_pause).await;
    }
    timed(async {
        ws.close(None).await.map_err(|_| Fail::WsEcho)?;
        // Wait for the backend's close frame to come back through the proxy.
        while let Some(Ok(_)) = ws.next().await {}
        Ok(())
    })
    .await
}

async fn ws_loop(url: String, shape: Shape, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match ws_session(&url, shape, &counts, n).await {
            Ok(()) => {
                counts.websockets.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => counts.fail(f),
        }
        n += 1;
        tokio::time::sleep(shape.ws_pause).await;
    }
}

async fn burst_loop(addr: SocketAddr, shape: Shape, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut next = tokio::time::Instant::now();
    let mut b = 0u64;
    loop {
        // Wait for the next burst in short steps, so a stop is seen at once.
        while tokio::time::Instant::now() < next && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep_until(next.min(tokio::time::Instant::now() + Duration::from_millis(100))).await;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        next += shape.burst_every;
        let tasks: Vec<_> = (0..shape.burst)
            .map(|i| {
                let counts = counts.clone();
                tokio::spawn(async move { one_shot(addr, &format!("/burst/{b}/{i}"), &counts).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        b += 1;
    }
}

/// Runs the whole load until `stop` is set; returns when every task has ended.
async fn load(addr: SocketAddr, shape: Shape, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for _ in 0..shape.short {
        tasks.push(tokio::spawn(short_loop(addr, shape, counts.clone(), stop.clone())));
    }
    for n in 0..shape.keepalive {
        tasks.push(tokio::spawn(keepalive_loop(addr, shape, counts.clone(), stop.clone(), n)));
    }
    for _ in 0..shape.ws {
        tasks.push(tokio::spawn(ws_loop(format!("ws://{addr}/ws"), shape, counts.clone(), stop.clone())));
    }
    tasks.push(tokio::spawn(burst_loop(addr, shape, counts.clone(), stop.clone())));
    for t in tasks {
        let _ = t.await;
    }
}

/// CPU time process `pid` has used (user + system), in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses; utime and stime are
    // fields 14 and 15 of the whole line, in USER_HZ (100 per second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// The machine's 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Runs the load for `secs`, printing a sample every `sample` seconds; returns the counts
/// over the run, taken when the load is told to stop (what finishes after is not counted).
fn phase(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    shape: Shape,
    secs: u64,
    sample: Option<u64>,
    pid: u32,
) -> Snapshot {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let running = rt.spawn(load(addr, shape, counts.clone(), stop.clone()));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut last = counts.snapshot();
    let mut last_at = start;
    let every = Duration::from_secs(sample.unwrap_or(secs).max(1));
    loop {
        let next = (last_at + every).min(end);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = counts.snapshot();
        if sample.is_some() {
            let d = now.since(&last);
            let secs = last_at.elapsed().as_secs_f64();
            println!(
                "  t={:>4.0}s  rss {:>7} KiB  {}  | {:>6.0} req/s {:>5.0} conn/s {:>4.0} ws/s  errors {}",
                start.elapsed().as_secs_f64(),
                rss_kib(pid),
                Fds::of(pid),
                d.requests as f64 / secs,
                d.connections as f64 / secs,
                d.websockets as f64 / secs,
                d.errors_by_kind(),
            );
        }
        last = now;
        last_at = Instant::now();
        if last_at >= end {
            break;
        }
    }
    let counted = counts.snapshot();
    stop.store(true, Ordering::Relaxed);
    // Every loop ends within one pause or one operation timeout.
    rt.block_on(running).unwrap();
    counted
}

fn main() {
    let soak_s: u64 = env_or("SOAK_S", 600);
    let warmup_s: u64 = env_or("WARMUP_S", 30);
    let sample_s: u64 = env_or("SAMPLE_S", 60);
    let settle = Duration::from_secs(env_or("SETTLE_S", 3));
    let shape = Shape::from_env();

    // The backends on a thread of their own, the load generator on another.
    let backend_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let backends: Vec<SocketAddr> =
        (0..3).map(|i| backend_rt.block_on(weir::demo::spawn_backend(&format!("b{i}"))).unwrap()).collect();
    let list = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect::<Vec<_>>().join(", ");
    let weir = Weir::spawn(&format!(
        "[[listener]]\nname = \"soak\"\nlisten = \"127.0.0.1:0\"\npool = \"http\"\n\
         [[listener.route]]\npath_prefix = \"/ws\"\npool = \"ws\"\n\n\
         [pool.http]\nbackends = [{list}]\nbalancer = {{ plugin = \"round-robin\" }}\n\n\
         [pool.ws]\nbackends = [{list}]\nbalancer = {{ plugin = \"least-connections\" }}\n"
    ));
    let pid = weir.pid();
    let addr: SocketAddr = weir.addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    println!(
        "soak: {soak_s} s through weir (pid {pid}) after a {warmup_s} s warm-up: {} one-request connections \
         ({} ms apart), {} keep-alive connections ({} requests {} ms apart), {} WebSocket loops ({} echoes {} ms \
         apart), a burst of {} connections every {} s",
        shape.short,
        shape.short_pause.as_millis(),
        shape.keepalive,
        shape.ka_requests,
        shape.ka_pause.as_millis(),
        shape.ws,
        shape.ws_messages,
        shape.ws_pause.as_millis(),
        shape.burst,
        shape.burst_every.as_secs(),
    );
    let idle_rss = rss_kib(pid);
    let idle_fds = Fds::of(pid);
    println!("idle after start:   rss {idle_rss} KiB, {idle_fds}");

    let warm = phase(&rt, addr, shape, warmup_s, None, pid);
    std::thread::sleep(settle);
    let start_rss = rss_kib(pid);
    let start_fds = Fds::of(pid);
    println!(
        "after warm-up:      rss {start_rss} KiB, {start_fds}  (warm-up: {} requests, {} WebSockets, errors {})",
        warm.requests,
        warm.websockets,
        warm.errors_by_kind()
    );

    let (cpu0, load0) = (cpu_s(pid), loadavg());
    let run = phase(&rt, addr, shape, soak_s, Some(sample_s), pid);
    let (cpu1, load1) = (cpu_s(pid), loadavg());
    let took = soak_s as f64;
    std::thread::sleep(settle);
    let end_rss = rss_kib(pid);
    let end_fds = Fds::of(pid);
    println!("after soak + settle: rss {end_rss} KiB, {end_fds}");
    let warnings = weir.warnings();
    if !warnings.is_empty() {
        println!("weir warnings: {warnings:?}");
    }
    println!(
        "weir used {:.0} CPU seconds over the soak ({:.0}% of one core); machine load average {load0} at the \
         start, {load1} at the end (2 cores)",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 100.0 / took
    );
    println!(
        "SOAK {} s: rss {start_rss} -> {end_rss} KiB ({:+} KiB), fds {} -> {} ({:+}); {} requests ({:.0}/s), \
         {} connections, {} WebSockets ({} messages); errors {} ({}); weir warnings {}",
        soak_s,
        end_rss as i64 - start_rss as i64,
        start_fds.total(),
        end_fds.total(),
        end_fds.total() as i64 - start_fds.total() as i64,
        run.requests,
        run.requests as f64 / took,
        run.connections,
        run.websockets,
        run.messages,
        run.error_total(),
        run.errors_by_kind(),
        warnings.values().sum::<u64>(),
    );
    weir.stop();
    drop(backend_rt);
}
