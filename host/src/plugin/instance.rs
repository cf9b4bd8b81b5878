//! One plugin instance in one store, owned by one thread, and the host side of its
//! imports: `pool` answered from the pinned [`PoolView`], `log` into `tracing`, `request`
//! answered lazily from the request moved into the store for the call,
//! and WASI with nothing granted (no files, network, environment or stdio).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, WitBackend, WitProtocol};
use super::{Exports, PickRequest, Protocol};
use crate::state::{BackendLive, PoolView};

/// Enforces the per-instance memory limit and remembers that it did.
#[derive(Debug)]
struct MemoryLimiter {
    limit: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!("memory limit of {} bytes exceeded", self.limit)));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The data of one plugin store.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    pool: Arc<str>,
    view: Option<Arc<PoolView>>,
    /// The request being placed, moved in for the duration of one call.
    pub(crate) request: Option<PickRequest>,
    /// The last `(table, key)` given to `stick-set` during the current call.
    pub(crate) stuck: Option<(u32, u64)>,
}

impl InstanceState {
    /// Pins the pool view for one call. Keeps the `Arc` between calls and swaps it only
    /// when the view changed, so a call costs no reference-count traffic.
    pub(crate) fn pin(&mut self, view: &Arc<PoolView>) {
        if !self.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, view)) {
            self.view = Some(view.clone());
        }
    }

    pub(crate) fn memory_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    fn view(&self) -> Option<&PoolView> {
        self.view.as_deref()
    }

    fn head(&self) -> Option<&http::request::Parts> {
        self.request.as_ref().and_then(|r| r.head.as_deref())
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One thread's instance of one plugin.
pub(crate) struct Live {
    pub(crate) store: Store<InstanceState>,
    pub(crate) exports: Option<Exports>,
    /// The pool generation the plugin last heard of through `pool-changed` (0: none yet).
    pub(crate) generation: u64,
}

impl Live {
    pub(crate) fn new(engine: &wasmtime::Engine, plugin: Arc<str>, pool: Arc<str>, memory_limit: usize) -> Self {
        let wasi = WasiCtxBuilder::new().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: memory_limit, exceeded: false },
            plugin,
            pool,
            view: None,
            request: None,
            stuck: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        Self { store, exports: None, generation: 0 }
    }
}

impl bindings::pool::Host for InstanceState {
    fn members(&mut self) -> Vec<WitBackend> {
        let Some(view) = self.view() else { return Vec::new() };
        view.members
            .iter()
            .enumerate()
            .map(|(i, b)| WitBackend {
                id: i as u32,
                address: b.config.address.clone(),
                weight: b.config.weight,
                max_connections: b.config.max_connections,
                labels: b.config.labels.clone(),
            })
            .collect()
    }

    fn generation(&mut self) -> u64 {
        self.view().map_or(0, |v| v.generation)
    }

    fn eligible(&mut self) -> Vec<u32> {
        self.view().map_or_else(Vec::new, |v| v.eligible.clone())
    }

    fn active_connections(&mut self, id: u32) -> u32 {
        self.view().and_then(|v| v.live(id)).map_or(0, |l| l.active.load(Ordering::Relaxed))
    }

    fn in_flight(&mut self, id: u32) -> u32 {
        self.view().and_then(|v| v.live(id)).map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
    }

    fn load(&mut self, id: u32) -> u64 {
        self.view().and_then(|v| v.live(id)).map_or(0, BackendLive::load)
    }

    fn load_pair(&mut self, a: u32, b: u32) -> u64 {
        let load = |id| self.view().and_then(|v| v.live(id)).map_or(0, BackendLive::load_u32);
        pack(load(a), load(b))
    }

    fn loads(&mut self) -> Vec<u32> {
        self.view().map_or_else(Vec::new, |v| {
            (0..v.members.len() as u32).filter_map(|id| v.live(id)).map(BackendLive::load_u32).collect()
        })
    }

    fn load_and_total(&mut self, id: u32) -> u64 {
        let Some(view) = self.view() else { return 0 };
        let total = u32::try_from(view.live.total_load.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        pack(view.live(id).map_or(0, BackendLive::load_u32), total)
    }

    fn latency_pair(&mut self, a: u32, b: u32) -> u64 {
        let latency =
            |id| self.view().and_then(|v| v.live(id)).map_or(0, |l| l.latency_ewma_us.load(Ordering::Relaxed));
        pack(latency(a), latency(b))
    }

    fn latency_ewma_us(&mut self, id: u32) -> u32 {
        self.view().and_then(|v| v.live(id)).map_or(0, |l| l.latency_ewma_us.load(Ordering::Relaxed))
    }

    fn counter(&mut self, name: String) -> u32 {
        self.view().map_or(0, |v| v.live.counter(&name))
    }

    fn counter_next(&mut self, counter: u32) -> u64 {
        self.view().map_or(0, |v| v.live.next(counter))
    }

    fn total_load(&mut self) -> u64 {
        self.view().map_or(0, |v| v.live.total_load.load(Ordering::Relaxed))
    }

    fn secret(&mut self, name: String) -> Vec<u8> {
        self.view().map_or_else(Vec::new, |v| v.live.secret(&name).to_vec())
    }

    fn stick_table(&mut self, name: String, ttl_ms: u64) -> u32 {
        self.view().map_or(u32::MAX, |v| v.live.stick_table(&name, std::time::Duration::from_millis(ttl_ms)))
    }

    fn stick_get(&mut self, table: u32, key: u64) -> Option<u32> {
        let view = self.view()?;
        let backend = view.live.with_stick_table(table, |t| t.get(key))??;
        view.by_address_key(backend)
    }

    fn stick_set(&mut self, table: u32, key: u64, id: u32) {
        let Some(view) = self.view() else { return };
        let Some(backend) = view.address_key(id) else { return };
        if view.live.with_stick_table(table, |t| t.set(key, backend)).is_some() {
            self.stuck = Some((table, key));
        }
    }
}

/// Two 32-bit figures in one `u64`, the first in the high half: what the `pool.*-pair`
/// reads return, so one scalar crosses the ABI.
fn pack(high: u32, low: u32) -> u64 {
    u64::from(high) << 32 | u64::from(low)
}

impl bindings::log::Host for InstanceState {
    fn write(&mut self, level: bindings::log::Level, message: String) {
        use bindings::log::Level;
        let (plugin, pool) = (&*self.plugin, &*self.pool);
        match level {
            Level::Trace => tracing::trace!(plugin, pool, "{message}"),
            Level::Debug => tracing::debug!(plugin, pool, "{message}"),
            Level::Info => tracing::info!(plugin, pool, "{message}"),
            Level::Warn => tracing::warn!(plugin, pool, "{message}"),
            Level::Error => tracing::error!(plugin, pool, "{message}"),
        }
    }
}

impl bindings::TypesHost for InstanceState {}

impl bindings::request::Host for InstanceState {
    fn protocol(&mut self) -> WitProtocol {
        match self.request.as_ref().map_or(Protocol::Tcp, |r| r.protocol) {
            Protocol::Http1 => WitProtocol::Http1,
            Protocol::Http2 => WitProtocol::Http2,
            Protocol::WebSocket => WitProtocol::Websocket,
            Protocol::Tcp => WitProtocol::Tcp,
            Protocol::TlsPassthrough => WitProtocol::TlsPassthrough,
        }
    }

    fn client_ip(&mut self) -> String {
        self.request.as_ref().map(|r| r.client.ip().to_string()).unwrap_or_default()
    }

    fn client_addr(&mut self) -> bindings::IpAddress {
        match self.request.as_ref().map(|r| r.client.ip()) {
            Some(std::net::IpAddr::V6(ip)) => {
                let g = ip.segments();
                bindings::IpAddress::Ipv6((g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]))
            }
            Some(std::net::IpAddr::V4(ip)) => {
                let [a, b, c, d] = ip.octets();
                bindings::IpAddress::Ipv4((a, b, c, d))
            }
            None => bindings::IpAddress::Ipv4((0, 0, 0, 0)),
        }
    }

    fn client_addr_hash(&mut self) -> u64 {
        match self.request.as_ref().map(|r| r.client.ip()) {
            Some(std::net::IpAddr::V6(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
            Some(std::net::IpAddr::V4(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
            None => xxhash_rust::xxh3::xxh3_64(&[0; 4]),
        }
    }

    fn client_port(&mut self) -> u16 {
        self.request.as_ref().map_or(0, |r| r.client.port())
    }

    fn sni(&mut self) -> Option<String> {
        self.request.as_ref().and_then(|r| r.sni.as_deref()).map(str::to_owned)
    }

    fn method(&mut self) -> Option<String> {
        self.head().map(|h| h.method.as_str().to_owned())
    }

    fn authority(&mut self) -> Option<String> {
        let head = self.head()?;
        head.uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| head.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
            .map(str::to_owned)
    }

    fn path(&mut self) -> Option<String> {
        self.head().map(|h| h.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())
    }

    fn header(&mut self, name: String) -> Option<String> {
        self.head()?.headers.get(name.as_str())?.to_str().ok().map(str::to_owned)
    }

    fn cookie(&mut self, name: String) -> Option<String> {
        let head = self.head()?;
        head.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
    }
}
