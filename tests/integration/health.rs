//! Health checks through a real weir: timed probes against real backends, passive
//! observations of live traffic, evaluators (pack plugins and test fixtures), and what
//! their verdicts do to placement (eligibility, panic mode, slow start, drains, reloads).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir::core::Verdict;
use weir::demo::Backend;

use crate::support;

/// Config for one pool `p` over `addrs`, with `extra` in its table; health plugins get a
/// 200 ms deadline (a looping one costs that much CPU per call).
fn config(addrs: &[SocketAddr], extra: &str) -> String {
    support::config_text(addrs, extra).replace("call_timeout_ms = 50", "call_timeout_ms = 50\nrebuild_timeout_ms = 200")
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await.unwrap());
    }
    v
}

fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

fn verdict(server: &weir::Server, i: usize) -> Verdict {
    server.snapshot().pools["p"].view.members[i].live.verdict()
}

/// Sends `n` requests through the proxy; counts answers by backend name (or status).
async fn spread(server: &weir::Server, n: usize) -> HashMap<String, usize> {
    let url = format!("http://{}/", server.addr("main").unwrap());
    let client = support::client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = support::get(&client, &url).await;
        let key = if status.is_success() { support::name_of(&body).to_owned() } else { format!("status {status}") };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Polls `f` every 10 ms for up to `secs` seconds.
async fn within(secs: u64, what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within {secs} s: {what}");
}

const TEAPOT_PROBE: &str =
    r#"probe = { kind = "http", path = "/healthz", interval_ms = 50, timeout_ms = 40, expect_status = "100-599" }"#;

fn teapot() -> String {
    format!("health = [{{ plugin = {:?} }}]\n{TEAPOT_PROBE}", support::fixture("teapot").display().to_string())
}

/// A health plugin written by a user (a test fixture) decides: its rule (a probe answering
/// 418 is unhealthy at once) is none of the pack's, and the host's probe itself passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_written_health_plugin_decides() {
    let b = backends(3).await;
    let server = support::start(&config(&addrs(&b), &teapot())).await;
    b[0].set_health(418);
    within(5, "b0 judged unhealthy", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let status = server.snapshot().pools["p"].view.members[0].live.health_status();
    assert!(status.reason.contains("418"), "{status:?}");
    let seen = spread(&server, 30).await;
    assert_eq!(seen.get("b0"), None, "{seen:?}");
    assert_eq!(seen.get("b1").copied().unwrap_or(0) + seen.get("b2").copied().unwrap_or(0), 30, "{seen:?}");

    b[0].set_health(200);
    within(5, "b0 healthy again", || verdict(&server, 0) == Verdict::Healthy).await;
    let seen = spread(&server, 30).await;
    assert_eq!(seen.get("b0"), Some(&10), "{seen:?}");
}

/// Probe results that arrive together reach a plugin that exports `health-batch` (the
/// pack's `threshold`) in one `observe-batch` call, and every result still reaches a
/// plugin without it (the `teapot` fixture, world `health-plugin`) through `observe`: both
/// watch the same 200 backends, probed in slots of 10 ms (about 10 a slot); threshold's
/// verdicts, made on batches, still act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_arrive_together_are_evaluated_in_one_call_by_a_batch_plugin() {
    let b = backends(200).await;
    let extra = format!(
        "health = [{{ plugin = \"threshold\" }}, {{ plugin = {:?} }}]\n\
         probe = {{ kind = \"http\", path = \"/healthz\", interval_ms = 200, timeout_ms = 100, expect_status = \"200-399\" }}",
        support::fixture("teapot").display().to_string()
    );
    let server = support::start(&config(&addrs(&b), &extra)).await;
    let plugins = server.control().health_plugins("p");
    let (threshold, teapot) = (&plugins[0], &plugins[1]);
    assert!(threshold.batches() && !teapot.batches());
    // 1,000 results (a second of probes): one `observe` call each for teapot. Both get the
    // same other calls (`configure`, `pool-changed`, `tick`), so without batches the two
    // counts would be equal.
    within(10, "1,000 probe results evaluated", || teapot.stats.calls.get() >= 1000).await;
    let (batched, single) = (threshold.stats.calls.get(), teapot.stats.calls.get());
    assert!(batched * 3 < single * 2, "threshold {batched} calls, teapot {single}");
    assert_eq!(verdict(&server, 7), Verdict::Healthy);

    // threshold decides on its batches: 503 is a failure to it (teapot calls it healthy).
    b[7].set_health(503);
    within(5, "b7 judged unhealthy", || verdict(&server, 7) == Verdict::Unhealthy).await;
    let reason = server.snapshot().pools["p"].view.members[7].live.health_status().reason;
    assert!(reason.contains("3 consecutive probe failures (last: status 503)"), "{reason}");
    b[7].set_health(200);
    within(5, "b7 healthy again", || verdict(&server, 7) == Verdict::Healthy).await;
}

/// A health plugin that traps, or one that loops, never leaves the pool unwatched: the
/// built-in rule (fall 3, rise 2 over the probes) stands in for it, and its failures are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_health_plugin_leaves_the_built_in_rule() {
    for mode in ["trap", "spin"] {
        let mut b = backends(2).await;
        let extra = format!(
            "health = [{{ plugin = {:?}, config = {{ mode = \"{mode}\" }} }}]\nprobe = {{ kind = \"tcp\", interval_ms = 50, timeout_ms = 40 }}",
            support::fixture("health-broken").display().to_string()
        );
        let server = support::start(&config(&addrs(&b), &extra)).await;
        let addr0 = b[0].addr;
        b.remove(0).stop();
        within(5, &format!("{mode}: stopped b0 judged unhealthy"), || verdict(&server, 0) == Verdict::Unhealthy).await;
        let seen = spread(&server, 10).await;
        assert_eq!(seen.get("b1"), Some(&10), "{mode}: {seen:?}");

        let _b0 = Backend::start_on("b0", addr0).await.unwrap();
        within(5, &format!("{mode}: restarted b0 healthy"), || verdict(&server, 0) == Verdict::Healthy).await;
        let plugin = &server.control().health_plugins("p")[0];
        let failures = match mode {
            "trap" => plugin.stats.traps.load(Ordering::Relaxed),
            _ => plugin.stats.timeouts.load(Ordering::Relaxed),
        };
        assert!(failures >= 1, "{mode}: {failures} failures counted");
        // Served all along.
        let seen = spread(&server, 10).await;
        assert_eq!(seen.values().sum::<usize>(), 10, "{mode}: {seen:?}");
        assert!(seen.keys().all(|k| k.starts_with('b')), "{mode}: {seen:?}");
    }
}

/// Below `panic_threshold_percent` of usable backends every backend takes work again;
/// with the threshold at 0, a pool with none usable answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_spreads_over_every_backend() {
    let b = backends(4).await;
    let server = support::start(&config(&addrs(&b), &teapot())).await;
    b[0].set_health(418);
    within(5, "b0 out", || verdict(&server, 0) == Verdict::Unhealthy).await;
    assert!(!server.snapshot().pools["p"].view.panic);
    assert_eq!(server.snapshot().pools["p"].view.eligible, vec![1, 2, 3]);
    b[1].set_health(418);
    b[2].set_health(418);
    within(5, "three out", || (0..3).all(|i| verdict(&server, i) == Verdict::Unhealthy)).await;
    // 1 of 4 usable: 25 % < 50 %.
    let view = server.snapshot().pools["p"].view.clone();
    assert!(view.panic);
    assert_eq!(view.eligible, vec![0, 1, 2, 3]);
    let seen = spread(&server, 40).await;
    assert_eq!(seen.len(), 4, "{seen:?}");

    let b = backends(2).await;
    let extra = format!("{}\npanic_threshold_percent = 0", teapot());
    let server = support::start(&config(&addrs(&b), &extra)).await;
    b[0].set_health(418);
    b[1].set_health(418);
    within(5, "both out", || (0..2).all(|i| verdict(&server, i) == Verdict::Unhealthy)).await;
    assert!(!server.snapshot().pools["p"].view.panic);
    let seen = spread(&server, 5).await;
    assert_eq!(seen.get("status 503 Service Unavailable"), Some(&5), "{seen:?}");
}

/// Slow start: a recovered backend's share of new requests grows over `slow_start_ms`
/// instead of jumping to its full share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_recovered_backend() {
    let b = backends(2).await;
    let extra = format!("{}\nslow_start_ms = 3000", teapot());
    let server = support::start(&config(&addrs(&b), &extra)).await;
    b[0].set_health(418);
    within(5, "b0 out", || verdict(&server, 0) == Verdict::Unhealthy).await;
    b[0].set_health(200);
    within(5, "b0 back", || verdict(&server, 0) == Verdict::Healthy).await;
    let back = Instant::now();
    // Its share of each 200-request step, until the window has passed.
    let mut shares = Vec::new();
    while back.elapsed() < Duration::from_millis(3500) {
        let seen = spread(&server, 200).await;
        shares.push((back.elapsed().as_millis(), seen.get("b0").copied().unwrap_or(0) as f64 / 200.0));
    }
    let seen = spread(&server, 200).await;
    let after = seen.get("b0").copied().unwrap_or(0) as f64 / 200.0;
    let first = shares[0].1;
    assert!(shares.len() >= 3, "{shares:?}");
    assert!(first < 0.3, "first step {first}: {shares:?}");
    assert!(after > 0.4, "after the window {after}: {shares:?}");
    // The ramp rises in steps: the mean share of each third of the window is above the
    // one before it.
    let third = shares.len() / 3;
    let mean = |s: &[(u128, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    let (a, b, c) = (mean(&shares[..third]), mean(&shares[third..2 * third]), mean(&shares[2 * third..]));
    assert!(a < b && b < c, "thirds {a:.3} {b:.3} {c:.3}: {shares:?}");
    eprintln!("slow start: share of b0 by ms since recovery {shares:?}, then {after}");
    // Once the window has passed, a new view drops the ramp: placement checks nothing.
    within(2, "the ramp dropped", || !server.snapshot().pools["p"].view.ramping()).await;
}

/// A reload that keeps a backend keeps its verdict: no flap back to healthy, not even for
/// one snapshot, and the evaluators keep their state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_health_state() {
    let b = backends(3).await;
    let text = config(&addrs(&b[..2]), &teapot());
    let server = support::start(&text).await;
    b[0].set_health(418);
    within(5, "b0 out", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let bigger = config(&addrs(&b), &teapot());
    let applied = server.reload(weir::config::Config::parse(&bigger, None).unwrap()).await.unwrap();
    assert_eq!(applied.pools, 1);
    let view = server.snapshot().pools["p"].view.clone();
    assert_eq!(view.members.len(), 3);
    assert_eq!(view.members[0].live.verdict(), Verdict::Unhealthy);
    assert_eq!(view.eligible, vec![1, 2]);
    let seen = spread(&server, 30).await;
    assert_eq!(seen.get("b0"), None, "{seen:?}");
    // Still watched after the reload: it comes back when it passes.
    b[0].set_health(200);
    within(5, "b0 back", || verdict(&server, 0) == Verdict::Healthy).await;
}

/// Passive: a backend answering 500 to every request is ejected by `outlier` after its
/// consecutive-errors threshold and returns when the ejection ends; `max_ejection_percent`
/// keeps a second failing backend in (one of three at 34 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejects_a_failing_backend_for_its_ejection_time() {
    let b = backends(3).await;
    let extra = "health = [{ plugin = \"outlier\", config = { consecutive_errors = 3, base_ejection_ms = 800, max_ejection_percent = 34 } }]\nhealth_tick_ms = 20";
    let server = support::start(&config(&addrs(&b), extra)).await;
    b[0].set_answer(500);
    b[1].set_answer(500);
    // Round robin: b0 sees its third 500 at the 7th request.
    let seen = spread(&server, 7).await;
    assert_eq!(seen.get("status 500 Internal Server Error"), Some(&5), "{seen:?}");
    within(5, "b0 ejected", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let ejected = Instant::now();
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("3 consecutive errors"), "{reason}");
    // b1 fails as much, but ejecting it too would pass 34 % of the pool.
    let seen = spread(&server, 20).await;
    assert_eq!(seen.get("b0"), None, "{seen:?}");
    assert_eq!(verdict(&server, 1), Verdict::Healthy);
    assert_eq!(seen.get("status 500 Internal Server Error"), Some(&10), "b1 still serves: {seen:?}");
    assert_eq!(seen.get("b2"), Some(&10), "{seen:?}");

    b[0].set_answer(200);
    within(5, "b0 back after its ejection", || verdict(&server, 0) == Verdict::Healthy).await;
    let after = ejected.elapsed();
    assert!(after >= Duration::from_millis(700), "back after {after:?}, ejected for 800 ms");
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("ejection ended"), "{reason}");
    // With b0 back, b1's next error may eject it: one of three is within 34 %.
    let seen = spread(&server, 30).await;
    within(5, "b1 ejected once b0 is back", || verdict(&server, 1) == Verdict::Unhealthy).await;
    assert!(seen.get("b0").is_some_and(|&n| n >= 10), "{seen:?}");
}

/// `weir demo` shows health at work, with the commands it prints: a demo backend told to
/// fail its probe leaves the rotation, and comes back when it passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_backend_leaving_and_rejoining() {
    let text = weir::demo::config("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config = weir::config::Config::parse(&text, None).unwrap();
    let first = config.pools["demo"].backends[0].address.clone();
    let server = weir::Server::start(config).await.unwrap();
    let demo_verdict = || server.snapshot().pools["demo"].view.members[0].live.verdict();
    let client = support::client();
    let (status, body) = support::get(&client, &format!("http://{first}/healthz/set?status=503")).await;
    assert!(status.is_success(), "{body}");
    within(5, "demo-1 out", || demo_verdict() == Verdict::Unhealthy).await;
    let proxy = server.addr("demo").unwrap();
    for _ in 0..6 {
        let (_, body) = support::get(&client, &format!("http://{proxy}/")).await;
        assert_ne!(support::name_of(&body), "demo-1", "{body}");
    }
    support::get(&client, &format!("http://{first}/healthz/set?status=200")).await;
    within(5, "demo-1 back", || demo_verdict() == Verdict::Healthy).await;
    assert!(server.snapshot().pools["demo"].view.eligible.contains(&0));
}

/// `on_unhealthy = "drain"`: the WebSockets of a backend that turns unhealthy get a close
/// frame `1001`; with `"keep"` (the default) they stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_backend_s_websockets_drain_or_stay() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    for policy in ["drain", "keep"] {
        let b = backends(2).await;
        let extra = format!(
            "{}\nbalancer = {{ plugin = \"first\" }}\non_unhealthy = \"{policy}\"\ndrain_spread_ms = 0",
            teapot()
        );
        let server = support::start(&config(&addrs(&b), &extra)).await;
        let url = format!("ws://{}/chat", server.addr("main").unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "b0: hi", "`first` fills b0");
        b[0].set_health(418);
        within(5, "b0 out", || verdict(&server, 0) == Verdict::Unhealthy).await;
        match policy {
            "drain" => match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
                other => panic!("drain: expected a close frame, got {other:?}"),
            },
            _ => {
                ws.send(Message::text("still")).await.unwrap();
                let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
                assert_eq!(echo.as_str(), "b0: still", "keep: the tunnel stays");
            }
        }
    }
}

/// The default evaluator (`threshold`, rise 2, fall 3) over tcp probes: a stopped backend
/// gets no request once `interval × fall + timeout` (and scheduling slack) has passed, and
/// is back after it restarts and passes `rise` probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_leaves_and_a_restarted_one_returns() {
    let mut b = backends(2).await;
    let extra = "probe = { kind = \"tcp\", interval_ms = 100, timeout_ms = 50 }";
    let server = support::start(&config(&addrs(&b), extra)).await;
    assert_eq!(server.snapshot().pools["p"].config.health.plugins[0].source.to_string(), "threshold");
    let addr0 = b[0].addr;
    b.remove(0).stop();
    let stopped = Instant::now();
    within(5, "b0 judged unhealthy", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let took = stopped.elapsed();
    // 3 probes 100 ms (±10 %) apart, the first up to one interval after the stop.
    assert!(took < Duration::from_millis(100 * 4 + 50 + 1000), "took {took:?}");
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("3 consecutive probe failures") && reason.contains("connect"), "{reason}");
    let requests = || server.snapshot().pools["p"].view.members[0].live.requests.load(Ordering::Relaxed);
    let before = requests();
    let seen = spread(&server, 20).await;
    assert_eq!(seen.get("b1"), Some(&20), "{seen:?}");
    assert_eq!(requests(), before, "no request went to the stopped backend");

    let _b0 = Backend::start_on("b0", addr0).await.unwrap();
    let restarted = Instant::now();
    within(5, "b0 healthy again", || verdict(&server, 0) == Verdict::Healthy).await;
    assert!(restarted.elapsed() < Duration::from_millis(100 * 3 + 1000), "took {:?}", restarted.elapsed());
    let seen = spread(&server, 20).await;
    assert_eq!(seen.get("b0"), Some(&10), "{seen:?}");
}

/// An http probe judges the answer, not the socket: a wrong status, or a body without the
/// expected text, takes a backend down while it still accepts TCP (and serves traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_probe_with_the_wrong_status_or_body_takes_a_backend_down() {
    let b = backends(2).await;
    let extra =
        "probe = { kind = \"http\", path = \"/healthz\", interval_ms = 50, timeout_ms = 40, expect_body = \"ok\" }";
    let server = support::start(&config(&addrs(&b), extra)).await;
    b[0].set_health(503);
    within(5, "b0 down on 503", || verdict(&server, 0) == Verdict::Unhealthy).await;
    let reason = server.snapshot().pools["p"].view.members[0].live.health_status().reason;
    assert!(reason.contains("status 503"), "{reason}");
    assert!(tokio::net::TcpStream::connect(b[0].addr).await.is_ok(), "b0 still accepts TCP");
    b[0].set_health(200);
    within(5, "b0 back", || verdict(&server, 0) == Verdict::Healthy).await;

    // 204 is in the default 200-399, but its body is empty: no `ok`.
    b[1].set_health(204);
    within(5, "b1 down without the body", || verdict(&server, 1) == Verdict::Unhealthy).await;
    let reason = server.snapshot().pools["p"].view.members[1].live.health_status().reason;
    assert!(reason.contains("body"), "{reason}");
    let seen = spread(&server, 10).await;
    assert_eq!(seen.get("b0"), Some(&10), "{seen:?}");
}

/// A websocket probe completes an upgrade and a ping/pong: a WebSocket backend passes it,
/// a plain HTTP server (404 to the upgrade) fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_probe_tells_a_websocket_backend_from_a_plain_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = Backend::start("ws").await.unwrap();
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = plain.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    let extra = "probe = { kind = \"websocket\", path = \"/chat\", interval_ms = 50, timeout_ms = 40 }";
    let server = support::start(&config(&[ws.addr, plain_addr], extra)).await;
    within(5, "the plain backend down", || verdict(&server, 1) == Verdict::Unhealthy).await;
    let reason = server.snapshot().pools["p"].view.members[1].live.health_status().reason;
    assert!(reason.contains("404"), "{reason}");
    // Meanwhile the WebSocket backend passes every probe it is sent (three failures in a
    // row would take it out): wait for a dozen probes in all, then look.
    let plugin = server.control().health_plugins("p")[0].clone();
    within(5, "a dozen probes evaluated", || plugin.stats.calls.get() >= 12).await;
    assert_eq!(verdict(&server, 0), Verdict::Healthy);
}

/// A reload that adds a backend has it probed at once (a dead one leaves), and one that
/// removes the pool's health checks forgets their verdicts: nothing would revise them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_probe_new_backends_and_removing_health_forgets_verdicts() {
    let b = backends(2).await;
    let dead = support::dead_addr().await;
    let probe = "probe = { kind = \"tcp\", interval_ms = 50, timeout_ms = 40 }";
    let server = support::start(&config(&addrs(&b), probe)).await;
    let reload = |text: String| {
        let server = &server;
        async move { server.reload(weir::config::Config::parse(&text, None).unwrap()).await.unwrap() }
    };
    reload(config(&[b[0].addr, b[1].addr, dead], probe)).await;
    within(5, "the dead newcomer judged unhealthy", || verdict(&server, 2) == Verdict::Unhealthy).await;
    assert_eq!(server.snapshot().pools["p"].view.eligible, vec![0, 1]);

    reload(config(&[b[0].addr, b[1].addr, dead], "")).await;
    let view = server.snapshot().pools["p"].view.clone();
    assert_eq!(view.members[2].live.verdict(), Verdict::Healthy, "no health checks, no verdict");
    assert_eq!(view.eligible, vec![0, 1, 2]);
    assert!(server.control().health_plugins("p").is_empty());
}
