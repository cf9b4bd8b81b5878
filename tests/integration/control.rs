//! The one control path: a reload is a diff applied by one writer. Routes and listeners
//! follow the file, idle connections to removed backends are closed, a dropped server
//! ends what it served, and a shutdown lets requests in flight finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::support::{self, Upstream};

fn config(text: &str) -> weir::config::Config {
    weir::config::Config::parse(text, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_routes_takes_effect() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let listener = "[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n";
    let pools = format!(
        "[pool.p]\nbackends = [{{ address = \"{}\" }}]\n\n[pool.q]\nbackends = [{{ address = \"{}\" }}]\n",
        a.addr, b.addr
    );
    let with_route =
        |pool: &str| format!("{listener}[[listener.route]]\npath_prefix = \"/api\"\npool = \"{pool}\"\n\n{pools}");
    let server = support::start(&with_route("p")).await;
    let url = format!("http://{}/api/x", server.addr("main").unwrap());
    let client = support::client();
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "a");
    server.reload(config(&with_route("q"))).await.unwrap();
    assert_eq!(support::name_of(&support::get(&client, &url).await.1), "b", "the new route is used at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_binds_added_listeners_and_closes_removed_ones() {
    let a = Upstream::start("only-here").await;
    let listener = |name: &str| format!("[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n");
    let pool = format!("[pool.p]\nbackends = [{{ address = \"{}\" }}]\n", a.addr);
    let server = support::start(&format!("{}\n{pool}", listener("one"))).await;
    let one = server.addr("one").unwrap();
    assert!(server.addr("two").is_none());

    let applied = server.reload(config(&format!("{}\n{}\n{pool}", listener("one"), listener("two")))).await.unwrap();
    assert_eq!(applied.listeners_bound, 1);
    let two = server.addr("two").expect("the added listener is bound");
    let client = support::client();
    assert_eq!(support::get(&client, &format!("http://{two}/")).await.0, StatusCode::OK);
    assert_eq!(server.addr("one"), Some(one), "an unchanged listener keeps its socket");

    let applied = server.reload(config(&format!("{}\n{pool}", listener("two")))).await.unwrap();
    assert_eq!(applied.listeners_closed, 1);
    assert!(server.addr("one").is_none());
    assert!(!served_by(one, "only-here").await, "the removed listener no longer serves");
    assert_eq!(support::get(&client, &format!("http://{two}/")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_changes_nothing() {
    let a = Upstream::start("a").await;
    let server = support::start(&support::config_text(&[a.addr], "")).await;
    let before = server.snapshot();
    let bad = support::config_text(&[a.addr], "balancer = { plugin = \"round-robin\", config = { speed = 3 } }");
    assert!(server.reload(config(&bad)).await.is_err());
    assert!(Arc::ptr_eq(&before, &server.snapshot()), "the snapshot was not replaced");
    // A listener that cannot bind (the port is taken) fails the whole reload too.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let text = format!(
        "[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[[listener]]\nname = \"busy\"\nlisten = \"{}\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{}\" }}]\n",
        taken.local_addr().unwrap(),
        a.addr
    );
    let err = server.reload(config(&text)).await.unwrap_err().to_string();
    assert!(err.contains("listener `busy`"), "{err}");
    assert!(Arc::ptr_eq(&before, &server.snapshot()));
    assert!(server.addr("busy").is_none());
}

/// Whether something at `addr` answers a request through a backend named `name`. Another
/// test may bind the same port once it is free, so "nothing accepts there" would be racy;
/// a test that owns a uniquely named backend asks whether its own proxy still answers.
async fn served_by(addr: SocketAddr, name: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).contains(name)
}

/// A backend that counts the connections it accepted and those that were closed.
struct CountingBackend {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn counting_backend(answer: &'static [u8]) -> CountingBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(answer),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    CountingBackend { addr, closed, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_idle_connections_to_removed_backends() {
    let gone = counting_backend(b"counted").await;
    let stays = Upstream::start("b").await;
    let server = support::start(&support::config_text(&[gone.addr], "")).await;
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    for _ in 0..3 {
        assert_eq!(support::get(&client, &url).await.1, "counted");
    }
    // weir keeps its connection to the backend idle for reuse.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gone.closed.load(Ordering::SeqCst), 0);
    let applied = server.reload(config(&support::config_text(&[stays.addr], ""))).await.unwrap();
    assert_eq!(applied.backends_retired, 1);
    support::eventually("the idle connection to the removed backend was closed", || {
        gone.closed.load(Ordering::SeqCst) >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_closes_what_it_served() {
    let backend = counting_backend(b"dropped-with-its-server").await;
    let server = support::start(&support::config_text(&[backend.addr], "")).await;
    let proxy = server.addr("main").unwrap();
    // A client keep-alive connection, idle after one exchange.
    let mut raw = tokio::net::TcpStream::connect(proxy).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("dropped-with-its-server"));
    drop(server);
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.expect("closed, not left open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(!served_by(proxy, "dropped-with-its-server").await, "no longer serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish() {
    let a = Upstream::start("shut-down").await;
    let server = Arc::new(support::start(&support::config_text(&[a.addr], "")).await);
    let proxy = server.addr("main").unwrap();
    let slow =
        tokio::spawn(async move { support::get(&support::client(), &format!("http://{proxy}/delay?ms=600")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    server.shutdown().await;
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "shut-down"), "the request in flight was answered");
    assert!(started.elapsed() >= Duration::from_millis(300), "shutdown waited for it");
    assert!(!served_by(proxy, "shut-down").await, "no longer serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_http_requests_in_flight_then_exits() {
    let a = Upstream::start("a").await;
    let listen = support::dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nlisten = \"{listen}\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{}\" }}]\ndrain_spread_ms = 100\ndrain_deadline_ms = 5000\n",
        support::cache_dir().display().to_string(),
        a.addr
    );
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = support::client();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "weir did not start listening");
    let slow = tokio::spawn(async move { support::get(&client, &format!("http://{listen}/delay?ms=800")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"), "the request in flight was answered");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}
