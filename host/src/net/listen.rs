//! Binding listeners and accepting from them. The accept loop only accepts (DESIGN
//! convention 2): whatever the connection needs next happens in its own task.
//!
//! An accept error is nearly always the process or system running out of file
//! descriptors (`EMFILE`, `ENFILE`) or memory: retrying at once would spin a core while
//! nothing can change, so the loop backs off, doubling from 5 ms to 1 s, and resets the
//! delay after a success, so it recovers by itself once descriptors are free.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Shortest and longest pause after a failed accept.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Accepts connections from `listener`, backing off on errors; `name` labels the logs.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    name: String,
    delay: Duration,
}

impl Acceptor {
    /// An acceptor for a bound listener.
    pub fn new(listener: TcpListener, name: impl Into<String>) -> Self {
        Self { listener, name: name.into(), delay: BACKOFF.0 }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection (with `TCP_NODELAY` set). Never fails: errors are logged and
    /// waited out.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.delay = BACKOFF.0;
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, retry_in = ?self.delay, "accept failed");
                    tokio::time::sleep(self.delay).await;
                    self.delay = (self.delay * 2).min(BACKOFF.1);
                }
            }
        }
    }
}

/// What a server tells its connection tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep serving.
    Serve,
    /// Finish what is in flight, take nothing new, then close (graceful shutdown).
    Graceful,
    /// Close now.
    Abort,
}

/// Open connections of a server, so a shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Connections {
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

impl Connections {
    /// Counts a connection until the guard drops.
    pub fn track(self: &std::sync::Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// One open connection, counted in [`Connections`] while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(std::sync::Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
