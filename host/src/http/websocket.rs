//! WebSockets: after the backend's `101 Switching Protocols`, the client's and the
//! backend's upgraded connections are joined in a tunnel ([`crate::net::tunnel`]) that
//! counts as one active connection of the backend for as long as it is open. A client on
//! HTTP/2 asks with an extended CONNECT (RFC 8441), which the backend sees as an HTTP/1.1
//! upgrade; the client gets `200` and its tunnel is that one stream of its connection.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::errors::ClientIo;
use super::headers::remove_hop_by_hop;
use super::server::Held;
use super::{Context, ProxyBody};
use crate::config::TunnelLimits;
use crate::net::listen::aborted;
use crate::net::tunnel;
use crate::state::{ActiveGuard, BackendLive, StickHold};

/// Hands a `101 Switching Protocols` back to the client and spawns the tunnel. The tunnel
/// is registered with its backend (where a drain finds it), keeps its stick entry (if
/// any) from expiring, and ends when the server is dropped (`stop` says `Abort`).
pub(crate) fn upgrade(
    ctx: &Context,
    mut res: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    live: Arc<BackendLive>,
    stick: Option<StickHold>,
    limits: TunnelLimits,
    held: Held,
) -> Response<ProxyBody> {
    let Held { mut stop, slot, extended_connect, .. } = held;
    let upstream = hyper::upgrade::on(&mut res);
    let (mut parts, _) = res.into_parts();
    let entry = ctx.tunnels.register(&live);
    let active = ActiveGuard::new(live);
    tokio::spawn(async move {
        // Held while the tunnel lives: it is an active connection of its backend, keeps
        // its stick entry from expiring and its client's slot in the listener.
        let _held = (active, stick, slot);
        {
            // Pinned here and lent to the select: a future moved into `select!` by value is
            // stored twice in this task (where it was made and where it is polled), and this
            // one is most of an idle WebSocket's memory.
            let run = std::pin::pin!(async {
                let (client, upstream) = match tokio::try_join!(client, upstream) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "websocket upgrade did not complete");
                        return;
                    }
                };
                // The client's plain TCP connection under weir's wrapper, so the tunnel can
                // splice it.
                let client = match client.downcast::<TokioIo<ClientIo<TcpStream>>>() {
                    Ok(parts) => {
                        let (io, unread) = parts.io.into_inner().into_inner();
                        let early =
                            if unread.is_empty() { parts.read_buf } else { [unread, parts.read_buf].concat().into() };
                        tunnel::Leg::Tcp(io, early)
                    }
                    Err(client) => tunnel::Leg::from(client),
                };
                if let Err(e) = tunnel::join(client, tunnel::Leg::from(upstream), limits, &entry.order).await {
                    tracing::debug!(error = %e, "websocket tunnel ended with an error");
                }
            });
            tokio::select! {
                () = run => {}
                () = aborted(&mut stop) => {}
            }
        }
        drop(entry);
    });
    remove_hop_by_hop(&mut parts.headers);
    if extended_connect {
        // RFC 8441 §5: the tunnel is open once the client has a 2xx; no upgrade headers
        // (HTTP/2 has none), no accept key (the client sent no key).
        parts.status = http::StatusCode::OK;
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    Response::from_parts(parts, ProxyBody::Local(Full::new(Bytes::new())))
}
