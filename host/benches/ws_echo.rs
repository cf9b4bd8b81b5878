//! WebSocket echo round trip through weir against the same backend directly: one
//! WebSocket, messages sent at a fixed rate (default 1,000/s for 10 s) whatever the echoes
//! do (open loop, so a slow echo cannot slow the sender and hide its own latency), each
//! echo timed from its send. Reports p50, p99, p99.9 and max for both paths.
//! Run with `cargo bench --bench ws_echo` (`RATE=` messages per second, `SECS=` duration).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Sends `count` messages `every` apart on one WebSocket to `url` and returns each
/// echo's round trip, sorted.
async fn run(url: &str, count: usize, every: Duration) -> Vec<Duration> {
    // TCP_NODELAY, as any latency-minded client sets it.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let epoch = Instant::now();
    let sender = async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..count {
            tick.tick().await;
            let sent = epoch.elapsed().as_nanos() as u64;
            tx.send(Message::text(sent.to_string())).await.unwrap();
        }
        tx
    };
    let receiver = async move {
        let mut rtts = Vec::with_capacity(count);
        while rtts.len() < count {
            let text = rx.next().await.unwrap().unwrap().into_text().unwrap();
            // The demo backend echoes `NAME: TEXT`.
            let sent: u64 = text.rsplit(' ').next().unwrap().parse().unwrap();
            rtts.push(Duration::from_nanos(epoch.elapsed().as_nanos() as u64 - sent));
        }
        rtts
    };
    let (mut tx, mut rtts) = tokio::join!(sender, receiver);
    let _ = tx.close().await;
    rtts.sort();
    rtts
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(what: &str, r: &[Duration]) {
    println!(
        "{what:<8} n={} p50={:>6.1} µs  p99={:>6.1} µs  p99.9={:>7.1} µs  max={:>7.1} µs",
        r.len(),
        pct(r, 0.50).as_secs_f64() * 1e6,
        pct(r, 0.99).as_secs_f64() * 1e6,
        pct(r, 0.999).as_secs_f64() * 1e6,
        r.last().unwrap().as_secs_f64() * 1e6
    );
}

fn main() {
    let rate: u64 = std::env::var("RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let secs: u64 = std::env::var("SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let count = (rate * secs) as usize;
    let every = Duration::from_nanos(1_000_000_000 / rate);
    // The backend on a runtime of its own, so it does not share a thread with the client.
    let backend_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let backend = backend_rt.block_on(weir::demo::spawn_backend("b")).unwrap();
    let (mut child, addr, _dir) = common::spawn_weir(&format!(
        "[[listener]]\nname = \"ws\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{backend}\" }}]\nbalancer = {{ plugin = \"least-connections\" }}\n"
    ));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("{rate} messages/s for {secs} s, one WebSocket, open loop");
        let direct = format!("ws://{backend}/");
        let proxied = format!("ws://{addr}/");
        // Warm up both paths, then measure them in turn, twice, so drift shows.
        run(&direct, 1_000, every).await;
        run(&proxied, 1_000, every).await;
        for round in 1..=2 {
            report(&format!("direct{round}"), &run(&direct, count, every).await);
            report(&format!("weir{round}"), &run(&proxied, count, every).await);
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}
