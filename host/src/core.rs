//! What every layer of weir shares and nothing else owns: the kinds of traffic
//! ([`Protocol`]), where a fault came from ([`Origin`]), a backend's health
//! ([`Verdict`]) and what failed it ([`Failure`]), the one process clock ([`clock`]) that
//! stick tables, drain orders, tunnels and health read, the thread with a runtime of
//! its own that background services run on ([`side_runtime`]), the process's allocator
//! ([`alloc`]), the return of freed memory to the system after a burst ([`memory`]), and
//! a count of what is open now held by guards ([`Count`], [`Counted`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod alloc;
pub mod memory;
pub mod wake;

/// A map by a key the process made itself (a backend's [`crate::state::BackendLive::key`],
/// a tunnel's id), looked up per probe result and per connection: the keys are the
/// process's own counters, not chosen by anyone outside it, so one multiplication hashes
/// them (SipHash, the default, guards against chosen keys and cost a probe about 280
/// instructions and a tcp connection about 660: BENCHMARKS.md, health and L4).
pub type KeyMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Hashes a `u64` key by a multiplication by an odd constant (Fibonacci hashing): the low
/// bits, which pick the bucket, stay distinct for distinct consecutive keys, and the high
/// bits, which the table's tags take, mix all of them.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// How many things are open now, each held by a [`Counted`] guard (a worker's
/// connections and tunnels: [`crate::control`]'s hand-off reads it).
#[derive(Debug, Default)]
pub struct Count(AtomicUsize);

impl Count {
    /// How many guards are alive.
    pub fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One thing counted in a [`Count`] until it is dropped.
#[derive(Debug)]
pub struct Counted(Arc<Count>);

impl Counted {
    /// Counts one more in `count`.
    pub fn new(count: &Arc<Count>) -> Self {
        count.0.fetch_add(1, Ordering::Relaxed);
        Counted(count.clone())
    }

    /// The count this guard is in.
    pub fn count(&self) -> &Arc<Count> {
        &self.0
    }
}

/// A clone is one more in the count.
impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted::new(&self.0)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What kind of traffic is being placed (the WIT `protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2.
    Http2,
    /// WebSocket upgrade.
    WebSocket,
    /// Opaque TCP.
    Tcp,
    /// TLS passthrough.
    TlsPassthrough,
}

/// Where a data-plane failure came from. The status a client is answered with, the
/// one-line body and the `origin` log field all derive from it (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something wrong (400, 431) or went away.
    Client,
    /// A backend failed, was unreachable or too slow (502, 504).
    Upstream,
    /// A plugin failed or refused (503 under `on_plugin_error = "reject"`).
    Plugin,
    /// The configuration cannot serve the request (503: no pool, no backend).
    Config,
}

impl Origin {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Plugin => "plugin",
            Origin::Config => "config",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend's health (the WIT `health.verdict`), worst last: the verdict of several
/// evaluators is the greatest of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Verdict {
    /// Takes new work.
    #[default]
    Healthy = 0,
    /// Takes new work only when no healthy backend is left.
    Degraded = 1,
    /// Takes no new work.
    Unhealthy = 2,
}

impl Verdict {
    /// The name used in logs and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Unhealthy => "unhealthy",
        }
    }

    /// The verdict stored as `n` (its discriminant); anything else is unhealthy.
    pub fn from_u8(n: u8) -> Self {
        match n {
            0 => Verdict::Healthy,
            1 => Verdict::Degraded,
            _ => Verdict::Unhealthy,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with a probe or an exchange (the WIT `health.failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The TCP connect was refused or the backend unreachable.
    Connect,
    /// No answer within the time allowed.
    Timeout,
    /// A status outside the expected range (probe) or a failure status (live traffic).
    Status,
    /// The probe's body did not contain `expect_body`.
    Body,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// Not the expected protocol (malformed HTTP, refused upgrade, no pong).
    Protocol,
}

impl Failure {
    /// The name used in logs and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status => "status",
            Failure::Body => "body",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process clock: a monotonic millisecond count from the first reading in this
/// process. Readings fit in a `u64` that an atomic can hold, which is why stick tables
/// and drain orders store them instead of `Instant`s.
pub mod clock {
    use super::{Duration, Instant};
    use std::sync::OnceLock;

    /// A reading that means "never" (no moment set).
    pub const NEVER: u64 = u64::MAX;

    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// Milliseconds since the clock started.
    pub fn now_ms() -> u64 {
        base().elapsed().as_millis() as u64
    }

    /// The reading at `at` (an instant already read: no second reading of the clock).
    pub fn ms_at(at: Instant) -> u64 {
        at.saturating_duration_since(base()).as_millis() as u64
    }

    /// The instant of a reading; `None` for [`NEVER`] (or a reading too far out to
    /// represent).
    pub fn instant(ms: u64) -> Option<Instant> {
        if ms == NEVER { None } else { base().checked_add(Duration::from_millis(ms)) }
    }
}

/// Starts a thread named `name` running a current-thread tokio runtime of its own, for
/// background services that must never take a worker that serves traffic (health
/// probes, DNS discovery): returns its handle, to spawn tasks on, and the sender whose
/// drop ends the thread (and with its runtime every task on it). The error says why the
/// thread or its runtime could not start.
pub fn side_runtime(name: &str) -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), String> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            // Until the sender is dropped; dropping the runtime then ends every task.
            rt.block_on(async move {
                let _ = stopped.await;
            });
        })
        .map_err(|e| e.to_string())?;
    let handle = rx.recv().map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok((handle, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_holds_each_guard_and_clone_until_dropped() {
        let count = Arc::new(Count::default());
        let first = Counted::new(&count);
        let second = first.clone();
        assert_eq!(count.now(), 2);
        assert!(Arc::ptr_eq(second.count(), &count));
        drop(first);
        assert_eq!(count.now(), 1);
        drop(second);
        assert_eq!(count.now(), 0);
    }

    #[test]
    fn consecutive_keys_take_distinct_buckets() {
        use std::hash::BuildHasher;
        let hasher = std::hash::BuildHasherDefault::<KeyHasher>::default();
        let mut buckets: Vec<u64> = (1..=1024u64).map(|k| hasher.hash_one(k) & 1023).collect();
        buckets.sort_unstable();
        buckets.dedup();
        assert_eq!(buckets.len(), 1024);
        let map: KeyMap<u64> = (1..=10_000u64).map(|k| (k, k * 2)).collect();
        assert!((1..=10_000u64).all(|k| map.get(&k) == Some(&(k * 2))));
        assert_eq!(map.get(&0), None);
    }
}
