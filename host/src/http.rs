//! The HTTP reverse proxy: accepts client connections ([`server`]), routes each request
//! to a pool ([`route`]), asks the pool's plugins for a backend, and streams the exchange
//! both ways ([`forward`]) over the pool's upstream protocol, HTTP/1.1 or HTTP/2, in
//! cleartext or TLS ([`upstream`]); a WebSocket upgrade becomes a tunnel ([`websocket`]).
//!
//! Per request the hot path loads the snapshot once, matches routes without allocating,
//! moves the request head into the plugin call and back, and never copies the backend
//! list. Bodies are streamed frame by frame in both directions and never buffered whole.
//! Every failure becomes a response whose one-line body says where it came from
//! ([`errors`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

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
#[allow(
    clippy::large_enum_variant,
    reason = "a backend's body is the common case; boxing it would cost an allocation per request"
)]
pub(crate) enum ProxyBody {
    /// Streamed from a backend.
    Upstream(UpstreamBody),
    /// Made by weir (errors).
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = upstream::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, upstream::Error>>> {
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

/// A client's request body on its way to a backend. A read error here (a malformed chunk,
/// a client gone before the end) is the client's fault: hyper's client sees it only as
/// its request body failing, so the body notes it in [`ClientFault`], and the failed
/// exchange is answered as the client's fault (400), not the backend's (502).
#[derive(Debug)]
pub(crate) struct ClientBody {
    inner: RequestBody,
    /// Where a read error is noted (none for a request without a body: nothing to read).
    fault: Option<Arc<ClientFault>>,
    /// Bytes taken and given back (a request sent again on a fresh connection).
    front: Option<Bytes>,
}

/// A request body as a server read it: hyper's (HTTP/2, and HTTP/1.1 requests weir's own
/// server hands to hyper), weir's own HTTP/1.1 server's, or none.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// From hyper.
    Hyper(Incoming),
    /// From weir's own HTTP/1.1 server.
    H1(server::OwnBody),
    /// No body.
    Empty,
}

/// What went wrong reading a client's request body, once it has.
#[derive(Debug, Default)]
pub(crate) struct ClientFault(OnceLock<String>);

impl ClientFault {
    /// Why the client's body could not be read, if it could not.
    pub(crate) fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// A client body read error, as the upstream client receives it.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub(crate) struct ClientBodyError(#[source] BoxError);

/// Any error, boxed.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ClientBody {
    /// Wraps a request body; read errors are noted in `fault`.
    pub(crate) fn new(inner: RequestBody, fault: Option<Arc<ClientFault>>) -> Self {
        Self { inner, fault, front: None }
    }

    /// Puts back a data frame taken from the body, to be read again first.
    pub(crate) fn give_back(&mut self, data: Bytes) {
        self.front = Some(data);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(data) = self.front.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut self.inner {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e| Box::new(e) as _))),
            RequestBody::H1(b) => Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(|e| Box::new(e) as _))),
            RequestBody::Empty => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Err(e))) => {
                if let Some(fault) = &self.fault {
                    let _ = fault.0.set(error_chain(&*e));
                }
                Poll::Ready(Some(Err(ClientBodyError(e))))
            }
            other => other.map(|f| f.map(|r| r.map_err(ClientBodyError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_none()
            && match &self.inner {
                RequestBody::Hyper(b) => b.is_end_stream(),
                RequestBody::H1(b) => b.is_end_stream(),
                RequestBody::Empty => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.inner {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        };
        if let Some(data) = &self.front {
            // Upper first: the lower bound may never pass it.
            let n = data.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(n));
            }
            hint.set_lower(hint.lower().saturating_add(n));
        }
        hint
    }
}

/// An error and its sources, `: `-separated, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace(['\r', '\n'], " ")
}
