//! Configuration: the TOML file as written (`File*` types, straight from serde) and the
//! validated [`Config`] the rest of weir runs on.
//!
//! Every error names the file, line, column and dotted key it is about. Unknown keys are
//! errors, so a misspelt option never silently falls back to a default. Field docs below
//! give each option's default and whether a reload can change it (listeners, pools,
//! backends and plugins are reloadable; `[plugins]` is read at start only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use toml::Spanned;

mod cluster;
mod discover;
mod duration;
mod health;
#[cfg(test)]
mod tests;
mod tls;

pub use cluster::{ClusterConfig, Pem};
pub use discover::{DiscoverConfig, DnsName};
pub use duration::FileDuration;
pub(crate) use duration::human;
pub use health::{HealthConfig, MAX_PROBE_BODY, OnUnhealthy, ProbeConfig, ProbeKind, StatusSet};
pub use tls::{CaFile, CertificateFiles, ClientAuth, TlsConfig, TlsVersion, read_certificates, read_key};

/// The range of every duration and size of the file. `weir check` (and every load) refuses
/// a value outside its range, naming its file, line and column, so no accepted value can
/// overflow a clock or an allocation at run time. Each bound is also given in the field's
/// doc and in `docs/config.md`.
pub mod bounds {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Network timeouts (`header_read_timeout_ms`, `tunnel_idle_timeout_ms`,
    /// `connect_timeout_ms`, `response_timeout_ms`, `idle_timeout_ms`): 1 ms to 7 days. A
    /// zero timeout would fail every exchange; a week is far past any useful wait, and an
    /// instant a week away is always representable.
    pub const TIMEOUT: RangeInclusive<Duration> = MS..=WEEK;
    /// `tunnel_max_lifetime_ms`: 1 ms to 365 days (absent: no limit).
    pub const TUNNEL_MAX_LIFETIME: RangeInclusive<Duration> = MS..=Duration::from_secs(365 * 24 * 3600);
    /// `drain_spread_ms` and `drain_deadline_ms`: 0 (at once) to 7 days.
    pub const DRAIN: RangeInclusive<Duration> = Duration::ZERO..=WEEK;
    /// `[plugins] call_timeout_ms`: 1 ms (the epoch tick, the deadline's resolution) to 10 s
    /// (a decision call holds a worker thread for as long as it runs).
    pub const CALL_TIMEOUT: RangeInclusive<Duration> = MS..=Duration::from_secs(10);
    /// `[plugins] rebuild_timeout_ms`: 1 ms to 60 s.
    pub const REBUILD_TIMEOUT: RangeInclusive<Duration> = MS..=Duration::from_secs(60);
    /// `[plugins] memory_limit_mib`: 1 to 1024 MiB (the instance allocator reserves at most
    /// 1 GiB per linear memory, so a larger limit could not be honoured).
    pub const MEMORY_LIMIT_MIB: RangeInclusive<u32> = 1..=1024;
    /// `max_header_bytes`: 1 KiB to 1 MiB.
    pub const MAX_HEADER_BYTES: RangeInclusive<usize> = 1024..=(1 << 20);
    /// `max_headers`: 1 to 10,000 (the parser allocates a slot per allowed header for every
    /// request head it reads).
    pub const MAX_HEADERS: RangeInclusive<usize> = 1..=10_000;
    /// `max_idle_per_backend`: 0 (no reuse) to 65,535 (more connections than one local
    /// address can open to one backend address).
    pub const MAX_IDLE_PER_BACKEND: RangeInclusive<usize> = 0..=65_535;
    /// `[runtime] worker_threads`: 0 (one per CPU weir may run on) to 1024.
    pub const WORKER_THREADS: RangeInclusive<usize> = 0..=1024;
    /// `[runtime] release_memory_ms`: 0 (never) to 1 hour.
    pub const RELEASE_MEMORY: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
    /// `probe.interval_ms`: 10 ms to 1 day.
    pub const PROBE_INTERVAL: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(86_400);
    /// `probe.timeout_ms`: 1 ms to 1 day (and at most the interval).
    pub const PROBE_TIMEOUT: RangeInclusive<Duration> = MS..=Duration::from_secs(86_400);
    /// `health_tick_ms`: 10 ms to 1 hour.
    pub const HEALTH_TICK: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(3600);
    /// `slow_start_ms`: 0 (none) to 1 day.
    pub const SLOW_START: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(86_400);
    /// `http2.max_concurrent_streams`: 1 to 10,000 (each open stream holds its request's
    /// state and, while it waits, a task).
    pub const H2_MAX_CONCURRENT_STREAMS: RangeInclusive<u32> = 1..=10_000;
    /// `http2.max_header_list_size`: 1 KiB to 1 MiB, as `max_header_bytes`.
    pub const H2_MAX_HEADER_LIST_SIZE: RangeInclusive<u32> = 1024..=(1 << 20);
    /// `http2.initial_stream_window_size` and `http2.initial_connection_window_size`:
    /// 65,535 (the protocol's initial window; a smaller one only slows uploads) to
    /// 2^31 - 1 (the largest window HTTP/2 can express, RFC 9113 §6.9.1).
    pub const H2_WINDOW: RangeInclusive<u32> = 65_535..=((1 << 31) - 1);
    /// `discover.refresh_ms`: 100 ms to 1 day.
    pub const DISCOVER_REFRESH: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(86_400);
}

/// A config error, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{file}:{line}:{column}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
    Invalid {
        /// The file (or `<inline>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key path, e.g. `pool.web.backends[0].address`; empty when unknown.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// What the listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 reverse proxy.
    Http,
    /// Opaque TCP: each connection goes to one backend, its bytes spliced both ways.
    Tcp,
    /// TLS not terminated: the ClientHello's SNI routes the connection, whose bytes
    /// (the ClientHello included) are then spliced to the backend untouched.
    TlsPassthrough,
}

impl ListenerProtocol {
    /// Whether connections are spliced as opaque bytes (no HTTP).
    pub fn is_l4(self) -> bool {
        !matches!(self, ListenerProtocol::Http)
    }

    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::TlsPassthrough => "tls-passthrough",
        }
    }
}

/// Which PROXY protocol versions a listener accepts (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyAccept {
    /// The text header only.
    V1,
    /// The binary header only.
    V2,
    /// Either.
    Any,
}

/// Which PROXY protocol version a pool sends its backends (`send_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// A listener's PROXY protocol settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The versions accepted.
    pub accept: ProxyAccept,
    /// The networks whose connections must start with a header (and whose header is
    /// believed); a connection from elsewhere is served as its own client and refused if
    /// it sends a header.
    pub from: Vec<ipnet::IpNet>,
}

impl ProxyProtocol {
    /// Whether a connection from `ip` must (and may) carry a header.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// What a pool does when its balancer plugin traps, times out or answers nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPluginError {
    /// Place the work with the built-in round robin over eligible backends.
    #[default]
    Fallback,
    /// Answer 503.
    Reject,
}

// ---------------------------------------------------------------------------------------
// The file as written.

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// The process: worker threads. Not reloadable.
    #[serde(default)]
    runtime: FileRuntime,
    /// Plugin runtime limits. Not reloadable.
    #[serde(default)]
    plugins: FilePlugins,
    /// The admin API. Not reloadable.
    admin: Option<Spanned<FileAdmin>>,
    /// Several instances as one through etcd. Not reloadable.
    cluster: Option<Spanned<cluster::FileCluster>>,
    /// Listeners, `[[listener]]`. Reloadable: added ones are bound, removed ones closed.
    #[serde(default, rename = "listener")]
    listeners: Vec<FileListener>,
    /// Pools, `[pool.NAME]`. Reloadable.
    #[serde(default, rename = "pool")]
    pools: BTreeMap<String, FilePool>,
}

/// `[runtime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuntime {
    /// Worker threads serving traffic (the async runtime's workers); 0 means one per CPU
    /// weir may run on (`std::thread::available_parallelism`, which honours CPU affinity
    /// and cgroup quotas). Default 0. Range 0 to 1024. Read at start; not reloadable.
    worker_threads: Option<Spanned<usize>>,
    /// How often weir looks whether a burst has left freed heap memory to give back to the
    /// system (`core::memory`). Default 1 s; 0 never. Range 0 to 1 hour.
    release_memory_ms: Option<Spanned<FileDuration>>,
}

/// `[plugins]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugins {
    /// Where compiled plugins are cached. Default: `$WEIR_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/weir`, else `~/.cache/weir`.
    cache_dir: Option<PathBuf>,
    /// Deadline for one decision call. Default 2 ms. Range 1 ms to 10 s.
    call_timeout_ms: Option<Spanned<FileDuration>>,
    /// Deadline for `configure`, instantiation and `pool-changed` (where a plugin
    /// rebuilds a ring or table). Default 250 ms. Range 1 ms to 60 s. Read at start, like
    /// this whole table.
    rebuild_timeout_ms: Option<Spanned<FileDuration>>,
    /// Linear-memory limit for one plugin instance, in MiB. Default 16. Range 1 to 1024.
    memory_limit_mib: Option<Spanned<u32>>,
    /// Swap a balancer or affinity plugin named by a path when its file changes (the
    /// admin API's safe swap). Default false. Read at start.
    #[serde(default)]
    watch: bool,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    /// Where the admin API listens. Default `127.0.0.1:9901`. A non-loopback address
    /// needs `token_file`. Read at start; not reloadable.
    listen: Option<Spanned<String>>,
    /// A file holding the bearer token mutating calls must present (trailing whitespace
    /// trimmed; relative to the config file). Default none: on a loopback address,
    /// mutating calls need no token. Read at start.
    token_file: Option<Spanned<PathBuf>>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    /// Name used in logs and the admin API. Default `listener-N`.
    name: Option<String>,
    /// Address to bind, `ip:port`. Required.
    listen: Spanned<String>,
    /// `"http"`, `"tcp"` or `"tls-passthrough"`. Default `"http"`. A reload that changes
    /// it rebinds the listener.
    #[serde(default = "default_protocol")]
    protocol: ListenerProtocol,
    /// Pool for requests no route matches. Required.
    pool: Spanned<String>,
    /// Routes, first match wins.
    #[serde(default)]
    route: Vec<FileRoute>,
    /// Longest wait for a complete request head, and for the next request on an idle
    /// keep-alive connection. Default 30 s. Range 1 ms to 7 days.
    header_read_timeout_ms: Option<Spanned<FileDuration>>,
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    /// Default 65536. Range 1024 to 1048576 (1 MiB).
    max_header_bytes: Option<Spanned<usize>>,
    /// Most request headers; more gets 431. Default 100. Range 1 to 10000.
    max_headers: Option<Spanned<usize>>,
    /// A tunnel (WebSocket) with no bytes in either direction for this long is closed.
    /// Default 1 h (HAProxy's usual `timeout tunnel`). Range 1 ms to 7 days.
    tunnel_idle_timeout_ms: Option<Spanned<FileDuration>>,
    /// A tunnel is closed after this long whatever its traffic. Default: no limit. Range
    /// 1 ms to 365 days.
    tunnel_max_lifetime_ms: Option<Spanned<FileDuration>>,
    /// Most client connections open at once (a WebSocket counts while its tunnel is
    /// open), 1 to 1,000,000; while full, the listener accepts nothing and new clients
    /// wait in the listen queue. Default: no limit. Reloadable.
    max_connections: Option<Spanned<i64>>,
    /// tcp and tls-passthrough: a connection with no byte in either direction for this
    /// long is closed. Default 1 h. Range 1 ms to 7 days. Reloadable (new connections).
    idle_timeout_ms: Option<Spanned<FileDuration>>,
    /// tcp and tls-passthrough: a connection is closed after this long whatever its
    /// traffic. Default: no limit. Range 1 ms to 365 days. Reloadable (new connections).
    max_lifetime_ms: Option<Spanned<FileDuration>>,
    /// Longest wait for what weir reads before it picks a backend: the PROXY header, and
    /// on tls-passthrough the ClientHello. Default 5 s. Range 1 ms to 7 days. Reloadable.
    peek_timeout_ms: Option<Spanned<FileDuration>>,
    /// Accept the PROXY protocol: `"v1"`, `"v2"` or `"any"`, from the networks in
    /// `proxy_protocol_from`. Default: not accepted. Reloadable.
    proxy_protocol: Option<Spanned<ProxyAccept>>,
    /// Networks (`"10.0.0.0/8"`, `"192.0.2.7"`, `"::/0"`) whose connections must start
    /// with a PROXY header; required with `proxy_protocol`. Reloadable.
    proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    /// http: terminate TLS (`{ certificates = [{ cert, key }], ... }`, see
    /// [`tls::FileTls`]). Default: cleartext. Reloadable: certificates and settings apply
    /// to new handshakes.
    tls: Option<Spanned<tls::FileTls>>,
    /// http: limits of HTTP/2 connections (h2c with prior knowledge, h2 by ALPN).
    /// Reloadable (connections accepted after the reload).
    http2: Option<Spanned<FileHttp2>>,
}

/// `[listener.http2]`: the limits an HTTP/2 client is told in its SETTINGS and held to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp2 {
    /// Most streams (requests) open at once on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`). Default 100. Range 1 to 10000.
    max_concurrent_streams: Option<Spanned<u32>>,
    /// Largest request header list in bytes, counted as HTTP/2 counts it (each field's
    /// name and value plus 32; `SETTINGS_MAX_HEADER_LIST_SIZE`); larger is refused. Default
    /// 65536. Range 1024 to 1048576.
    max_header_list_size: Option<Spanned<u32>>,
    /// Bytes of request body a client may send on one stream before weir has passed them
    /// on (`SETTINGS_INITIAL_WINDOW_SIZE`). Default 65535. Range 65535 to 2147483647.
    initial_stream_window_size: Option<Spanned<u32>>,
    /// The same for all the streams of a connection together. Default 1048576. Range
    /// 65535 to 2147483647.
    initial_connection_window_size: Option<Spanned<u32>>,
}

/// Largest `max_connections` of a listener.
const MAX_CONNECTIONS: i64 = 1_000_000;

fn default_protocol() -> ListenerProtocol {
    ListenerProtocol::Http
}

/// `[[listener.route]]`: every condition given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    /// http: host to match, case-insensitive, port ignored; `*.example.com` matches
    /// subdomains.
    host: Option<Spanned<String>>,
    /// http: path prefix to match, segment-aware (`/api` matches `/api` and `/api/x`, not
    /// `/apix`).
    path_prefix: Option<Spanned<String>>,
    /// tls-passthrough: the ClientHello's server name, case-insensitive; `*.example.com`
    /// matches subdomains.
    sni: Option<Spanned<String>>,
    /// Pool to send matching requests to. Required.
    pool: Spanned<String>,
}

/// `[pool.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    /// The backends. Default none (then `discover` finds them). Reloadable: per-backend
    /// counters survive a reload.
    #[serde(default)]
    backends: Vec<FileBackend>,
    /// Backends found by DNS, beside those of `backends`: `{ dns = "_http._tcp.web" |
    /// "web:8080", resolver = "ip:port", refresh_ms = N }`. Default none. Reloadable.
    discover: Option<Spanned<discover::FileDiscover>>,
    /// Balancer plugin. Default `{ plugin = "round-robin" }`. Reloadable.
    balancer: Option<FilePluginRef>,
    /// Session-affinity plugin (`cookie`, `header`, `source-ip`, or a `.wasm`): asked
    /// before the balancer which backend a returning client is pinned to. Default none.
    /// Reloadable.
    affinity: Option<FilePluginRef>,
    /// `"fallback"` or `"reject"`. Default `"fallback"`. Reloadable.
    #[serde(default)]
    on_plugin_error: OnPluginError,
    /// A candidate balancer run beside the live one on `sample_percent` of the
    /// decisions, which never acts: where it would have placed them is counted (its
    /// agreement with the live pick, its distribution). Default none. Reloadable.
    shadow: Option<Spanned<FileShadow>>,
    /// A candidate balancer that places `percent` of the decisions for real. Default
    /// none. Reloadable.
    canary: Option<Spanned<FileCanary>>,
    /// TCP connect timeout to a backend. Default 3 s. Range 1 ms to 7 days. Reloadable.
    connect_timeout_ms: Option<Spanned<FileDuration>>,
    /// Longest wait for a backend's response head. Default 60 s. Range 1 ms to 7 days.
    /// Reloadable.
    response_timeout_ms: Option<Spanned<FileDuration>>,
    /// How long an idle upstream keep-alive connection is kept. Default 60 s. Range 1 ms
    /// to 7 days. Reloadable.
    idle_timeout_ms: Option<Spanned<FileDuration>>,
    /// Most idle upstream connections kept per backend. Default 64. Range 0 to 65535.
    /// Reloadable.
    max_idle_per_backend: Option<Spanned<usize>>,
    /// When a backend leaves the pool (reload) or weir shuts down, its WebSockets get a
    /// close frame `1001` each, spread evenly over this window so clients do not all
    /// reconnect at once. Default 10 s. Range 0 to 7 days. Reloadable.
    drain_spread_ms: Option<Spanned<FileDuration>>,
    /// Tunnels of a drained backend still open this long after the drain began are cut.
    /// At least `drain_spread_ms`. Default 30 s. Range 0 to 7 days. Reloadable.
    drain_deadline_ms: Option<Spanned<FileDuration>>,
    /// Health evaluators (`threshold`, `outlier`, `latency`, or a `.wasm`): a backend takes
    /// new work only if none says unhealthy. Default `[{ plugin = "threshold" }]` when a
    /// probe is set, else none. Reloadable.
    #[serde(default)]
    health: Vec<FilePluginRef>,
    /// The timed probe (`{ kind = "tcp" | "http" | "websocket", ... }`). Default none.
    /// Reloadable.
    probe: Option<health::FileProbe>,
    /// Period of the evaluators' `tick`. Default 1 s. Range 10 ms to 1 hour. Reloadable.
    health_tick_ms: Option<Spanned<FileDuration>>,
    /// Statuses of live traffic that count as failures. Default `"500-599"`. Reloadable.
    passive_failure_statuses: Option<Spanned<String>>,
    /// Replicate this pool's stick tables (the `header` and `source-ip` affinity
    /// plugins') through `[cluster]` etcd, so a client pinned through one instance is
    /// served by the same backend through the others. Needs `[cluster]`. Default false.
    /// Reloadable.
    share_stick_tables: Option<Spanned<bool>>,
    /// Ramp of a recovered or added backend's share of new work. Default 0 (none). Range
    /// 0 to 1 day. Reloadable.
    slow_start_ms: Option<Spanned<FileDuration>>,
    /// Below this percentage of usable backends every backend is eligible. Default 50; 0
    /// disables. Reloadable.
    panic_threshold_percent: Option<Spanned<i64>>,
    /// `"keep"` or `"drain"`: the WebSockets of a backend that turns unhealthy. Default
    /// `"keep"`. Reloadable.
    #[serde(default)]
    on_unhealthy: OnUnhealthy,
    /// `"v1"` or `"v2"`: every connection to a backend starts with a PROXY protocol header
    /// naming the client (on http pools a connection then serves one client and is not
    /// shared). Default: none. Reloadable (new connections).
    send_proxy: Option<ProxyVersion>,
    /// What weir speaks to the backends: `{ protocol = "http1" | "h2" | "h2c", tls = {
    /// ... } }`. Default `{ protocol = "http1" }`, cleartext. http listeners only.
    /// Reloadable (new connections; the certificate files are read again by the reload).
    upstream: Option<Spanned<FileUpstream>>,
}

/// `upstream = { ... }` of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    /// `"http1"`, `"h2"` (HTTP/2 over TLS, by ALPN) or `"h2c"` (cleartext HTTP/2 with prior
    /// knowledge). Default `"http1"`.
    protocol: Option<Spanned<UpstreamProtocol>>,
    /// TLS to the backends. Default: none (cleartext). Required by `"h2"`.
    tls: Option<Spanned<FileUpstreamTls>>,
}

/// `upstream.tls = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstreamTls {
    /// PEM file of the CA certificates the backends' certificates must chain to, relative
    /// to the config file. Required unless `verify = false`.
    ca: Option<Spanned<String>>,
    /// The name the backends' certificates must be valid for (and the SNI sent). Default:
    /// each backend's host as written in its `address` (a DNS name or an IP address).
    server_name: Option<Spanned<String>>,
    /// PEM file of the client certificate chain weir presents (mTLS). With `key`.
    cert: Option<Spanned<String>>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1). With
    /// `cert`.
    key: Option<Spanned<String>>,
    /// Verify the backends' certificates. Default `true`; `false` must be written, takes no
    /// `ca`, and is logged as a warning whenever the pool is loaded.
    verify: Option<Spanned<bool>>,
}

/// One backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    /// `ip:port` or `host:port` (resolved at load). Required.
    address: Spanned<String>,
    /// Relative weight. Default 1; 0 takes no new work. Any 32-bit value (0 to
    /// 4294967295): plugins sum weights in 64 bits. Reloadable.
    #[serde(default = "one")]
    weight: u32,
    /// Most open connections at once (0 or absent: no limit); any 32-bit value, the width
    /// of the live connection count it is compared with. Reloadable.
    #[serde(default)]
    max_connections: u32,
    /// Labels passed to plugins.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// `{ plugin = "...", config = { ... }, memory_limit_mib = N, call_timeout_ms = N }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePluginRef {
    /// A pack name (`round-robin`) or a path to a `.wasm` component, relative to the
    /// config file.
    plugin: Spanned<String>,
    /// The plugin's own options, handed to it as JSON. Default `{}`.
    config: Option<Spanned<PluginTable>>,
    /// This plugin's memory limit per instance, in MiB: all its linear memories together.
    /// Default `[plugins] memory_limit_mib` (16). Range 1 to 1024. A reload that changes
    /// it loads the plugin anew.
    memory_limit_mib: Option<Spanned<u32>>,
    /// This plugin's deadline for one decision call (`pick`, `pinned`, `bind`). Default
    /// `[plugins] call_timeout_ms` (2 ms). Range 1 ms to 10 s. Balancers and affinity
    /// plugins only: a health plugin's calls run under `rebuild_timeout_ms`. A reload
    /// that changes it loads the plugin anew.
    call_timeout_ms: Option<Spanned<FileDuration>>,
}

/// `shadow = { plugin = "...", config = { ... }, sample_percent = 10 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShadow {
    /// A pack balancer name or a path to a `.wasm` balancer. Required.
    plugin: Spanned<String>,
    /// Its options, as a balancer's. Default `{}`.
    config: Option<Spanned<PluginTable>>,
    /// The share of decisions the candidate is also asked about, in percent (above 0,
    /// at most 100; fractions allowed). Default 10.
    sample_percent: Option<Spanned<f64>>,
}

/// `canary = { plugin = "...", config = { ... }, percent = 5 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCanary {
    /// A pack balancer name or a path to a `.wasm` balancer. Required.
    plugin: Spanned<String>,
    /// Its options, as a balancer's. Default `{}`.
    config: Option<Spanned<PluginTable>>,
    /// The share of decisions the candidate makes instead of the live balancer, in
    /// percent (above 0, at most 100; fractions allowed). Required.
    percent: Option<Spanned<f64>>,
}

/// A plugin's `config` table, with the place of each key and value for errors.
type PluginTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

// ---------------------------------------------------------------------------------------
// The validated config.

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, when it came from one.
    pub source: Option<PathBuf>,
    /// Process settings.
    pub runtime: RuntimeSettings,
    /// Plugin runtime settings.
    pub plugins: PluginSettings,
    /// The admin API, when the file has an `[admin]` table.
    pub admin: Option<AdminConfig>,
    /// The etcd cluster, when the file has a `[cluster]` table.
    pub cluster: Option<ClusterConfig>,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
}

/// Process settings, `[runtime]`. Read at start; a reload does not change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Worker threads of the async runtime, resolved: at least 1 (`0` in the file became
    /// the number of CPUs weir may run on).
    pub worker_threads: usize,
    /// How often freed heap memory is looked at and, after a burst, given back to the
    /// system ([`crate::core::memory`]); `None`: never.
    pub release_memory: Option<Duration>,
}

impl RuntimeSettings {
    /// `release_memory_ms` when the file does not say.
    pub const RELEASE_MEMORY: Duration = Duration::from_secs(1);

    /// `worker_threads = 0`: one per CPU this process may run on (CPU affinity and cgroup
    /// quotas honoured), 1 when that cannot be told.
    pub fn available_cpus() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { worker_threads: Self::available_cpus(), release_memory: Some(Self::RELEASE_MEMORY) }
    }
}

/// Plugin runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSettings {
    /// Compiled-plugin cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Deadline for one decision call.
    pub call_timeout: Duration,
    /// Deadline for `configure`, instantiation and `pool-changed`.
    pub rebuild_timeout: Duration,
    /// Linear-memory limit per instance, in bytes.
    pub memory_limit: usize,
    /// Swap plugins named by path when their file changes.
    pub watch: bool,
}

/// The admin API, `[admin]`. Read at start.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The bearer token mutating calls must present, if any (read from `token_file`).
    pub token: Option<Arc<str>>,
}

/// The token is a secret: never printed.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AdminConfig {
    /// The default address of the admin API.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9901));
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            cache_dir: None,
            call_timeout: Duration::from_millis(2),
            rebuild_timeout: Duration::from_millis(250),
            memory_limit: 16 << 20,
            watch: false,
        }
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name for logs.
    pub name: String,
    /// Bind address.
    pub listen: SocketAddr,
    /// Protocol.
    pub protocol: ListenerProtocol,
    /// Default pool.
    pub pool: String,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// Request-head and keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Limits on the tunnels (WebSockets) of this listener.
    pub tunnels: TunnelLimits,
    /// Most client connections open at once; `None`: no limit.
    pub max_connections: Option<usize>,
    /// Longest wait for the PROXY header and (tls-passthrough) the ClientHello.
    pub peek_timeout: Duration,
    /// PROXY protocol accepted, if it is.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS terminated (http listeners), if it is.
    pub tls: Option<TlsConfig>,
    /// Limits of HTTP/2 connections.
    pub http2: Http2Limits,
}

/// The limits of an http listener's HTTP/2 connections (`[listener.http2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Most streams open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request header list, as HTTP/2 counts it.
    pub max_header_list_size: u32,
    /// Initial flow-control window of each stream.
    pub initial_stream_window_size: u32,
    /// Initial flow-control window of each connection.
    pub initial_connection_window_size: u32,
}

impl Default for Http2Limits {
    /// Close to Envoy's settings for an edge proxy and to nginx's and HAProxy's: 100
    /// streams, 64 KiB of headers (as `max_header_bytes`), the protocol's own 64 KiB
    /// stream window and 1 MiB per connection.
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_size: 64 << 10,
            initial_stream_window_size: 65_535,
            initial_connection_window_size: 1 << 20,
        }
    }
}

/// Limits on tunnels (WebSockets of an http listener) and on the connections of a tcp or
/// tls-passthrough listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLimits {
    /// Closed after this long without a byte in either direction.
    pub idle_timeout: Duration,
    /// Closed after this long, whatever the traffic.
    pub max_lifetime: Option<Duration>,
}

/// A route: all given conditions must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lower-case host, or `*.suffix`.
    pub host: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Lower-case TLS server name, or `*.suffix` (tls-passthrough listeners).
    pub sni: Option<String>,
    /// Target pool.
    pub pool: String,
}

/// Whether `name` (any case) is `want` (lower case) or, for `*.suffix`, a subdomain of it.
fn name_matches(want: &str, name: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(suffix) => {
            // Bytes, not `str` slices: a cut inside a multi-byte character would panic.
            let (h, s) = (name.as_bytes(), suffix.as_bytes());
            h.len() > s.len() + 1 && h[h.len() - s.len()..].eq_ignore_ascii_case(s) && h[h.len() - s.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(want),
    }
}

impl Route {
    /// Whether a TLS connection with this server name (none: the ClientHello had no SNI)
    /// matches.
    pub fn matches_sni(&self, sni: Option<&str>) -> bool {
        match &self.sni {
            Some(want) => sni.is_some_and(|name| name_matches(want, name)),
            None => true,
        }
    }

    /// Whether a request with this host (any case, port allowed) and path matches.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            if !name_matches(want, strip_port(host)) {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            let prefix = prefix.trim_end_matches('/');
            match path.strip_prefix(prefix) {
                Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) || prefix.is_empty() => {}
                _ => return false,
            }
        }
        true
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Name.
    pub name: String,
    /// Backends, in file order.
    pub backends: Vec<BackendConfig>,
    /// Balancer plugin.
    pub balancer: PluginRef,
    /// Affinity plugin, if any.
    pub affinity: Option<PluginRef>,
    /// Policy when the balancer fails.
    pub on_plugin_error: OnPluginError,
    /// A candidate balancer asked beside the live one, never acting (`shadow`).
    pub shadow: Option<CandidateConfig>,
    /// A candidate balancer placing a share of the decisions (`canary`).
    pub canary: Option<CandidateConfig>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub response_timeout: Duration,
    /// Idle upstream connection lifetime.
    pub idle_timeout: Duration,
    /// Idle upstream connections kept per backend.
    pub max_idle_per_backend: usize,
    /// Window over which a drain spreads its close frames.
    pub drain_spread: Duration,
    /// When a drain cuts the tunnels still open.
    pub drain_deadline: Duration,
    /// Health checks, slow start and panic threshold.
    pub health: HealthConfig,
    /// PROXY protocol header sent first on every connection to a backend, if any.
    pub send_proxy: Option<ProxyVersion>,
    /// The protocol (and TLS) spoken to the backends.
    pub upstream: UpstreamConfig,
    /// Backends found by DNS (`discover`), beside the file's: those found are in
    /// `backends` too, marked [`BackendConfig::discovered`].
    pub discover: Option<DiscoverConfig>,
    /// Stick tables replicated through the cluster (`share_stick_tables`).
    pub share_stick_tables: bool,
}

/// A candidate balancer of a pool (`shadow` or `canary`): which plugin, and on what
/// share of the decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateConfig {
    /// The balancer plugin.
    pub plugin: PluginRef,
    /// The share of decisions, in millionths (1 to 1,000,000).
    pub per_million: u32,
}

impl CandidateConfig {
    /// A candidate on `percent` (0 to 100) of the decisions.
    pub fn new(plugin: PluginRef, percent: f64) -> Self {
        Self { plugin, per_million: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32 }
    }

    /// The share, in percent.
    pub fn percent(&self) -> f64 {
        f64::from(self.per_million) / 10_000.0
    }
}

/// What an http pool speaks to its backends (`upstream`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The HTTP version.
    pub protocol: UpstreamProtocol,
    /// TLS, if the connections are encrypted (always with `H2`, never with `H2c`).
    pub tls: Option<Arc<UpstreamTls>>,
}

/// The HTTP version weir speaks to a pool's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one exchange at a time per connection, idle connections kept for reuse.
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`): one connection per backend carries every stream.
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    /// Whether this is HTTP/2 (streams multiplexed on one shared connection).
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }

    /// The name written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// TLS to a pool's backends, its files read and parsed at load (`upstream.tls`).
#[derive(Debug)]
pub struct UpstreamTls {
    /// The trust anchors (the `ca` file's certificates); empty when `verify` is false.
    pub roots: Vec<CertificateDer<'static>>,
    /// The name every backend's certificate must hold (and the SNI sent); `None`: each
    /// backend's own host.
    pub server_name: Option<ServerName<'static>>,
    /// The client certificate chain and key presented to backends (mTLS), if any.
    pub client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Whether the backends' certificates are verified.
    pub verify: bool,
    /// Where the file writes this table.
    pub at: Location,
    /// The rustls client settings made from these (net::tls::client), once per loaded
    /// config: at load by the one writer, which reports a failure as a config error.
    pub client: OnceLock<Arc<rustls::ClientConfig>>,
}

/// Two TLS settings are the same when they trust, name and present the same things
/// (the files' contents, not their paths, so a reload sees a renewed certificate).
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots
            && self.server_name == other.server_name
            && self.client_auth == other.client_auth
            && self.verify == other.verify
    }
}

impl Eq for UpstreamTls {}

/// One backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The address as written (`host:port`), the backend's identity.
    pub address: String,
    /// Where to connect.
    pub socket_addr: SocketAddr,
    /// Weight.
    pub weight: u32,
    /// Most open connections (0 = no limit).
    pub max_connections: u32,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Found by the pool's `discover` rather than written in `backends`.
    pub discovered: bool,
}

/// Which plugin, with which options.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// Pack name or file.
    pub source: PluginSource,
    /// Options as JSON.
    pub config_json: String,
    /// Its own limits, where the entry sets them (else `[plugins]`'s apply).
    pub limits: PluginLimits,
    /// Where the file names it (for errors found when the plugin is loaded).
    pub at: Option<Location>,
    /// Where the file writes its `config` (for a plugin that refuses it), if it does.
    pub config_at: Option<Location>,
}

/// A plugin entry's own limits (`memory_limit_mib`, `call_timeout_ms`); `None`: the
/// `[plugins]` default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginLimits {
    /// Memory limit per instance (all its linear memories together), in bytes.
    pub memory_limit: Option<usize>,
    /// Deadline of one decision call.
    pub call_timeout: Option<Duration>,
}

impl PluginRef {
    /// A pack plugin with no options, named nowhere in a file.
    pub fn pack(name: &str) -> Self {
        Self {
            source: PluginSource::Pack(name.to_owned()),
            config_json: "{}".to_owned(),
            limits: PluginLimits::default(),
            at: None,
            config_at: None,
        }
    }
}

/// Two references are the same plugin with the same options and limits wherever the file
/// names them.
impl PartialEq for PluginRef {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.config_json == other.config_json && self.limits == other.limits
    }
}

impl Eq for PluginRef {}

/// A place in the config file: what errors found after parsing (a plugin that does not
/// load) point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or `<inline>`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path.
    pub key: String,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.key)
    }
}

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Embedded in the binary.
    Pack(String),
    /// A `.wasm` component on disk.
    File(PathBuf),
}

impl PluginSource {
    /// The one place that tells a pack name from a file: a name ending in `.wasm` or
    /// containing a `/` is a file (relative to `base`), anything else a pack name.
    /// Whether the pack has it is the plugin layer's question, asked when it loads.
    pub fn parse(name: &str, base: &Path) -> Self {
        let name = name.trim();
        if name.ends_with(".wasm") || name.contains('/') {
            PluginSource::File(base.join(name))
        } else {
            PluginSource::Pack(name.to_owned())
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Pack(name) => f.write_str(name),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Config {
    /// A config with no listener and no pool, and default settings.
    pub fn empty() -> Self {
        Self {
            source: None,
            runtime: RuntimeSettings::default(),
            plugins: PluginSettings::default(),
            admin: None,
            cluster: None,
            listeners: Vec::new(),
            pools: BTreeMap::new(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, Some(path))
    }

    /// Validates one pool shared through etcd: `text` is the TOML body of a `[pool.NAME]`
    /// table (the same keys), `source` names it in errors (the etcd key), relative plugin
    /// paths are taken from `base` (the config file's directory). `share_stick_tables` is
    /// allowed: an instance that reads etcd pools has `[cluster]`.
    pub fn parse_pool(name: &str, text: &str, source: &str, base: &Path) -> Result<PoolConfig, ConfigError> {
        let cx = Cx { text, file: source.to_owned() };
        let de = toml::Deserializer::parse(text).map_err(|e| cx.toml_error(&e, format!("pool.{name}")))?;
        let pool: FilePool = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let key = if path == "." { format!("pool.{name}") } else { format!("pool.{name}.{path}") };
            cx.toml_error(e.inner(), key)
        })?;
        cx.pool(name.to_owned(), pool, base, true)
    }

    /// Validates config text; `path` names it in errors and anchors relative plugin paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let cx = Cx { text, file: path.map_or_else(|| "<inline>".to_owned(), |p| p.display().to_string()) };
        let de = toml::Deserializer::parse(text).map_err(|e| cx.toml_error(&e, String::new()))?;
        let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // A `Spanned` value shows as a private field in the path: not a key of the file.
            let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let key = if key == "." { String::new() } else { key };
            cx.toml_error(e.inner(), key)
        })?;
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        cx.validate(file, base, path)
    }
}

/// Error-building context: the text (for line and column) and the file name.
struct Cx<'a> {
    text: &'a str,
    file: String,
}

impl Cx<'_> {
    fn toml_error(&self, e: &toml::de::Error, key: String) -> ConfigError {
        self.at(e.span(), key, e.message().trim_end().to_owned())
    }

    fn at(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        let Location { file, line, column, key } = self.location(span, key);
        ConfigError::Invalid { file, line, column, key, message }
    }

    fn location(&self, span: Option<Range<usize>>, key: String) -> Location {
        let (line, column) = self.position(span.map_or(0, |s| s.start));
        Location { file: self.file.clone(), line, column, key }
    }

    /// The 1-based line and column (in characters) of a byte offset of the text.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn spanned<T>(&self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        self.at(Some(value.span()), key.into(), message.into())
    }

    /// The value of a duration key, if given, checked against its range.
    fn duration(
        &self,
        value: Option<&Spanned<FileDuration>>,
        key: impl FnOnce() -> String,
        range: RangeInclusive<Duration>,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let d = value.get_ref().0;
        if range.contains(&d) {
            return Ok(Some(d));
        }
        let (lo, hi) = (duration::human(*range.start()), duration::human(*range.end()));
        Err(self.spanned(value, key(), format!("{} is out of range ({lo} to {hi})", duration::human(d))))
    }

    /// The value of a numeric key, if given, checked against its range.
    fn number<T: Copy + PartialOrd + std::fmt::Display>(
        &self,
        value: Option<&Spanned<T>>,
        key: impl FnOnce() -> String,
        range: RangeInclusive<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let n = *value.get_ref();
        if range.contains(&n) {
            return Ok(Some(n));
        }
        Err(self.spanned(value, key(), format!("{n} is out of range ({} to {})", range.start(), range.end())))
    }

    fn validate(&self, file: FileConfig, base: &Path, source: Option<&Path>) -> Result<Config, ConfigError> {
        let worker_threads = self
            .number(file.runtime.worker_threads.as_ref(), || "runtime.worker_threads".into(), bounds::WORKER_THREADS)?
            .unwrap_or(0);
        let release_memory = self
            .duration(
                file.runtime.release_memory_ms.as_ref(),
                || "runtime.release_memory_ms".into(),
                bounds::RELEASE_MEMORY,
            )?
            .unwrap_or(RuntimeSettings::RELEASE_MEMORY);
        let runtime = RuntimeSettings {
            worker_threads: if worker_threads == 0 { RuntimeSettings::available_cpus() } else { worker_threads },
            release_memory: Some(release_memory).filter(|d| !d.is_zero()),
        };

        let defaults = PluginSettings::default();
        let p = &file.plugins;
        let plugins = PluginSettings {
            cache_dir: p.cache_dir.as_ref().map(|d| base.join(d)),
            call_timeout: self
                .duration(p.call_timeout_ms.as_ref(), || "plugins.call_timeout_ms".into(), bounds::CALL_TIMEOUT)?
                .unwrap_or(defaults.call_timeout),
            rebuild_timeout: self
                .duration(
                    p.rebuild_timeout_ms.as_ref(),
                    || "plugins.rebuild_timeout_ms".into(),
                    bounds::REBUILD_TIMEOUT,
                )?
                .unwrap_or(defaults.rebuild_timeout),
            // At most 1024 MiB: 2^30 bytes, which fits a 32-bit usize too.
            memory_limit: self
                .number(p.memory_limit_mib.as_ref(), || "plugins.memory_limit_mib".into(), bounds::MEMORY_LIMIT_MIB)?
                .map_or(defaults.memory_limit, |m| (m as usize) << 20),
            watch: p.watch,
        };
        let admin = file.admin.as_ref().map(|a| self.admin(a, base)).transpose()?;
        let cluster = file.cluster.as_ref().map(|c| self.cluster(c, base)).transpose()?;

        let mut pools = BTreeMap::new();
        for (name, pool) in file.pools {
            let config = self.pool(name.clone(), pool, base, cluster.is_some())?;
            pools.insert(name, config);
        }

        let mut listeners = Vec::with_capacity(file.listeners.len());
        for (i, l) in file.listeners.into_iter().enumerate() {
            let key = format!("listener[{i}]");
            let listen = l.listen.get_ref().parse::<SocketAddr>().map_err(|e| {
                self.spanned(
                    &l.listen,
                    format!("{key}.listen"),
                    format!("`{}` is not ip:port: {e}", l.listen.get_ref()),
                )
            })?;
            // With `[cluster]`, a pool the file does not define may come from etcd
            // (`<prefix>/pools/NAME`): requests answer 503 until it arrives.
            let pool_exists = |p: &Spanned<String>, k: String| {
                if pools.contains_key(p.get_ref()) || cluster.is_some() {
                    Ok(p.get_ref().clone())
                } else {
                    Err(self.spanned(p, k, format!("no pool named `{}` (define [pool.{}])", p.get_ref(), p.get_ref())))
                }
            };
            let pool = pool_exists(&l.pool, format!("{key}.pool"))?;
            let protocol = l.protocol;
            self.keys_fit(&l, &key)?;
            let mut routes = Vec::with_capacity(l.route.len());
            for (j, r) in l.route.into_iter().enumerate() {
                let rkey = format!("{key}.route[{j}]");
                self.route_fits(&r, protocol, &rkey)?;
                routes.push(Route {
                    host: r.host.map(|h| h.into_inner().to_ascii_lowercase()),
                    path_prefix: r.path_prefix.map(Spanned::into_inner),
                    sni: r.sni.map(|h| h.into_inner().trim_end_matches('.').to_ascii_lowercase()),
                    pool: pool_exists(&r.pool, format!("{rkey}.pool"))?,
                });
            }
            let header_read_timeout = self
                .duration(
                    l.header_read_timeout_ms.as_ref(),
                    || format!("{key}.header_read_timeout_ms"),
                    bounds::TIMEOUT,
                )?
                .unwrap_or(Duration::from_secs(30));
            let max_header_bytes = self
                .number(l.max_header_bytes.as_ref(), || format!("{key}.max_header_bytes"), bounds::MAX_HEADER_BYTES)?
                .unwrap_or(64 << 10);
            let max_headers = self
                .number(l.max_headers.as_ref(), || format!("{key}.max_headers"), bounds::MAX_HEADERS)?
                .unwrap_or(100);
            // http: the WebSockets' limits; tcp and tls-passthrough: the connections'.
            let (idle_key, idle, life_key, life) = if protocol.is_l4() {
                ("idle_timeout_ms", &l.idle_timeout_ms, "max_lifetime_ms", &l.max_lifetime_ms)
            } else {
                (
                    "tunnel_idle_timeout_ms",
                    &l.tunnel_idle_timeout_ms,
                    "tunnel_max_lifetime_ms",
                    &l.tunnel_max_lifetime_ms,
                )
            };
            let tunnels = TunnelLimits {
                idle_timeout: self
                    .duration(idle.as_ref(), || format!("{key}.{idle_key}"), bounds::TIMEOUT)?
                    .unwrap_or(Duration::from_secs(3600)),
                max_lifetime: self.duration(
                    life.as_ref(),
                    || format!("{key}.{life_key}"),
                    bounds::TUNNEL_MAX_LIFETIME,
                )?,
            };
            let peek_timeout = self
                .duration(l.peek_timeout_ms.as_ref(), || format!("{key}.peek_timeout_ms"), bounds::TIMEOUT)?
                .unwrap_or(Duration::from_secs(5));
            let proxy_protocol = self.proxy_protocol(l.proxy_protocol, l.proxy_protocol_from, &key)?;
            let tls = match l.tls {
                None => None,
                Some(tls) if protocol != ListenerProtocol::Http => {
                    let why = if protocol == ListenerProtocol::TlsPassthrough {
                        "terminates TLS on http listeners only (a tls-passthrough listener forwards TLS untouched)"
                    } else {
                        "terminates TLS on http listeners only"
                    };
                    return Err(self.spanned(&tls, format!("{key}.tls"), why));
                }
                Some(tls) => Some(self.tls(tls.into_inner(), base, &key)?),
            };
            let max_connections = match &l.max_connections {
                None => None,
                Some(n) => match usize::try_from(*n.get_ref()) {
                    Ok(v) if (1..=MAX_CONNECTIONS).contains(n.get_ref()) => Some(v),
                    _ => {
                        return Err(self.spanned(
                            n,
                            format!("{key}.max_connections"),
                            format!("{} is out of range: 1 to {MAX_CONNECTIONS}", n.get_ref()),
                        ));
                    }
                },
            };
            let http2 = self.http2(l.http2.as_ref(), &key)?;
            listeners.push(ListenerConfig {
                name: l.name.unwrap_or_else(|| format!("listener-{i}")),
                listen,
                protocol,
                pool,
                routes,
                header_read_timeout,
                max_header_bytes,
                max_headers,
                tunnels,
                max_connections,
                peek_timeout,
                proxy_protocol,
                tls,
                http2,
            });
        }
        Ok(Config { source: source.map(Path::to_path_buf), runtime, plugins, admin, cluster, listeners, pools })
    }

    /// One `[pool.NAME]` table (from the file, or from etcd: `cluster` says whether
    /// `[cluster]` is set, which `share_stick_tables` needs).
    fn pool(&self, name: String, pool: FilePool, base: &Path, cluster: bool) -> Result<PoolConfig, ConfigError> {
        let key = format!("pool.{name}");
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(pool.backends.len());
        for (i, b) in pool.backends.into_iter().enumerate() {
            let bkey = format!("{key}.backends[{i}].address");
            let address = b.address.get_ref().trim().to_owned();
            if backends.iter().any(|o| o.address == address) {
                return Err(self.spanned(&b.address, bkey, format!("duplicate backend `{address}`")));
            }
            let socket_addr = resolve(&address).map_err(|m| self.spanned(&b.address, bkey, m))?;
            backends.push(BackendConfig {
                address,
                socket_addr,
                weight: b.weight,
                max_connections: b.max_connections,
                labels: b.labels.into_iter().collect(),
                discovered: false,
            });
        }
        let discover = pool.discover.map(|d| self.discover(d, &key)).transpose()?;
        let balancer = match pool.balancer {
            Some(p) => self.plugin_ref(p, base, &format!("{key}.balancer"), true)?,
            None => PluginRef::pack("round-robin"),
        };
        let timeout = |value: &Option<Spanned<FileDuration>>, name: &str, default: Duration| {
            Ok::<_, ConfigError>(
                self.duration(value.as_ref(), || format!("{key}.{name}"), bounds::TIMEOUT)?.unwrap_or(default),
            )
        };
        let connect_timeout = timeout(&pool.connect_timeout_ms, "connect_timeout_ms", Duration::from_secs(3))?;
        let response_timeout = timeout(&pool.response_timeout_ms, "response_timeout_ms", Duration::from_secs(60))?;
        let idle_timeout = timeout(&pool.idle_timeout_ms, "idle_timeout_ms", Duration::from_secs(60))?;
        let max_idle_per_backend = self
            .number(
                pool.max_idle_per_backend.as_ref(),
                || format!("{key}.max_idle_per_backend"),
                bounds::MAX_IDLE_PER_BACKEND,
            )?
            .unwrap_or(64);
        let drain_spread = self
            .duration(pool.drain_spread_ms.as_ref(), || format!("{key}.drain_spread_ms"), bounds::DRAIN)?
            .unwrap_or(Duration::from_secs(10));
        let drain_deadline = self
            .duration(pool.drain_deadline_ms.as_ref(), || format!("{key}.drain_deadline_ms"), bounds::DRAIN)?
            .unwrap_or(Duration::from_secs(30));
        // Blame the key written: the deadline when given, else the spread (then longer
        // than the default deadline; the two defaults agree).
        let (spread, deadline) = (duration::human(drain_spread), duration::human(drain_deadline));
        match (&pool.drain_deadline_ms, &pool.drain_spread_ms) {
            (Some(d), _) if drain_deadline < drain_spread => {
                return Err(self.spanned(
                    d,
                    format!("{key}.drain_deadline_ms"),
                    format!("{deadline} is shorter than drain_spread_ms ({spread})"),
                ));
            }
            (None, Some(s)) if drain_deadline < drain_spread => {
                return Err(self.spanned(
                    s,
                    format!("{key}.drain_spread_ms"),
                    format!("{spread} is longer than drain_deadline_ms ({deadline}, its default); set both"),
                ));
            }
            _ => {}
        }
        let upstream = match pool.upstream {
            Some(u) => self.upstream(u, base, &format!("{key}.upstream"))?,
            None => UpstreamConfig::default(),
        };
        let affinity = match pool.affinity {
            Some(p) => Some(self.plugin_ref(p, base, &format!("{key}.affinity"), true)?),
            None => None,
        };
        let shadow = match pool.shadow {
            Some(c) => {
                let c = c.into_inner();
                let percent = self.percent(c.sample_percent.as_ref(), &format!("{key}.shadow.sample_percent"))?;
                let plugin = self.plugin_ref(
                    FilePluginRef { plugin: c.plugin, config: c.config, memory_limit_mib: None, call_timeout_ms: None },
                    base,
                    &format!("{key}.shadow"),
                    true,
                )?;
                Some(CandidateConfig::new(plugin, percent.unwrap_or(10.0)))
            }
            None => None,
        };
        let canary = match pool.canary {
            Some(c) => {
                let span = c.span();
                let c = c.into_inner();
                let percent = self.percent(c.percent.as_ref(), &format!("{key}.canary.percent"))?.ok_or_else(|| {
                    self.at(
                        Some(span),
                        format!("{key}.canary"),
                        "needs `percent`, the share of decisions the candidate makes".into(),
                    )
                })?;
                let plugin = self.plugin_ref(
                    FilePluginRef { plugin: c.plugin, config: c.config, memory_limit_mib: None, call_timeout_ms: None },
                    base,
                    &format!("{key}.canary"),
                    true,
                )?;
                Some(CandidateConfig::new(plugin, percent))
            }
            None => None,
        };
        let health = self.health(
            health::FilePoolHealth {
                health: pool.health,
                probe: pool.probe,
                health_tick_ms: pool.health_tick_ms,
                passive_failure_statuses: pool.passive_failure_statuses,
                slow_start_ms: pool.slow_start_ms,
                panic_threshold_percent: pool.panic_threshold_percent,
                on_unhealthy: pool.on_unhealthy,
            },
            base,
            &key,
        )?;
        let share_stick_tables = match &pool.share_stick_tables {
            Some(s) if *s.get_ref() && !cluster => {
                return Err(self.spanned(
                    s,
                    format!("{key}.share_stick_tables"),
                    "stick tables are shared through etcd: add a [cluster] table",
                ));
            }
            Some(s) => *s.get_ref(),
            None => false,
        };
        Ok(PoolConfig {
            name,
            backends,
            balancer,
            affinity,
            on_plugin_error: pool.on_plugin_error,
            shadow,
            canary,
            connect_timeout,
            response_timeout,
            idle_timeout,
            max_idle_per_backend,
            drain_spread,
            drain_deadline,
            health,
            send_proxy: pool.send_proxy,
            upstream,
            discover,
            share_stick_tables,
        })
    }

    /// A route's conditions must be ones its listener can see: host and path on http,
    /// the server name on tls-passthrough, nothing on tcp.
    fn route_fits(&self, r: &FileRoute, protocol: ListenerProtocol, key: &str) -> Result<(), ConfigError> {
        let wrong = |value: &Spanned<String>, name: &str, why: &str| {
            Err(self.spanned(value, format!("{key}.{name}"), format!("a {} listener {why}", protocol.as_str())))
        };
        match protocol {
            ListenerProtocol::Http => {
                if let Some(sni) = &r.sni {
                    return wrong(sni, "sni", "routes by `host` and `path_prefix` (`sni` is for tls-passthrough)");
                }
            }
            ListenerProtocol::TlsPassthrough => {
                for (value, name) in [(&r.host, "host"), (&r.path_prefix, "path_prefix")] {
                    if let Some(value) = value {
                        return wrong(value, name, "cannot see HTTP; route by `sni`");
                    }
                }
            }
            ListenerProtocol::Tcp => {
                for (value, name) in [(&r.host, "host"), (&r.path_prefix, "path_prefix"), (&r.sni, "sni")] {
                    if let Some(value) = value {
                        return wrong(
                            value,
                            name,
                            "sees no name or path to route on; use `pool`, or protocol = \"tls-passthrough\" to route by `sni`",
                        );
                    }
                }
                return Err(self.spanned(
                    &r.pool,
                    key.to_owned(),
                    "a tcp listener has nothing to route on: its `pool` takes every connection",
                ));
            }
        }
        if let Some(sni) = &r.sni {
            let name = sni.get_ref().trim_end_matches('.');
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let valid = !bare.is_empty()
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                return Err(self.spanned(
                    sni,
                    format!("{key}.sni"),
                    format!("`{}` is not a server name (`db.example.com` or `*.example.com`)", sni.get_ref()),
                ));
            }
        }
        Ok(())
    }

    /// Keys that belong to the other kind of listener are errors, not silently ignored.
    fn keys_fit(&self, l: &FileListener, key: &str) -> Result<(), ConfigError> {
        let http_only: [(&str, Option<std::ops::Range<usize>>); 6] = [
            ("header_read_timeout_ms", l.header_read_timeout_ms.as_ref().map(Spanned::span)),
            ("max_header_bytes", l.max_header_bytes.as_ref().map(Spanned::span)),
            ("max_headers", l.max_headers.as_ref().map(Spanned::span)),
            ("tunnel_idle_timeout_ms", l.tunnel_idle_timeout_ms.as_ref().map(Spanned::span)),
            ("tunnel_max_lifetime_ms", l.tunnel_max_lifetime_ms.as_ref().map(Spanned::span)),
            ("http2", l.http2.as_ref().map(Spanned::span)),
        ];
        let l4_only: [(&str, Option<std::ops::Range<usize>>); 2] = [
            ("idle_timeout_ms", l.idle_timeout_ms.as_ref().map(Spanned::span)),
            ("max_lifetime_ms", l.max_lifetime_ms.as_ref().map(Spanned::span)),
        ];
        let (wrong, why): (&[_], _) = if l.protocol.is_l4() {
            (&http_only, "applies to http listeners only")
        } else {
            (
                &l4_only,
                "applies to tcp and tls-passthrough listeners (an http listener's WebSockets use tunnel_idle_timeout_ms and tunnel_max_lifetime_ms)",
            )
        };
        for (name, span) in wrong {
            if let Some(span) = span {
                return Err(self.at(Some(span.clone()), format!("{key}.{name}"), why.to_owned()));
            }
        }
        Ok(())
    }

    /// `http2`: each limit given, checked against its range; the others defaulted.
    fn http2(&self, file: Option<&Spanned<FileHttp2>>, key: &str) -> Result<Http2Limits, ConfigError> {
        let mut limits = Http2Limits::default();
        let Some(file) = file else { return Ok(limits) };
        let file = file.get_ref();
        let set = |value: &Option<Spanned<u32>>, name: &str, range: RangeInclusive<u32>, to: &mut u32| {
            if let Some(v) = self.number(value.as_ref(), || format!("{key}.http2.{name}"), range)? {
                *to = v;
            }
            Ok::<_, ConfigError>(())
        };
        set(
            &file.max_concurrent_streams,
            "max_concurrent_streams",
            bounds::H2_MAX_CONCURRENT_STREAMS,
            &mut limits.max_concurrent_streams,
        )?;
        set(
            &file.max_header_list_size,
            "max_header_list_size",
            bounds::H2_MAX_HEADER_LIST_SIZE,
            &mut limits.max_header_list_size,
        )?;
        set(
            &file.initial_stream_window_size,
            "initial_stream_window_size",
            bounds::H2_WINDOW,
            &mut limits.initial_stream_window_size,
        )?;
        set(
            &file.initial_connection_window_size,
            "initial_connection_window_size",
            bounds::H2_WINDOW,
            &mut limits.initial_connection_window_size,
        )?;
        Ok(limits)
    }

    /// `proxy_protocol` and `proxy_protocol_from`, which go together.
    fn proxy_protocol(
        &self,
        accept: Option<Spanned<ProxyAccept>>,
        from: Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Result<Option<ProxyProtocol>, ConfigError> {
        let (accept, from) = match (accept, from) {
            (None, None) => return Ok(None),
            (Some(a), Some(f)) => (a, f),
            (Some(a), None) => {
                return Err(self.spanned(
                    &a,
                    format!("{key}.proxy_protocol"),
                    "needs `proxy_protocol_from`: the networks allowed to send a PROXY header, e.g. [\"10.0.0.0/8\"] ([\"0.0.0.0/0\", \"::/0\"] trusts every source)",
                ));
            }
            (None, Some(f)) => {
                return Err(self.spanned(
                    &f,
                    format!("{key}.proxy_protocol_from"),
                    "has no effect without `proxy_protocol = \"v1\" | \"v2\" | \"any\"`",
                ));
            }
        };
        let mut nets = Vec::with_capacity(from.get_ref().len());
        for (i, net) in from.get_ref().iter().enumerate() {
            let text = net.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.spanned(
                        net,
                        format!("{key}.proxy_protocol_from[{i}]"),
                        format!("`{text}` is not an address or network (`10.0.0.0/8`, `192.0.2.7`, `::1`)"),
                    )
                })?;
            nets.push(parsed.trunc());
        }
        if nets.is_empty() {
            return Err(self.spanned(
                &from,
                format!("{key}.proxy_protocol_from"),
                "is empty: name at least one network allowed to send a PROXY header",
            ));
        }
        Ok(Some(ProxyProtocol { accept: *accept.get_ref(), from: nets }))
    }

    /// A pool's `upstream`: the protocol, and the TLS files read and parsed, so a missing
    /// or malformed certificate is an error of the file, located, not of a connection.
    fn upstream(&self, u: Spanned<FileUpstream>, base: &Path, key: &str) -> Result<UpstreamConfig, ConfigError> {
        let u = u.into_inner();
        let protocol = u.protocol.as_ref().map_or(UpstreamProtocol::Http1, |p| *p.get_ref());
        match (protocol, &u.tls, &u.protocol) {
            (UpstreamProtocol::H2, None, Some(p)) => {
                return Err(self.spanned(
                    p,
                    format!("{key}.protocol"),
                    "\"h2\" is HTTP/2 over TLS (by ALPN) and needs `tls = { ca = \"...\" }`; \"h2c\" is cleartext HTTP/2",
                ));
            }
            (UpstreamProtocol::H2c, Some(t), _) => {
                return Err(self.spanned(
                    t,
                    format!("{key}.tls"),
                    "\"h2c\" is cleartext HTTP/2; HTTP/2 over TLS is protocol = \"h2\"",
                ));
            }
            _ => {}
        }
        let tls = match u.tls {
            Some(t) => Some(Arc::new(self.upstream_tls(t, base, &format!("{key}.tls"))?)),
            None => None,
        };
        Ok(UpstreamConfig { protocol, tls })
    }

    /// `upstream.tls`: the CA, the client certificate and key read from their files.
    fn upstream_tls(&self, t: Spanned<FileUpstreamTls>, base: &Path, key: &str) -> Result<UpstreamTls, ConfigError> {
        let at = self.location(Some(t.span()), key.to_owned());
        let span = t.span();
        let t = t.into_inner();
        let verify = t.verify.as_ref().is_none_or(|v| *v.get_ref());
        let read = |value: &Spanned<String>, name: &str| {
            let path = base.join(value.get_ref());
            std::fs::read(&path).map(|bytes| (path.clone(), bytes)).map_err(|e| {
                self.spanned(value, format!("{key}.{name}"), format!("cannot read {}: {e}", path.display()))
            })
        };
        let certificates = |value: &Spanned<String>, name: &str| {
            let (path, bytes) = read(value, name)?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.spanned(value, format!("{key}.{name}"), format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(self.spanned(
                    value,
                    format!("{key}.{name}"),
                    format!("{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display()),
                ));
            }
            Ok((path, certs))
        };
        let roots = match (&t.ca, verify) {
            (Some(ca), true) => {
                let (path, certs) = certificates(ca, "ca")?;
                // Each must be usable as a trust anchor; found here, not at the first connect.
                let mut store = rustls::RootCertStore::empty();
                for (i, cert) in certs.iter().enumerate() {
                    store.add(cert.clone()).map_err(|e| {
                        self.spanned(
                            ca,
                            format!("{key}.ca"),
                            format!("{}: certificate {} is not a usable CA certificate: {e}", path.display(), i + 1),
                        )
                    })?;
                }
                certs
            }
            (Some(ca), false) => {
                return Err(self.spanned(
                    ca,
                    format!("{key}.ca"),
                    "has no effect with `verify = false`: give one or the other",
                ));
            }
            (None, true) => {
                return Err(self.at(
                    Some(span),
                    key.to_owned(),
                    "needs `ca`, the PEM file of the CA certificates the backends' certificates chain to (or, to skip verification, `verify = false`)".to_owned(),
                ));
            }
            (None, false) => Vec::new(),
        };
        let server_name = match &t.server_name {
            Some(name) => Some(ServerName::try_from(name.get_ref().as_str()).map(|n| n.to_owned()).map_err(|_| {
                self.spanned(
                    name,
                    format!("{key}.server_name"),
                    format!("`{}` is not a DNS name or an IP address", name.get_ref()),
                )
            })?),
            None => None,
        };
        let client_auth = match (&t.cert, &t.key) {
            (None, None) => None,
            (Some(cert), Some(k)) => {
                let (_, chain) = certificates(cert, "cert")?;
                let (path, bytes) = read(k, "key")?;
                let private = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    self.spanned(k, format!("{key}.key"), format!("{}: no usable PEM private key: {e}", path.display()))
                })?;
                Some((chain, private))
            }
            (Some(cert), None) => {
                return Err(self.spanned(
                    cert,
                    format!("{key}.cert"),
                    "needs `key`, the client certificate's private key",
                ));
            }
            (None, Some(k)) => {
                return Err(self.spanned(
                    k,
                    format!("{key}.key"),
                    "needs `cert`, the client certificate it belongs to",
                ));
            }
        };
        Ok(UpstreamTls { roots, server_name, client_auth, verify, at, client: OnceLock::new() })
    }

    /// A share in percent: above 0, at most 100.
    fn percent(&self, value: Option<&Spanned<f64>>, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        let p = *v.get_ref();
        if !(p > 0.0 && p <= 100.0) {
            return Err(self.spanned(v, key, format!("{p} is out of range (above 0, at most 100)")));
        }
        Ok(Some(p))
    }

    /// `[admin]`: the address, and the token read from its file. A non-loopback address
    /// without a token is refused: anyone who can reach it could swap the plugins.
    fn admin(&self, a: &Spanned<FileAdmin>, base: &Path) -> Result<AdminConfig, ConfigError> {
        let listen =
            match &a.get_ref().listen {
                None => AdminConfig::DEFAULT_LISTEN,
                Some(l) => l.get_ref().trim().parse::<SocketAddr>().map_err(|e| {
                    self.spanned(l, "admin.listen", format!("`{}` is not an ip:port: {e}", l.get_ref()))
                })?,
            };
        let token = match &a.get_ref().token_file {
            None => None,
            Some(f) => {
                let path = base.join(f.get_ref());
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| self.spanned(f, "admin.token_file", format!("cannot read {}: {e}", path.display())))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(self.spanned(f, "admin.token_file", format!("{} is empty", path.display())));
                }
                if token.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(self.spanned(
                        f,
                        "admin.token_file",
                        format!("{}: the token must be one word of printable ASCII", path.display()),
                    ));
                }
                Some(Arc::from(token))
            }
        };
        if token.is_none() && !listen.ip().is_loopback() {
            let at = a.get_ref().listen.as_ref().map_or(a.span(), Spanned::span);
            return Err(self.at(
                Some(at),
                "admin.listen".into(),
                format!("{listen} is not a loopback address: set admin.token_file, or anyone who can reach it can swap plugins"),
            ));
        }
        Ok(AdminConfig { listen, token })
    }

    /// A plugin entry. `decides`: a balancer or affinity plugin, whose decision calls a
    /// `call_timeout_ms` bounds (a health plugin's calls run under `rebuild_timeout_ms`).
    fn plugin_ref(&self, p: FilePluginRef, base: &Path, key: &str, decides: bool) -> Result<PluginRef, ConfigError> {
        let source = PluginSource::parse(p.plugin.get_ref(), base);
        let at = self.location(Some(p.plugin.span()), format!("{key}.plugin"));
        let config_at = p.config.as_ref().map(|c| self.location(Some(c.span()), format!("{key}.config")));
        let config_json = self.plugin_config(p.config, base, &format!("{key}.config"))?;
        let memory_limit = self
            .number(p.memory_limit_mib.as_ref(), || format!("{key}.memory_limit_mib"), bounds::MEMORY_LIMIT_MIB)?
            .map(|m| (m as usize) << 20);
        if let (Some(t), false) = (&p.call_timeout_ms, decides) {
            return Err(self.spanned(
                t,
                format!("{key}.call_timeout_ms"),
                "a health plugin's calls run under [plugins] rebuild_timeout_ms; call_timeout_ms is for balancers and affinity plugins",
            ));
        }
        let call_timeout =
            self.duration(p.call_timeout_ms.as_ref(), || format!("{key}.call_timeout_ms"), bounds::CALL_TIMEOUT)?;
        let limits = PluginLimits { memory_limit, call_timeout };
        Ok(PluginRef { source, config_json, limits, at: Some(at), config_at })
    }
}

impl Cx<'_> {
    /// A plugin's `config` as the JSON handed to it. Each `NAME_file = "path"` is replaced
    /// with `NAME = "<the file's contents>"` (trailing whitespace trimmed), the `_FILE`
    /// convention of container secrets: a plugin cannot read files (it is granted none),
    /// and a secret such as the `cookie` plugin's signing key belongs in a file of its
    /// own, not in the config. The path is relative to the config file.
    fn plugin_config(
        &self,
        config: Option<Spanned<PluginTable>>,
        base: &Path,
        key: &str,
    ) -> Result<String, ConfigError> {
        let Some(config) = config else { return Ok("{}".to_owned()) };
        let span = config.span();
        let entries = config.into_inner();
        let mut table = toml::Table::new();
        for (k, v) in &entries {
            let Some(name) = k.get_ref().strip_suffix("_file") else {
                table.insert(k.get_ref().clone(), v.get_ref().clone());
                continue;
            };
            let at = format!("{key}.{}", k.get_ref());
            let toml::Value::String(path) = v.get_ref() else {
                return Err(self.spanned(v, at, "expected a path (a string)"));
            };
            if entries.keys().any(|other| other.get_ref() == name) {
                return Err(self.spanned(k, at, format!("give either `{name}` or `{}`, not both", k.get_ref())));
            }
            let path = base.join(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| self.spanned(v, at, format!("cannot read {}: {e}", path.display())))?;
            table.insert(name.to_owned(), toml::Value::String(text.trim_end().to_owned()));
        }
        serde_json::to_string(&table).map_err(|e| self.at(Some(span), key.to_owned(), e.to_string()))
    }
}

/// Resolves `host:port` to one socket address.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Ok(sa);
    }
    use std::net::ToSocketAddrs;
    match address.to_socket_addrs() {
        Ok(mut it) => it.next().ok_or_else(|| format!("`{address}` resolves to no address")),
        Err(e) => Err(format!("`{address}` is not a usable host:port: {e}")),
    }
}
