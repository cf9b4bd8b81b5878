//! `weir demo`: three in-process demo backends behind the proxy, from an embedded config,
//! so a new user sees load balancing work with one command and nothing to write.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The demo's config; `{backends}` is replaced by the demo backends' addresses and
/// `{listen}` by the proxy address.
pub const CONFIG_TEMPLATE: &str = r#"
[[listener]]
name = "demo"
listen = "{listen}"
pool = "demo"

[pool.demo]
backends = [{backends}]
balancer = { plugin = "round-robin" }
"#;

/// Starts a demo backend on 127.0.0.1:0 that answers every request with its name.
pub async fn spawn_backend(name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("{name}: {} {}\n", req.method(), req.uri());
                    let mut res = http::Response::new(Full::new(Bytes::from(body)));
                    res.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(res)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
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
