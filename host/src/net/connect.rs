//! Connecting to a backend: a TCP connect under the pool's `connect_timeout_ms`, with
//! `TCP_NODELAY` set, and an error that says which backend and why (the health failure
//! it counts as follows from it).
//!
//! This runs once per L4 connection and per new upstream connection, so it makes as few
//! system calls as it can, as HAProxy does: the socket is made non-blocking and
//! close-on-exec in its `socket` call, `TCP_NODELAY` is set before the connect, and when
//! the non-blocking connect answers "in progress" it is asked once more at once (a
//! second `connect` answers 0 once the handshake is done, the error if it failed,
//! `EALREADY` while it is still on its way). On loopback or a near backend the handshake
//! is done by then, so the connect needs no timer, no wait for writability and no
//! `getsockopt(SO_ERROR)` (tokio's `TcpStream::connect` does all three; its timer also
//! cost an `eventfd` write waking the runtime's timer driver on most connections:
//! BENCHMARKS.md, L4). Only a connect still under way waits, for writability under the
//! timeout, and is then asked again the same way.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::core::Failure;

/// Why a TCP connect to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect did not finish in time.
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout {
        /// The backend.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The connect failed (refused, unreachable, out of descriptors).
    #[error("connect to {addr} failed: {source}")]
    Io {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl ConnectError {
    /// The health failure this is.
    pub fn failure(&self) -> Failure {
        match self {
            ConnectError::Timeout { .. } => Failure::Timeout,
            ConnectError::Io { .. } => Failure::Connect,
        }
    }
}

/// Connects to `addr` within `timeout`; the stream has `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let fail = |source| ConnectError::Io { addr, source };
    let to = SockAddr::from(addr);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))
        .map_err(fail)?;
    let _ = socket.set_tcp_nodelay(true);
    let done = match socket.connect(&to) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => check(&SockRef::from(&socket), &to).map_err(fail)?,
        Err(e) => return Err(fail(e)),
    };
    let stream = TcpStream::from_std(socket.into()).map_err(fail)?;
    if done {
        return Ok(stream);
    }
    let wait = async {
        loop {
            stream.writable().await?;
            // A wake-up that finds it still in progress clears the readiness and waits again.
            let connected = stream.try_io(Interest::WRITABLE, || match check(&SockRef::from(&stream), &to) {
                Ok(true) => Ok(()),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            });
            match connected {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(source)) => Err(fail(source)),
        Err(_) => Err(ConnectError::Timeout { addr, after: timeout }),
    }
}

/// Asks a socket whose non-blocking connect to `to` is under way how it went: `true`
/// when connected, `false` while still in progress, the connect's error if it failed.
fn check(socket: &SockRef<'_>, to: &SockAddr) -> io::Result<bool> {
    match socket.connect(to) {
        Ok(()) => Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::EISCONN) => Ok(true),
            Some(libc::EALREADY | libc::EINPROGRESS) => Ok(false),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_with_nodelay_and_reports_a_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, Duration::from_secs(5)).await.unwrap();
        assert!(stream.nodelay().unwrap());
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut stream = stream;
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(listener);
        match connect(addr, Duration::from_secs(5)).await {
            Err(ConnectError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A listener with a backlog of 0 queues one connection; while it is not accepted,
    /// the SYN of the next is dropped and its connect stays under way.
    #[tokio::test]
    async fn a_connect_still_under_way_is_waited_for_within_the_timeout() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&SockAddr::from("127.0.0.1:0".parse::<SocketAddr>().unwrap())).unwrap();
        socket.listen(0).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _queued = connect(addr, Duration::from_secs(5)).await.unwrap();
        match connect(addr, Duration::from_millis(200)).await {
            Err(ConnectError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Once the queue has room, the retransmitted SYN (about 1 s later) gets through.
        let accept = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let first = listener.accept().await.unwrap();
            let second = listener.accept().await.unwrap();
            (first, second)
        };
        let (connected, _accepted) = tokio::join!(connect(addr, Duration::from_secs(10)), accept);
        assert!(connected.unwrap().nodelay().unwrap());
    }
}
