//! Waiting for the first bytes of a connection without consuming them: [`peek_until`]
//! peeks (`MSG_PEEK`) what the client has sent so far and hands it to a parser until the
//! parser has what it needs ([`Peeked::Done`]), finds it wrong ([`Peeked::Invalid`]), or
//! the size limit, the timeout or the client's end of stream comes first ([`PeekError`]).
//! The SNI of a TLS ClientHello ([`super::sni`]) and a PROXY protocol header
//! ([`super::proxy_protocol`]) are read this way, in the connection's task (DESIGN
//! convention 2), so the bytes stay in the socket for whoever reads it next.
//!
//! Waiting for *more* bytes must not spin: tokio keeps a socket readable after a peek,
//! since a peek consumes nothing. Once a peek shows nothing new, the loop clears the
//! readiness and waits for the next (edge-triggered) event. It peeks inside
//! [`TcpStream::try_io`], so the readiness is cleared only if no event arrived since it
//! was observed, and bytes landing between the peek and the wait are never missed. That
//! needs a non-blocking peek tokio does not offer on a borrowed stream, so the second and
//! later peeks go through a duplicate of the descriptor (`dup(2)`, made only when the
//! first peek was not enough; no `unsafe`).

#[cfg(test)]
pub(crate) mod tests;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::core::Origin;

/// What a parser makes of the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked<T> {
    /// Complete: the parsed value.
    Done(T),
    /// A valid beginning; more bytes are needed to decide.
    NeedMore,
    /// Not what was expected, whatever follows; says why.
    Invalid(&'static str),
}

impl<T> Peeked<T> {
    /// Applies `f` to a [`Peeked::Done`] value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Peeked<U> {
        match self {
            Peeked::Done(t) => Peeked::Done(f(t)),
            Peeked::NeedMore => Peeked::NeedMore,
            Peeked::Invalid(reason) => Peeked::Invalid(reason),
        }
    }
}

/// Why [`peek_until`] has no value. Every case is the client's doing ([`PeekError::origin`]).
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The client did not send enough in time.
    #[error("the client sent {received} bytes in {after:?}, not a complete header")]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Bytes received by then.
        received: usize,
    },
    /// The client closed its side (or the connection) before the header was complete.
    #[error("the client closed the connection after {received} bytes, before a complete header")]
    Closed {
        /// Bytes received before the end of stream.
        received: usize,
    },
    /// The first `max` bytes are a valid beginning that does not end.
    #[error("the client's header is longer than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The bytes are not what was expected.
    #[error("the client sent an invalid header ({received} bytes): {reason}")]
    Invalid {
        /// What is wrong.
        reason: &'static str,
        /// Bytes received when that was found.
        received: usize,
    },
    /// Reading from the socket failed (a reset, most often).
    #[error("reading from the client failed: {source}")]
    Io {
        /// Why.
        #[from]
        source: io::Error,
    },
}

impl PeekError {
    /// Whose fault it is: always the client's.
    pub fn origin(&self) -> Origin {
        Origin::Client
    }
}

/// Peeks at most `max` bytes of `stream` and calls `parse` on everything received so far,
/// each time more has arrived, until it returns [`Peeked::Done`] (whose value is returned)
/// or [`Peeked::Invalid`]. Nothing is consumed: the bytes remain readable from `stream`.
///
/// Fails with [`PeekError::TooLarge`] when `max` bytes are still [`Peeked::NeedMore`],
/// [`PeekError::Closed`] when the client ends its stream first, and
/// [`PeekError::Timeout`] when `timeout` (for the whole wait) passes first. `parse` sees a
/// longer buffer on every call after the first, and is never called with an empty one.
pub async fn peek_until<T>(
    stream: &TcpStream,
    max: usize,
    timeout: Duration,
    mut parse: impl FnMut(&[u8]) -> Peeked<T>,
) -> Result<T, PeekError> {
    let mut received = 0;
    let waited = tokio::time::timeout(timeout, async {
        let mut buf = vec![0; max];
        let mut dup: Option<std::net::TcpStream> = None;
        loop {
            let n = match &dup {
                // First look: what an accepted socket usually already holds.
                None => stream.peek(&mut buf).await?,
                Some(dup) => {
                    let ready = stream.ready(Interest::READABLE).await?;
                    let seen = received;
                    let peeked = stream.try_io(Interest::READABLE, || {
                        let n = dup.peek(&mut buf)?;
                        // Nothing new and no end of stream yet: a spurious wake-up.
                        if n == seen && n > 0 && !ready.is_read_closed() {
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(n)
                    });
                    match peeked {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            // `n == received` with data: the stream ended after it (checked above).
            if n == 0 || n == received {
                return Err(PeekError::Closed { received });
            }
            received = n;
            match parse(&buf[..n]) {
                Peeked::Done(t) => return Ok(t),
                Peeked::Invalid(reason) => return Err(PeekError::Invalid { reason, received }),
                Peeked::NeedMore if n >= max => return Err(PeekError::TooLarge { max }),
                Peeked::NeedMore => {}
            }
            if dup.is_none() {
                dup = Some(std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?));
            }
        }
    })
    .await;
    waited.unwrap_or(Err(PeekError::Timeout { after: timeout, received }))
}
