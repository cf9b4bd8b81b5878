//! HTTP/1.1 to backends: weir's own client connection ([`Conn`]) and the idle keep-alive
//! connections of every backend ([`Idle`]), one exchange at a time on each.
//!
//! hyper's client drove each connection from a task of its own, the request going to it
//! through one channel and the response coming back through another: two task hand-offs
//! per request. Here the exchange ([`exchange`]) is driven inside the request's own task:
//! the head is written from `http::request::Parts` into one reused buffer, the response
//! head parsed with `httparse` ([`codec`]), and the response body read by the same future
//! that keeps sending the request body (full duplex). Only what weir needs is here: no
//! pipelining, no upgrades. A WebSocket upgrade hands the raw connection to hyper's
//! handshake ([`handshake`]), which keeps driving it as before.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

use super::ConnectError;
use crate::core::wake;
use crate::http::ClientBody;

pub(crate) mod codec;
mod exchange;

pub(crate) use exchange::{Body, Error, SendError, send};

/// A backend connection: plain TCP or TLS over it (an enum, no `dyn` per read).
#[derive(Debug)]
pub(crate) enum Io {
    /// Cleartext.
    Plain(TcpStream),
    /// TLS; boxed, as rustls' state is large and a connection is made far less often
    /// than it is moved.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to a backend, between exchanges: the socket and the buffers
/// every exchange on it reuses. Boxed once for the connection's life: an exchange, its
/// response body and the idle stacks move it as a pointer, not 136 bytes.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    /// Bytes read and not yet taken (empty between exchanges).
    read: BytesMut,
    /// The request head (and small body frames) being written.
    write: Vec<u8>,
    addr: SocketAddr,
    /// The response timeout's timer, one for the connection's life (made at its first
    /// wait for a response head): an exchange sets no timer of its own, it checks its
    /// deadline when this one fires and only then moves it on (see [`Conn::poll_deadline`]).
    timer: Option<Pin<Box<Sleep>>>,
    /// The current exchange's sending side.
    sending: exchange::Sending,
}

impl Conn {
    /// A connection just made (and its TLS handshake done, if any).
    pub(crate) fn new(io: Io, addr: SocketAddr) -> Box<Self> {
        Box::new(Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            addr,
            timer: None,
            sending: exchange::Sending::new(codec::ReqFraming::Length(0)),
        })
    }

    /// Ready once `deadline` has passed ([`wake::poll_deadline`] on the connection's timer).
    ///
    /// Between exchanges the timer still holds the last exchange's waker: a task that has
    /// ended since keeps its allocation until the timer fires (at most the response
    /// timeout after that exchange) or the connection's next exchange polls it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        wake::poll_deadline(timer.as_mut(), cx, deadline)
    }

    /// Whether an idle connection still looks usable: the backend has neither closed it
    /// nor sent anything unasked. Asks the socket only when tokio's cached readiness says
    /// there is something to read (a FIN, an alert, bytes); otherwise no syscall.
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        if tcp.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        // Pending: nothing after all (or a TLS record of no data, such as a session
        // ticket). Ready: closed (no bytes), unasked-for bytes, or an error: not usable.
        Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// The HTTP/1.1 handshake of hyper's client on this connection, for a request that
    /// asks for an upgrade (see [`handshake`]).
    pub(crate) async fn into_hyper(self) -> Result<SendRequest<ClientBody>, ConnectError> {
        let addr = self.addr;
        match self.io {
            Io::Plain(s) => handshake(s, addr).await,
            Io::Tls(s) => handshake(*s, addr).await,
        }
    }
}

/// An idle keep-alive connection.
#[derive(Debug)]
struct IdleConn {
    conn: Box<Conn>,
    since: Instant,
}

/// Shards of the idle stacks (a power of two).
const SHARDS: usize = 16;

/// The idle stacks by backend key, hashed by one multiplication (`core::KeyMap`): the keys
/// are weir's own (unique in the process, never a peer's input), so SipHash's defence
/// against chosen keys buys nothing here, and it cost about 140 instructions a lookup, two
/// lookups a request.
type Stacks = crate::core::KeyMap<Vec<IdleConn>>;

/// The idle keep-alive connections of every backend, by key. Sharded, each shard locked
/// for one push or pop.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    shards: [Mutex<Stacks>; SHARDS],
}

impl Idle {
    fn shard(&self, backend: u64) -> MutexGuard<'_, Stacks> {
        self.shards[backend as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection to `backend` that is younger than `idle_timeout` and that the
    /// backend has not closed, if there is one.
    pub(super) fn take(&self, backend: u64, idle_timeout: Duration) -> Option<Box<Conn>> {
        loop {
            let mut idle = self.shard(backend).get_mut(&backend)?.pop()?;
            if idle.since.elapsed() < idle_timeout && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly, if `backend` has fewer than `max`
    /// idle.
    pub(super) fn put(&self, backend: u64, conn: Box<Conn>, max: usize) {
        let mut shard = self.shard(backend);
        let stack = shard.entry(backend).or_default();
        if stack.len() < max {
            stack.push(IdleConn { conn, since: Instant::now() });
        }
    }

    /// Closes every idle connection to `backend`.
    pub(super) fn forget(&self, backend: u64) -> usize {
        self.shard(backend).remove(&backend).map_or(0, |v| v.len())
    }
}

/// hyper's HTTP/1.1 client handshake on a connected socket (plain or TLS), kept for
/// upgrades (WebSocket): the connection is driven by a task of its own, upgrades
/// included, and serves that one request.
async fn handshake<S>(io: S, addr: SocketAddr) -> Result<SendRequest<ClientBody>, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
