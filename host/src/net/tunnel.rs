//! Tunnels: two connections joined so bytes flow both ways until both sides are done
//! (WebSockets after their upgrade; the connections of tcp and tls-passthrough
//! listeners, where both directions are spliced).
//!
//! An idle tunnel holds no buffer and no pipe. When both legs are plain TCP, each
//! direction waits for readability with nothing allocated, then moves one burst (until
//! the socket would block) and lets go of what it used before waiting again; so an idle
//! tunnel costs its task and two socket registrations, where
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers for the tunnel's whole life.
//! The client→backend direction uses splice(2) ([`crate::net::splice`]: a kernel pipe
//! from a pool, per burst), so its bytes never enter weir's memory (small bursts, below
//! 4 KiB, go by recv/send through the thread's stack: fewer system calls, see `pump`). The backend→client direction
//! is copied through a 16 KiB buffer taken per burst, because it must see the WebSocket
//! frame headers to know where a drain may put its close frame ([`drain`] weighs
//! this against splicing); measured, the two ways cost the same on small messages
//! (BENCHMARKS.md, `ws_echo`). End of stream on one side half-closes the other
//! (`shutdown(SHUT_WR)`), so each side can still finish; an error on either side ends
//! both. A client leg that is not plain TCP (a WebSocket on an HTTP/2 stream, TLS) is
//! copied through a 16 KiB buffer each way, with the same activity tracking and drain
//! close frames; two legs neither of which is plain TCP use a plain buffered copy.

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::TunnelLimits;

pub(crate) mod drain;
mod pump;

use drain::{DrainOrder, FrameTracker};
pub(crate) use drain::{Registry, TunnelEntry};

/// `activity` value meaning the copy cannot report activity (the buffered fallback).
const UNTRACKED: u64 = u64::MAX;

/// Joins a client's upgraded WebSocket connection (`client`) and its backend's
/// (`backend`) until both directions are finished, the tunnel has been idle (no byte
/// either way) for `limits.idle_timeout`, it reaches `limits.max_lifetime`, or a drain
/// order of its registration (`entry`) cuts it (after its close frame went out at the
/// order's moment; the server's abort is such an order, [`Registry::cut_all`], so the task
/// does not poll the stop signal at each wake-up). The whole of a tunnel's task: `keep` (what the tunnel
/// holds for others: its backend's active count, a stick entry, a listener slot) and
/// `entry` are let go when it ends; an error ends it and is logged.
///
/// Not an `async fn`, and everything the task needs is handed here: the arguments are
/// moved once, into the returned future, and used by reference there. An `async fn`
/// keeps its arguments for its whole life, and a future that moves what it captured
/// into another (a wrapper around this one) stores it twice: each leg was held as the
/// wrapper's capture, the copy's argument and again where the copy took it apart.
/// Measured: 4,098 -> 3,851 bytes of RSS per idle WebSocket tunnel; the task's cell
/// 2,304 -> 1,792 bytes once the wrapper was folded in here (BENCHMARKS.md).
#[allow(clippy::manual_async_fn)]
pub(crate) fn join<K: Send>(
    mut client: Leg,
    mut backend: Leg,
    limits: TunnelLimits,
    entry: TunnelEntry,
    keep: K,
) -> impl Future<Output = ()> {
    async move {
        let _keep = &keep;
        let started = Instant::now();
        // Milliseconds after `started` of the last byte moved, in either direction.
        let activity = AtomicU64::new(0);
        // Set by the watchdog when this tunnel's close frame is due.
        let closing = Closing::default();
        let copy = std::pin::pin!(copy(&mut client, &mut backend, &activity, started, &closing));
        if let Err(e) = supervise(copy, &activity, started, &limits, &entry.order, Some(&closing)).await {
            tracing::debug!(error = %e, "websocket tunnel ended with an error");
        }
    }
}

/// Joins two plain TCP connections carrying opaque bytes (a tcp or tls-passthrough
/// listener's client and its backend): both directions spliced, under the same limits as
/// [`join`], except that a drain can only cut, at its deadline (there are no frames to
/// put a goodbye between). A function of its own, not a mode of [`join`], so an idle
/// connection's task holds only what splicing needs (memory per idle connection).
pub(crate) async fn join_opaque(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    limits: TunnelLimits,
    order: &DrainOrder,
) -> io::Result<()> {
    let started = Instant::now();
    let activity = AtomicU64::new(0);
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    // Directions that reached their end: the first half-closes its destination, the
    // second needs no shutdown (both sockets close next).
    let ended = AtomicU8::new(0);
    let ((client_in, client_out), (backend_in, backend_out)) = (client.split(), backend.split());
    let copy = std::pin::pin!(async {
        tokio::try_join!(
            pump::splice_until_end(client_in, backend_out.as_ref(), &touch, &ended),
            pump::splice_until_end(backend_in, client_out.as_ref(), &touch, &ended)
        )
        .map(|_| ())
    });
    supervise(copy, &activity, started, &limits, order, None).await
}

/// Runs `copy` under one timer for every limit: it sleeps until the earliest of "idle
/// since the last byte" (`activity`, ms after `started`), "too old", "close frame due"
/// (only with `closing`: a WebSocket) and "drain deadline", and re-arms when traffic
/// moved the first one or a drain order arrived. `copy` is pinned where it was made and
/// lent: a future passed by value into an async fn is stored twice, as the argument and
/// where it is polled (measured: an opaque tunnel's task took 2,248 bytes this way, most
/// of an idle connection's memory).
async fn supervise(
    copy: std::pin::Pin<&mut impl Future<Output = io::Result<()>>>,
    activity: &AtomicU64,
    started: Instant,
    limits: &TunnelLimits,
    order: &DrainOrder,
    closing: Option<&Closing>,
) -> io::Result<()> {
    let end_of_life = limits.max_lifetime.and_then(|max| started.checked_add(max));
    let watchdog = async {
        let mut close_sent = false;
        loop {
            // Decided by a function: what it looks at is not held across the wait below
            // (a future keeps every local in scope at an await).
            let deadline = match next(activity, started, limits, end_of_life, order, closing.filter(|_| !close_sent)) {
                Next::Wait(deadline) => deadline,
                Next::Close(closing) => {
                    closing.due.store(true, Ordering::Relaxed);
                    closing.wake.notify_one();
                    close_sent = true;
                    continue;
                }
                Next::End(why) => return io::Error::new(io::ErrorKind::TimedOut, format!("tunnel {why}")),
            };
            // The sleep made inside the select, not bound to a name first: a future
            // moved into `select!` by value is stored twice.
            tokio::select! {
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = order.changed.notified() => {}
            }
        }
    };
    tokio::select! {
        done = copy => done,
        e = watchdog => Err(e),
    }
}

/// What a tunnel's watchdog does next.
enum Next<'a> {
    /// Sleep until this moment (or, `None`, until a drain order comes).
    Wait(Option<Instant>),
    /// Have the close frame sent.
    Close(&'a Closing),
    /// End the tunnel, for this reason.
    End(&'static str),
}

/// The watchdog's decision: the earliest of "idle since the last byte" (`activity`, ms
/// after `started`), "too old" (`end_of_life`), "close frame due" (only with `closing`)
/// and "drain deadline", and whether it has come.
fn next<'a>(
    activity: &AtomicU64,
    started: Instant,
    limits: &TunnelLimits,
    end_of_life: Option<Instant>,
    order: &DrainOrder,
    closing: Option<&'a Closing>,
) -> Next<'a> {
    let ms = activity.load(Ordering::Relaxed);
    let idle_at = (ms != UNTRACKED)
        .then(|| started.checked_add(Duration::from_millis(ms))?.checked_add(limits.idle_timeout))
        .flatten();
    let close_at = order.close_at().filter(|_| closing.is_some());
    let cut_at = order.cut_at();
    let deadline = [idle_at, end_of_life, close_at, cut_at].into_iter().flatten().min();
    let Some(due) = deadline.filter(|d| Instant::now() >= *d) else { return Next::Wait(deadline) };
    if let Some(closing) = closing.filter(|_| close_at == Some(due)) {
        return Next::Close(closing);
    }
    Next::End(if cut_at == Some(due) {
        "drain deadline"
    } else if end_of_life == Some(due) {
        "max lifetime"
    } else {
        "idle timeout"
    })
}

/// One side of a tunnel: a plain TCP connection (with the bytes its peer sent that were
/// read before the upgrade), or any other upgraded connection.
#[derive(Debug)]
pub(crate) enum Leg {
    /// Plain TCP: spliced and copied per burst.
    Tcp(TcpStream, bytes::Bytes),
    /// Anything else (TLS, in time): a buffered copy.
    Other(Upgraded),
}

impl From<Upgraded> for Leg {
    /// A plain TCP leg if hyper's upgraded connection is one, else as it is.
    fn from(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Leg::Tcp(parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => Leg::Other(upgraded),
        }
    }
}

/// A [`Leg`] on its way to another thread: a plain TCP connection taken out of the
/// reactor, to be registered again where its tunnel starts, so that its registration is
/// made there (see [`crate::core::memory::long_lived`]).
#[derive(Debug)]
pub(crate) enum Detached {
    /// Plain TCP, out of the reactor, with the bytes its peer sent before the upgrade.
    Tcp(std::net::TcpStream, bytes::Bytes),
    /// Anything else, as it is.
    Other(Upgraded),
}

impl Leg {
    /// Takes a plain TCP leg out of the reactor (the socket stays open and non-blocking).
    pub(crate) fn detach(self) -> io::Result<Detached> {
        Ok(match self {
            Leg::Tcp(io, early) => Detached::Tcp(io.into_std()?, early),
            Leg::Other(upgraded) => Detached::Other(upgraded),
        })
    }
}

impl Detached {
    /// Registers a plain TCP leg with the reactor of the runtime entered on this thread;
    /// fails when that runtime is shutting down.
    pub(crate) fn attach(self) -> io::Result<Leg> {
        Ok(match self {
            Detached::Tcp(io, early) => Leg::Tcp(TcpStream::from_std(io)?, early),
            Detached::Other(upgraded) => Leg::Other(upgraded),
        })
    }
}

/// Copies both ways, recording activity; `a` is the client, `b` the backend.
async fn copy(a: &mut Leg, b: &mut Leg, activity: &AtomicU64, started: Instant, closing: &Closing) -> io::Result<()> {
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    match (a, b) {
        (Leg::Tcp(a_io, a_early), Leg::Tcp(b_io, b_early)) => {
            // Bytes each side sent right after its upgrade, already read by hyper. They
            // are slices of hyper's read buffers: drop them once written, or each would
            // keep a whole buffer alive for the life of the tunnel.
            let mut frames = FrameTracker::default();
            pump::write_all(b_io, a_early, &touch).await?;
            frames.advance(b_early, false);
            pump::write_all(a_io, b_early, &touch).await?;
            (*a_early, *b_early) = (bytes::Bytes::new(), bytes::Bytes::new());
            let ((a_in, a_out), (b_in, b_out)) = (a_io.split(), b_io.split());
            // Client→backend needs no frame boundary: splice(2), no copy through weir.
            // Its own count of ended directions: the other direction half-closes itself.
            // Both made inside the join, not bound first: a future bound to a name and
            // then moved into the join is stored twice in the task.
            let ended = AtomicU8::new(0);
            tokio::try_join!(
                pump::splice_until_end(a_in, b_out.as_ref(), &touch, &ended),
                pump::frames_until_end(b_in.as_ref(), a_out.as_ref(), &touch, frames, closing)
            )
            .map(|_| ())
        }
        // A client leg that is not plain TCP (an HTTP/2 stream, TLS) before a backend that
        // is: copied through buffers, with the same activity and drain close frames.
        (Leg::Other(a), Leg::Tcp(b_io, b_early)) => {
            // Boxed, like the arm below: a future is as large as its largest state, and
            // these states (buffered halves, their copies) would otherwise be part of
            // every tunnel's task, a plain TCP one's too.
            Box::pin(async move {
                use tokio::io::AsyncWriteExt;
                let (mut a_read, mut a_write) = tokio::io::split(TokioIo::new(a));
                let mut frames = FrameTracker::default();
                frames.advance(b_early, false);
                a_write.write_all(b_early).await?;
                a_write.flush().await?;
                *b_early = bytes::Bytes::new();
                touch();
                let (mut b_read, mut b_write) = b_io.split();
                tokio::try_join!(
                    pump::copy_until_end(&mut a_read, &mut b_write, &touch),
                    pump::frames_to_stream(&mut b_read, &mut a_write, &touch, frames, closing)
                )
                .map(|_| ())
            })
            .await
        }
        // Neither leg plain TCP: a buffered copy.
        (a, b) => {
            Box::pin(async move {
                use tokio::io::AsyncWriteExt;
                let ((mut a, a_early), (mut b, b_early)) = (stream(a), stream(b));
                b.write_all(&a_early).await?;
                a.write_all(&b_early).await?;
                // No per-burst hook in this copy: the idle timeout does not apply.
                activity.store(UNTRACKED, Ordering::Relaxed);
                tokio::io::copy_bidirectional(&mut a, &mut b).await.map(|_| ())
            })
            .await
        }
    }
}

/// Something a tunnel leg can be copied through.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A leg as a stream, with the bytes its peer sent that were read before the upgrade
/// (taken from the leg).
fn stream(leg: &mut Leg) -> (Box<dyn Stream + '_>, bytes::Bytes) {
    match leg {
        Leg::Tcp(io, early) => (Box::new(io), std::mem::take(early)),
        Leg::Other(upgraded) => (Box::new(TokioIo::new(upgraded)), bytes::Bytes::new()),
    }
}

/// The watchdog's word to the backend→client pump that the close frame is due.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    /// Checked between chunks, so a backend that never pauses cannot hold the close off.
    pub(crate) due: std::sync::atomic::AtomicBool,
    /// Wakes a pump waiting for the backend.
    pub(crate) wake: Notify,
}
