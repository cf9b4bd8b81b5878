//! Freed heap memory given back to the system after a burst (`[runtime]
//! release_memory_ms`).
//!
//! glibc's malloc keeps what the program frees for its next allocations and returns to the
//! system only the free top of the main heap. After a burst (4,000 WebSockets that connect
//! 500 at a time, 2,000 keep-alive clients that come and go) the buffers of the handshakes
//! and requests are free but still resident, scattered through every thread's arena, so
//! the process stays at the size of its busiest moment: idle WebSockets looked twice their
//! size, and a proxy that served a burst never shrank back.
//!
//! A thread of its own (`weir-memory`) looks at the heap every interval (`mallinfo2`:
//! bytes in use and bytes free, walked under each arena's lock: about 0.3 ms of CPU with
//! 1,000 probed backends' connections in the heap). Once the bytes in use have fallen by
//! [`STEP`] or more from their highest since the last release (a burst came and went), and
//! the heap then stays still within a look (less than a quarter of a step moved), it
//! calls `malloc_trim(0)`, which hands the free pages of every arena back to the system
//! (madvise): the heap keeps its layout, the free pages are simply no longer resident until
//! used again. What is in use, not the free figure, is what counts: pages handed back and
//! then used and freed again by the next burst leave the free figure where it was,
//! resident all the same. A steady load, or a load that pauses, keeps what it uses and
//! is never trimmed: its freed blocks are what its next requests allocate, and a trim
//! would only have them fault back in, page by page, at the start of the next burst
//! (an earlier rule, which released once the heap had merely moved by a step, trimmed
//! after every 5 s at 10,000 requests/s and put those faults in the next requests' p99:
//! BENCHMARKS.md, "The memory release and p99"). The data path is not involved at all.
//! HAProxy does the same with `malloc_trim` in its memory pools' garbage collection.
//!
//! On other C libraries (musl has no arenas to trim) nothing is started.
//!
//! What a release cannot give back is a page that still holds one live block. The blocks
//! of an idle WebSocket tunnel live for hours, and were allocated in the middle of its
//! handshake's short-lived buffers (hyper's read and write buffers, request heads, the
//! upstream connection's task): once those are freed, each tunnel's few blocks keep their
//! pages resident among the holes. So a tunnel's long-lived blocks (its task, its
//! sockets' registrations, its drain order) are made on a thread of their own
//! ([`long_lived`]): glibc gives each thread its own arena, so they are packed there
//! beside each other, away from the handshakes' heap, which a release then empties.
//!
//! Unsafe code: the two glibc calls, which take no pointers.
#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

/// Work for the [`long_lived`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the thread that makes long-lived blocks (`weir-long-lived`, started on
/// first use), so what it allocates (a tunnel's task, registrations) comes from that
/// thread's heap, not the caller's (see the module's doc). In order, one at a time, soon
/// but not before this returns; keep jobs short (they allocate and spawn, they do not
/// wait). Where that thread cannot be had, `job` runs here, now.
pub fn long_lived(job: impl FnOnce() + Send + 'static) {
    static THREAD: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    let sender = THREAD.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("weir-long-lived".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for long-lived blocks: they are made where they are asked for");
                None
            }
        }
    });
    let job: Job = Box::new(job);
    match sender {
        Some(tx) => {
            // The thread is gone (it cannot be, short of a panic in a job): run it here.
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                job();
            }
        }
        None => job(),
    }
}

/// How far the bytes in use must fall from their highest since the last release before
/// the heap is released again.
pub const STEP: usize = 4 << 20;

/// Starts the thread that releases freed memory every `interval` (see the module's
/// doc). Call it once per process; `None` (`release_memory_ms = 0`) starts nothing.
pub fn release_freed_memory(interval: Option<Duration>) {
    let Some(interval) = interval else { return };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("weir-memory".into()).spawn(move || {
            let mut watch = Watch::default();
            loop {
                std::thread::sleep(interval);
                if let Some(free) = watch.look(heap, release) {
                    tracing::debug!(free, "released freed heap memory to the system");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "freed memory will not be released: no thread for it");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = interval;
}

/// The decision, apart from the C library, so it can be tested: the heap as last seen,
/// and the most it had in use since the last release.
#[derive(Debug, Default)]
struct Watch {
    last: Option<Heap>,
    peak: usize,
}

/// What the heap holds, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Heap {
    used: usize,
    free: usize,
}

impl Watch {
    /// Looks once (`heap` reads the heap): releases (`release`) when the bytes in use have
    /// fallen by [`STEP`] from their highest since the last release and the heap stood
    /// still since the last look. Returns the free figure it released at.
    fn look(&mut self, heap: impl Fn() -> Heap, release: impl FnOnce()) -> Option<usize> {
        let now = heap();
        let last = self.last.replace(now).unwrap_or(now);
        self.peak = self.peak.max(now.used);
        let moved = now.used.abs_diff(last.used) + now.free.abs_diff(last.free);
        if self.peak - now.used < STEP || moved >= STEP / 4 {
            return None;
        }
        release();
        self.peak = now.used;
        Some(now.free)
    }
}

/// Bytes in use and free in every arena (the free top of each included).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Heap {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's own state
    // (under its locks); glibc 2.33 and later.
    let info = unsafe { libc::mallinfo2() };
    Heap { used: info.uordblks, free: info.fordblks }
}

/// Hands the free pages of every arena back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim(0) is safe to call at any time from any thread; it takes the
    // allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn releases_once_a_burst_has_gone_and_never_under_a_steady_or_pausing_load() {
        const MB: usize = 1 << 20;
        let mut watch = Watch::default();
        let heap = Cell::new(Heap { used: 10 * MB, free: MB });
        let released = Cell::new(0);
        let mut look = |used: usize, free: usize| {
            heap.set(Heap { used, free });
            watch.look(|| heap.get(), || released.set(released.get() + 1))
        };
        assert_eq!(look(10 * MB, MB), None, "the first look only sees");
        // A burst: connections come (in use up), their handshakes' buffers are freed.
        assert_eq!(look(30 * MB, 2 * MB), None, "coming");
        assert_eq!(look(40 * MB, 5 * MB), None, "coming");
        // They go: in use falls 30 MiB, but the heap is still moving.
        assert_eq!(look(10 * MB, 35 * MB), None, "going");
        // It stops: released once.
        assert_eq!(look(10 * MB, 35 * MB + 100), Some(35 * MB + 100));
        assert_eq!(released.get(), 1);
        // Still: nothing more to do.
        assert_eq!(look(10 * MB, 35 * MB + 100), None);
        // A steady load moves the heap up and down for as long as it lasts, and a load
        // that pauses gives back the little its connections held: neither is released,
        // however long it goes on (what it freed, its next requests use again).
        for i in 0..1_000 {
            let used = 10 * MB + (i % 2) * 300_000 + (i % 7) * 250_000;
            assert_eq!(look(used, 35 * MB - (i % 3) * 200_000), None, "{i}");
            if i % 50 == 0 {
                assert_eq!(look(10 * MB - 2 * MB, 37 * MB), None, "a pause, {i}");
            }
        }
        assert_eq!(released.get(), 1);
        // The next burst, higher: released once it has gone and the heap is still.
        assert_eq!(look(60 * MB, 30 * MB), None);
        assert_eq!(look(9 * MB, 81 * MB), None);
        assert_eq!(look(9 * MB, 81 * MB), Some(81 * MB));
        assert_eq!(released.get(), 2);
    }

    #[test]
    fn long_lived_jobs_run_in_order_on_their_own_thread() {
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            long_lived(move || {
                let _ = tx.send((i, std::thread::current().name().map(str::to_owned)));
            });
        }
        let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        let me = std::thread::current().name().map(str::to_owned);
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        for (_, name) in got {
            assert_eq!(name.as_deref(), Some("weir-long-lived"));
            assert_ne!(name, me);
        }
    }

    /// The real allocator: memory freed in a burst is resident until released, and not
    /// after (VmRSS of this test process).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_release_returns_freed_pages() {
        fn rss_kb() -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        }
        // 16,000 blocks of 4 KiB, one in eight kept: the 56 MiB freed cannot be returned
        // by the heap's top alone (kept blocks sit between the holes).
        let mut blocks: Vec<Vec<u8>> = (0..16_000).map(|i| vec![i as u8; 4096]).collect();
        let mut watch = Watch::default();
        assert!(watch.look(heap, release).is_none(), "the first look only sees");
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(8).map(std::mem::take).collect();
        drop(blocks);
        let before = rss_kb();
        assert!(watch.look(heap, release).is_none(), "56 MiB went out of use since the last look");
        assert!(watch.look(heap, release).is_some(), "still since the last look");
        let after = rss_kb();
        assert!(
            before.saturating_sub(after) >= 24_000,
            "RSS {before} kB -> {after} kB: less than 24 MB of the 56 MiB freed went back"
        );
        drop(kept);
    }
}
