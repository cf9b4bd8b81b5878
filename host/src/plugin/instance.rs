//! One plugin instance in one store, owned by one thread: its store data
//! ([`InstanceState`]: the memory limiter, WASI with nothing granted, the pool view pinned
//! for the call and the request lent to it), and the view of a pool a plugin may read
//! ([`PoolHost`]), which the state layer implements.
//!
//! WASI is linked so that components built by other toolchains load, never so that they
//! can reach anything: `wasi:sockets` with TCP, UDP and name lookup refused,
//! `wasi:filesystem` with no directory opened, `wasi:cli` with no environment, arguments
//! or stdio, and `wasi:http` whose every outgoing request fails with
//! `HTTP-request-denied` ([`DenyHttp`]). componentize-js builds import `wasi:http` for
//! JavaScript's `fetch` whether or not a plugin uses it; with it linked they load without
//! `-d http fetch-event`, and a plugin that calls `fetch` gets a rejected promise.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

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

/// Enforces the per-instance memory limit and remembers that it did.
///
/// The limit is on the instance: every linear memory of the store counts, together. A
/// component of several core modules (componentize-py's, or one with WASI's preview1
/// adapter) has several memories, and a limit per memory would let it hold that many
/// times the limit. Memories never shrink, and all of a store's go with it.
#[derive(Debug)]
struct MemoryLimiter {
    limit: usize,
    /// Bytes of linear memory the store's memories hold now, all of them together.
    used: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self { limit, used: 0, exceeded: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let used = self.used.saturating_add(desired.saturating_sub(current));
        if used > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes per instance exceeded: {used} bytes asked for",
                self.limit
            )));
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    // Per store, hence per plugin instance. The memory limit counts every memory; the
    // numbers of memories, core instances and tables are bounded too. A component built
    // by wit-bindgen has a handful of each, componentize-py's a few dozen core instances.
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

/// `wasi:http` hooks that refuse every outgoing request: a plugin may build requests
/// (the types are linked) but sending one fails with `HTTP-request-denied`.
#[derive(Debug, Default)]
pub(crate) struct DenyHttp;

impl WasiHttpHooks for DenyHttp {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(std::future::ready(Err(wasmtime_wasi_http::Error::HttpRequestDenied)))
    }
}

/// The data of one plugin store.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    deny_http: DenyHttp,
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
        self.limiter.used
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

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.deny_http }
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
            http: WasiHttpCtx::new(),
            deny_http: DenyHttp,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outgoing_http_request_is_denied() {
        use http_body_util::BodyExt as _;
        let body = http_body_util::Empty::<bytes::Bytes>::new()
            .map_err(|e| -> wasmtime_wasi_http::Error { match e {} })
            .boxed_unsync();
        let request = http::Request::get("http://127.0.0.1:1/").body(body).unwrap();
        let fut = DenyHttp.send_request(request, None, Box::new(std::future::ready(Ok(()))));
        let result = futures_util::FutureExt::now_or_never(Box::into_pin(fut)).expect("answers at once");
        assert!(matches!(result, Err(wasmtime_wasi_http::Error::HttpRequestDenied)));
    }

    #[test]
    fn the_memory_limit_counts_every_memory_of_the_instance() {
        let mut limiter = MemoryLimiter::new(16 << 20);
        assert!(limiter.memory_growing(0, 10 << 20, None).unwrap(), "the first memory: 10 MiB");
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap(), "a second: 14 MiB in all");
        assert!(limiter.memory_growing(4 << 20, 6 << 20, None).unwrap(), "the second grows: 16 MiB");
        assert!(limiter.memory_growing(10 << 20, 10 << 20 | 65536, None).is_err(), "one page more is over");
        assert!(limiter.exceeded);
        assert_eq!(limiter.used, 16 << 20, "a refused growth is not counted");
    }
}
