//! Backends found by DNS (`discover`), against a real DNS server: dnsmasq, started on a
//! free loopback port with only the records each test gives it (restarted on the same
//! port to change them).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, Upstream};

/// A dnsmasq serving only the records it is given, on 127.0.0.1:`port`. Stopped on drop.
pub struct Dns {
    pub port: u16,
    child: Option<Child>,
}

impl Dns {
    /// Starts dnsmasq on a free port with `records` (dnsmasq options such as
    /// `--srv-host=...`, `--host-record=...`).
    pub fn start(records: &[String]) -> Self {
        let mut why = String::new();
        for _ in 0..10 {
            // Free for TCP and UDP both: dnsmasq listens on both.
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if UdpSocket::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            drop(tcp);
            let mut dns = Self { port, child: None };
            match dns.spawn(records) {
                Ok(()) => return dns,
                Err(e) => why = e,
            }
        }
        panic!("dnsmasq did not start: {why}");
    }

    /// Stops it (the resolver is then down: queries time out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port with `records`.
    pub fn restart(&mut self, records: &[String]) {
        self.stop();
        let mut why = String::new();
        // The port was just freed; another socket may take it for a moment.
        for _ in 0..20 {
            match self.spawn(records) {
                Ok(()) => return,
                Err(e) => why = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("dnsmasq did not start again on port {}: {why}", self.port);
    }

    fn spawn(&mut self, records: &[String]) -> Result<(), String> {
        let mut child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
                "--group=root",
                // Authoritative for .internal: a name it has no record of is NXDOMAIN (not
                // REFUSED, as a dnsmasq with no upstream answers otherwise).
                "--local=/internal/",
            ])
            .arg(format!("--port={}", self.port))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base) must be installed");
        // Up when it answers: a query for a name it has no record of gets NXDOMAIN.
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
                return Err(format!("dnsmasq exited ({status}): {err}"));
            }
            if answers(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("dnsmasq did not answer on port {}", self.port))
    }

    pub fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a DNS server answers a query on 127.0.0.1:`port`.
fn answers(port: u16) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
    // id 1, RD, one question: `up.test.` A IN.
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["up", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&q, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[..2] == [0, 1])
}

pub(crate) fn srv(name: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("--srv-host=_http._tcp.web.internal,{name}.internal,{port},{priority},{weight}")
}

pub(crate) fn host(name: &str, ip: &str) -> String {
    format!("--host-record={name}.internal,{ip}")
}

/// A pool with no backends of its own, discovering `dns` through `resolver`.
fn config(dns: &str, resolver: &str, extra: &str) -> String {
    support::config_text(
        &[],
        &format!("discover = {{ dns = \"{dns}\", resolver = \"{resolver}\", refresh_ms = 200 }}\n{extra}"),
    )
}

/// The pool's backends: `(address, weight)`, in pool order.
fn members(server: &weir::Server) -> Vec<(String, u32)> {
    let snapshot = server.snapshot();
    snapshot.pools["p"].view.members.iter().map(|m| (m.config.address.clone(), m.config.weight)).collect()
}

async fn until_members(server: &weir::Server, want: &[(String, u32)]) {
    let mut want = want.to_vec();
    want.sort();
    for _ in 0..1000 {
        let mut now = members(server);
        now.sort();
        if now == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the pool never had {want:?}; it has {:?}", members(server));
}

async fn until_state(server: &weir::Server, state: &str) -> weir::discover::Status {
    for _ in 0..1000 {
        if let Some(s) = server.control().discovery("p").filter(|s| s.state == state) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("discovery never became {state}: {:?}", server.control().discovery("p"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_with_the_given_port_are_the_pools_backends() {
    let a = weir::demo::Backend::start_on("a", "127.0.0.2:0".parse().unwrap()).await.unwrap();
    let port = a.addr.port();
    let b = weir::demo::Backend::start_on("b", SocketAddr::from(([127, 0, 0, 3], port))).await.unwrap();
    let dns = Dns::start(&[host("web", "127.0.0.2"), host("web", "127.0.0.3")]);
    let server = support::start(&config(&format!("web.internal:{port}"), &dns.resolver(), "")).await;
    until_members(&server, &[(a.addr.to_string(), 1), (b.addr.to_string(), 1)]).await;

    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let mut names = Vec::new();
    for _ in 0..4 {
        let (status, body) = support::get(&client, &url).await;
        assert_eq!(status, 200, "{body}");
        names.push(support::name_of(&body).to_owned());
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"], "round robin over both addresses");
    let status = server.control().discovery("p").unwrap();
    assert_eq!((status.state, status.records, status.backends), ("ok", 2, 2), "{status:?}");
    assert!(status.last_refresh_unix_ms.is_some());
    let snapshot = server.snapshot();
    let m = &snapshot.pools["p"].view.members[0];
    assert!(m.config.discovered);
    assert_eq!(m.config.labels, [("dns_name".to_owned(), "web.internal".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_become_backend_weights_and_only_the_lowest_priority_serves() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let mut dns = Dns::start(&[
        srv("a", a.addr.port(), 0, 3),
        srv("b", b.addr.port(), 0, 1),
        srv("c", c.addr.port(), 10, 5),
        host("a", "127.0.0.1"),
        host("b", "127.0.0.1"),
        host("c", "127.0.0.1"),
    ]);
    let server = support::start(&config(
        "_http._tcp.web.internal",
        &dns.resolver(),
        "balancer = { plugin = \"weighted-round-robin\" }",
    ))
    .await;
    until_members(&server, &[(a.addr.to_string(), 3), (b.addr.to_string(), 1)]).await;

    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());
    let mut names = Vec::new();
    for _ in 0..8 {
        let (_, body) = support::get(&client, &url).await;
        names.push(support::name_of(&body).to_owned());
    }
    names.sort();
    assert_eq!(names, ["a", "a", "a", "a", "a", "a", "b", "b"], "3:1 as the SRV weights say");
    assert_eq!(server.control().discovery("p").unwrap().records, 3);

    // The priority-0 targets no longer resolve: the priority-10 group takes over.
    dns.restart(&[
        srv("a", a.addr.port(), 0, 3),
        srv("b", b.addr.port(), 0, 1),
        srv("c", c.addr.port(), 10, 5),
        host("c", "127.0.0.1"),
    ]);
    until_members(&server, &[(c.addr.to_string(), 5)]).await;
    let (_, body) = support::get(&client, &url).await;
    assert_eq!(support::name_of(&body), "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_added_and_removed_leave_the_tunnels_of_backends_that_stay_untouched() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let mut dns = Dns::start(&[
        srv("a", a.addr.port(), 0, 1),
        srv("b", b.addr.port(), 0, 1),
        host("a", "127.0.0.1"),
        host("b", "127.0.0.1"),
    ]);
    let server = support::start(&config(
        "_http._tcp.web.internal",
        &dns.resolver(),
        "drain_spread_ms = 0\nbalancer = { plugin = \"weighted-round-robin\" }",
    ))
    .await;
    until_members(&server, &[(a.addr.to_string(), 1), (b.addr.to_string(), 1)]).await;
    let proxy = server.addr("main").unwrap();

    // One tunnel to each backend (round robin places them), each knowing where it is.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
        ws.send(Message::text("who")).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
        tunnels.push((support::name_of(&echo).to_owned(), ws));
    }
    tunnels.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(tunnels.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let live_a = {
        let snapshot = server.snapshot();
        let m = snapshot.pools["p"].view.members.iter().find(|m| m.config.socket_addr == a.addr).unwrap();
        m.live.clone()
    };

    // b leaves, c arrives, a stays with a new weight.
    dns.restart(&[
        srv("a", a.addr.port(), 0, 4),
        srv("c", c.addr.port(), 0, 1),
        host("a", "127.0.0.1"),
        host("c", "127.0.0.1"),
    ]);
    until_members(&server, &[(a.addr.to_string(), 4), (c.addr.to_string(), 1)]).await;

    let snapshot = server.snapshot();
    let m = snapshot.pools["p"].view.members.iter().find(|m| m.config.socket_addr == a.addr).unwrap();
    assert!(Arc::ptr_eq(&m.live, &live_a), "a kept its live state");
    assert_eq!(m.live.tunnels(), 1, "a's tunnel is still counted");
    let (_, mut to_b) = tunnels.pop().unwrap();
    let (_, mut to_a) = tunnels.pop().unwrap();
    to_a.send(Message::text("still here")).await.unwrap();
    let echo = to_a.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(echo, "a: still here", "the tunnel to a stayed open through the change");
    // b's tunnel is drained: a close frame 1001 (going away).
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match to_b.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1001), "the removed backend's tunnel was drained");

    let client = support::client();
    let url = format!("http://{proxy}/");
    let mut to_a = 0;
    for _ in 0..20 {
        let (_, body) = support::get(&client, &url).await;
        match support::name_of(&body) {
            "a" => to_a += 1,
            "c" => {}
            other => panic!("{other} is not in the pool"),
        }
    }
    assert!((15..=17).contains(&to_a), "the new weights (4:1) place the work: {to_a} of 20 to a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_down_nxdomain_or_an_empty_answer_keeps_the_last_set() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let good =
        [srv("a", a.addr.port(), 0, 1), srv("b", b.addr.port(), 0, 1), host("a", "127.0.0.1"), host("b", "127.0.0.1")];
    let mut dns = Dns::start(&good);
    let server = support::start(&config("_http._tcp.web.internal", &dns.resolver(), "")).await;
    let both = [(a.addr.to_string(), 1), (b.addr.to_string(), 1)];
    until_members(&server, &both).await;
    let client = support::client();
    let url = format!("http://{}/", server.addr("main").unwrap());

    let serves_both = || async {
        let mut names = Vec::new();
        for _ in 0..2 {
            let (status, body) = support::get(&client, &url).await;
            assert_eq!(status, 200);
            names.push(support::name_of(&body).to_owned());
        }
        names.sort();
        assert_eq!(names, ["a", "b"]);
    };

    // The resolver is down: queries time out.
    dns.stop();
    let status = until_state(&server, "failing").await;
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(members(&server).len(), 2);
    serves_both().await;

    // NXDOMAIN: the server knows nothing of the name.
    dns.restart(&[host("a", "127.0.0.1")]);
    let status = until_state(&server, "empty").await;
    assert!(status.last_error.as_deref().unwrap_or_default().contains("no SRV records"), "{status:?}");
    serves_both().await;

    // SRV records whose targets have no address: an answer with no backend.
    dns.restart(&[srv("a", a.addr.port(), 0, 1), srv("b", b.addr.port(), 0, 1)]);
    let failures = server.control().discovery("p").unwrap().failures;
    for _ in 0..500 {
        if server.control().discovery("p").unwrap().failures >= failures + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = server.control().discovery("p").unwrap();
    assert_eq!(status.state, "empty", "{status:?}");
    assert_eq!(members(&server).len(), 2);
    serves_both().await;

    // Answers again, with one backend less.
    dns.restart(&good[..1].iter().chain(&good[2..3]).cloned().collect::<Vec<_>>());
    until_members(&server, &both[..1]).await;
    assert_eq!(until_state(&server, "ok").await.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_file_backends_beside_discovered_ones_and_a_reload_without_discover_stops_it() {
    let (a, b, s) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("s").await);
    let dns = Dns::start(&[
        srv("a", a.addr.port(), 0, 1),
        srv("b", b.addr.port(), 0, 1),
        host("a", "127.0.0.1"),
        host("b", "127.0.0.1"),
    ]);
    let text = config("_http._tcp.web.internal", &dns.resolver(), "");
    let server = support::start(&text).await;
    let found = [(a.addr.to_string(), 1), (b.addr.to_string(), 1)];
    until_members(&server, &found).await;

    // A static backend added by a reload joins the discovered ones at once.
    let with_static =
        text.replace("backends = []", &format!("backends = [{{ address = \"{}\", weight = 2 }}]", s.addr));
    server.reload(weir::config::Config::parse(&with_static, None).unwrap()).await.unwrap();
    let mut all = found.to_vec();
    all.push((s.addr.to_string(), 2));
    let mut now = members(&server);
    now.sort();
    all.sort();
    assert_eq!(now, all, "the discovered backends stayed through the reload");

    // No more discover: only the file's backends, and the task is gone.
    let without = with_static.replace(
        &format!(
            "discover = {{ dns = \"_http._tcp.web.internal\", resolver = \"{}\", refresh_ms = 200 }}",
            dns.resolver()
        ),
        "",
    );
    server.reload(weir::config::Config::parse(&without, None).unwrap()).await.unwrap();
    assert_eq!(members(&server), [(s.addr.to_string(), 2)]);
    assert!(server.control().discovery("p").is_none());
}

#[test]
fn check_rejects_a_bad_discover_with_its_place_and_accepts_a_name_that_does_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let run = |discover: &str| {
        let text =
            format!("[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\ndiscover = {discover}\n");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(["check", "--config"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let file = path.display().to_string();
    for (discover, want) in [
        (r#"{ dns = "web.internal" }"#, "6:20: pool.web.discover.dns: `web.internal` is neither an SRV name"),
        (r#"{ dns = "web.internal:0" }"#, "6:20: pool.web.discover.dns: `web.internal:0` has port `0`"),
        (r#"{ dns = "10.0.0.1:80" }"#, "6:20: pool.web.discover.dns: `10.0.0.1:80` is an address, not a name"),
        (r#"{ dns = "_http._tcp.web:80" }"#, "pool.web.discover.dns: `_http._tcp.web:80` is an SRV name with a port"),
        (
            r#"{ dns = "web:80", resolver = "dns.internal" }"#,
            "6:41: pool.web.discover.resolver: `dns.internal` is not `ip` or `ip:port`",
        ),
        (
            r#"{ dns = "web:80", refresh_ms = 10 }"#,
            "6:43: pool.web.discover.refresh_ms: 10 ms is out of range (100 ms to 1 day)",
        ),
        (r#"{ dns = "web:80", refesh_ms = 1000 }"#, "pool.web.discover.refesh_ms: unknown field `refesh_ms`"),
        (r#"{ resolver = "127.0.0.1" }"#, "pool.web.discover: missing field `dns`"),
    ] {
        let (ok, stderr) = run(discover);
        assert!(!ok, "{discover} accepted");
        assert!(stderr.contains(&format!("{file}:")) && stderr.contains(want), "{discover}: {stderr}");
    }
    // Nothing is resolved by a check: a name no server knows passes.
    let (ok, stderr) = run(r#"{ dns = "_http._tcp.nowhere.invalid", resolver = "127.0.0.1:9", refresh_ms = "2s" }"#);
    assert!(ok, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_srv_records_an_answer_too_big_for_udp_all_become_backends() {
    // 1,000 records do not fit a UDP answer: the resolver asks again over TCP. The
    // backends need not listen: only the pool's members are read.
    let mut records: Vec<String> = (0..1000).map(|i| srv("a", 20_000 + i, 0, 1 + i % 3)).collect();
    records.push(host("a", "127.0.0.1"));
    let dns = Dns::start(&records);
    let server = support::start(&config("_http._tcp.web.internal", &dns.resolver(), "")).await;
    let want: Vec<(String, u32)> =
        (0..1000u16).map(|i| (format!("127.0.0.1:{}", 20_000 + i), u32::from(1 + i % 3))).collect();
    until_members(&server, &want).await;
    let status = server.control().discovery("p").unwrap();
    assert_eq!((status.records, status.backends), (1000, 1000), "{status:?}");
}
