//! L4: `tcp` listeners splice each connection to one backend chosen by the pool's
//! plugins from the client's address. Real sockets, real pack plugins, real bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support;

/// Config text for a tcp listener `main` on 127.0.0.1:0 in front of pool `p`.
pub fn tcp_config(backends: &[SocketAddr], listener_extra: &str, pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n{listener_extra}\n\n[pool.p]\nbackends = [{}]\n{pool_extra}\n",
        support::cache_dir().display().to_string(),
        list.join(", ")
    )
}

/// A TCP backend that greets each connection with `NAME\n`, then echoes what it reads
/// until the client half-closes, then closes. Returns its address.
pub async fn greeter(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 16 << 10];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads one `\n`-terminated line (the greeting), byte by byte.
pub async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("greeting in time").unwrap();
        assert_eq!(n, 1, "connection closed before the greeting ended: {:?}", String::from_utf8_lossy(&line));
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

/// Connects to `to` from the loopback address `from` (any port).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// `len` bytes of a pattern that differs per chunk, fed to `f` chunk by chunk.
fn pattern(seed: u64, chunk: usize, index: usize) -> Vec<u8> {
    let mut x = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..chunk)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes of each chunk of [`exchange`], and chunks sent.
const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 1024;

/// Sends `CHUNKS` chunks of [`pattern`] `seed` on `s` (then its end of stream) while it
/// reads `s` to its end: (bytes received, checksum of what was received, checksum of what
/// was sent).
async fn exchange(s: TcpStream, seed: u64) -> (usize, u64, u64) {
    let (mut r, mut w) = s.into_split();
    let send = tokio::spawn(async move {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for i in 0..CHUNKS {
            let data = pattern(seed, CHUNK, i);
            h.update(&data);
            w.write_all(&data).await.unwrap();
        }
        w.shutdown().await.unwrap();
        h.digest()
    });
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received += n;
        h.update(&buf[..n]);
    }
    (received, h.digest(), send.await.unwrap())
}

/// 1 GiB each way at once through a tcp listener: both sides' checksums of what they
/// received equal those of what the other sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_each_way_arrives_intact() {
    // The backend sends its own GiB while it checksums what it receives, as the client does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move { exchange(listener.accept().await.unwrap().0, 2).await });

    let server = support::start(&tcp_config(&[backend], "", "")).await;
    let proxy = server.addr("main").unwrap();
    let started = Instant::now();
    let (received, received_digest, sent_up) = exchange(TcpStream::connect(proxy).await.unwrap(), 1).await;
    let (backend_received, backend_digest, sent_down) = backend_task.await.unwrap();
    eprintln!("2 GiB through the tcp listener in {:?}", started.elapsed());
    assert_eq!(backend_received, CHUNK * CHUNKS);
    assert_eq!(backend_digest, sent_up, "client→backend bytes differ");
    assert_eq!(received, CHUNK * CHUNKS);
    assert_eq!(received_digest, sent_down, "backend→client bytes differ");
}

/// The client ends its sending side first: the backend sees the end of stream and can
/// still answer, and the client reads the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_half_closes_and_still_reads_the_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        // Only after the client's end of stream: the answer.
        s.write_all(format!("got {} bytes", got.len()).as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let server = support::start(&tcp_config(&[backend], "", "")).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

/// The backend ends its sending side first: the client sees the end of stream and can
/// still send, and the backend receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_half_closes_and_still_receives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello, then silence").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tx.send(got).unwrap();
    });
    let server = support::start(&tcp_config(&[backend], "", "")).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut greeting)).await.unwrap().unwrap();
    assert_eq!(greeting, "hello, then silence");
    // The backend's direction is over; ours still flows.
    s.write_all(b"late words").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    assert_eq!(got, b"late words");
}

/// 30 long-lived connections under `least-connections` land exactly 10 on each of three
/// backends, and each counts as an active connection of its backend (and in the server's
/// gauges) while it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_spreads_long_lived_connections_evenly() {
    let backends = [greeter("a").await, greeter("b").await, greeter("c").await];
    let server = support::start(&tcp_config(&backends, "", "balancer = { plugin = \"least-connections\" }")).await;
    let proxy = server.addr("main").unwrap();
    let mut open = Vec::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        // The greeting comes through the joined connection: it is placed and counted.
        *count.entry(read_line(&mut s).await).or_default() += 1;
        open.push(s);
    }
    assert_eq!(count.len(), 3, "{count:?}");
    assert!(count.values().all(|&n| n == 10), "{count:?}");
    let snapshot = server.snapshot();
    for m in &snapshot.pools["p"].view.members {
        assert_eq!(m.live.active.load(Ordering::Relaxed), 10, "{}", m.config.address);
    }
    // The server's gauges count them as client connections and as tunnels.
    let metrics = server.control().metrics().render();
    for gauge in ["weir_control_client_connections 30\n", "weir_control_tunnels 30\n"] {
        assert!(metrics.contains(gauge), "no `{gauge}` in\n{metrics}");
    }
    drop(open);
    support::eventually("every connection closed", || {
        snapshot.pools["p"].view.members.iter().all(|m| m.live.active.load(Ordering::Relaxed) == 0)
    })
    .await;
}

/// `consistent-hash` on the client's address: every connection from one address goes to
/// the same backend, and different addresses spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_client_address_on_its_backend() {
    let backends = [greeter("a").await, greeter("b").await, greeter("c").await];
    let server = support::start(&tcp_config(
        &backends,
        "",
        "balancer = { plugin = \"consistent-hash\", config = { key = \"client-ip\" } }",
    ))
    .await;
    let proxy = server.addr("main").unwrap();
    let mut seen = HashMap::new();
    for i in 1..=24u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let mut first = None;
        for _ in 0..4 {
            let mut s = connect_from(ip, proxy).await;
            let name = read_line(&mut s).await;
            assert_eq!(*first.get_or_insert_with(|| name.clone()), name, "client {ip} moved");
        }
        seen.insert(ip, first.unwrap());
    }
    let spread: std::collections::HashSet<_> = seen.values().collect();
    assert!(spread.len() > 1, "24 client addresses all went to one backend: {seen:?}");
}

/// A backend that refuses the connect: the connection is retried once on another
/// backend, the client never notices, and the failure counts against the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_backend() {
    let dead = support::dead_addr().await;
    let alive = greeter("alive").await;
    let server = support::start(&tcp_config(&[dead, alive], "", "")).await;
    let proxy = server.addr("main").unwrap();
    for _ in 0..6 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(read_line(&mut s).await, "alive");
    }
    let snapshot = server.snapshot();
    let dead_live = &snapshot.pools["p"].view.members[0].live;
    assert!(dead_live.connect_failures.load(Ordering::Relaxed) >= 1);
}

/// With no backend that can be reached, the client is closed (no bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reachable_backend_the_client_is_closed() {
    let server = support::start(&tcp_config(&[support::dead_addr().await], "", "")).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap();
    assert!(read.is_err() || got.is_empty(), "{got:?}");
}

/// `idle_timeout_ms`: a silent connection is closed; one that keeps talking is not, even
/// well past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let backend = greeter("a").await;
    let server = support::start(&tcp_config(&[backend], "idle_timeout_ms = 600", "")).await;
    let proxy = server.addr("main").unwrap();

    let mut busy = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(read_line(&mut busy).await, "a");
    let mut idle = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(read_line(&mut idle).await, "a");
    let started = Instant::now();
    // 2.4 s of one echo every 150 ms: four idle timeouts' worth, never idle for one.
    while started.elapsed() < Duration::from_millis(2400) {
        busy.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), busy.read_exact(&mut four)).await.unwrap().unwrap();
        assert_eq!(&four, b"ping");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The silent one was closed long ago.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), idle.read_to_end(&mut rest)).await.unwrap();
    assert!(n.is_err() || rest.is_empty());
}

/// A transfer that never pauses, three times as long as `idle_timeout_ms`, is not cut as
/// idle: the echo backend sends every byte back, and both counts and checksums agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_longer_than_the_idle_timeout_is_never_idle() {
    let backend = greeter("a").await;
    let server = support::start(&tcp_config(&[backend], "idle_timeout_ms = 1000", "")).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    let (mut r, mut w) = s.into_split();
    let send = tokio::spawn(async move {
        let (started, mut h, mut sent, mut i) = (Instant::now(), xxhash_rust::xxh3::Xxh3::new(), 0, 0);
        while started.elapsed() < Duration::from_millis(3000) {
            let data = pattern(7, 64 << 10, i);
            w.write_all(&data).await.unwrap();
            h.update(&data);
            (sent, i) = (sent + data.len(), i + 1);
        }
        w.shutdown().await.unwrap();
        (sent, h.digest())
    });
    let (mut h, mut received, mut buf) = (xxhash_rust::xxh3::Xxh3::new(), 0, vec![0u8; 64 << 10]);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        received += n;
        h.update(&buf[..n]);
    }
    let (sent, digest) = send.await.unwrap();
    assert!(sent > 1 << 20, "only {sent} bytes sent in 3 s");
    assert_eq!((received, h.digest()), (sent, digest), "the echo ended early or differs");
}

/// `max_lifetime_ms` closes a connection whatever its traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_at_its_max_lifetime() {
    let backend = greeter("a").await;
    let server = support::start(&tcp_config(&[backend], "max_lifetime_ms = 400", "")).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut one)).await {
            Ok(Ok(1)) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(300), "closed too soon: {:?}", started.elapsed());
}

/// A backend removed by a reload takes no new connection, and its open connections are
/// cut at the pool's `drain_deadline_ms`; a connection to a backend that stays is not
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_is_drained_at_the_deadline() {
    let (a, b) = (greeter("a").await, greeter("b").await);
    let pool = "balancer = { plugin = \"least-connections\" }\ndrain_spread_ms = 0\ndrain_deadline_ms = 500";
    let server = support::start(&tcp_config(&[a, b], "", pool)).await;
    let proxy = server.addr("main").unwrap();
    let mut on = HashMap::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let name = read_line(&mut s).await;
        on.insert(name, s);
    }
    let (mut on_a, mut on_b) = (on.remove("a").unwrap(), on.remove("b").unwrap());

    let text = tcp_config(&[b], "", pool);
    server.reload(weir::config::Config::parse(&text, None).unwrap()).await.unwrap();
    let reloaded = Instant::now();
    // New connections go to b only.
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(read_line(&mut s).await, "b");
    }
    // a's connection works until the deadline, then is cut.
    on_a.write_all(b"still").await.unwrap();
    let mut five = [0u8; 5];
    on_a.read_exact(&mut five).await.unwrap();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), on_a.read_to_end(&mut rest)).await.unwrap();
    assert!(cut.is_err() || rest.is_empty());
    let after = reloaded.elapsed();
    assert!(after >= Duration::from_millis(400), "cut before the deadline: {after:?}");
    // b's connection was not touched.
    on_b.write_all(b"fine").await.unwrap();
    let mut four = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), on_b.read_exact(&mut four)).await.unwrap().unwrap();
    assert_eq!(&four, b"fine");
}

/// An IPv4 client of a dual-stack listener (`[::]:0`) is seen as IPv4 (`127.0.0.1`, not
/// `::ffff:127.0.0.1`): in `X-Forwarded-For` on http, and by the plugins on tcp (the
/// `ip-hash` of an IPv4 client on a dual-stack tcp listener agrees with an IPv4 one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_of_a_dual_stack_listener_is_seen_as_ipv4() {
    let backend = support::Upstream::start("a").await;
    let text = support::config_text(&[backend.addr], "").replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"");
    let server = support::start(&text).await;
    let port = server.addr("main").unwrap().port();
    let (status, body) = support::get(&support::client(), &format!("http://127.0.0.1:{port}/headers")).await;
    assert_eq!(status, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");

    // tcp: ip-hash over many backends places each client address on one backend; the
    // same clients through a dual-stack and an IPv4-only listener land alike.
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        backends.push(greeter(name).await);
    }
    let pool = "balancer = { plugin = \"ip-hash\" }";
    let v4 = support::start(&tcp_config(&backends, "", pool)).await;
    let dual =
        support::start(&tcp_config(&backends, "", pool).replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\""))
            .await;
    let (v4, dual) = (v4.addr("main").unwrap(), dual.addr("main").unwrap().port());
    for i in 1..=12u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let mut a = connect_from(ip, v4).await;
        let mut b = connect_from(ip, SocketAddr::from(([127, 0, 0, 1], dual))).await;
        assert_eq!(read_line(&mut a).await, read_line(&mut b).await, "client {ip}");
    }
}

/// A graceful shutdown (SIGTERM) stops accepting at once, lets open tcp connections go
/// on until the pool's `drain_deadline_ms`, then cuts them and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_tcp_connections_up_to_the_deadline() {
    let backend = greeter("a").await;
    let pool = "drain_spread_ms = 0\ndrain_deadline_ms = 600";
    let server = support::start(&tcp_config(&[backend], "", pool)).await;
    let proxy = server.addr("main").unwrap();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    let started = Instant::now();
    let shutdown = tokio::spawn(async move {
        server.shutdown().await;
        started.elapsed()
    });
    // Still served during the drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"during").await.unwrap();
    let mut six = [0u8; 6];
    s.read_exact(&mut six).await.unwrap();
    assert_eq!(&six, b"during");
    assert!(TcpStream::connect(proxy).await.is_err(), "still accepting during shutdown");
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap();
    assert!(cut.is_err() || rest.is_empty());
    let took = tokio::time::timeout(Duration::from_secs(5), shutdown).await.unwrap().unwrap();
    assert!(took >= Duration::from_millis(500), "returned before the deadline: {took:?}");
}

/// Dropping the server (its abort) cuts the tcp connections it joined at once, not at the
/// drain deadline: a joined connection ends by the cut the server orders every tunnel,
/// since its task does not watch the stop signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_cuts_its_tcp_connections() {
    let backend = greeter("a").await;
    let pool = "drain_deadline_ms = 60000";
    let server = support::start(&tcp_config(&[backend], "", pool)).await;
    let proxy = server.addr("main").unwrap();
    let mut s = TcpStream::connect(proxy).await.unwrap();
    assert_eq!(read_line(&mut s).await, "a");
    let started = Instant::now();
    drop(server);
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("cut, not left open");
    assert!(cut.is_err() || rest.is_empty(), "{cut:?} {rest:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "cut after {:?}", started.elapsed());
}
