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
//! A thread advances the engine's epoch, which is what lets a call's deadline pass. Ticks
//! are only needed while a call runs long, and a decision runs for about a microsecond,
//! so the ticker keeps one of three paces, chosen after each wake from two monotonic
//! counters of calls, started and ended (each bumped once per call; the ticker tells "a
//! call ran since I last looked" by comparing the started count with the one it saw):
//!
//! - **tick** (every [`EPOCH_TICK`]) while a call is running when it looks: a long call's
//!   deadline passes on time from then on;
//! - **lazy** (every [`LAZY_TICK`]) when calls started since it last looked but none runs
//!   now: the usual state under traffic, where a call is in flight about 1 % of the time;
//! - **parked** when no call started since it last looked; the next call to start
//!   ([`Running::start`]) unparks it with one `futex` wake.
//!
//! Before 2026-12-04 it ticked every millisecond whenever a call had started within the
//! last tick, so under any load of more than a thousand decisions a second it woke 1,000
//! times a second, each wake about 33-38 µs of CPU in this VM and a preemption of the
//! worker when both share a core (3 % of the proxy's CPU under `wrk`, and 2.5-3.8 µs per
//! health probe: BENCHMARKS.md). Lazy, it wakes 20 times a second under load.
//!
//! The price is a runaway call's precision: a call that starts while the ticker is lazy
//! and never returns is first seen at the ticker's next wake, up to [`LAZY_TICK`] later,
//! and its deadline counts from there (a call that starts while the ticker is parked
//! unparks it and is seen at once; one that starts while it ticks is timed as before).
//! So a runaway call is cut after at most `LAZY_TICK` + its budget of wall time + its
//! budget of CPU time (plugin::deadline), 54 ms at the default 2 ms budget instead of 4
//! ms, and only the first of a run of runaway calls pays it: while any runs, the ticker
//! ticks.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy};

use super::LoadError;

/// How often the epoch advances; call deadlines are whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long the ticker sleeps when calls come and go but none was running when it looked.
pub(crate) const LAZY_TICK: Duration = Duration::from_millis(50);

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

/// How long the ticker waits before it looks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// A call runs: tick every [`EPOCH_TICK`].
    Tick,
    /// Calls came and went: look again after [`LAZY_TICK`].
    Lazy,
    /// No call since the last look: park until one starts.
    Park,
}

/// What the ticker knows between two looks: the started count it saw last.
#[derive(Debug)]
struct Watch {
    seen: usize,
}

impl Watch {
    /// The pace after a look, with the counts read now (`ended` read first).
    fn pace(&mut self, started: usize, ended: usize) -> Pace {
        let started_since = started != self.seen;
        self.seen = started;
        if started != ended {
            Pace::Tick
        } else if started_since {
            Pace::Lazy
        } else {
            Pace::Park
        }
    }
}

/// The ticker's loop: advance the epoch at each wake, then wait as [`Watch::pace`] says.
fn tick(engine: &Engine) -> ! {
    let mut watch = Watch { seen: STARTED.load(Ordering::SeqCst) };
    loop {
        engine.increment_epoch();
        // Ended first: a call that starts and ends between the two reads still shows as
        // started (and the difference is never below the calls running at the first read).
        let ended = ENDED.load(Ordering::SeqCst);
        match watch.pace(STARTED.load(Ordering::SeqCst), ended) {
            Pace::Tick => std::thread::sleep(EPOCH_TICK),
            Pace::Lazy => std::thread::sleep(LAZY_TICK),
            Pace::Park => {
                PARKED.store(true, Ordering::SeqCst);
                // A call that started before the store saw the ticker awake and did not
                // unpark it: look again at once.
                if STARTED.load(Ordering::SeqCst) != watch.seen {
                    PARKED.store(false, Ordering::SeqCst);
                    continue;
                }
                while PARKED.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
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
    fn the_ticker_ticks_only_while_a_call_runs_and_parks_when_none_started() {
        let mut watch = Watch { seen: 5 };
        // Nothing started, nothing running: park.
        assert_eq!(watch.pace(5, 5), Pace::Park);
        // A call started and ended since the last look: look again later.
        assert_eq!(watch.pace(6, 6), Pace::Lazy);
        assert_eq!(watch.pace(6, 6), Pace::Park);
        // A long call: ticks while it runs, whatever starts meanwhile.
        assert_eq!(watch.pace(7, 6), Pace::Tick);
        assert_eq!(watch.pace(7, 6), Pace::Tick);
        assert_eq!(watch.pace(9, 8), Pace::Tick);
        // It ended: calls came and went, so lazy, then park.
        assert_eq!(watch.pace(9, 9), Pace::Park);
        assert_eq!(watch.pace(12, 12), Pace::Lazy);
        // Counts wrap without a false "quiet".
        let mut watch = Watch { seen: usize::MAX };
        assert_eq!(watch.pace(0, usize::MAX), Pace::Tick);
        assert_eq!(watch.pace(0, 0), Pace::Park);
    }

    #[test]
    fn the_largest_memory_limit_fits_a_32_bit_memory() {
        let text = "[plugins]\nmemory_limit_mib = 1024\n";
        let limit = crate::config::Config::parse(text, None).unwrap().plugins.memory_limit;
        assert_eq!(limit, 1 << 30, "1 GiB, within the 4 GiB a 32-bit linear memory can address");
    }
}
