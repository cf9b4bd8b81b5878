//! Three real weir processes sharing stick tables through a real etcd (Debian's
//! `etcd-server`), started on free loopback ports with a temporary data dir: a session
//! pinned through one instance is served by the same backend through the others, a
//! WebSocket keeps its entry alive for all, and an etcd killed mid-traffic costs no
//! request and is resynced after its restart.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use http::Request;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::{Upstream, body_text, cache_dir, client, empty, name_of};

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it gives a value, up to `limit`; panics naming `what`.
async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real etcd on two free loopback ports; killed on drop (by its own pid).
pub struct Etcd {
    pub client: u16,
    peer: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    pub async fn start() -> Self {
        let mut etcd = Self { client: free_port(), peer: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        etcd.restart().await;
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts it (again, on the same ports and data) and waits until it answers.
    pub async fn restart(&mut self) {
        let (client, peer) = (format!("http://127.0.0.1:{}", self.client), format!("http://127.0.0.1:{}", self.peer));
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is installed");
        self.child = Some(child);
        let http = client.clone();
        wait_for("etcd answers /health", Duration::from_secs(30), async || {
            let res = crate::support::client()
                .request(Request::get(format!("{http}/health")).body(empty()).unwrap())
                .await
                .ok()?;
            body_text(res).await.contains("true").then_some(())
        })
        .await;
    }

    /// Kills the process (SIGKILL): what a crash looks like to the instances.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcdctl get --prefix --keys-only KEY`: the keys.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "get", "--prefix", "--keys-only", prefix])
            .output()
            .expect("etcdctl (Debian's etcd-client) is installed");
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// `etcdctl put KEY VALUE`.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// `etcdctl del KEY`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]);
    }

    fn etcdctl(&self, args: &[&str]) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url()])
            .args(args)
            .output()
            .expect("etcdctl (Debian's etcd-client) is installed");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `etcdctl get --prefix KEY`: the keys and values, alternating.
    pub fn get_prefix(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "get", "--prefix", prefix])
            .output()
            .expect("etcdctl (Debian's etcd-client) is installed");
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One real `weir run` process with a listener and an admin API on free ports; killed on
/// drop (by its own pid).
pub struct Weir {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Weir {
    /// Starts `weir run` on a config of one pool `p` over `backends` with `pool_extra`,
    /// in the cluster `node` of `etcd`; waits until its admin API answers.
    pub async fn start(etcd: &str, node: &str, backends: &[SocketAddr], pool_extra: &str) -> Self {
        let list: Vec<String> = backends.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
        Self::launch(etcd, node, "p", &format!("[pool.p]\nbackends = [{}]\n{pool_extra}\n", list.join(", "))).await
    }

    /// Starts `weir run` with a listener on pool `pool` and `pools` (the file's pool
    /// tables), in the cluster `node` of `etcd`; waits until its admin API answers.
    pub async fn launch(etcd: &str, node: &str, pool: &str, pools: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (listen, admin): (SocketAddr, SocketAddr) = (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        );
        let text = format!(
            "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [cluster]\netcd = [\"{etcd}\"]\nprefix = \"/weir-test\"\nnode = \"{node}\"\n\n\
             [[listener]]\nname = \"main\"\nlisten = \"{listen}\"\npool = \"{pool}\"\n\n{pools}",
            cache_dir().display().to_string(),
        );
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::File::create(dir.path().join("weir.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let weir = Self { listen, admin, child, _dir: dir };
        wait_for(&format!("weir {node} answers"), Duration::from_secs(60), async || weir.status().await).await;
        weir
    }

    /// `GET /api/v1/status`, `None` while it does not answer.
    pub async fn status(&self) -> Option<Value> {
        let res = client()
            .request(Request::get(format!("http://{}/api/v1/status", self.admin)).body(empty()).unwrap())
            .await
            .ok()?;
        serde_json::from_str(&body_text(res).await).ok()
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let res = client()
            .request(Request::get(format!("http://{}/metrics", self.admin)).body(empty()).unwrap())
            .await
            .unwrap();
        body_text(res).await
    }

    /// The `cluster` of its status.
    pub async fn cluster(&self) -> Value {
        self.status().await.map(|s| s["cluster"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until its etcd session is up.
    pub async fn connected(&self) {
        wait_for("the etcd session is up", Duration::from_secs(30), async || {
            (self.cluster().await["connected"] == true).then_some(())
        })
        .await;
    }

    /// Stick entries it learnt from etcd.
    pub async fn received(&self) -> u64 {
        self.cluster().await["stick"]["received"].as_u64().unwrap_or(0)
    }

    /// GET / with `X-Session: session`; the backend's name, or the failure.
    pub async fn serve(&self, session: &str) -> Result<String, String> {
        let req = Request::get(format!("http://{}/", self.listen)).header("x-session", session).body(empty()).unwrap();
        let res = client().request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = body_text(res).await;
        if status.is_success() { Ok(name_of(&body).to_owned()) } else { Err(format!("{status}: {body}")) }
    }
}

impl Weir {
    /// Sends SIGHUP (a reload of its file).
    pub fn hangup(&self) {
        let ok = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -HUP");
    }

    /// The state of shared pool `name` in its status (`Null` until it saw the key).
    pub async fn shared_pool(&self, name: &str) -> Value {
        self.cluster().await["pools"][name].clone()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three demo backends.
async fn backends() -> (Vec<Upstream>, Vec<SocketAddr>) {
    let ups = vec![Upstream::start("b1").await, Upstream::start("b2").await, Upstream::start("b3").await];
    let addrs = ups.iter().map(|u| u.addr).collect();
    (ups, addrs)
}

/// A pool pinning on `X-Session` with a TTL, its stick table shared.
fn sticky(ttl_s: u64) -> String {
    format!(
        "affinity = {{ plugin = \"header\", config = {{ name = \"x-session\", ttl_s = {ttl_s} }} }}\nshare_stick_tables = true\n"
    )
}

async fn three(etcd: &Etcd, addrs: &[SocketAddr], extra: &str) -> [Weir; 3] {
    let url = etcd.url();
    let (a, b, c) = tokio::join!(
        Weir::start(&url, "a", addrs, extra),
        Weir::start(&url, "b", addrs, extra),
        Weir::start(&url, "c", addrs, extra)
    );
    for w in [&a, &b, &c] {
        w.connected().await;
    }
    [a, b, c]
}

/// Pins `session` through `from` and waits until each of `others` has learnt the entry
/// (its received count passes what it was); returns the backend.
async fn pin_and_propagate(from: &Weir, others: &[&Weir], session: &str) -> String {
    let before: Vec<u64> = futures_util::future::join_all(others.iter().map(|w| w.received())).await;
    let backend = from.serve(session).await.unwrap();
    for (w, was) in others.iter().zip(before) {
        wait_for(&format!("{session} reaches another instance"), Duration::from_secs(10), async || {
            (w.received().await > was).then_some(())
        })
        .await;
    }
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_session_pinned_through_one_instance_stays_on_its_backend_through_the_others() {
    let (_ups, addrs) = backends().await;
    let etcd = Etcd::start().await;
    let [a, b, c] = three(&etcd, &addrs, &sticky(600)).await;
    // Round robin spreads new sessions over the three backends; each must then be served
    // by its own backend whichever instance it comes through.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..6 {
        let session = format!("s{i}");
        let backend = pin_and_propagate(&a, &[&b, &c], &session).await;
        seen.insert(backend.clone());
        for w in [&b, &c, &a, &c, &b] {
            assert_eq!(w.serve(&session).await.unwrap(), backend, "{session} moved");
        }
    }
    assert!(seen.len() > 1, "round robin pinned every session to one backend: {seen:?}");
    // Pins made through B reach A and C as well.
    let backend = pin_and_propagate(&b, &[&a, &c], "from-b").await;
    assert_eq!(a.serve("from-b").await.unwrap(), backend);
    assert_eq!(c.serve("from-b").await.unwrap(), backend);
    // The entries are in etcd, by address, under the prefix.
    let kvs = etcd.get_prefix("/weir-test/stick/p/header:x-session/");
    assert_eq!(kvs.len(), 2 * 7, "{kvs:?}");
    assert!(kvs.iter().skip(1).step_by(2).all(|v| addrs.iter().any(|a| a.to_string() == *v)), "{kvs:?}");
    // One write per new session, none for the requests that followed (a request's
    // binding holds its entry while it is served: that costs no write).
    assert_eq!(a.cluster().await["stick"]["published"], 6);
    assert_eq!(b.cluster().await["stick"]["published"], 1);
    assert_eq!(c.cluster().await["stick"]["published"], 0);
    let res = client().request(Request::get(format!("{}/metrics", etcd.url())).body(empty()).unwrap()).await.unwrap();
    let metrics = body_text(res).await;
    assert!(metrics.lines().any(|l| l == "etcd_mvcc_put_total 7"), "etcd counts 7 puts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_websocket_open_on_one_instance_keeps_its_entry_alive_for_all() {
    let (_ups, addrs) = backends().await;
    let etcd = Etcd::start().await;
    let ttl = Duration::from_secs(2);
    let [a, b, _c] = three(&etcd, &addrs, &sticky(ttl.as_secs())).await;
    let backend = pin_and_propagate(&a, &[&b], "ws-session").await;
    let mut req = format!("ws://{}/chat", a.listen).into_client_request().unwrap();
    req.headers_mut().insert("x-session", "ws-session".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    // A plain pin of the same age, held by nothing, to show the TTL is real.
    pin_and_propagate(&a, &[&b], "plain-session").await;
    let key = |s: &str| {
        let k = xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        format!("/weir-test/stick/p/header:x-session/{k:016x}")
    };
    // Well past the TTL and the longest a lease may outlive it (TTL + 1 s bucket + 2 s).
    let wait = ttl * 4;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let held = etcd.get_prefix(&key("ws-session"));
    let plain = etcd.get_prefix(&key("plain-session"));
    assert!(plain.is_empty(), "an entry nothing holds expired in etcd: {plain:?}");
    assert_eq!(
        held.get(1).map(String::as_str),
        Some(addrs[["b1", "b2", "b3"].iter().position(|n| *n == backend).unwrap()].to_string().as_str()),
        "the held entry lives on: {held:?}"
    );
    // And B, where the TTL passed long ago with no traffic, still sends it to the same
    // backend.
    for _ in 0..3 {
        assert_eq!(b.serve("ws-session").await.unwrap(), backend);
    }
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_etcd_killed_mid_traffic_costs_no_request_and_the_instances_resync() {
    let (_ups, addrs) = backends().await;
    let mut etcd = Etcd::start().await;
    let [a, b, c] = three(&etcd, &addrs, &sticky(600)).await;
    let before = pin_and_propagate(&a, &[&b, &c], "before").await;
    // Traffic through all three while etcd dies.
    let traffic = {
        let (a, b, c) = (a.listen, b.listen, c.listen);
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut served = 0;
            let started = Instant::now();
            let mut i = 0u32;
            while started.elapsed() < Duration::from_secs(6) {
                for addr in [a, b, c] {
                    let req = Request::get(format!("http://{addr}/"))
                        .header("x-session", format!("t{}", i % 50))
                        .body(empty())
                        .unwrap();
                    match client().request(req).await {
                        Ok(res) if res.status().is_success() => served += 1,
                        Ok(res) => failed.push(res.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                i += 1;
            }
            (served, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.kill();
    for w in [&a, &b, &c] {
        wait_for("the outage shows in status", Duration::from_secs(20), async || {
            let cl = w.cluster().await;
            (cl["connected"] == false && cl["last_error"].is_string()).then_some(())
        })
        .await;
    }
    assert!(a.metrics().await.contains("weir_cluster_connected 0"));
    // The pin made before the outage still holds everywhere.
    for w in [&a, &b, &c] {
        assert_eq!(w.serve("before").await.unwrap(), before);
    }
    let (served, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), served + failed.len());
    assert!(served > 30, "too little traffic to tell: {served}");
    // A pin made while etcd is down is published by the resync.
    let offline = a.serve("made-offline").await.unwrap();
    etcd.restart().await;
    for w in [&a, &b, &c] {
        w.connected().await;
    }
    assert!(a.metrics().await.contains("weir_cluster_connected 1"));
    wait_for("the offline pin reaches B", Duration::from_secs(10), async || {
        (!etcd
            .get_prefix(&format!(
                "/weir-test/stick/p/header:x-session/{:016x}",
                xxhash_rust::xxh3::xxh3_64(b"made-offline")
            ))
            .is_empty())
        .then_some(())
    })
    .await;
    // A new pin on A reaches B and C again.
    let after = pin_and_propagate(&a, &[&b, &c], "after").await;
    assert_eq!(b.serve("after").await.unwrap(), after);
    assert_eq!(c.serve("after").await.unwrap(), after);
    assert_eq!(b.serve("made-offline").await.unwrap(), offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_instances_pinning_the_same_keys_at_once_converge_on_one_backend() {
    let (_ups, addrs) = backends().await;
    let etcd = Etcd::start().await;
    let url = etcd.url();
    // `first` takes the first backend of the file's order: A and C pick b1, B picks b2,
    // so every key pinned through A and B at once is a race.
    let pool = |order: [usize; 3]| {
        let list: Vec<String> = order.iter().map(|&i| format!("{{ address = \"{}\" }}", addrs[i])).collect();
        format!("[pool.p]\nbackends = [{}]\nbalancer = {{ plugin = \"first\" }}\n{}", list.join(", "), sticky(600))
    };
    let (pa, pb) = (pool([0, 1, 2]), pool([1, 0, 2]));
    let (a, b, c) = tokio::join!(
        Weir::launch(&url, "a", "p", &pa),
        Weir::launch(&url, "b", "p", &pb),
        Weir::launch(&url, "c", "p", &pa)
    );
    for w in [&a, &b, &c] {
        w.connected().await;
    }
    let keys: Vec<String> = (0..50).map(|i| format!("race-{i}")).collect();
    // The first request of every key, through A and B at the same moment.
    let first = futures_util::future::join_all(keys.iter().flat_map(|k| [a.serve(k), b.serve(k)])).await;
    let first: Vec<String> = first.into_iter().map(Result::unwrap).collect();
    assert!(first.chunks(2).any(|p| p[0] != p[1]), "A and B never picked differently: no race was run");
    // Once the watch has settled, every instance sends each key to one backend.
    for k in &keys {
        let agreed = wait_for(&format!("{k} agrees on A, B and C"), Duration::from_secs(20), async || {
            let (x, y, z) = (a.serve(k).await.ok()?, b.serve(k).await.ok()?, c.serve(k).await.ok()?);
            (x == y && y == z).then_some(x)
        })
        .await;
        for w in [&a, &b, &c, &b, &a] {
            assert_eq!(w.serve(k).await.unwrap(), agreed, "{k} moved after agreeing");
        }
    }
    // The losers adopted the winners' pins (the create-if-absent transaction's answer).
    let adopted = a.cluster().await["stick"]["adopted"].as_u64().unwrap()
        + b.cluster().await["stick"]["adopted"].as_u64().unwrap();
    assert!(adopted > 0, "no pin was adopted");
    let kvs = etcd.get_prefix("/weir-test/stick/p/header:x-session/");
    assert_eq!(kvs.len(), 2 * keys.len(), "one entry per key");
}

/// Waits until every one of `instances` serves only from `want` (ten requests each).
async fn all_serve_from(instances: &[&Weir], want: &[&str]) {
    for w in instances {
        wait_for(&format!("serving from {want:?}"), Duration::from_secs(20), async || {
            for i in 0..10 {
                match w.serve(&format!("k{i}")).await {
                    Ok(b) if want.contains(&b.as_str()) => {}
                    _ => return None,
                }
            }
            Some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_pool_changed_in_etcd_reaches_all_three_and_a_bad_value_is_refused_by_all() {
    let (_ups, addrs) = backends().await;
    let etcd = Etcd::start().await;
    let url = etcd.url();
    // The listener names a pool the file does not define: it comes from etcd.
    let (a, b, c) = tokio::join!(
        Weir::launch(&url, "a", "shared", ""),
        Weir::launch(&url, "b", "shared", ""),
        Weir::launch(&url, "c", "shared", "")
    );
    let all = [&a, &b, &c];
    for w in all {
        w.connected().await;
        let err = w.serve("x").await.unwrap_err();
        assert!(err.starts_with("503"), "before the pool arrives: {err}");
    }
    let key = "/weir-test/pools/shared";
    etcd.put(key, &format!("backends = [{{ address = \"{}\" }}]\n", addrs[0]));
    all_serve_from(&all, &["b1"]).await;
    // A change of its backends (and balancer) reaches all three.
    etcd.put(
        key,
        &format!(
            "backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\nbalancer = {{ plugin = \"p2c\" }}\n",
            addrs[1], addrs[2]
        ),
    );
    all_serve_from(&all, &["b2", "b3"]).await;
    // Bad values: refused by every instance, with the etcd key, and the last good pool
    // keeps serving.
    let bad = [
        ("backends = [{ address = ", "expected"),
        ("backends = []\nbalancr = { plugin = \"p2c\" }\n", "balancr"),
        ("backends = []\nbalancer = { plugin = \"no-such-plugin\" }\n", "no-such-plugin"),
    ];
    for (value, why) in bad {
        etcd.put(key, value);
        for w in all {
            let state = wait_for(&format!("{value:?} refused"), Duration::from_secs(20), async || {
                let s = w.shared_pool("shared").await;
                s["error"].as_str().is_some_and(|e| e.contains(why)).then_some(s)
            })
            .await;
            assert_eq!(state["applied"], false, "{state}");
            assert!(state["error"].as_str().unwrap().contains(key), "the error names the etcd key: {state}");
        }
        all_serve_from(&all, &["b2", "b3"]).await;
    }
    assert!(a.metrics().await.contains("weir_cluster_pool_refused_total 3"));
    // A reload of the file (SIGHUP) keeps the pool that came from etcd.
    a.hangup();
    wait_for("A reloaded", Duration::from_secs(20), async || {
        a.metrics().await.contains("weir_control_reloads_total 1").then_some(())
    })
    .await;
    all_serve_from(&[&a], &["b2", "b3"]).await;
    // A good value again, then the key deleted: the pool leaves everywhere.
    etcd.put(key, &format!("backends = [{{ address = \"{}\" }}]\n", addrs[2]));
    all_serve_from(&all, &["b3"]).await;
    etcd.del(key);
    for w in all {
        wait_for("the pool leaves", Duration::from_secs(20), async || {
            w.serve("x").await.is_err_and(|e| e.starts_with("503")).then_some(())
        })
        .await;
    }
}

/// `PUT` (or `POST`) `path` on an instance's admin API; the status and the JSON body.
async fn admin_call(w: &Weir, method: http::Method, path: &str, body: Vec<u8>) -> (http::StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", w.admin))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    let status = res.status();
    (status, serde_json::from_str(&body_text(res).await).unwrap_or(Value::Null))
}

/// `bytes` (a component) with a custom section of `pad` bytes appended: the same plugin,
/// another hash, as large as wanted.
fn padded(mut bytes: Vec<u8>, pad: usize) -> Vec<u8> {
    let name = b"weir-test-padding";
    let mut body = Vec::with_capacity(pad + 32);
    leb128(&mut body, name.len());
    body.extend_from_slice(name);
    body.resize(body.len() + pad, 0x5a);
    bytes.push(0);
    leb128(&mut bytes, body.len());
    bytes.extend_from_slice(&body);
    bytes
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_plugin_published_once_runs_on_all_three_and_on_one_started_later() {
    let (_ups, addrs) = backends().await;
    let etcd = Etcd::start().await;
    let [a, b, c] = three(&etcd, &addrs, "").await;
    // The counter fixture answering backend 1 (b2), made 2.5 MiB: stored in three chunks.
    let component = padded(std::fs::read(crate::support::fixture("counter")).unwrap(), 5 << 19);
    let sha = weir::cluster::sha256_hex(&component);
    let (status, body) = admin_call(
        &a,
        http::Method::PUT,
        "/api/v1/pools/p/balancer?cluster=true&name=counter&config=%7B%22fixed%22%3A1%7D",
        component,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["published"]["plugins"][0]["sha256"], sha.as_str(), "{body}");
    let stored = etcd.keys(&format!("/weir-test/plugins/{sha}"));
    let chunk = |n: usize| format!("/weir-test/plugins/{sha}/{n:06}");
    assert_eq!(stored, [format!("/weir-test/plugins/{sha}"), chunk(0), chunk(1), chunk(2)], "a manifest, three chunks");
    all_serve_from(&[&a, &b, &c], &["b2"]).await;
    for w in [&b, &c] {
        let s = &w.cluster().await["swaps"]["p/balancer"];
        assert_eq!((s["applied"].as_bool(), s["by"].as_str()), (Some(true), Some("a")), "{s}");
    }
    // An instance started after the publish applies it.
    let d = Weir::start(&etcd.url(), "d", &addrs, "").await;
    d.connected().await;
    all_serve_from(&[&d], &["b2"]).await;
    // A pack plugin is published by name, through B this time.
    let (status, body) =
        admin_call(&b, http::Method::PUT, "/api/v1/pools/p/balancer?cluster=true", br#"{"plugin": "first"}"#.to_vec())
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["published"]["plugins"][0]["pack"], "first", "{body}");
    all_serve_from(&[&a, &b, &c, &d], &["b1"]).await;
    // A rollback with cluster = true puts the counter back everywhere.
    let (status, body) =
        admin_call(&c, http::Method::POST, "/api/v1/pools/p/balancer/rollback?cluster=true", vec![]).await;
    assert_eq!(status, 202, "{body}");
    all_serve_from(&[&a, &b, &c, &d], &["b2"]).await;
    // A component whose stored bytes do not match its hash is refused by every instance;
    // the plugin in place keeps serving.
    let fake = "0".repeat(64);
    etcd.put(&format!("/weir-test/plugins/{fake}/000000"), "not the component");
    etcd.put(&format!("/weir-test/plugins/{fake}"), r#"{"size": 17, "chunks": 1}"#);
    etcd.put(
        "/weir-test/swaps/p/balancer",
        &format!(r#"{{"plugins": [{{"sha256": "{fake}", "name": "forged", "config": {{}}}}], "by": "elsewhere"}}"#),
    );
    for w in [&a, &b, &c, &d] {
        let s = wait_for("the forged component refused", Duration::from_secs(20), async || {
            let s = w.cluster().await["swaps"]["p/balancer"].clone();
            (s["by"] == "elsewhere" && s["applied"] == false).then_some(s)
        })
        .await;
        assert!(s["error"].as_str().unwrap().contains("do not match their hash"), "{s}");
    }
    all_serve_from(&[&a, &b, &c, &d], &["b2"]).await;
    assert!(a.metrics().await.contains("weir_cluster_swaps_failed_total 1"));
}

#[test]
fn cluster_settings_are_checked_at_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(["check", "--config"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let pool = "[[listener]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbackends = [{ address = \"127.0.0.1:1\" }]\n";
    let (ok, err) = check(&format!("{pool}share_stick_tables = true\n"));
    assert!(!ok && err.contains("pool.p.share_stick_tables") && err.contains("[cluster]"), "{err}");
    let (ok, err) = check(&format!("[cluster]\netcd = [\"127.0.0.1:2379\"]\nnode = \"a\"\n{pool}"));
    assert!(!ok && err.contains("cluster.etcd[0]"), "{err}");
    let (ok, err) = check(&format!("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a b\"\n{pool}"));
    assert!(!ok && err.contains("cluster.node"), "{err}");
    let (ok, err) = check(&format!(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\ncredentials_file = \"nope\"\n{pool}"
    ));
    assert!(!ok && err.contains("cluster.credentials_file") && err.contains("cannot read"), "{err}");
    // Valid without etcd running: check does not need it.
    let (ok, err) =
        check(&format!("[cluster]\netcd = [\"http://127.0.0.1:1\"]\nnode = \"a\"\n{pool}share_stick_tables = true\n"));
    assert!(ok, "{err}");
}
