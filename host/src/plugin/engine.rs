//! The process-wide wasmtime [`Engine`] (pooling allocator, epoch interruption) and its
//! epoch ticker: one per process, shared by every plugin runtime.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config as WasmConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::LoadError;

/// How often the epoch advances; call deadlines are whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The process-wide engine and its epoch ticker.
pub(crate) fn engine() -> Result<&'static Engine, LoadError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut pooling = PoolingAllocationConfig::default();
            pooling
                .total_component_instances(2_000)
                .total_core_instances(10_000)
                .total_memories(2_000)
                .total_tables(4_000)
                .total_stacks(0)
                .max_memory_size(1 << 30)
                .max_core_instances_per_component(64)
                .max_memories_per_component(16)
                .max_tables_per_component(32)
                .max_component_instance_size(1 << 20)
                .max_core_instance_size(1 << 20)
                .table_elements(100_000);
            let mut config = WasmConfig::new();
            config.wasm_component_model(true).epoch_interruption(true).max_wasm_stack(512 << 10);
            // The pooling allocator reserves its address space up front; where that is
            // refused (a low `ulimit -v`, some sandboxes) fall back to allocating on demand.
            let engine =
                match Engine::new(config.clone().allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))) {
                    Ok(engine) => engine,
                    Err(e) => {
                        tracing::warn!(error = %e, "pooling allocator unavailable; instances are allocated on demand");
                        Engine::new(config.allocation_strategy(InstanceAllocationStrategy::OnDemand))
                            .map_err(|e| e.to_string())?
                    }
                };
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| e.to_string())?;
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
    fn the_largest_memory_limit_fits_the_instance_allocator() {
        let text = "[plugins]\nmemory_limit_mib = 1024\n";
        let limit = crate::config::Config::parse(text, None).unwrap().plugins.memory_limit;
        assert_eq!(limit, 1 << 30, "the pooling allocator's max_memory_size");
    }
}
