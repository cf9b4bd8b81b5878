//! splice(2) between two TCP sockets: bytes go from one socket into a kernel pipe and from
//! the pipe into the other socket without ever being copied into weir's memory. The one
//! module allowed `unsafe` (STYLE rule 10): the three libc calls below, each on file
//! descriptors this module owns or borrows for the call.
//!
//! A pipe is taken from a process-wide pool only for a burst (while the source socket has
//! bytes) and given back, empty, before waiting again, so an idle direction holds no pipe
//! and no buffer. A pipe that could not be emptied (the peer failed) is closed, never
//! pooled, so no byte of one tunnel can leak into another.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call: a pipe's default capacity.
const CHUNK: usize = 64 << 10;
/// Most idle pipes kept for reuse (two descriptors each).
const POOL_MAX: usize = 256;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A kernel pipe: its read and write ends, non-blocking.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(p);
        }
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        Ok(unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Returns an empty pipe to the pool.
    fn give(self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// One splice(2) call, non-blocking; `Ok(0)` means end of stream on `from`.
fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the caller borrows
    // them), and null offsets are what splice takes for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// What one [`burst`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Burst {
    /// `from` had nothing more for now.
    Drained,
    /// `from` ended (the caller half-closes `to` if it should).
    Ended,
    /// No pipe could be had (descriptors exhausted): nothing was moved.
    NoPipe,
}

/// Splices what `from` has ready to `to` through a pipe from the pool, calling `touch`
/// after every chunk that went out (so a burst that never ends still shows activity).
/// The pipe goes back to the pool empty; on an error it is dropped (closed) with
/// whatever it held.
///
/// The burst ends only when splice says it would block, never on a short splice: unlike
/// a short read(2), a splice that moved less than asked may have filled the pipe's
/// sixteen slots with small segments while the socket still holds data, and a socket
/// whose readiness was cleared then waits for an edge that a sender blocked by a full
/// receive window never makes (seen: a 1 GiB download from an nginx sendfile origin hung so; `host/benches/l4.sh` is what found it).
pub(crate) async fn burst(from: &TcpStream, to: &TcpStream, touch: &impl Fn()) -> io::Result<Burst> {
    let pipe = match Pipe::take() {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splice");
            return Ok(Burst::NoPipe);
        }
    };
    loop {
        match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)) {
            Ok(0) => {
                pipe.give();
                return Ok(Burst::Ended);
            }
            Ok(n) => {
                flush(&pipe, n, to).await?;
                touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give();
                return Ok(Burst::Drained);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Splices the `pending` bytes in `pipe` out to `to`, waiting for writability as needed.
async fn flush(pipe: &Pipe, mut pending: usize, to: &TcpStream) -> io::Result<()> {
    while pending > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), to.as_raw_fd(), pending)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pending -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
