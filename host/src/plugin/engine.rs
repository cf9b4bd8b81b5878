//! The process-wide wasmtime [`Engine`] (instances allocated on demand, epoch
//! interruption) and its epoch ticker: one per process, shared by every plugin runtime.
//!
//! # What one plugin instance costs
//!
//! Instances are worker threads × pools × plugins: a thread builds its instance of a
//! pool's plugin at its first decision for that pool and keeps it while the plugin is
//! loaded, so every pool costs, per worker thread that serves it, one instance of each of
//! its plugins. One instance of a pack plugin (`round-robin`, measured; BENCHMARKS.md
//! "Many pools"):
//!
//! - about 55 KiB of resident memory (14 KiB of wasmtime's own state: store, instance
//!   contexts, tables, WASI with nothing granted; the rest the pages of linear memory the
//!   plugin touched, its 32 KiB data image included) and 8 KiB of page tables;
//! - 4 GiB of reserved, never committed, address space, so that compiled code needs no
//!   bounds checks (they cost 40 to 140 more instructions per decision, measured): the
//!   128 TiB a Linux process may map hold about 30,000 instances;
//! - 2 memory maps, of the 65,530 Linux allows a process by default (`vm.max_map_count`).
//!
//! Instances are allocated on demand, not from wasmtime's pooling allocator, whose fixed
//! caps (2,000 instances) turned every decision past them into a fallback, and which
//! sizing from the config could not keep up with a reload that adds pools. On demand has
//! no cap but the system's, instantiates as fast here (about 60 µs with `configure`,
//! either way) and runs the same code. The data image is copied into each instance rather
//! than mapped copy-on-write: a mapped image would save 28 KiB per instance but cost 2
//! more memory maps (4 in all), halving the instances `vm.max_map_count` allows: 1,000
//! pools on 16 threads would take 64,000 of the 65,530 maps.
//!
//! # The epoch ticker
//!
//! A thread advances the engine's epoch every [`EPOCH_TICK`], which is what lets a call's
//! deadline pass. It is only needed while a call runs, so it parks as soon as a tick went
//! by in which no call ran and none started, and the next call to start
//! ([`Running::start`]) unparks it. Calls are counted by two monotonic counters, started
//! and ended, each bumped once per call as the one running-count was before: the ticker
//! tells "a call ran in this tick" from "calls ran long ago" by comparing the started
//! count with the one it saw at the previous tick, with no more shared writes per call.
//!
//! So an idle proxy, one moving only L4 bytes, or the health thread calling its
//! evaluators a few dozen times a second (the results of a probe slot, every 50 ms with
//! 1,000 backends probed every second) wakes the ticker about three times per burst of
//! calls (unparked, a tick that saw the burst, a quiet tick), not 1,000 times a second:
//! each wake costs about 33 µs of CPU in this VM (BENCHMARKS.md, health and L4; with
//! 1,000 probes a second it now wakes 53-66 times a second instead of 470-630). Under
//! traffic that calls a plugin at least once per tick (an HTTP or L4 load of more than a
//! thousand decisions a second) it keeps ticking, as before: it never parks and is never
//! unparked, so a decision never pays for a wake-up. In between (a call every few ticks)
//! it parks and is unparked often, and the call that unparks it pays one `futex` wake
//! (0.3-0.4 per connection at about 1,000 L4 connections a second, under strace), each
//! saving the ticks it would have slept through. A call counts as running from its start
//! until its [`Running`] drops, so a runaway call keeps the ticker going until its
//! deadline cuts it; the deadline's precision is unchanged (the first tick after a call
//! starts comes at most one tick, plus the ticker's wake-up latency when it was parked,
//! after the start).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy};

use super::LoadError;

/// How often the epoch advances; call deadlines are whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Calls started, on any thread, since the process started (wrapping).
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// Calls ended, likewise: `STARTED - ENDED` are running now.
static ENDED: AtomicUsize = AtomicUsize::new(0);
/// The ticker is parked (or about to park): the next call to start unparks it.
static PARKED: AtomicBool = AtomicBool::new(false);
/// The ticker thread, once spawned.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// A call into a plugin store (instantiation, configure, any export): keeps the epoch
/// ticker running until dropped. Nesting is fine.
#[derive(Debug)]
#[must_use = "the ticker runs only while this lives"]
pub(crate) struct Running(());

impl Running {
    /// Marks a call as running, unparking the ticker if it sleeps.
    #[inline]
    pub(crate) fn start() -> Self {
        // SeqCst pairs with the ticker's: either it sees this call started and stays up,
        // or this sees it parked and unparks it.
        STARTED.fetch_add(1, Ordering::SeqCst);
        if PARKED.load(Ordering::SeqCst)
            && PARKED.swap(false, Ordering::SeqCst)
            && let Some(ticker) = TICKER.get()
        {
            ticker.unpark();
        }
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        ENDED.fetch_add(1, Ordering::Release);
    }
}

/// What the ticker knows between two ticks: the started count it saw last.
#[derive(Debug)]
struct Watch {
    seen: usize,
}

impl Watch {
    /// After a tick, with the counts read now (`ended` read first): whether to keep
    /// ticking, i.e. a call runs now or one started since the last tick.
    fn busy(&mut self, started: usize, ended: usize) -> bool {
        let started_since = started != self.seen;
        self.seen = started;
        started_since || started != ended
    }
}

/// The ticker's loop: advance the epoch every tick while calls run or start, park after
/// a tick with none.
fn tick(engine: &Engine) -> ! {
    let mut watch = Watch { seen: STARTED.load(Ordering::SeqCst) };
    loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        // Ended first: a call that starts and ends between the two reads still shows as
        // started (and the difference is never below the calls running at the first read).
        let ended = ENDED.load(Ordering::SeqCst);
        if watch.busy(STARTED.load(Ordering::SeqCst), ended) {
            continue;
        }
        PARKED.store(true, Ordering::SeqCst);
        if STARTED.load(Ordering::SeqCst) != watch.seen {
            PARKED.store(false, Ordering::SeqCst);
            continue;
        }
        while PARKED.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }
}

/// The process-wide engine and its epoch ticker.
pub(crate) fn engine() -> Result<&'static Engine, LoadError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = WasmConfig::new();
            config
                .wasm_component_model(true)
                .epoch_interruption(true)
                .max_wasm_stack(512 << 10)
                .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                .memory_init_cow(false);
            let engine = Engine::new(&config).map_err(|e| e.to_string())?;
            let ticker = engine.clone();
            let thread = std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || tick(&ticker))
                .map_err(|e| e.to_string())?;
            let _ = TICKER.set(thread.thread().clone());
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| LoadError::Engine(e.clone()))
}

/// A deadline in epoch ticks (at least one, never overflowing).
pub(crate) fn ticks(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_micros() / EPOCH_TICK.as_micros()).unwrap_or(u64::MAX / 2).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bounds;

    #[test]
    fn deadlines_at_their_bounds_are_whole_ticks() {
        assert_eq!(ticks(*bounds::CALL_TIMEOUT.start()), 2);
        assert_eq!(ticks(*bounds::CALL_TIMEOUT.end()), 10_001);
        assert_eq!(ticks(*bounds::REBUILD_TIMEOUT.start()), 2);
        assert_eq!(ticks(*bounds::REBUILD_TIMEOUT.end()), 60_001);
        // Past any bound (never accepted by the config): saturates, never wraps to "now".
        assert!(ticks(Duration::MAX) >= u64::MAX / 2);
    }

    #[test]
    fn the_ticker_keeps_ticking_only_while_calls_run_or_start() {
        let mut watch = Watch { seen: 5 };
        // Nothing started, nothing running: park.
        assert!(!watch.busy(5, 5));
        // A call started and ended within the tick: one more tick.
        assert!(watch.busy(6, 6));
        assert!(!watch.busy(6, 6));
        // A long call: ticks while it runs, whatever starts meanwhile.
        assert!(watch.busy(7, 6));
        assert!(watch.busy(7, 6));
        assert!(watch.busy(9, 8));
        // It ended: one quiet tick, then park.
        assert!(!watch.busy(9, 9));
        // Counts wrap without a false "quiet".
        let mut watch = Watch { seen: usize::MAX };
        assert!(watch.busy(0, usize::MAX));
        assert!(!watch.busy(0, 0));
    }

    #[test]
    fn the_largest_memory_limit_fits_a_32_bit_memory() {
        let text = "[plugins]\nmemory_limit_mib = 1024\n";
        let limit = crate::config::Config::parse(text, None).unwrap().plugins.memory_limit;
        assert_eq!(limit, 1 << 30, "1 GiB, within the 4 GiB a 32-bit linear memory can address");
    }
}
