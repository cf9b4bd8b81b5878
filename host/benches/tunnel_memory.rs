//! Proxy memory per idle WebSocket tunnel: opens N tunnels (default 5,000) through a real
//! `weir` process to a demo backend in this process, and reports how much the proxy's
//! resident memory grew per tunnel (both legs: the client's connection and the backend's).
//! Run with `cargo bench --bench tunnel_memory` (`N=1000` for fewer tunnels).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rss_kib;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let backend = weir::demo::spawn_backend("m").await.unwrap();
        let (mut child, addr, _dir) = common::spawn_weir(&format!(
            "[[listener]]\nname = \"ws\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\n[pool.p]\nbackends = [{{ address = \"{backend}\" }}]\nbalancer = {{ plugin = \"least-connections\" }}\n"
        ));
        let pid = child.id();
        let url = format!("ws://{addr}/");

        // Warm up: the plugin instance, allocator arenas, the accept path.
        for _ in 0..50 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            ws.send(Message::text("w")).await.unwrap();
            ws.next().await.unwrap().unwrap();
            ws.close(None).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let before = rss_kib(pid);

        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            ws.send(Message::text("x")).await.unwrap();
            ws.next().await.unwrap().unwrap();
            open.push(ws);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!("{n} idle WebSocket tunnels: proxy RSS {before} KiB -> {after} KiB, {per:.0} bytes per tunnel");

        // Every tunnel still works.
        for ws in open.iter_mut().take(10) {
            ws.send(Message::text("y")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("m: y"));
        }
        let _ = child.kill();
        let _ = child.wait();
    });
}
