//! Moving a tunnel's bytes one direction at a time, holding nothing while idle: each
//! direction waits for readability with nothing allocated, moves one burst (until the
//! source would block) and lets go of what it used before waiting again. Every chunk that
//! goes out calls `touch`, so a burst that never ends (a backend that always has bytes for
//! a client that reads slower) still counts as activity for the idle timeout.
//!
//! A spliced direction moves small bursts with recv(2) and send(2) instead (HAProxy's
//! `splice-auto`): a request or response of a few hundred bytes then takes two system
//! calls, where splicing takes three (in, out, and one more in that says "would block",
//! since a short splice does not show that the socket is empty, see
//! [`crate::net::splice::burst`]; a short read does, and tokio then forgets the
//! readiness by itself). The bytes pass through a buffer on the thread's stack, never
//! through the task, so an idle direction still holds nothing. A read that fills the
//! buffer, or a burst that moved as much, makes the direction splice until a burst moves
//! less again.
//!
//! A future is as large as its largest state, and an idle tunnel's task holds its
//! directions' futures whole: so the states an idle direction is never in (a splice burst,
//! a copied burst, the rest of a small burst the peer could not take at once, the drain's
//! goodbye) are boxed when they start, and cost an allocation then rather than memory in
//! every open tunnel. The states of idle waiting, and the per-message write of the
//! frame-following direction, stay inline.

use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::Closing;
use super::drain::{FrameTracker, going_away};
use crate::net::splice::{self, Burst};

/// Bytes taken per copied burst.
const BURST: usize = 16 << 10;

/// Bytes read per small burst, on the stack: bursts below this are copied, not spliced.
const SMALL: usize = 4 << 10;

/// Moves bytes from `from` to `to` until `from` ends, small bursts by recv/send and large
/// ones by splice(2); then half-closes `to`, unless this is the second of the directions
/// counted in `ended` to finish (both sockets are about to close, which says as much).
/// When no pipe can be had (descriptors exhausted) a burst is copied instead.
pub(super) async fn splice_until_end(
    mut from: ReadHalf<'_>,
    to: &TcpStream,
    touch: &impl Fn(),
    ended: &AtomicU8,
) -> io::Result<()> {
    // The last burst was large: splice the next one.
    let mut large = false;
    loop {
        if !large {
            match small_burst(&mut from, to, touch).await? {
                Small::Ended => break,
                Small::Drained => continue,
                Small::Full => large = true,
            }
        } else {
            from.as_ref().readable().await?;
        }
        match Box::pin(splice::burst(from.as_ref(), to, touch)).await? {
            Burst::Ended => break,
            Burst::Drained(moved) => large = moved >= SMALL,
            Burst::NoPipe => {
                if Box::pin(copy_burst(from.as_ref(), to, touch)).await? {
                    break;
                }
            }
        }
    }
    if ended.fetch_add(1, Ordering::Relaxed) == 0 {
        // The peer may already be gone; nothing more to do either way.
        let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
    }
    Ok(())
}

/// What one [`small_burst`] saw.
enum Small {
    /// `from` ended.
    Ended,
    /// A short read: `from` is empty for now (and tokio knows it).
    Drained,
    /// The read filled the buffer: there is likely more.
    Full,
}

/// Waits for `from` to be readable, reads up to [`SMALL`] bytes into a buffer on the
/// stack and sends them to `to` in the same poll; only bytes `to` could not take at once
/// are copied to the heap and written when it can.
async fn small_burst(from: &mut ReadHalf<'_>, to: &TcpStream, touch: &impl Fn()) -> io::Result<Small> {
    let (seen, rest) = std::future::poll_fn(|cx| {
        let mut buf = [MaybeUninit::<u8>::uninit(); SMALL];
        let mut read = ReadBuf::uninit(&mut buf);
        match Pin::new(&mut *from).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let data = read.filled();
                if data.is_empty() {
                    return Poll::Ready(Ok((Small::Ended, None)));
                }
                let seen = if data.len() == SMALL { Small::Full } else { Small::Drained };
                let sent = match to.try_write(data) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if sent > 0 {
                    touch();
                }
                Poll::Ready(Ok((seen, (sent < data.len()).then(|| data[sent..].to_vec()))))
            }
        }
    })
    .await?;
    if let Some(rest) = rest {
        Box::pin(write_all(to, &rest, touch)).await?;
    }
    Ok(seen)
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
            return Box::pin(async move {
                write_all(to, &going_away(), touch).await?;
                discard(from, to).await
            })
            .await;
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
    loop {
        from.readable().await?;
        // Made after the wait, so it is never part of the task: a buffer held across an
        // await would be in every idle tunnel's future, since a future is as large as its
        // largest state.
        let mut sink = [0u8; 512];
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
