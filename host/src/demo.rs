//! `weir demo`: three in-process demo backends behind the proxy, from an embedded config,
//! so a new user sees load balancing work with one command and nothing to write. Each
//! backend answers HTTP with its name and echoes WebSocket messages, prefixed with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

/// The demo's config; `{backends}` is replaced by the demo backends' addresses and
/// `{listen}` by the proxy address.
pub const CONFIG_TEMPLATE: &str = r#"
[[listener]]
name = "demo"
listen = "{listen}"
pool = "demo"
[[listener.route]]
path_prefix = "/sticky"
pool = "sticky"

[pool.demo]
backends = [{backends}]
balancer = { plugin = "round-robin" }

# The same backends, but a returning client (a WebSocket reconnect included) is pinned to
# its backend by a signed cookie.
[pool.sticky]
backends = [{backends}]
balancer = { plugin = "least-connections" }
affinity = { plugin = "cookie", config = { name = "WEIR_AFFINITY", max_age_s = 3600 } }
"#;

/// Starts a demo backend on 127.0.0.1:0 that answers every request with its name and
/// echoes WebSocket messages.
pub async fn spawn_backend(name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            // Small echoes go out at once, not after the client's delayed ACK.
            let _ = stream.set_nodelay(true);
            let name = name.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(name.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
            });
        }
    });
    Ok(addr)
}

/// One demo request: a WebSocket upgrade becomes an echo session; anything else gets
/// the backend's name.
async fn answer(name: Arc<str>, mut req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let key = req.headers().get("sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()));
    let upgrade =
        req.headers().get(http::header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let (true, Some(accept)) = (upgrade, key) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let echo_name = name.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                let reply = match msg {
                    Message::Text(t) => Message::text(format!("{echo_name}: {}", t.as_str())),
                    Message::Binary(b) => Message::Binary(b),
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
        let mut res = http::Response::new(Full::new(Bytes::new()));
        *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        if let Ok(v) = http::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(res);
    }
    let body = format!("{name}: {} {}\n", req.method(), req.uri());
    let mut res = http::Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        res.headers_mut().insert("x-backend", v);
    }
    Ok(res)
}

/// Starts three demo backends and returns the demo config text for them.
pub async fn config(listen: SocketAddr) -> std::io::Result<String> {
    let mut backends = Vec::new();
    for i in 1..=3 {
        let addr = spawn_backend(&format!("demo-{i}")).await?;
        backends.push(format!("{{ address = \"{addr}\" }}"));
    }
    Ok(CONFIG_TEMPLATE.replace("{listen}", &listen.to_string()).replace("{backends}", &backends.join(", ")))
}
