//! Tunnels: two connections joined so bytes flow both ways until both sides are done
//! (WebSockets after their upgrade; raw TCP later).
//!
//! An idle tunnel holds no buffer. When both legs are plain TCP, each direction waits for
//! readability with nothing allocated, then takes a 16 KiB buffer for one burst (reads
//! until the socket would block, writing each chunk through) and frees it before waiting
//! again; so an idle tunnel costs its task and two socket registrations, where
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers for the tunnel's whole life.
//! The trade-off against splice(2): splice would also save the copy through user space
//! on busy tunnels, but needs `unsafe` and a pool of kernel pipes; with frames mostly small
//! and tunnels mostly idle, memory is the figure that matters here. End of stream on one
//! side half-closes the other (`shutdown(SHUT_WR)`), so each side can still finish; an
//! error on either side ends both.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::TunnelLimits;

/// Bytes taken per burst.
const BURST: usize = 16 << 10;

/// `activity` value meaning the copy cannot report activity (the buffered fallback).
const UNTRACKED: u64 = u64::MAX;

/// Joins two upgraded connections until both directions are finished, the tunnel has
/// been idle (no byte either way) for `limits.idle_timeout`, or it reaches
/// `limits.max_lifetime`.
pub(crate) async fn join(a: Upgraded, b: Upgraded, limits: TunnelLimits) -> io::Result<()> {
    let started = Instant::now();
    // Milliseconds after `started` of the last byte moved, in either direction.
    let activity = AtomicU64::new(0);
    let copy = copy(a, b, &activity, started);
    // One timer per tunnel, for both limits: it sleeps until the earlier of "idle since
    // the last byte" and "too old", and re-arms when traffic moved the first one.
    let end_of_life = limits.max_lifetime.map(|max| started + max);
    let watchdog = async {
        loop {
            let ms = activity.load(Ordering::Relaxed);
            let idle_at = (ms != UNTRACKED).then(|| started + Duration::from_millis(ms) + limits.idle_timeout);
            let deadline = match (idle_at, end_of_life) {
                (Some(i), Some(e)) => i.min(e),
                (Some(d), None) | (None, Some(d)) => d,
                (None, None) => return std::future::pending().await,
            };
            if Instant::now() >= deadline {
                let why = if end_of_life.is_some_and(|e| deadline >= e) { "max lifetime" } else { "idle timeout" };
                return io::Error::new(io::ErrorKind::TimedOut, format!("tunnel {why}"));
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        done = copy => done,
        e = watchdog => Err(e),
    }
}

/// Copies both ways, recording activity.
async fn copy(a: Upgraded, b: Upgraded, activity: &AtomicU64, started: Instant) -> io::Result<()> {
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    match (a.downcast::<TokioIo<TcpStream>>(), b.downcast::<TokioIo<TcpStream>>()) {
        (Ok(a), Ok(b)) => {
            let (a_io, b_io) = (a.io.into_inner(), b.io.into_inner());
            // Bytes each side sent right after its upgrade, already read by hyper. They
            // are slices of hyper's read buffers: drop them once written, or each would
            // keep a whole buffer alive for the life of the tunnel.
            write_all(&b_io, &a.read_buf).await?;
            write_all(&a_io, &b.read_buf).await?;
            drop((a.read_buf, b.read_buf));
            tokio::try_join!(pump(&a_io, &b_io, &touch), pump(&b_io, &a_io, &touch)).map(|_| ())
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
async fn pump(from: &TcpStream, to: &TcpStream, touch: &impl Fn()) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(BURST);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    // The peer may already be gone; nothing more to do either way.
                    let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => write_all(to, &buf[..n]).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        touch();
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
