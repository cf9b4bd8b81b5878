//! TLS passthrough and the PROXY protocol, with clients and servers nobody here wrote:
//! `openssl s_server` backends and `openssl s_client` clients (installed by `.ci/run`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::l4::{greeter, read_line, tcp_config};
use crate::support;

/// A self-signed certificate for `name` (its CN and only DNS name) in `dir`: (cert, key).
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// `openssl s_server` with a certificate for `name`, on a free port; killed on drop.
pub(crate) struct TlsBackend {
    pub(crate) addr: SocketAddr,
    pub(crate) cert: PathBuf,
    _child: Child,
}

impl TlsBackend {
    pub(crate) async fn start(dir: &Path, name: &str) -> Self {
        let (cert, key) = certificate(dir, name);
        let addr = support::dead_addr().await;
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &addr.to_string(), "-www", "-quiet"])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "s_server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TlsBackend { addr, cert, _child: child }
    }
}

/// Runs `openssl s_client` against `proxy` with `servername` (None: no SNI), verifying
/// the chain against `ca` and the name against `verify_name`. Returns whether the
/// handshake and verification succeeded, and the subject of the certificate it got.
pub(crate) async fn s_client(
    proxy: SocketAddr,
    servername: Option<&str>,
    ca: &Path,
    verify_name: &str,
) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &proxy.to_string(), "-verify_return_error"]);
    cmd.args(["-verify_hostname", verify_name]).arg("-CAfile").arg(ca);
    match servername {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.stdin(Stdio::null()).output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let subject = text.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or("").to_owned();
    (out.status.success() && text.contains("Verify return code: 0 (ok)"), subject)
}

fn passthrough_config(default: SocketAddr, db: SocketAddr, web: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tls-passthrough\"\npool = \"default\"\n{listener_extra}\n[[listener.route]]\nsni = \"db.example.com\"\npool = \"db\"\n[[listener.route]]\nsni = \"*.example.com\"\npool = \"web\"\n\n[pool.default]\nbackends = [{{ address = \"{default}\" }}]\n[pool.db]\nbackends = [{{ address = \"{db}\" }}]\n[pool.web]\nbackends = [{{ address = \"{web}\" }}]\n",
        support::cache_dir().display().to_string()
    )
}

/// SNI routes to two backends plus a default, and each TLS handshake completes end to
/// end with the chosen backend's own certificate: the backend saw the client's original
/// ClientHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_tls_to_its_backend_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = TlsBackend::start(dir.path(), "db.example.com").await;
    let web = TlsBackend::start(dir.path(), "web.example.com").await;
    let other = TlsBackend::start(dir.path(), "default.test").await;
    let server = support::start(&passthrough_config(other.addr, db.addr, web.addr, "")).await;
    let proxy = server.addr("tls").unwrap();

    let cases: [(Option<&str>, &TlsBackend, &str); 5] = [
        (Some("db.example.com"), &db, "db.example.com"),
        (Some("DB.Example.COM"), &db, "db.example.com"),
        (Some("www.example.com"), &web, "web.example.com"),
        (Some("elsewhere.org"), &other, "default.test"),
        (None, &other, "default.test"),
    ];
    for (sni, backend, cn) in cases {
        let (ok, subject) = s_client(proxy, sni, &backend.cert, cn).await;
        assert!(ok, "SNI {sni:?}: handshake or verification failed (subject {subject:?})");
        assert!(subject.contains(cn), "SNI {sni:?} reached {subject:?}, not {cn}");
    }
    let stats = server.control().listener_stats("tls").unwrap();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
}

/// A client that sends no ClientHello is closed at `peek_timeout_ms`, one that sends
/// garbage at once; both are counted, no backend hears of them, and a real client at the
/// same time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_clients_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = TlsBackend::start(dir.path(), "db.example.com").await;
    // Default pool: a plain TCP backend that would greet anyone who reached it.
    let default = greeter("reached").await;
    let server = support::start(&passthrough_config(default, db.addr, db.addr, "peek_timeout_ms = 400")).await;
    let proxy = server.addr("tls").unwrap();

    let mut silent = TcpStream::connect(proxy).await.unwrap();
    let mut garbage = TcpStream::connect(proxy).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut got)).await.unwrap();
    assert!(n.is_err() || got.is_empty(), "garbage got an answer: {got:?}");
    assert!(started.elapsed() < Duration::from_millis(300), "garbage was not refused at once");

    let (ok, subject) = s_client(proxy, Some("db.example.com"), &db.cert, "db.example.com").await;
    assert!(ok, "{subject}");

    let n = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut got)).await.unwrap();
    assert!(n.is_err() || got.is_empty(), "the silent client got {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(350), "closed before the peek timeout");
    let stats = server.control().listener_stats("tls").unwrap();
    support::eventually("both refusals counted", || stats.refused.load(Ordering::Relaxed) == 2).await;
    let snapshot = server.snapshot();
    assert_eq!(snapshot.pools["default"].view.members[0].live.active.load(Ordering::Relaxed), 0);
}

/// The PROXY header at the start of `s`, parsed with the `ppp` crate (a parser written
/// elsewhere); only the header's bytes are read (v1 to its CRLF, v2 by its length), so
/// nothing after it is taken. One line: version, source and destination.
async fn header_line(s: &mut TcpStream) -> String {
    let mut header = vec![0u8; 16];
    let read = async {
        s.read_exact(&mut header[..1]).await?;
        if header[0] == b'P' {
            header.truncate(1);
            while !header.ends_with(b"\r\n") && header.len() < 108 {
                header.push(s.read_u8().await?);
            }
        } else {
            s.read_exact(&mut header[1..16]).await?;
            let len = u16::from_be_bytes([header[14], header[15]]) as usize;
            header.resize(16 + len, 0);
            s.read_exact(&mut header[16..]).await?;
        }
        std::io::Result::Ok(())
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        return format!("no header: {e}");
    }
    match ppp::HeaderResult::parse(&header) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                line("V1", a.source_address, a.source_port, a.destination_address, a.destination_port)
            }
            ppp::v1::Addresses::Tcp6(a) => {
                line("V1", a.source_address, a.source_port, a.destination_address, a.destination_port)
            }
            ppp::v1::Addresses::Unknown => "V1 None None".to_owned(),
        },
        ppp::HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Proxy => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                line("V2", a.source_address, a.source_port, a.destination_address, a.destination_port)
            }
            ppp::v2::Addresses::IPv6(a) => {
                line("V2", a.source_address, a.source_port, a.destination_address, a.destination_port)
            }
            other => format!("V2 {other:?}"),
        },
        other => format!("no header: {other:?}"),
    }
}

/// `VERSION Some(source) Some(destination)`.
fn line(version: &str, source: impl Into<IpAddr>, sport: u16, destination: impl Into<IpAddr>, dport: u16) -> String {
    let (from, to) = (SocketAddr::new(source.into(), sport), SocketAddr::new(destination.into(), dport));
    format!("{version} Some({from}) Some({to})")
}

/// An HTTP backend that reads the PROXY header each connection starts with and answers
/// every request on it with that header, as a line.
async fn http_proxy_reader() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let line = header_line(&mut s).await;
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}", line.len());
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A backend that reads the PROXY header weir sends (with `ppp`), then greets
/// with it as a line and echoes.
async fn proxy_reader() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = s;
                let line = header_line(&mut s).await + "\n";
                let _ = s.write_all(line.as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// PROXY in and out on a tcp listener: a trusted client's header names the client weir
/// tells the backend about in its own header (v1 and v2), the bytes after the header
/// flow untouched, and a LOCAL header keeps the connection's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_in_and_out_of_a_tcp_listener() {
    let backend = proxy_reader().await;
    for (version, name) in [("v1", "V1"), ("v2", "V2")] {
        let text = tcp_config(
            &[backend],
            "proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.0/8\"]",
            &format!("send_proxy = \"{version}\""),
        );
        let server = support::start(&text).await;
        let proxy = server.addr("main").unwrap();

        // v1 in.
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\nhello").await.unwrap();
        let line = read_line(&mut s).await;
        assert_eq!(line, format!("{name} Some(192.0.2.9:5555) Some(198.51.100.1:443)"));
        let mut five = [0u8; 5];
        s.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello", "the bytes after the header");

        // v2 in, IPv6.
        let header = weir::net::proxy_protocol::send::encode(
            weir::net::proxy_protocol::Version::V2,
            "[2001:db8::7]:4000".parse().unwrap(),
            "[2001:db8::1]:8443".parse().unwrap(),
        );
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(header.as_bytes()).await.unwrap();
        let line = read_line(&mut s).await;
        assert_eq!(line, format!("{name} Some([2001:db8::7]:4000) Some([2001:db8::1]:8443)"));

        // LOCAL (a health check by the proxy in front): the connection's own address.
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let own = s.local_addr().unwrap();
        s.write_all(&local).await.unwrap();
        let line = read_line(&mut s).await;
        assert_eq!(line, format!("{name} Some({own}) Some({proxy})"));
    }
    // v1 out, byte for byte.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = listener.local_addr().unwrap();
    let server = support::start(&tcp_config(&[raw], "", "send_proxy = \"v1\"")).await;
    let mut client = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    let mut want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        client.local_addr().unwrap().port(),
        server.addr("main").unwrap().port()
    )
    .into_bytes();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    client.write_all(b"after").await.unwrap();
    want.clear();
    let mut five = [0u8; 5];
    s.read_exact(&mut five).await.unwrap();
    assert_eq!(&five, b"after");
}

/// An http listener behind a trusted proxy: the header's client is the one
/// `X-Forwarded-For` names, and an http pool with `send_proxy` tells its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_on_http_sets_the_forwarded_client() {
    let backend = support::Upstream::start("a").await;
    let text = support::config_text(&[backend.addr], "").replace(
        "pool = \"p\"\n\n[pool.p]",
        "pool = \"p\"\nproxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.1\"]\n\n[pool.p]",
    );
    let server = support::start(&text).await;
    let mut s = TcpStream::connect(server.addr("main").unwrap()).await.unwrap();
    s.write_all(
        b"PROXY TCP4 203.0.113.5 127.0.0.1 1234 80\r\nGET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-forwarded-for: 203.0.113.5\n"), "{answer}");

    // send_proxy on an http pool: the connection of each client's request starts with
    // a header naming that client (never a connection opened for another client).
    let reader = http_proxy_reader().await;
    let text = support::config_text(&[reader], "send_proxy = \"v2\"");
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let own = s.local_addr().unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("V2 Some({own}) Some({proxy})")), "{answer}");
    }
}

/// A source not in `proxy_protocol_from` that sends a header is refused (counted, no
/// backend reached); a trusted source that sends no header is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_headers_and_missing_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = TlsBackend::start(dir.path(), "db.example.com").await;
    let extra = "proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.2\"]";
    let server = support::start(&passthrough_config(db.addr, db.addr, db.addr, extra)).await;
    let proxy = server.addr("tls").unwrap();
    let stats = server.control().listener_stats("tls").unwrap();

    // 127.0.0.1 is not trusted: its header is refused.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n").await.unwrap();
    let mut got = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap();
    assert!(n.is_err() || got.is_empty());
    support::eventually("the untrusted header refused", || stats.refused.load(Ordering::Relaxed) == 1).await;

    // It is served without one.
    let (ok, subject) = s_client(proxy, Some("db.example.com"), &db.cert, "db.example.com").await;
    assert!(ok, "{subject}");

    // 127.0.0.2 is trusted, so it must send one: a ClientHello straight away is refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from([127, 0, 0, 2]), 0)).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap();
    assert!(n.is_err() || got.is_empty());
    support::eventually("the missing header refused", || stats.refused.load(Ordering::Relaxed) == 2).await;
}

/// A proxy in front of weir: each connection to the returned address is joined to `to`
/// after `header` is written there first.
async fn header_adder(to: SocketAddr, header: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(to).await else { return };
                if upstream.write_all(&header).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    addr
}

/// A proxy behind weir: each connection's PROXY header is read (with `ppp`) and kept as
/// a line in the returned list, then the rest of the connection is joined to `to`.
async fn header_taker(to: SocketAddr) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut weir, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let line = header_line(&mut weir).await;
                kept.lock().unwrap().push(line);
                let Ok(mut backend) = TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut weir, &mut backend).await;
            });
        }
    });
    (addr, seen)
}

/// PROXY on a tls-passthrough listener, both ways, with `openssl` at the ends: a client
/// behind a trusted proxy (its v2 header first, then its ClientHello) is routed by the
/// SNI that follows the header, its TLS handshake completes with the backend's own
/// certificate, and the pool's `send_proxy = "v1"` tells the backend the client the
/// header carried, not the proxy's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_client_behind_a_proxy_is_routed_by_sni_and_named_to_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let db = TlsBackend::start(dir.path(), "db.example.com").await;
    let other = TlsBackend::start(dir.path(), "default.test").await;
    let (db_side, seen) = header_taker(db.addr).await;
    let extra = "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.1\"]";
    let text = passthrough_config(other.addr, db_side, other.addr, extra)
        .replace("[pool.db]\n", "[pool.db]\nsend_proxy = \"v1\"\n");
    let server = support::start(&text).await;
    let proxy = server.addr("tls").unwrap();
    let header = weir::net::proxy_protocol::send::encode(
        weir::net::proxy_protocol::Version::V2,
        "192.0.2.9:5555".parse().unwrap(),
        "198.51.100.1:443".parse().unwrap(),
    );
    let front = header_adder(proxy, header.as_bytes().to_vec()).await;

    let (ok, subject) = s_client(front, Some("db.example.com"), &db.cert, "db.example.com").await;
    assert!(ok && subject.contains("db.example.com"), "{subject}");
    assert_eq!(*seen.lock().unwrap(), ["V1 Some(192.0.2.9:5555) Some(198.51.100.1:443)"]);
    // Another name after the same header goes to the default pool, which sends none.
    let (ok, subject) = s_client(front, Some("elsewhere.org"), &other.cert, "default.test").await;
    assert!(ok && subject.contains("default.test"), "{subject}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    let stats = server.control().listener_stats("tls").unwrap();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
}

/// Plugins see the client a PROXY header carries: a `consistent-hash` pool on the
/// client's address places each carried address on the backend a direct connection from
/// that address gets (through a second listener without PROXY), for twelve addresses
/// spread over three backends. Had weir hashed the proxy's own address, all twelve would
/// land on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_place_the_client_a_proxy_header_carries() {
    let backends = [greeter("a").await, greeter("b").await, greeter("c").await];
    let text = tcp_config(
        &backends,
        "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.1\"]",
        "balancer = { plugin = \"consistent-hash\", config = { key = \"client-ip\" } }",
    )
    .replace(
        "[pool.p]",
        "[[listener]]\nname = \"direct\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n\n[pool.p]",
    );
    let server = support::start(&text).await;
    let (behind, direct) = (server.addr("main").unwrap(), server.addr("direct").unwrap());
    let mut placed = std::collections::BTreeMap::new();
    for i in 11..=22u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        let mut s = socket.connect(direct).await.unwrap();
        let own = read_line(&mut s).await;
        let mut s = TcpStream::connect(behind).await.unwrap();
        s.write_all(format!("PROXY TCP4 {ip} 127.0.0.1 40000 80\r\n").as_bytes()).await.unwrap();
        let carried = read_line(&mut s).await;
        assert_eq!(carried, own, "{ip}: placed by another address than the one carried");
        placed.insert(ip, own);
    }
    let spread: std::collections::BTreeSet<_> = placed.values().collect();
    assert!(spread.len() > 1, "twelve addresses all on one backend: {placed:?}");
}

/// A user-written balancer (`tests/fixtures/by-tls`) sees the SNI and the ALPN protocols
/// of a tls-passthrough connection (`request.sni`, `request.alpn`) and routes on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_sni_and_alpn_of_a_passthrough_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h2 = TlsBackend::start(dir.path(), "h2.example.com").await;
    let db = TlsBackend::start(dir.path(), "db.example.com").await;
    let other = TlsBackend::start(dir.path(), "other.example.com").await;
    let text = format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tls-passthrough\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\", labels = {{ match = \"db.example.com\" }} }}, {{ address = \"{}\", labels = {{ match = \"h2\" }} }}]\nbalancer = {{ plugin = {:?} }}\n",
        support::cache_dir().display().to_string(),
        other.addr,
        db.addr,
        h2.addr,
        support::fixture("by-tls").display().to_string(),
    );
    let server = support::start(&text).await;
    let proxy = server.addr("tls").unwrap();
    let (ok, subject) = s_client(proxy, Some("db.example.com"), &db.cert, "db.example.com").await;
    assert!(ok && subject.contains("db.example.com"), "by SNI: {subject}");
    let (ok, subject) = s_client_alpn(proxy, "db.example.com", "h2,http/1.1", &h2.cert, "h2.example.com").await;
    assert!(ok && subject.contains("h2.example.com"), "by ALPN: {subject}");
    let (ok, subject) = s_client(proxy, Some("www.example.com"), &other.cert, "other.example.com").await;
    assert!(ok && subject.contains("other.example.com"), "neither: {subject}");
}

/// [`s_client`] offering the ALPN protocols `alpn` (comma-separated).
async fn s_client_alpn(
    proxy: SocketAddr,
    servername: &str,
    alpn: &str,
    ca: &Path,
    verify_name: &str,
) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &proxy.to_string(), "-verify_return_error", "-servername", servername])
        .args(["-alpn", alpn, "-verify_hostname", verify_name])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let subject = text.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or("").to_owned();
    (out.status.success() && text.contains("Verify return code: 0 (ok)"), subject)
}
