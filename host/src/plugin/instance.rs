//! One plugin instance in one store, owned by one thread: its store data
//! ([`InstanceState`]: the memory limiter, WASI with nothing granted, the pool view pinned
//! for the call and the request lent to it), and the view of a pool a plugin may read
//! ([`PoolHost`]), which the state layer implements.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PickRequest;
use super::deadline::Deadline;
use super::world::World;
use crate::config::BackendConfig;

/// What a plugin may read and change of its pool during a call: the `pool` import's
/// answers. The state layer implements it on its immutable pool view (STYLE rule 4:
/// imports are answered from a borrowed view), so this layer never names a snapshot.
///
/// Every method is called on the plugin's thread, inside a call, possibly on the hot
/// path: none may block or allocate beyond what its answer needs.
pub trait PoolHost: std::fmt::Debug + Send + Sync + 'static {
    /// Changes with membership, weights or health; never repeats.
    fn generation(&self) -> u64;
    /// Members, config order; index = backend id.
    fn members(&self) -> &[BackendConfig];
    /// Ids of the backends that may take new work, ascending.
    fn eligible(&self) -> &[u32];
    /// Whether backend `id` may take new work.
    fn is_eligible(&self, id: u32) -> bool;
    /// Open connections of backend `id` (0 for an unknown id).
    fn active(&self, id: u32) -> u32;
    /// Requests sent to backend `id` and not yet answered.
    fn in_flight(&self, id: u32) -> u32;
    /// `active + in_flight` of backend `id`.
    fn load(&self, id: u32) -> u64;
    /// Latency EWMA of backend `id`, µs (0 = no sample).
    fn latency_ewma_us(&self, id: u32) -> u32;
    /// Sum of every member's load.
    fn total_load(&self) -> u64;
    /// The handle of the named pool counter; `None` when the pool has too many names.
    fn counter(&self, name: &str) -> Option<u32>;
    /// Counter `id`'s value, advanced by one.
    fn counter_next(&self, id: u32) -> u64;
    /// The named per-pool random secret; `None` when the pool has too many names.
    fn secret(&self, name: &str) -> Option<[u8; 32]>;
    /// The handle of the named stick table, whose TTL becomes `ttl`; `None` when the pool
    /// has too many names.
    fn stick_table(&self, name: &str, ttl: Duration) -> Option<u32>;
    /// The member a stick entry points to, if it is still a member.
    fn stick_get(&self, table: u32, key: u64) -> Option<u32>;
    /// Points a stick entry at member `id`; whether it was set.
    fn stick_set(&self, table: u32, key: u64, id: u32) -> bool;
}

/// Enforces the per-instance memory limit and remembers that it did; counts the bytes of
/// linear memory the instance has (what `weir plugin test` reports per instance).
#[derive(Debug)]
struct MemoryLimiter {
    limit: usize,
    exceeded: bool,
    /// The sizes of the instance's linear memories, summed (each memory's creation is a
    /// growth from 0).
    bytes: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!("memory limit of {} bytes exceeded", self.limit)));
        }
        self.bytes = self.bytes.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    // Per store, hence per plugin instance: the limit above applies to each memory, so the
    // number of memories (and of core instances and tables) is bounded too. A component
    // built by wit-bindgen has a handful of each.
    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        32
    }
}

/// The data of one plugin store.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) plugin: Arc<str>,
    pub(super) pool: Arc<str>,
    view: Option<Arc<dyn PoolHost>>,
    /// The request being placed, moved in for the duration of one call.
    pub(crate) request: Option<PickRequest>,
    /// The last `(table, key)` given to `stick-set` during the current call.
    pub(crate) stuck: Option<(u32, u64)>,
    /// The current call's deadline, in the time it ran.
    deadline: Deadline,
}

impl InstanceState {
    /// Pins the pool view for one call. Keeps the `Arc` between calls and swaps it only
    /// when the view changed, so a call costs no reference-count traffic.
    pub(crate) fn pin(&mut self, view: &Arc<dyn PoolHost>) {
        let same = self.view.as_ref().is_some_and(|v| std::ptr::addr_eq(Arc::as_ptr(v), Arc::as_ptr(view)));
        if !same {
            self.view = Some(view.clone());
        }
    }

    pub(crate) fn memory_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    /// Bytes of linear memory the instance has now.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.limiter.bytes
    }

    pub(super) fn view(&self) -> Option<&dyn PoolHost> {
        self.view.as_deref()
    }

    pub(super) fn head(&self) -> Option<&http::request::Parts> {
        self.request.as_ref().and_then(|r| r.head.as_deref())
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One thread's instance of one plugin.
pub(crate) struct Live<W: World> {
    pub(crate) store: Store<InstanceState>,
    pub(crate) exports: Option<W::Exports>,
    /// The pool generation the plugin last heard of through `pool-changed` (0: none yet).
    pub(crate) generation: u64,
}

impl<W: World> Live<W> {
    pub(crate) fn new(engine: &wasmtime::Engine, plugin: Arc<str>, pool: Arc<str>, memory_limit: usize) -> Self {
        let wasi = WasiCtxBuilder::new().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: memory_limit, exceeded: false, bytes: 0 },
            plugin,
            pool,
            view: None,
            request: None,
            stuck: None,
            deadline: Deadline::new(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().deadline.expired()));
        Self { store, exports: None, generation: 0 }
    }

    /// Starts a call that may run for `budget`, first checked after `ticks` epoch ticks
    /// (see [`super::deadline`]).
    #[inline]
    pub(crate) fn arm(&mut self, ticks: u64, budget: Duration) {
        self.store.set_epoch_deadline(ticks);
        self.store.data_mut().deadline.arm(budget);
    }
}
