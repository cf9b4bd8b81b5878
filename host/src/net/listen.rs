//! Binding listeners and accepting from them. The accept loop only accepts (DESIGN
//! convention 2): whatever the connection needs next happens in its own task. With
//! several workers, a listener is one socket with an accept loop on each worker
//! ([`bind`]), and they all take from its one [`Slots`].
//!
//! A listener with `max_connections` accepts only while it has a free [`Slots`] slot:
//! while full it accepts nothing, and new clients wait in the kernel's listen queue
//! (backpressure at accept, as HAProxy's `maxconn` and nginx's `worker_connections`).
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

/// The listen queue of each socket (tokio's `TcpListener::bind` default).
const BACKLOG: i32 = 1024;

/// Binds `addr` for `count` accept loops (one per worker): one socket (nonblocking, with
/// `SO_REUSEADDR` as tokio binds them) under `count` descriptors, each to be registered
/// with its own worker's reactor. The kernel wakes the loops waiting on it and one takes
/// each connection. (One socket per worker with `SO_REUSEPORT` was measured against this
/// and dropped: more CPU per new connection, `max_connections` not exact across workers,
/// and a second process could bind the same port without an error: BENCHMARKS.md,
/// issue 16, "Worker model".)
pub(crate) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    let first: std::net::TcpListener = socket.into();
    let mut all = Vec::with_capacity(count.max(1));
    for _ in 1..count {
        all.push(first.try_clone()?);
    }
    all.insert(0, first);
    Ok(all)
}

/// Accepts connections from `listener`, backing off on errors; `name` labels the logs.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    name: String,
    delay: Duration,
    /// Accepted connections have `TCP_NODELAY` from the listener.
    inherits: bool,
}

impl Acceptor {
    /// An acceptor for a bound listener. `TCP_NODELAY` is set on the listening socket:
    /// Linux copies it to every connection accepted from it, which saves a `setsockopt`
    /// per connection (the accept path then sets it only where the copy did not happen).
    pub fn new(listener: TcpListener, name: impl Into<String>) -> Self {
        let inherits = socket2::SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
        Self { listener, name: name.into(), delay: BACKOFF.0, inherits }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection (with `TCP_NODELAY` set) and its client's address (an
    /// IPv4-mapped IPv6 address as IPv4). Never fails: errors are logged and waited out.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.delay = BACKOFF.0;
                    if !(cfg!(target_os = "linux") && self.inherits) {
                        let _ = stream.set_nodelay(true);
                    }
                    // An IPv4 client of a dual-stack listener is seen as IPv4 everywhere
                    // (plugins, stick tables, X-Forwarded-For), not as `::ffff:a.b.c.d`.
                    return (stream, SocketAddr::new(peer.ip().to_canonical(), peer.port()));
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

/// Accepts connections until the task is aborted (its listener was removed) or the
/// server stops serving. With a limit (`limit()`, asked again whenever a slot frees), it
/// takes one of `slots` before each accept. Each connection goes to `on_accept` with
/// its slot, which starts its task; when `on_accept` answers false (the listener is gone
/// from the snapshot), the loop ends.
pub(crate) async fn serve(
    mut acceptor: Acceptor,
    slots: std::sync::Arc<Slots>,
    limit: impl Fn() -> Option<usize>,
    mut stop: tokio::sync::watch::Receiver<Stop>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr, Slot) -> bool,
) {
    // Made once and lent to each wait: a new one per wait would register with (and
    // unregister from) the stop signal's waiters, under its lock, twice per connection.
    let mut stopped = std::pin::pin!(stop_serving(&mut stop));
    loop {
        let slot = tokio::select! {
            slot = slots.take(&limit) => slot,
            () = &mut stopped => return,
        };
        let (stream, peer) = tokio::select! {
            conn = acceptor.accept() => conn,
            () = &mut stopped => return,
        };
        if !on_accept(stream, peer, slot) {
            return;
        }
    }
}

/// A listener's own counters, for the logs now and the admin API in time.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Connections closed before they reached a backend because of what the client sent
    /// or did not send in time: a PROXY header missing, malformed or from a source not
    /// allowed to send one; no TLS ClientHello (garbage, or nothing before
    /// `peek_timeout_ms`).
    pub refused: std::sync::atomic::AtomicU64,
    /// tcp and tls-passthrough connections closed because no backend could take them (no
    /// eligible backend, the balancer rejected, every connect failed).
    pub unserved: std::sync::atomic::AtomicU64,
    /// TLS handshakes completed (TLS listeners).
    pub tls_handshakes: std::sync::atomic::AtomicU64,
    /// TLS handshakes that failed or timed out (also counted in `refused`).
    pub tls_failures: std::sync::atomic::AtomicU64,
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

/// Resolves when the server stops serving (graceful or not) or is gone: an accept loop
/// ends then.
pub(crate) async fn stop_serving(stop: &mut tokio::sync::watch::Receiver<Stop>) {
    while *stop.borrow_and_update() == Stop::Serve {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves when the server says `Abort` or is gone: a connection ends then.
pub(crate) async fn aborted(stop: &mut tokio::sync::watch::Receiver<Stop>) {
    while *stop.borrow_and_update() != Stop::Abort {
        if stop.changed().await.is_err() {
            return;
        }
    }
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

/// A listener's open connections against its `max_connections`. The accept loop takes a
/// slot before it accepts ([`Slots::take`]); each connection holds its [`Slot`] until it
/// closes (a WebSocket, until its tunnel closes).
#[derive(Debug, Default)]
pub struct Slots {
    open: std::sync::atomic::AtomicUsize,
    /// A slot came free or the limit changed: the waiting accept loop looks again.
    changed: tokio::sync::Notify,
}

impl Slots {
    /// Waits until fewer than `limit()` connections are open (at once when it is `None`),
    /// then takes a slot. `limit` is asked again whenever a slot comes free or
    /// [`Slots::limit_changed`] is called. The accept loops of all the workers take from
    /// one listener's slots: a slot is taken by a compare-and-swap, so together they
    /// never pass the limit.
    pub async fn take(self: &std::sync::Arc<Self>, limit: impl Fn() -> Option<usize>) -> Slot {
        use std::sync::atomic::Ordering;
        loop {
            // Made before looking, so a slot freed in between is not missed.
            let changed = self.changed.notified();
            let max = limit();
            let mut open = self.open.load(Ordering::Acquire);
            while max.is_none_or(|max| open < max) {
                match self.open.compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Slot(self.clone()),
                    Err(now) => open = now,
                }
            }
            changed.await;
        }
    }

    /// The listener's limit may have changed (a reload): every waiting accept loop looks
    /// again.
    pub fn limit_changed(&self) {
        self.changed.notify_waiters();
    }
}

/// One connection's place in its listener's [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot(std::sync::Arc<Slots>);

impl Slot {
    /// One more place in the same listener's slots, counted at once: what a WebSocket's
    /// tunnel holds in place of its connection's slot (shared behind an `Arc` while the
    /// connection serves requests), so the tunnel keeps no block of the handshake alive.
    pub(crate) fn another(&self) -> Slot {
        self.0.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Slot(self.0.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut acceptor = Acceptor::new(listener, "test");
        let addr = acceptor.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, peer) = acceptor.accept().await;
        let client = client.await.unwrap().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(stream.nodelay().unwrap(), "TCP_NODELAY on the accepted connection");
    }

    #[tokio::test]
    async fn another_slot_counts_until_it_is_dropped() {
        let slots = std::sync::Arc::new(Slots::default());
        let open = || slots.open.load(std::sync::atomic::Ordering::Acquire);
        let first = slots.take(|| Some(2)).await;
        let tunnel = first.another();
        assert_eq!(open(), 2);
        drop(first);
        assert_eq!(open(), 1, "the tunnel's slot outlives the connection's");
        // At the limit: the accept loop waits until the tunnel's slot is given back.
        let _second = slots.take(|| Some(2)).await;
        let third = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(|| Some(2)).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(tunnel);
        let _third = tokio::time::timeout(std::time::Duration::from_secs(10), third).await.unwrap().unwrap();
        assert_eq!(open(), 2);
    }
}
