//! Every duration and size of the config at the largest value `weir check` accepts: the
//! proxy serves, keeps connections, tunnels, drains and shuts down without an overflow
//! (each timer is an `Instant` plus the configured value).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support;

/// The config with every ranged key at its maximum, in front of `backend`.
fn maxima(backend: std::net::SocketAddr) -> String {
    format!(
        "[runtime]\nworker_threads = 1024\n\n\
         [plugins]\ncache_dir = {:?}\ncall_timeout_ms = \"10s\"\nrebuild_timeout_ms = \"60s\"\nmemory_limit_mib = 1024\n\n\
         [[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         header_read_timeout_ms = 604800000\nmax_header_bytes = 1048576\nmax_headers = 10000\n\
         tunnel_idle_timeout_ms = 604800000\ntunnel_max_lifetime_ms = 31536000000\n\n\
         [pool.p]\nbackends = [{{ address = \"{backend}\", weight = 4294967295, max_connections = 4294967295 }}]\n\
         connect_timeout_ms = 604800000\nresponse_timeout_ms = 604800000\nidle_timeout_ms = 604800000\n\
         max_idle_per_backend = 65535\ndrain_spread_ms = 604800000\ndrain_deadline_ms = 604800000\n",
        support::cache_dir().display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_maximum_serves_tunnels_drains_and_stops() {
    let a = weir::demo::spawn_backend("demo-a").await.unwrap();
    let b = weir::demo::spawn_backend("demo-b").await.unwrap();
    let text = maxima(a);
    let config = weir::config::Config::parse(&text, None).unwrap();
    assert_eq!(config.listeners[0].max_headers, 10_000);
    let server = weir::Server::start(config).await.unwrap();
    let proxy = server.addr("main").unwrap();

    // Keep-alive requests (the header-read timer is re-armed for each, the idle upstream
    // connection is kept and reused), one of them with 5,000 headers.
    let client = support::client();
    for _ in 0..2 {
        let (status, body) = support::get(&client, &format!("http://{proxy}/")).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut req = http::Request::get(format!("http://{proxy}/")).body(support::empty()).unwrap();
    for i in 0..5_000 {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(), "v".parse().unwrap());
    }
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let body = support::body_text(res).await;
    // The demo backend (hyper's defaults) allows 100 headers and answers 431 itself; weir
    // took them all and passed the request on.
    assert_eq!(status, 431, "{body}");
    assert!(!body.starts_with("weir:"), "{body}");

    // A tunnel under the longest idle timeout and lifetime.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(echo.as_str(), "demo-a: hi");

    // The backend leaves: the first (only) tunnel's close is due at once, its cut a week on.
    server
        .reload(weir::config::Config::parse(&text.replace(&a.to_string(), &b.to_string()), None).unwrap())
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    while let Some(Ok(_)) = ws.next().await {}
    // The client closes its end once the close handshake is over.
    drop(ws);

    // Shutdown gives up a week (plus a little) from now; with no connection or tunnel left
    // it returns.
    drop(client);
    let drained = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.unwrap();
    assert_eq!(drained, 0);
}
