//! WebSockets through the proxy: the upgrade is passed through and the two connections
//! are joined in a tunnel that counts as an active connection of its backend.

use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::support;

/// A WebSocket echo server on 127.0.0.1:0: every text or binary message comes back.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_text_binary_and_ping_through_the_proxy() {
    let backend = echo_server().await;
    let server =
        support::start(&support::config_text(&[backend], "balancer = { plugin = \"least-connections\" }")).await;
    let proxy = server.addr("main").unwrap();
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    assert_eq!(response.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);

    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec().into()));

    // The open tunnel is load on its backend, as least-connections and p2c see it.
    let runtime = server.shared().runtime.load();
    let live = runtime.pools["p"].view.members[0].live.clone();
    assert_eq!(live.active.load(Ordering::Relaxed), 1);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    for _ in 0..200 {
        if live.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the closed tunnel still counts as active");
}

#[tokio::test]
async fn demo_backends_echo_websockets_through_the_proxy() {
    let backend = weir::demo::spawn_backend("demo-x").await.unwrap();
    let server = support::start(&support::config_text(&[backend], "")).await;
    let proxy = server.addr("main").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat")).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-x: hi"));
    // Plain HTTP to the same backend still answers with its name.
    let (status, body) = support::get(&support::client(), &format!("http://{proxy}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "demo-x: GET /\n"));
}
