//! The HTTP/1.1 reverse proxy: accepts client connections ([`server`]), routes each
//! request to a pool ([`route`]), asks the pool's plugins for a backend, and streams the
//! exchange both ways ([`forward`]); a WebSocket upgrade becomes a tunnel ([`websocket`]).
//!
//! Per request the hot path loads the snapshot once, matches routes without allocating,
//! moves the request head into the plugin call and back, and never copies the backend
//! list. Bodies are streamed frame by frame in both directions and never buffered whole.
//! Every failure becomes a response whose one-line body says where it came from
//! ([`errors`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::net::listen::Connections;
use crate::net::tunnel;
use crate::state::Snapshot;

pub(crate) mod errors;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod route;
pub(crate) mod server;
pub(crate) mod upstream;
pub(crate) mod websocket;

use upstream::{IdlePool, UpstreamBody};

/// What every connection task of every HTTP listener of one server shares.
#[derive(Debug)]
pub(crate) struct Context {
    /// The current snapshot, published by the one writer.
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// Idle upstream connections, by backend.
    pub(crate) idle: Arc<IdlePool>,
    /// Open tunnels, by backend, for drains.
    pub(crate) tunnels: Arc<tunnel::Registry>,
    /// Open client connections, for a graceful shutdown.
    pub(crate) connections: Arc<Connections>,
}

/// The body of a response weir sends to a client.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// Streamed from a backend.
    Upstream(UpstreamBody),
    /// Made by weir (errors).
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e: Infallible| match e {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}
