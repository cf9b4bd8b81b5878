//! Moving a tunnel's bytes one direction at a time, holding nothing while idle: each
//! direction waits for readability with nothing allocated, moves one burst (until the
//! source would block) and lets go of what it used before waiting again. Every chunk that
//! goes out calls `touch`, so a burst that never ends (a backend that always has bytes for
//! a client that reads slower) still counts as activity for the idle timeout.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::TcpStream;

use super::Closing;
use super::drain::{FrameTracker, going_away};
use crate::net::splice::{self, Burst};

/// Bytes taken per copied burst.
const BURST: usize = 16 << 10;

/// Moves bytes from `from` to `to` with splice(2) until `from` ends; then half-closes
/// `to`, unless this is the second of the directions counted in `ended` to finish (both
/// sockets are about to close, which says as much). When no pipe can be had
/// (descriptors exhausted) a burst is copied instead.
pub(super) async fn splice_until_end(
    from: &TcpStream,
    to: &TcpStream,
    touch: &impl Fn(),
    ended: &AtomicU8,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let done = match splice::burst(from, to, touch).await? {
            Burst::Ended => true,
            Burst::Drained => false,
            Burst::NoPipe => copy_burst(from, to, touch).await?,
        };
        if done {
            if ended.fetch_add(1, Ordering::Relaxed) == 0 {
                // The peer may already be gone; nothing more to do either way.
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
            }
            return Ok(());
        }
    }
}

/// Copies what `from` has ready to `to` through a 16 KiB buffer taken for this burst
/// only; returns true at the end of `from`'s stream.
async fn copy_burst(from: &TcpStream, to: &TcpStream, touch: &impl Fn()) -> io::Result<bool> {
    let mut buf = Vec::with_capacity(BURST);
    loop {
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => write_all(to, &buf[..n], touch).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// The backend→client direction, following its frame boundaries: once the close is due
/// (`closing`), the next boundary gets a `1001` close frame, after which the backend's
/// bytes are read and dropped until it closes.
pub(super) async fn frames_until_end(
    from: &TcpStream,
    to: &TcpStream,
    touch: &impl Fn(),
    mut frames: FrameTracker,
    closing: &Closing,
) -> io::Result<()> {
    loop {
        let draining = closing.due.load(Ordering::Relaxed);
        if draining && frames.at_boundary() {
            write_all(to, &going_away(), touch).await?;
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
                    write_all(to, &buf[..pass], touch).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
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

/// Writes all of `data`, waiting for writability as needed; every write that moved bytes
/// calls `touch`.
pub(super) async fn write_all(to: &TcpStream, mut data: &[u8], touch: &impl Fn()) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => {
                data = &data[n..];
                touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `from` to `to`, any streams (a client leg that is not plain TCP: an HTTP/2
/// stream, TLS) through one 16 KiB buffer, until `from` ends; then shuts `to` down for
/// writing. Every chunk written calls `touch`.
pub(super) async fn copy_until_end<R, W>(from: &mut R, to: &mut W, touch: &impl Fn()) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; BURST];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // The peer may already be gone; nothing more to do either way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        touch();
    }
}

/// [`frames_until_end`] for a backend's TCP connection and a client leg that is any
/// stream: the same boundaries, the same `1001` close frame when `closing` says it is due,
/// through one 16 KiB buffer.
pub(super) async fn frames_to_stream<W>(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut W,
    touch: &impl Fn(),
    mut frames: FrameTracker,
    closing: &Closing,
) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; BURST];
    loop {
        let draining = closing.due.load(Ordering::Relaxed);
        if draining && frames.at_boundary() {
            to.write_all(&going_away()).await?;
            to.flush().await?;
            touch();
            // Read and drop what the backend still sends until it closes.
            loop {
                if from.read(&mut buf).await? == 0 {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
            }
        }
        // Reading a TCP stream is cancel-safe: a wake-up loses no byte.
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            () = closing.wake.notified(), if !draining => continue,
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // While draining, stop at the first boundary: the close goes there.
        let used = frames.advance(&buf[..n], draining);
        let pass = if draining && !frames.lost() { used } else { n };
        to.write_all(&buf[..pass]).await?;
        to.flush().await?;
        touch();
    }
}
