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
use crate::core::memory;
use crate::net::listen::{Stop, aborted};
use crate::net::tunnel;
use crate::state::{ActiveGuard, BackendLive, StickHold};

/// Hands a `101 Switching Protocols` back to the client and starts the tunnel. The tunnel
/// is an active connection of its backend from now on (and of its worker, for the
/// hand-off of new connections between workers), is counted by a drain of its
/// backend from now on too and registered with it (where the drain's order reaches it)
/// once both upgrades are done, keeps its stick entry (if any)
/// from expiring, and ends when the server aborts (`stop` says `Abort` before it is
/// registered, a cut order after).
///
/// Two tasks: a short one here waits for both upgrades, then hands the legs to the
/// thread of long-lived blocks ([`memory::long_lived`]), which registers them again,
/// registers the tunnel and spawns the tunnel's task, so that everything an idle tunnel
/// keeps is allocated there, packed, and not between the handshakes' freed buffers
/// (measured: BENCHMARKS.md, "branch ws-mem").
pub(crate) fn upgrade(
    ctx: &Context,
    mut res: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    live: Arc<BackendLive>,
    stick: Option<StickHold>,
    limits: TunnelLimits,
    held: Held,
) -> Response<ProxyBody> {
    let Held { mut stop, slot, extended_connect, worker, .. } = held;
    let upstream = hyper::upgrade::on(&mut res);
    let (mut parts, _) = res.into_parts();
    let active = ActiveGuard::new(live.clone());
    // Counted by a drain from before the client has its answer.
    let upgrading = ctx.tunnels.expect(&live);
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let legs = tokio::select! {
            legs = legs(client, upstream) => legs,
            () = aborted(&mut stop) => return,
        };
        let Some((client, backend)) = legs else { return };
        let Some((client, backend)) = both(client.detach(), backend.detach()) else { return };
        memory::long_lived(move || {
            let _runtime = runtime.enter();
            let Some((client, backend)) = both(client.attach(), backend.attach()) else { return };
            // The tunnel's own slot: the connection's is shared behind an `Arc` made
            // during the handshake.
            let slot = slot.another();
            let entry = upgrading.register();
            // Registered first: an abort sent since is seen here, one sent later reaches
            // the tunnel through its drain order.
            if *stop.borrow() == Stop::Abort {
                return;
            }
            drop(stop);
            runtime.spawn(tunnel::join(client, backend, limits, entry, (active, stick, slot, worker)));
        });
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

/// Both legs, or (logged) none when moving either failed.
fn both<A, B>(client: std::io::Result<A>, backend: std::io::Result<B>) -> Option<(A, B)> {
    match (client, backend) {
        (Ok(client), Ok(backend)) => Some((client, backend)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "websocket tunnel not started");
            None
        }
    }
}

/// Waits for both sides' upgrades; the client's plain TCP connection is taken out of
/// weir's wrapper, so the tunnel can splice it.
async fn legs(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) -> Option<(tunnel::Leg, tunnel::Leg)> {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade did not complete");
            return None;
        }
    };
    let client = match client.downcast::<TokioIo<ClientIo<TcpStream>>>() {
        Ok(parts) => {
            let (io, unread) = parts.io.into_inner().into_inner();
            let early = if unread.is_empty() { parts.read_buf } else { [unread, parts.read_buf].concat().into() };
            tunnel::Leg::Tcp(io, early)
        }
        Err(client) => tunnel::Leg::from(client),
    };
    Some((client, tunnel::Leg::from(upstream)))
}
