//! Tunnels: two connections joined so bytes flow both ways until both sides are done
//! (WebSockets after their upgrade; raw TCP later).
//!
//! An idle tunnel holds no buffer and no pipe. When both legs are plain TCP, each
//! direction waits for readability with nothing allocated, then moves one burst (until
//! the socket would block) and lets go of what it used before waiting again; so an idle
//! tunnel costs its task and two socket registrations, where
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers for the tunnel's whole life.
//! The client→backend direction uses splice(2) ([`super::splice`]: a kernel pipe from a
//! pool, per burst), so its bytes never enter weir's memory. The backend→client direction
//! is copied through a 16 KiB buffer taken per burst, because it must see the WebSocket
//! frame headers to know where a drain may put its close frame ([`super::drain`] weighs
//! this against splicing); measured, the two ways cost the same on small messages
//! (BENCHMARKS.md, `ws_echo`). End of stream on one side half-closes the other
//! (`shutdown(SHUT_WR)`), so each side can still finish; an error on either side ends
//! both. Legs that are not plain TCP (TLS, in time) use a buffered copy.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use tokio::sync::Notify;

use super::drain::{DrainOrder, FrameTracker, going_away};
use crate::config::TunnelLimits;

/// Bytes taken per burst.
const BURST: usize = 16 << 10;

/// `activity` value meaning the copy cannot report activity (the buffered fallback).
const UNTRACKED: u64 = u64::MAX;

/// Joins a client's upgraded connection (`client`) and its backend's (`backend`) until
/// both directions are finished, the tunnel has been idle (no byte either way) for
/// `limits.idle_timeout`, it reaches `limits.max_lifetime`, or a drain `order` cuts it
/// (after its close frame went out at the order's moment).
pub(crate) async fn join(
    client: Upgraded,
    backend: Upgraded,
    limits: TunnelLimits,
    order: &DrainOrder,
) -> io::Result<()> {
    let started = Instant::now();
    // Milliseconds after `started` of the last byte moved, in either direction.
    let activity = AtomicU64::new(0);
    // Set by the watchdog when this tunnel's close frame is due.
    let closing = Closing::default();
    let copy = copy(client, backend, &activity, started, &closing);
    // One timer per tunnel, for every limit: it sleeps until the earliest of "idle since
    // the last byte", "too old", "close frame due" and "drain deadline", and re-arms when
    // traffic moved the first one or a drain order arrived.
    let end_of_life = limits.max_lifetime.map(|max| started + max);
    let watchdog = async {
        let mut close_sent = false;
        loop {
            let ms = activity.load(Ordering::Relaxed);
            let idle_at = (ms != UNTRACKED).then(|| started + Duration::from_millis(ms) + limits.idle_timeout);
            let close_at = order.close_at().filter(|_| !close_sent);
            let cut_at = order.cut_at();
            let deadline = [idle_at, end_of_life, close_at, cut_at].into_iter().flatten().min();
            let now = Instant::now();
            if let Some(deadline) = deadline.filter(|d| now >= *d) {
                if close_at == Some(deadline) {
                    closing.due.store(true, Ordering::Relaxed);
                    closing.wake.notify_one();
                    close_sent = true;
                    continue;
                }
                let why = if cut_at == Some(deadline) {
                    "drain deadline"
                } else if end_of_life == Some(deadline) {
                    "max lifetime"
                } else {
                    "idle timeout"
                };
                return io::Error::new(io::ErrorKind::TimedOut, format!("tunnel {why}"));
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = order.changed.notified() => {}
            }
        }
    };
    tokio::select! {
        done = copy => done,
        e = watchdog => Err(e),
    }
}

/// Copies both ways, recording activity; `a` is the client, `b` the backend.
async fn copy(a: Upgraded, b: Upgraded, activity: &AtomicU64, started: Instant, closing: &Closing) -> io::Result<()> {
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    match (a.downcast::<TokioIo<TcpStream>>(), b.downcast::<TokioIo<TcpStream>>()) {
        (Ok(a), Ok(b)) => {
            let (a_io, b_io) = (a.io.into_inner(), b.io.into_inner());
            // Bytes each side sent right after its upgrade, already read by hyper. They
            // are slices of hyper's read buffers: drop them once written, or each would
            // keep a whole buffer alive for the life of the tunnel.
            let mut frames = FrameTracker::default();
            write_all(&b_io, &a.read_buf).await?;
            frames.advance(&b.read_buf, false);
            write_all(&a_io, &b.read_buf).await?;
            drop((a.read_buf, b.read_buf));
            let to_client = pump_frames(&b_io, &a_io, &touch, frames, closing);
            // Client→backend needs no frame boundary: splice(2), no copy through weir.
            tokio::try_join!(super::splice::pump(&a_io, &b_io, &touch), to_client).map(|_| ())
        }
        // Not two plain TCP connections (TLS, in time): a buffered copy.
        (a, b) => {
            use tokio::io::AsyncWriteExt;
            let ((mut a, a_early), (mut b, b_early)) = (stream(a), stream(b));
            b.write_all(&a_early).await?;
            a.write_all(&b_early).await?;
            // No per-burst hook in this copy: the idle timeout does not apply.
            activity.store(UNTRACKED, Ordering::Relaxed);
            tokio::io::copy_bidirectional(&mut a, &mut b).await.map(|_| ())
        }
    }
}

/// Something a tunnel leg can be copied through.
trait Leg: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Leg for T {}

/// A leg as a stream, with the bytes its peer sent that were read before the upgrade.
fn stream(leg: Result<hyper::upgrade::Parts<TokioIo<TcpStream>>, Upgraded>) -> (Box<dyn Leg>, bytes::Bytes) {
    match leg {
        Ok(parts) => (Box::new(parts.io.into_inner()), parts.read_buf),
        Err(upgraded) => (Box::new(TokioIo::new(upgraded)), bytes::Bytes::new()),
    }
}

/// Moves bytes from `from` to `to` until `from` ends; then half-closes `to`. Calls
/// `touch` after each burst.
/// Copies what `from` has ready to `to` through a 16 KiB buffer taken for this burst
/// only; returns true at the end of `from`'s stream, after half-closing `to`.
pub(super) async fn copy_burst(from: &TcpStream, to: &TcpStream) -> io::Result<bool> {
    let mut buf = Vec::with_capacity(BURST);
    loop {
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => {
                // The peer may already be gone; nothing more to do either way.
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(true);
            }
            Ok(n) => write_all(to, &buf[..n]).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// The watchdog's word to the backend→client pump that the close frame is due.
#[derive(Debug, Default)]
struct Closing {
    /// Checked between chunks, so a backend that never pauses cannot hold the close off.
    due: std::sync::atomic::AtomicBool,
    /// Wakes a pump waiting for the backend.
    wake: Notify,
}

/// [`pump`] for the backend→client direction, following its frame boundaries: once the
/// close is due, the next boundary gets a `1001` close frame, after which the backend's
/// bytes are read and dropped until it closes.
async fn pump_frames(
    from: &TcpStream,
    to: &TcpStream,
    touch: &impl Fn(),
    mut frames: FrameTracker,
    closing: &Closing,
) -> io::Result<()> {
    loop {
        let draining = closing.due.load(Ordering::Relaxed);
        if draining && frames.at_boundary() {
            write_all(to, &going_away()).await?;
            return discard(from, to).await;
        }
        tokio::select! {
            ready = from.readable() => ready?,
            () = closing.wake.notified(), if !draining => continue,
        }
        let mut buf = Vec::with_capacity(BURST);
        loop {
            let draining = closing.due.load(Ordering::Relaxed);
            if draining && frames.at_boundary() {
                break;
            }
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    // While draining, stop at the first boundary: the close goes there.
                    let used = frames.advance(&buf[..n], draining);
                    let pass = if draining && !frames.lost() { used } else { n };
                    write_all(to, &buf[..pass]).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        touch();
    }
}

/// Reads and drops what `from` still sends until it ends, then half-closes `to`.
async fn discard(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 512];
    loop {
        from.readable().await?;
        match from.try_read(&mut sink) {
            Ok(0) => {
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`, waiting for writability as needed.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
