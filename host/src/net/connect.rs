//! Connecting to a backend: a TCP connect under the pool's `connect_timeout_ms`, with
//! `TCP_NODELAY` set, and an error that says which backend and why (the health failure
//! it counts as follows from it).

use std::net::SocketAddr;
use std::time::Duration;

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
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr, after: timeout }),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
