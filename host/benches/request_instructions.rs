//! Instructions per proxied HTTP/1.1 request, counted by callgrind (issue 16, item 5): the
//! guard that shows a regression of the request path as a number, where wall clock on a
//! shared machine cannot.
//!
//! The loop (`LOOP=proxied` or `LOOP=direct`, `N` requests after `WARM` of warm-up): one
//! thread, one current-thread tokio runtime holding everything, on real loopback sockets:
//! a minimal HTTP/1.1 backend (hyper's server, `200 ok`), a [`weir::Server`] in front of
//! it (one listener, one pool of that backend, `round-robin`, kept upstream connections),
//! and a hyper HTTP/1.1 client sending `GET /` one after another on one kept connection,
//! checking each answer. `direct` sends the same requests to the backend itself, so
//! proxied − direct is what weir adds: its server and client code, routing, the plugin
//! call, headers, and both extra socket legs' user-space side (the kernel's part is not
//! counted by callgrind; `host/benches/peers/` measures whole CPU against the peers).
//! The binary's log subscriber is installed as `weir run` does (level `info`), so disabled
//! events cost here what they cost there.
//!
//! Without `LOOP` (`cargo bench --bench request_instructions`), it runs itself under
//! `valgrind --tool=callgrind --separate-threads=yes` at `N` and `2N` requests for both
//! loops (default `N` = 2,000), takes the counts of the thread that runs the loop (the
//! plugin runtime's epoch ticker thread ticks with wall time, which valgrind stretches),
//! and prints instructions per request = (count at 2N − count at N) / N, for each loop and
//! their difference; then the functions' inclusive instructions per request (the same
//! difference per function, from `callgrind_annotate --inclusive=yes`) grouped as: hyper's
//! server, weir's request handling, placement and the plugin call, the upstream client,
//! headers, allocation. Needs valgrind.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    match std::env::var("LOOP") {
        Ok(mode) => run_loop(&mode, env_num("N", 2_000), env_num("WARM", 500)),
        Err(_) => drive(env_num("N", 2_000)),
    }
}

/// The backend: `200 ok` to anything, keep-alive, on 127.0.0.1:0.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

fn run_loop(mode: &str, n: u64, warm: u64) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let origin = backend().await;
        let mut server = None;
        let target = match mode {
            "direct" => origin,
            "proxied" => {
                let cache = std::env::var("CACHE").unwrap_or_else(|_| cache_dir().display().to_string());
                let text = format!(
                    "[plugins]\ncache_dir = {cache:?}\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n\
                     pool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{origin}\" }}]\n\
                     balancer = {{ plugin = \"round-robin\" }}\n"
                );
                let config = weir::config::Config::parse(&text, None).unwrap();
                let s = weir::Server::start(config).await.unwrap();
                let addr = s.addr("main").unwrap();
                server = Some(s);
                addr
            }
            other => panic!("LOOP={other}: `proxied` or `direct`"),
        };
        let stream = TcpStream::connect(target).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let uri = format!("http://{target}/");
        let t = std::time::Instant::now();
        for i in 0..warm + n {
            let req = hyper::Request::get(&uri)
                .header(hyper::header::HOST, "bench.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            assert_eq!(res.status(), 200, "request {i} through {mode}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok", "request {i} through {mode}");
        }
        eprintln!(
            "{mode}: {} requests on one connection, {:.1} µs each",
            warm + n,
            t.elapsed().as_secs_f64() * 1e6 / (warm + n) as f64
        );
        drop(server);
    });
}

/// Where compiled plugins are cached: inside target/, beside the other benches'.
fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/request_instructions-HASH -> target/
    let target = exe.ancestors().nth(3).unwrap_or(Path::new("/tmp")).to_path_buf();
    target.join("bench-plugin-cache")
}

/// One callgrind run of the loop: the loop thread's instructions and its per-function
/// inclusive counts.
struct Counted {
    total: u64,
    inclusive: HashMap<String, u64>,
}

fn callgrind(dir: &Path, mode: &str, n: u64) -> Counted {
    let out = dir.join(format!("cg-{mode}-{n}"));
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--separate-threads=yes", "--dump-instr=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env("LOOP", mode)
        .env("N", n.to_string())
        .env("CACHE", dir.join("plugin-cache"))
        .output()
        .expect("valgrind (Debian: apt-get install valgrind)");
    assert!(status.status.success(), "callgrind run failed: {}", String::from_utf8_lossy(&status.stderr));
    // Thread 1 is the one that runs the runtime, hence every task of the loop.
    let file = PathBuf::from(format!("{}-01", out.display()));
    let text = std::fs::read_to_string(&file).unwrap();
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in {}", file.display()));
    let annotate = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100", "--auto=no"])
        .arg(&file)
        .output()
        .expect("callgrind_annotate");
    let mut inclusive = HashMap::new();
    for line in String::from_utf8_lossy(&annotate.stdout).lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else { continue };
        let Ok(count) = count.replace(',', "").parse::<u64>() else { continue };
        // `COUNT (PCT%)  FILE:FUNCTION [OBJECT]`, one line per function and source file
        // its code comes from (inlined code is listed under its own file): summed per
        // function, that is the function's inclusive count.
        let rest = rest.trim_start();
        let rest = if rest.starts_with('(') { rest.split_once(')').map_or(rest, |r| r.1.trim_start()) } else { rest };
        let Some((_, function)) = rest.split_once(':') else { continue };
        let function = function.rsplit_once(" [").map_or(function, |f| f.0).trim().to_owned();
        *inclusive.entry(function).or_default() += count;
    }
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with(&format!("cg-{mode}-{n}")) {
            let _ = std::fs::remove_file(f.path());
        }
    }
    Counted { total, inclusive }
}

/// The rows of the breakdown: a label and the functions whose inclusive counts it adds
/// (exact names; a name ending in `*` is a prefix).
const ROWS: &[(&str, &[&str])] = &[
    (
        "weir's request handler: route, place, headers, forward (http::server::handle)",
        &["weir::http::server::handle::{{closure}}"],
    ),
    ("  placement: Pool::place, the balancer plugin call included", &["weir::state::Pool::place"]),
    ("    the plugin call (Balancer::pick: wasmtime entry and exit, the guest)", &["weir::plugin::Balancer::pick"]),
    (
        "  the request head for the backend (headers::prepare_upstream_head)",
        &["weir::http::headers::prepare_upstream_head"],
    ),
    (
        "  hop-by-hop removal, request and response (headers::remove_hop_by_hop)",
        &["weir::http::headers::remove_hop_by_hop"],
    ),
    (
        "hyper server: parse the request head",
        &["<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"],
    ),
    (
        "hyper server: encode the response head",
        &["<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode"],
    ),
    (
        "hyper client (upstream): encode the request head",
        &["<hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::encode"],
    ),
    (
        "hyper client (upstream): parse the response head",
        &["<hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::parse"],
    ),
    ("socket reads (hyper Buffered::poll_read_from_io)", &["hyper::proto::h1::io::Buffered<T,B>::poll_read_from_io"]),
    ("socket writes (hyper Buffered::poll_flush)", &["hyper::proto::h1::io::Buffered<T,B>::poll_flush"]),
    (
        "tokio: park, epoll, wake-ups (current_thread Context::park)",
        &["tokio::runtime::scheduler::current_thread::Context::park"],
    ),
    ("allocation: malloc, free, realloc, calloc", &["malloc", "free", "realloc", "calloc"]),
    (
        "copies: memcpy, memmove",
        &[
            "__memcpy_avx_unaligned_erms",
            "__memmove_avx_unaligned_erms",
            "__memcpy_evex_unaligned_erms",
            "__memmove_evex_unaligned_erms",
        ],
    ),
];

/// Instructions per request of one function in one loop: (count at 2N - count at N) / N.
fn per_request(runs: &HashMap<&str, (Counted, Counted)>, mode: &str, n: u64, function: &str) -> i64 {
    let (a, b) = &runs[mode];
    let x = a.inclusive.get(function).copied().unwrap_or(0) as i64;
    let y = b.inclusive.get(function).copied().unwrap_or(0) as i64;
    (y - x) / n as i64
}

fn drive(n: u64) {
    let exe = std::env::current_exe().unwrap();
    let dir = cache_dir().parent().unwrap().join("request-instructions");
    std::fs::create_dir_all(&dir).unwrap();
    // Valgrind reports its own CPU features, so the compiled-plugin cache needs an entry
    // made under valgrind before the counted runs.
    let warm = Command::new("valgrind")
        .args(["--tool=none", "-q"])
        .arg(&exe)
        .env("LOOP", "proxied")
        .env("N", "1")
        .env("WARM", "0")
        .env("CACHE", dir.join("plugin-cache"))
        .output()
        .expect("valgrind (Debian: apt-get install valgrind)");
    assert!(warm.status.success(), "{}", String::from_utf8_lossy(&warm.stderr));
    let mut per = HashMap::new();
    let mut runs = HashMap::new();
    for mode in ["direct", "proxied"] {
        let a = callgrind(&dir, mode, n);
        let b = callgrind(&dir, mode, 2 * n);
        let p = (b.total as i64 - a.total as i64) / n as i64;
        println!("{mode:8} {:>12} instructions at N={n}, {:>12} at 2N: {p:>7} per request", a.total, b.total);
        per.insert(mode, p);
        runs.insert(mode, (a, b));
    }
    let added = per["proxied"] - per["direct"];
    println!("weir adds {added} instructions per request (proxied - direct; user space only)");
    // What weir adds, per function: proxied - direct (the backend's server and the
    // bench's client run in both loops and cancel out).
    let weir_adds = |f: &str| per_request(&runs, "proxied", n, f) - per_request(&runs, "direct", n, f);
    println!("\nwhere they go (inclusive instructions per request, proxied - direct; rows nest):");
    for (label, functions) in ROWS {
        let v: i64 = functions.iter().map(|f| weir_adds(f)).sum();
        println!("{v:>8}  {:>5.1} %  {label}", 100.0 * v as f64 / added as f64);
    }
    println!("\nthe top functions by what weir adds (inclusive, per request):");
    let (_, b) = &runs["proxied"];
    let mut top: Vec<(i64, &String)> = b.inclusive.keys().map(|f| (weir_adds(f), f)).collect();
    top.sort_by(|x, y| y.cmp(x));
    for (v, f) in top.into_iter().filter(|(v, _)| *v > added / 50 && *v < added * 95 / 100).take(50) {
        println!("{v:>8}  {f}");
    }
}
