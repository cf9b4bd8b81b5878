//! splice(2) between two TCP sockets: bytes go from one socket into a kernel pipe and from
//! the pipe into the other socket without ever being copied into weir's memory. The one
//! module allowed `unsafe` (STYLE rule 10): the three libc calls below, each on file
//! descriptors this module owns or borrows for the call.
//!
//! A pipe is taken from a process-wide pool only for a burst (while the source socket has
//! bytes) and given back, empty, before waiting again, so an idle direction holds no pipe
//! and no buffer. A pipe that could not be emptied (the peer failed) is closed, never
//! pooled, so no byte of one tunnel can leak into another.
//!
//! Pipes are enlarged to 1 MiB ([`BIG_PIPE`], Linux's `pipe-max-size` for unprivileged
//! processes) rather than the default 64 KiB: a splice moves what the socket holds up to
//! the pipe's size, so a bulk transfer takes about 7.5 times fewer splices (measured:
//! 1,198 instead of 9,012 for 256 MiB from a sendfile origin) and about a fifth less CPU
//! per GiB (BENCHMARKS.md, L4). A pipe's pages are only held while bytes sit in it, but a
//! busy connection whose destination is slower than its source can then hold up to 1 MiB
//! in flight per direction instead of 64 KiB (bytes moved out of the source's receive
//! queue, which then accepts more). Linux charges a pipe's size (not its contents) to its
//! user, and past `pipe-user-pages-soft` (64 MiB by default) gives an unprivileged user's
//! new pipes 8 KiB; so at most [`BIG_PIPES`] pipes are enlarged at a time (32 MiB), and
//! the others, or all when the kernel refuses, keep the default size.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The size pipes are enlarged to.
const BIG_PIPE: usize = 1 << 20;
/// A pipe's size when it could not be asked (Linux's default).
const DEFAULT_PIPE: usize = 64 << 10;
/// Most pipes enlarged to [`BIG_PIPE`] at once, pooled or in use (a quarter of Linux's
/// default `pipe-user-pages-soft`).
const BIG_PIPES: usize = 32;
/// Most idle pipes kept for reuse (two descriptors each).
const POOL_MAX: usize = 256;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
/// Pipes of [`BIG_PIPE`] open now.
static BIG: AtomicUsize = AtomicUsize::new(0);

/// A kernel pipe: its read and write ends, non-blocking, its size in bytes, and whether
/// it is one of the [`BIG_PIPES`].
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    big: bool,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.big {
            BIG.fetch_sub(1, Ordering::Relaxed);
        }
    }
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
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (size, big) = enlarge(&write);
        Ok(Pipe { read, write, size, big })
    }

    /// Returns an empty pipe to the pool.
    fn give(self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

/// Enlarges a new pipe to [`BIG_PIPE`] while fewer than [`BIG_PIPES`] are; returns its
/// size (the kernel's own when it refuses) and whether it counts as one of them.
fn enlarge(pipe: &OwnedFd) -> (usize, bool) {
    let fd = pipe.as_raw_fd();
    if BIG.fetch_add(1, Ordering::Relaxed) < BIG_PIPES {
        // SAFETY: `fd` is an open pipe this module owns; F_SETPIPE_SZ takes an int.
        let set = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, BIG_PIPE as libc::c_int) };
        if set > 0 {
            return (set as usize, true);
        }
    }
    BIG.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: as above; F_GETPIPE_SZ takes no argument.
    match unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) } {
        n if n > 0 => (n as usize, false),
        _ => (DEFAULT_PIPE, false),
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
    /// `from` had nothing more for now; this many bytes were moved.
    Drained(usize),
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
    let mut moved = 0;
    loop {
        match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)) {
            Ok(0) => {
                pipe.give();
                return Ok(Burst::Ended);
            }
            Ok(n) => {
                flush(&pipe, n, to).await?;
                moved += n;
                touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give();
                return Ok(Burst::Drained(moved));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pipe_is_as_large_as_the_kernel_says() {
        let pipe = Pipe::take().unwrap();
        // SAFETY: the pipe is open for the call.
        let actual = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(pipe.size, actual as usize);
        assert!(pipe.size >= 4096, "{}", pipe.size);
        // Enlarged whenever the cap allows it (the kernel refuses only past its limits).
        if pipe.big {
            assert_eq!(pipe.size, BIG_PIPE);
        }
    }
}
