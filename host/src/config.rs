//! Configuration: the TOML file as written (`File*` types, straight from serde) and the
//! validated [`Config`] the rest of weir runs on.
//!
//! Every error names the file, line, column and dotted key it is about. Unknown keys are
//! errors, so a misspelt option never silently falls back to a default. Field docs below
//! give each option's default and whether a reload can change it (listeners, pools,
//! backends and plugins are reloadable; `[runtime]` and `[plugins]` are read at start only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod duration;
#[cfg(test)]
mod tests;

pub use duration::FileDuration;

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
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 reverse proxy.
    Http,
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
    /// The process. Not reloadable.
    #[serde(default)]
    runtime: FileRuntime,
    /// Plugin runtime limits. Not reloadable.
    #[serde(default)]
    plugins: FilePlugins,
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
    /// Worker threads serving traffic; 0 means one per CPU weir may run on. Default 0.
    /// Range 0 to 1024. Read at start; not reloadable.
    worker_threads: Option<Spanned<usize>>,
}

/// `[plugins]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugins {
    /// Where compiled plugins are cached. Default: `$WEIR_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/weir`, else `~/.cache/weir`.
    cache_dir: Option<PathBuf>,
    /// Deadline for one decision call. Default 2 ms.
    call_timeout_ms: Option<FileDuration>,
    /// Deadline for `configure`, instantiation and `pool-changed` (where a plugin
    /// rebuilds a ring or table). Default 250 ms. Read at start, like this whole table.
    rebuild_timeout_ms: Option<FileDuration>,
    /// Linear-memory limit for one plugin instance, in MiB. Default 16.
    memory_limit_mib: Option<u32>,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    /// Name used in logs and the admin API. Default `listener-N`.
    name: Option<String>,
    /// Address to bind, `ip:port`. Required.
    listen: Spanned<String>,
    /// `"http"`. Default `"http"`.
    #[serde(default = "default_protocol")]
    protocol: ListenerProtocol,
    /// Pool for requests no route matches. Required.
    pool: Spanned<String>,
    /// Routes, first match wins.
    #[serde(default)]
    route: Vec<FileRoute>,
    /// Longest wait for a complete request head, and for the next request on an idle
    /// keep-alive connection. Default 30 s.
    header_read_timeout_ms: Option<FileDuration>,
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    /// Default 65536.
    max_header_bytes: Option<usize>,
    /// Most request headers; more gets 431. Default 100.
    max_headers: Option<usize>,
    /// A tunnel (WebSocket) with no bytes in either direction for this long is closed.
    /// Default 1 h (HAProxy's usual `timeout tunnel`).
    tunnel_idle_timeout_ms: Option<FileDuration>,
    /// A tunnel is closed after this long whatever its traffic. Default: no limit.
    tunnel_max_lifetime_ms: Option<FileDuration>,
}

fn default_protocol() -> ListenerProtocol {
    ListenerProtocol::Http
}

/// `[[listener.route]]`: every condition given must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    /// Host to match, case-insensitive, port ignored; `*.example.com` matches subdomains.
    host: Option<String>,
    /// Path prefix to match, segment-aware (`/api` matches `/api` and `/api/x`, not `/apix`).
    path_prefix: Option<String>,
    /// Pool to send matching requests to. Required.
    pool: Spanned<String>,
}

/// `[pool.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    /// The backends. Reloadable: per-backend counters survive a reload.
    backends: Vec<FileBackend>,
    /// Balancer plugin. Default `{ plugin = "round-robin" }`. Reloadable.
    balancer: Option<FilePluginRef>,
    /// Session-affinity plugin (`cookie`, `header`, `source-ip`, or a `.wasm`): asked
    /// before the balancer which backend a returning client is pinned to. Default none.
    /// Reloadable.
    affinity: Option<FilePluginRef>,
    /// `"fallback"` or `"reject"`. Default `"fallback"`. Reloadable.
    #[serde(default)]
    on_plugin_error: OnPluginError,
    /// TCP connect timeout to a backend. Default 3 s. Reloadable.
    connect_timeout_ms: Option<FileDuration>,
    /// Longest wait for a backend's response head. Default 60 s. Reloadable.
    response_timeout_ms: Option<FileDuration>,
    /// How long an idle upstream keep-alive connection is kept. Default 60 s. Reloadable.
    idle_timeout_ms: Option<FileDuration>,
    /// Most idle upstream connections kept per backend. Default 64. Reloadable.
    max_idle_per_backend: Option<usize>,
    /// When a backend leaves the pool (reload) or weir shuts down, its WebSockets get a
    /// close frame `1001` each, spread evenly over this window so clients do not all
    /// reconnect at once. Default 10 s. Reloadable.
    drain_spread_ms: Option<FileDuration>,
    /// Tunnels of a drained backend still open this long after the drain began are cut.
    /// At least `drain_spread_ms`. Default 30 s. Reloadable.
    drain_deadline_ms: Option<FileDuration>,
}

/// One backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    /// `ip:port` or `host:port` (resolved at load). Required.
    address: Spanned<String>,
    /// Relative weight. Default 1; 0 takes no new work.
    #[serde(default = "one")]
    weight: u32,
    /// Most open connections at once (0 or absent: no limit). Reloadable.
    #[serde(default)]
    max_connections: u32,
    /// Labels passed to plugins.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// `{ plugin = "...", config = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePluginRef {
    /// A pack name (`round-robin`) or a path to a `.wasm` component, relative to the
    /// config file.
    plugin: Spanned<String>,
    /// The plugin's own options, handed to it as JSON. Default `{}`.
    config: Option<toml::Table>,
}

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
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
}

/// Process settings, `[runtime]`. Read at start; a reload does not change them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Worker threads serving traffic, at least 1 (`0` in the file became the number of
    /// CPUs weir may run on). Each keeps its own instance of every plugin it calls.
    pub worker_threads: usize,
}

impl RuntimeSettings {
    /// Most worker threads a config may ask for.
    pub const MAX_WORKER_THREADS: usize = 1024;

    /// The CPUs this process may run on (CPU affinity and cgroup quotas honoured), 1 when
    /// that cannot be told.
    pub fn available_cpus() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { worker_threads: Self::available_cpus() }
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
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            cache_dir: None,
            call_timeout: Duration::from_millis(2),
            rebuild_timeout: Duration::from_millis(250),
            memory_limit: 16 << 20,
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
}

/// Limits on tunnels.
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
    /// Target pool.
    pub pool: String,
}

impl Route {
    /// Whether a request with this host (any case, port allowed) and path matches.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let host = strip_port(host);
            let ok = match want.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => host.eq_ignore_ascii_case(want),
            };
            if !ok {
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
}

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
}

/// Which plugin, with which options.
#[derive(Debug, Clone)]
pub struct PluginRef {
    /// Pack name or file.
    pub source: PluginSource,
    /// Options as JSON.
    pub config_json: String,
    /// Where the file names it (for errors found when the plugin is loaded).
    pub at: Option<Location>,
}

impl PluginRef {
    /// A pack plugin with no options, named nowhere in a file.
    pub fn pack(name: &str) -> Self {
        Self { source: PluginSource::Pack(name.to_owned()), config_json: "{}".to_owned(), at: None }
    }
}

/// Two references are the same plugin with the same options wherever the file names them.
impl PartialEq for PluginRef {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.config_json == other.config_json
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

    /// Validates config text; `path` names it in errors and anchors relative plugin paths.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let cx = Cx { text, file: path.map_or_else(|| "<inline>".to_owned(), |p| p.display().to_string()) };
        let de = toml::Deserializer::parse(text).map_err(|e| cx.toml_error(&e, String::new()))?;
        let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // A `Spanned` value adds a private field to the path: the key is its parent.
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
        let offset = span.map_or(0, |s| s.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { file: self.file.clone(), line, column, key }
    }

    fn spanned<T>(&self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        self.at(Some(value.span()), key.into(), message.into())
    }

    fn validate(&self, file: FileConfig, base: &Path, source: Option<&Path>) -> Result<Config, ConfigError> {
        let runtime = match file.runtime.worker_threads {
            Some(n) if *n.get_ref() > RuntimeSettings::MAX_WORKER_THREADS => {
                return Err(self.spanned(
                    &n,
                    "runtime.worker_threads",
                    format!("at most {} (0 = one per CPU)", RuntimeSettings::MAX_WORKER_THREADS),
                ));
            }
            Some(n) if *n.get_ref() > 0 => RuntimeSettings { worker_threads: n.into_inner() },
            _ => RuntimeSettings::default(),
        };
        let defaults = PluginSettings::default();
        let plugins = PluginSettings {
            cache_dir: file.plugins.cache_dir.map(|d| base.join(d)),
            call_timeout: file.plugins.call_timeout_ms.map_or(defaults.call_timeout, |d| d.0),
            rebuild_timeout: file.plugins.rebuild_timeout_ms.map_or(defaults.rebuild_timeout, |d| d.0),
            memory_limit: file.plugins.memory_limit_mib.map_or(defaults.memory_limit, |m| (m as usize) << 20),
        };

        let mut pools = BTreeMap::new();
        for (name, pool) in file.pools {
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
                });
            }
            let balancer = match pool.balancer {
                Some(p) => self.plugin_ref(p, base, &format!("{key}.balancer"))?,
                None => PluginRef::pack("round-robin"),
            };
            let drain_spread = pool.drain_spread_ms.map_or(Duration::from_secs(10), |d| d.0);
            let drain_deadline = pool.drain_deadline_ms.map_or(Duration::from_secs(30), |d| d.0);
            if drain_deadline < drain_spread {
                return Err(self.at(
                    None,
                    format!("{key}.drain_deadline_ms"),
                    format!("{drain_deadline:?} is shorter than drain_spread_ms ({drain_spread:?})"),
                ));
            }
            let affinity = match pool.affinity {
                Some(p) => Some(self.plugin_ref(p, base, &format!("{key}.affinity"))?),
                None => None,
            };
            pools.insert(
                name.clone(),
                PoolConfig {
                    name,
                    backends,
                    balancer,
                    affinity,
                    on_plugin_error: pool.on_plugin_error,
                    connect_timeout: pool.connect_timeout_ms.map_or(Duration::from_secs(3), |d| d.0),
                    response_timeout: pool.response_timeout_ms.map_or(Duration::from_secs(60), |d| d.0),
                    idle_timeout: pool.idle_timeout_ms.map_or(Duration::from_secs(60), |d| d.0),
                    max_idle_per_backend: pool.max_idle_per_backend.unwrap_or(64),
                    drain_spread,
                    drain_deadline,
                },
            );
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
            let pool_exists = |p: &Spanned<String>, k: String| {
                if pools.contains_key(p.get_ref()) {
                    Ok(p.get_ref().clone())
                } else {
                    Err(self.spanned(p, k, format!("no pool named `{}` (define [pool.{}])", p.get_ref(), p.get_ref())))
                }
            };
            let pool = pool_exists(&l.pool, format!("{key}.pool"))?;
            let mut routes = Vec::with_capacity(l.route.len());
            for (j, r) in l.route.into_iter().enumerate() {
                routes.push(Route {
                    host: r.host.map(|h| h.to_ascii_lowercase()),
                    path_prefix: r.path_prefix,
                    pool: pool_exists(&r.pool, format!("{key}.route[{j}].pool"))?,
                });
            }
            listeners.push(ListenerConfig {
                name: l.name.unwrap_or_else(|| format!("listener-{i}")),
                listen,
                protocol: l.protocol,
                pool,
                routes,
                header_read_timeout: l.header_read_timeout_ms.map_or(Duration::from_secs(30), |d| d.0),
                max_header_bytes: l.max_header_bytes.unwrap_or(64 << 10),
                max_headers: l.max_headers.unwrap_or(100),
                tunnels: TunnelLimits {
                    idle_timeout: l.tunnel_idle_timeout_ms.map_or(Duration::from_secs(3600), |d| d.0),
                    max_lifetime: l.tunnel_max_lifetime_ms.map(|d| d.0),
                },
            });
        }
        Ok(Config { source: source.map(Path::to_path_buf), runtime, plugins, listeners, pools })
    }

    fn plugin_ref(&self, p: FilePluginRef, base: &Path, key: &str) -> Result<PluginRef, ConfigError> {
        let source = PluginSource::parse(p.plugin.get_ref(), base);
        let at = self.location(Some(p.plugin.span()), format!("{key}.plugin"));
        let config_json = match p.config {
            Some(mut t) => {
                self.read_file_keys(&mut t, base, &format!("{key}.config"))?;
                serde_json::to_string(&t).map_err(|e| self.at(None, format!("{key}.config"), e.to_string()))?
            }
            None => "{}".to_owned(),
        };
        Ok(PluginRef { source, config_json, at: Some(at) })
    }
}

impl Cx<'_> {
    /// Replaces each `NAME_file = "path"` of a plugin's config with `NAME = "<the file's
    /// contents>"` (trailing whitespace trimmed), the `_FILE` convention of container
    /// secrets: a plugin cannot read files (it is granted none), and a secret such as the
    /// `cookie` plugin's signing key belongs in a file of its own, not in the config. The
    /// path is relative to the config file.
    fn read_file_keys(&self, table: &mut toml::Table, base: &Path, key: &str) -> Result<(), ConfigError> {
        let files: Vec<String> = table.keys().filter(|k| k.ends_with("_file")).cloned().collect();
        for file_key in files {
            let name = file_key.trim_end_matches("_file").to_owned();
            let at = format!("{key}.{file_key}");
            let Some(toml::Value::String(path)) = table.remove(&file_key) else {
                return Err(self.at(None, at, "expected a path (a string)".into()));
            };
            if table.contains_key(&name) {
                return Err(self.at(None, at, format!("give either `{name}` or `{file_key}`, not both")));
            }
            let path = base.join(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| self.at(None, at, format!("cannot read {}: {e}", path.display())))?;
            table.insert(name, toml::Value::String(text.trim_end().to_owned()));
        }
        Ok(())
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
