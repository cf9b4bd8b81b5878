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
//! deadline pass. It is only needed while a call runs, so it parks after [`IDLE_TICKS`]
//! ticks in which it saw none running, and the next call to start ([`Running::start`])
//! unparks it: an idle proxy, or one moving only L4 bytes, no longer wakes 1,000 times a
//! second for nothing (measured: 3 % of a core, BENCHMARKS.md, L4). A call counts as
//! running from its start until its [`Running`] drops, so a runaway call keeps the ticker
//! going until its deadline cuts it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy};

use super::LoadError;

/// How often the epoch advances; call deadlines are whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without a running call after which the ticker parks (at most ten unparks a
/// second under a light load of short calls).
const IDLE_TICKS: u32 = 100;

/// Calls running now, on any thread.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
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
        // SeqCst pairs with the ticker's: either it sees this call running and stays up,
        // or this sees it parked and unparks it.
        RUNNING.fetch_add(1, Ordering::SeqCst);
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
        RUNNING.fetch_sub(1, Ordering::Release);
    }
}

/// The ticker's loop: advance the epoch every tick while calls run, park when none has
/// for [`IDLE_TICKS`].
fn tick(engine: &Engine) -> ! {
    let mut idle = 0;
    loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        if RUNNING.load(Ordering::SeqCst) > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS {
            continue;
        }
        idle = 0;
        PARKED.store(true, Ordering::SeqCst);
        if RUNNING.load(Ordering::SeqCst) > 0 {
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
    fn the_largest_memory_limit_fits_a_32_bit_memory() {
        let text = "[plugins]\nmemory_limit_mib = 1024\n";
        let limit = crate::config::Config::parse(text, None).unwrap().plugins.memory_limit;
        assert_eq!(limit, 1 << 30, "1 GiB, within the 4 GiB a 32-bit linear memory can address");
    }
}
