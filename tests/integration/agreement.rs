//! Agreement without coordination (docs/cluster.md): three real `weir` processes that share
//! nothing but their config decide the same way where the decision is a function of the
//! member list (consistent-hash, maglev) or of a signed cookie whose key they share.

use std::net::SocketAddr;

use http::Request;

use crate::support::{self, Upstream, Weir};

/// A config for one pool over `backends` (in that order) with `pool_extra`.
fn config(backends: &[SocketAddr], pool_extra: &str) -> String {
    support::config_text(backends, pool_extra)
}

/// The backend that answers `headers` through `proxy`, with the response's `Set-Cookie`.
async fn ask(proxy: SocketAddr, headers: &[(&str, &str)]) -> (String, Option<String>) {
    let client = support::client();
    let mut req = Request::get(format!("http://{proxy}/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client.request(req.body(support::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    let body = support::body_text(res).await;
    (support::name_of(&body).to_owned(), cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_and_maglev_send_a_client_to_the_same_backend_on_all_three_instances() {
    let mut upstreams = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        upstreams.push(Upstream::start(name).await);
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    // Each instance lists the backends in another order: the decision depends on the
    // addresses, not on the file's order.
    let mut orders = vec![addrs.clone(), addrs.iter().rev().copied().collect::<Vec<_>>()];
    let mut rotated = addrs.clone();
    rotated.rotate_left(2);
    orders.push(rotated);

    for plugin in ["consistent-hash", "maglev"] {
        let extra = format!("balancer = {{ plugin = \"{plugin}\", config = {{ key = \"header:x-user\" }} }}");
        let instances: Vec<Weir> = orders.iter().map(|o| Weir::run_text(&config(o, &extra), &[])).collect();
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..40 {
            let user = format!("user-{user}");
            let mut answers = Vec::new();
            for w in &instances {
                answers.push(ask(w.addr(), &[("x-user", &user)]).await.0);
            }
            assert!(answers.iter().all(|a| *a == answers[0]), "{plugin}: {user} went to {answers:?}");
            seen.insert(answers[0].clone());
        }
        assert!(seen.len() >= 4, "{plugin}: the users spread over the backends: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_issued_by_one_instance_is_honoured_by_the_others_that_share_its_key_file() {
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let addrs = [a.addr, b.addr, c.addr];
    let affinity = "affinity = { plugin = \"cookie\", config = { key_file = \"cookie.key\" } }";
    let key: &[u8] = b"a shared signing key of 32 bytes";
    let instances: Vec<Weir> =
        (0..3).map(|_| Weir::run_text(&config(&addrs, affinity), &[("cookie.key", key)])).collect();

    // A pins a new client (round robin picks) and says so in a cookie.
    let (pinned, cookie) = ask(instances[0].addr(), &[]).await;
    let cookie = cookie.expect("A sets the affinity cookie");
    let pair = cookie.split(';').next().unwrap().to_owned();
    // B and C send that client to the same backend every time, and set no new cookie.
    for w in &instances {
        for _ in 0..4 {
            let (name, set) = ask(w.addr(), &[("cookie", &pair)]).await;
            assert_eq!(name, pinned, "the cookie from A is honoured");
            assert_eq!(set, None, "an honoured cookie is not replaced");
        }
    }

    // An instance with another key does not understand it: round robin places the client
    // and a new cookie replaces the foreign one.
    let other = Weir::run_text(&config(&addrs, affinity), &[("cookie.key", b"another key, also of 32 bytes!!")]);
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (name, set) = ask(other.addr(), &[("cookie", &pair)]).await;
        assert!(set.is_some(), "a cookie signed with another key is replaced");
        names.insert(name);
    }
    assert_eq!(names.len(), 3, "not pinned by a cookie it cannot verify: {names:?}");
}

/// Where each of `users` goes through each instance, if every instance sends each user to
/// the same backend: the set of backends used.
async fn agreed(instances: &[Weir], users: u32) -> Option<std::collections::BTreeSet<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..users {
        let user = format!("user-{user}");
        let mut answers = Vec::new();
        for w in instances {
            // Before its first lookup an instance has no backend (503): not agreed yet.
            let req = Request::get(format!("http://{}/", w.addr())).header("x-user", &user);
            let res = support::client().request(req.body(support::empty()).unwrap()).await.unwrap();
            if res.status() != 200 {
                return None;
            }
            answers.push(support::name_of(&support::body_text(res).await).to_owned());
        }
        if answers.iter().any(|a| *a != answers[0]) {
            return None;
        }
        seen.insert(answers[0].clone());
    }
    Some(seen)
}

/// Polls until the instances agree on every user and use exactly `want`.
async fn until_agreed(instances: &[Weir], want: &[&str]) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let mut last = None;
    for _ in 0..100 {
        last = agreed(instances, 40).await;
        if last.as_ref() == Some(&want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the instances never agreed on {want:?}: last {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_discovering_the_same_srv_records_place_keys_alike_through_a_change() {
    use crate::discover::{Dns, host, srv};
    let mut upstreams = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        upstreams.push(Upstream::start(name).await);
    }
    let port = |i: usize| upstreams[i].addr.port();
    let hosts = || ["a", "b", "c", "d", "e"].map(|n| host(n, "127.0.0.1"));
    let mut records: Vec<String> = (0..4).map(|i| srv(["a", "b", "c", "d"][i], port(i), 0, 1)).collect();
    records.extend(hosts());
    let mut dns = Dns::start(&records);
    let extra = format!(
        "discover = {{ dns = \"_http._tcp.web.internal\", resolver = \"{}\", refresh_ms = 200 }}\nbalancer = {{ plugin = \"maglev\", config = {{ key = \"header:x-user\" }} }}",
        dns.resolver()
    );
    let instances: Vec<Weir> = (0..3).map(|_| Weir::run_text(&config(&[], &extra), &[])).collect();
    until_agreed(&instances, &["a", "b", "c", "d"]).await;

    // b leaves, e joins with weight 3: all three pick the change up and agree again.
    let mut records =
        vec![srv("a", port(0), 0, 1), srv("c", port(2), 0, 1), srv("d", port(3), 0, 1), srv("e", port(4), 0, 3)];
    records.extend(hosts());
    dns.restart(&records);
    until_agreed(&instances, &["a", "c", "d", "e"]).await;
}
