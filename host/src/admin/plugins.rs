//! Plugin swaps and rollbacks: `PUT /api/v1/pools/{pool}/{balancer|affinity|health}` and
//! `POST .../rollback`.
//!
//! A swap runs, in order and off the threads that serve traffic (a blocking thread):
//! compile (or find compiled), check the world, instantiate and `configure` a scratch
//! instance, then a dry run on another scratch instance against the live pool
//! (`pool-changed`, then picks whose answers must be eligible; for a health plugin a
//! `tick` and probe results whose verdicts must name members). Only then does the one
//! writer switch the pool to it ([`crate::control::Command::SwapPlugin`]), which is a
//! pointer swap (for health plugins, a hand-over to the pool's running health task).
//! Any failure answers 4xx with the reason, and the old plugin keeps serving. Requests
//! already placed finish where they were placed: a request is placed once, by the plugin
//! of the snapshot it loaded, and tunnels and TCP sessions hold a backend, never a
//! plugin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Admin, Reply, error, json as reply, status};
use crate::config::{PluginLimits, PluginSource};
use crate::control::{Control, ControlError, PluginKind, Swapped};
use crate::plugin::{LoadError, PluginRuntime, PoolHost, pack};

/// Picks (or lookups) made by a dry run.
pub const DRY_RUN_CALLS: u32 = 64;

/// What a swap asks for: a named plugin (pack or file) or an uploaded component, and
/// its config as JSON.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    /// For a named plugin, where it comes from.
    pub(crate) source: Option<PluginSource>,
    /// The name it is shown under.
    pub(crate) name: String,
    /// The component, for an upload.
    pub(crate) bytes: Option<Bytes>,
    /// Its config, a JSON object.
    pub(crate) config_json: String,
    /// Its own limits (a watched file keeps its entry's; the API's swaps take the
    /// `[plugins]` defaults).
    pub(crate) limits: crate::config::PluginLimits,
}

/// How long each step of a swap took, and where the compiled code came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// Compile (or cache lookup), world check, instantiate and configure.
    pub(crate) load: Duration,
    /// The dry run.
    pub(crate) dry_run: Duration,
    /// The switch by the one writer.
    pub(crate) switch: Duration,
    /// `compiled`, `disk cache` or `in memory`.
    pub(crate) code: &'static str,
}

/// Why a swap was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwapError {
    /// No such pool.
    #[error("no pool named `{0}`")]
    NoPool(String),
    /// The plugin did not load (compile, world, configure).
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The dry run failed.
    #[error("dry run against pool `{pool}`: {source}")]
    DryRun {
        /// The pool.
        pool: String,
        /// What the plugin did.
        source: crate::plugin::CallError,
    },
    /// A health plugin's dry run failed.
    #[error("dry run of health plugin `{plugin}` against pool `{pool}`: {source}")]
    HealthDryRun {
        /// The pool.
        pool: String,
        /// The plugin.
        plugin: String,
        /// What the plugin did.
        source: crate::plugin::CallError,
    },
    /// The writer refused it.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl SwapError {
    fn status(&self) -> StatusCode {
        match self {
            SwapError::NoPool(_) | SwapError::Control(ControlError::NoSuchPool(_)) => StatusCode::NOT_FOUND,
            SwapError::Control(ControlError::NothingToRollBack { .. } | ControlError::NoHealthChecks(_)) => {
                StatusCode::CONFLICT
            }
            SwapError::Load(LoadError::Interrupted(_)) | SwapError::Control(ControlError::Interrupted(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// `balancer`, `affinity` or `health`.
fn kind(kind: &str) -> Option<PluginKind> {
    match kind {
        "balancer" => Some(PluginKind::Balancer),
        "affinity" => Some(PluginKind::Affinity),
        "health" => Some(PluginKind::Health),
        _ => None,
    }
}

/// A plugin's own limits as the API takes them (`memory_limit_mib`, `call_timeout_ms`:
/// the names and ranges of a plugin entry in the config file). `decides`: a balancer or
/// affinity plugin (a health plugin's calls run under `rebuild_timeout_ms`, so it takes
/// no `call_timeout_ms`). The error is the reason for a 400.
pub(crate) fn limits(
    memory_limit_mib: Option<u64>,
    call_timeout: Option<std::time::Duration>,
    decides: bool,
) -> Result<PluginLimits, String> {
    use crate::config::bounds::{CALL_TIMEOUT, MEMORY_LIMIT_MIB};
    let memory_limit = match memory_limit_mib {
        None => None,
        Some(m) if u32::try_from(m).is_ok_and(|m| MEMORY_LIMIT_MIB.contains(&m)) => Some((m as usize) << 20),
        Some(m) => {
            return Err(format!(
                "memory_limit_mib: {m} is out of range ({} to {})",
                MEMORY_LIMIT_MIB.start(),
                MEMORY_LIMIT_MIB.end()
            ));
        }
    };
    match call_timeout {
        Some(_) if !decides => Err(
            "call_timeout_ms: a health plugin's calls run under [plugins] rebuild_timeout_ms; call_timeout_ms is for balancers and affinity plugins".into(),
        ),
        Some(t) if !CALL_TIMEOUT.contains(&t) => {
            Err(format!("call_timeout_ms: {t:?} is out of range (1 ms to 10 s)"))
        }
        _ => Ok(PluginLimits { memory_limit, call_timeout }),
    }
}

/// The limits written in a JSON object (`memory_limit_mib`, `call_timeout_ms` as a number
/// of milliseconds or a string such as `"5ms"`).
fn limits_in(obj: &serde_json::Map<String, serde_json::Value>, decides: bool) -> Result<PluginLimits, String> {
    let memory = match obj.get("memory_limit_mib") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or("memory_limit_mib: must be a whole number of MiB")?),
    };
    let timeout = match obj.get("call_timeout_ms") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<crate::config::FileDuration>(v.clone())
                .map_err(|e| format!("call_timeout_ms: {e}"))?
                .0,
        ),
    };
    limits(memory, timeout, decides)
}

/// The value of query parameter `name`, percent-decoded.
fn query(req: &http::request::Parts, name: &str) -> Option<String> {
    let q = req.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| super::server::decode(&v.replace('+', " "))).flatten()
    })
}

/// Reads what a swap request asks for: a JSON body `{"plugin": NAME, "config": {..},
/// "memory_limit_mib": N, "call_timeout_ms": N}`, or a component (`\0asm`) with its
/// config in `?config=`, its name in `?name=` and its limits in `?memory_limit_mib=` and
/// `?call_timeout_ms=`. For `health`, the JSON body may also be a list of such objects:
/// the pool's whole list of evaluators. The error is the reason for a 400.
fn wanted(
    parts: &http::request::Parts,
    body: Bytes,
    base: &std::path::Path,
    kind: PluginKind,
) -> Result<Vec<Wanted>, String> {
    let decides = kind != PluginKind::Health;
    if body.starts_with(b"\0asm") {
        let config = query(parts, "config").unwrap_or_else(|| "{}".into());
        let config_json = object(&config).map_err(|e| format!("?config: {e}"))?;
        let name = query(parts, "name").unwrap_or_else(|| {
            let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
            format!("upload:{}", &status::hex(&sha)[..12])
        });
        let memory = match query(parts, "memory_limit_mib") {
            Some(m) => Some(m.parse::<u64>().map_err(|_| format!("?memory_limit_mib: `{m}` is not a whole number"))?),
            None => None,
        };
        let timeout = match query(parts, "call_timeout_ms") {
            Some(t) => Some(
                t.parse::<u64>()
                    .map(std::time::Duration::from_millis)
                    .map_err(|_| format!("?call_timeout_ms: `{t}` is not a whole number of milliseconds"))?,
            ),
            None => None,
        };
        let limits = limits(memory, timeout, decides)?;
        return Ok(vec![Wanted { source: None, name, bytes: Some(body), config_json, limits }]);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        format!("the body is neither a wasm component nor JSON {{\"plugin\": NAME, \"config\": {{..}}}}: {e}")
    })?;
    match v {
        serde_json::Value::Array(list) if kind == PluginKind::Health => {
            if list.is_empty() {
                return Err("the list of health plugins is empty (a pool keeps at least one evaluator)".into());
            }
            list.iter().enumerate().map(|(i, v)| one(v, base, decides).map_err(|e| format!("[{i}]: {e}"))).collect()
        }
        v => Ok(vec![one(&v, base, decides)?]),
    }
}

/// One `{"plugin": NAME, "config": {..}, ..limits}` object.
fn one(v: &serde_json::Value, base: &std::path::Path, decides: bool) -> Result<Wanted, String> {
    let Some(obj) = v.as_object() else { return Err("expected a JSON object {\"plugin\": NAME}".into()) };
    const FIELDS: &str = "`plugin`, `config`, `memory_limit_mib` or `call_timeout_ms`";
    if let Some(k) =
        obj.keys().find(|k| !matches!(k.as_str(), "plugin" | "config" | "memory_limit_mib" | "call_timeout_ms"))
    {
        return Err(format!("unknown field `{k}`, expected {FIELDS}"));
    }
    let Some(plugin) = obj.get("plugin").and_then(|p| p.as_str()) else {
        return Err("`plugin` (a pack name or a .wasm path) is required".into());
    };
    let config_json = match obj.get("config") {
        None => "{}".to_owned(),
        Some(c @ serde_json::Value::Object(_)) => c.to_string(),
        Some(_) => return Err("`config` must be a JSON object".into()),
    };
    let limits = limits_in(obj, decides)?;
    let source = PluginSource::parse(plugin, base);
    Ok(Wanted { name: source.to_string(), source: Some(source), bytes: None, config_json, limits })
}

/// `text` if it is a JSON object, re-serialised.
fn object(text: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v.to_string()),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Loads and dry-runs `wanted` as `kind` for `pool` (on a blocking thread), then has the
/// one writer switch to it. Returns the new version and the timings. `wanted` is one
/// plugin, or for `health` the pool's whole list of evaluators.
pub(crate) async fn swap_in(
    control: &Control,
    pool: &str,
    kind: PluginKind,
    wanted: Vec<Wanted>,
) -> Result<(Swapped, Timings), SwapError> {
    let names: Vec<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    let detail = format!("{} {}", kind.as_str(), names.join(", "));
    let swapped = load_and_swap(control, pool, kind, wanted).await;
    let counters = control.counters();
    match &swapped {
        Ok(_) => counters.swaps.inc(),
        Err(_) => counters.swap_failures.inc(),
    };
    counters.record("swap", pool, detail, swapped.is_ok());
    swapped
}

async fn load_and_swap(
    control: &Control,
    pool: &str,
    kind: PluginKind,
    wanted: Vec<Wanted>,
) -> Result<(Swapped, Timings), SwapError> {
    let snapshot = control.ctx.snapshot.load_full();
    let live = snapshot.pools.get(pool).ok_or_else(|| SwapError::NoPool(pool.to_owned()))?;
    let view = match kind {
        // Health plugins see the pool as its health task does: every member, by id.
        PluginKind::Health => {
            if !control.watches_health(pool) {
                return Err(ControlError::NoHealthChecks(pool.to_owned()).into());
            }
            live.view.clone() as Arc<dyn PoolHost>
        }
        _ => live.host().clone(),
    };
    let runtime = control.plugins().clone();
    let pool_name = pool.to_owned();
    let (plugin, load, dry_run, code) =
        tokio::task::spawn_blocking(move || load(&runtime, &pool_name, kind, &wanted, &view))
            .await
            .map_err(|e| LoadError::Interrupted(e.to_string()))??;
    let started = Instant::now();
    control.swap(pool, plugin.clone()).await?;
    Ok((plugin, Timings { load, dry_run, switch: started.elapsed(), code }))
}

/// A wanted plugin's bytes: the upload's, or read from the pack or the file (a pack
/// plugin of another role is refused here).
fn bytes_of(wanted: &Wanted, kind: PluginKind) -> Result<std::borrow::Cow<'_, [u8]>, SwapError> {
    match (&wanted.bytes, &wanted.source) {
        (Some(b), _) => Ok(std::borrow::Cow::Borrowed(&b[..])),
        (None, Some(source)) => {
            let role = match kind {
                PluginKind::Balancer => pack::Role::Balancer,
                PluginKind::Affinity => pack::Role::Affinity,
                PluginKind::Health => pack::Role::Health,
            };
            pack::check(source, role).map_err(LoadError::Pack)?;
            Ok(PluginRuntime::bytes(source)?)
        }
        (None, None) => Err(LoadError::Pack("no plugin named".into()).into()),
    }
}

/// The blocking part of a swap: load, then dry-run.
fn load(
    runtime: &PluginRuntime,
    pool: &str,
    kind: PluginKind,
    wanted: &[Wanted],
    view: &Arc<dyn PoolHost>,
) -> Result<(Swapped, Duration, Duration, &'static str), SwapError> {
    let started = Instant::now();
    let before = (runtime.compiled.load(Ordering::Relaxed), runtime.cache_hits.load(Ordering::Relaxed));
    let dry = |e| SwapError::DryRun { pool: pool.to_owned(), source: e };
    let (plugin, loaded, dry_run) = match (kind, wanted) {
        (PluginKind::Balancer, [wanted]) => {
            let bytes = bytes_of(wanted, kind)?;
            let (name, config) = (&wanted.name, &wanted.config_json);
            let b = runtime.candidate_balancer(pool, name, &bytes, config, wanted.limits, view)?;
            let loaded = started.elapsed();
            b.dry_run(view, DRY_RUN_CALLS).map_err(dry)?;
            (Swapped::Balancer(b), loaded, started.elapsed() - loaded)
        }
        (PluginKind::Affinity, [wanted]) => {
            let bytes = bytes_of(wanted, kind)?;
            let (name, config) = (&wanted.name, &wanted.config_json);
            let a = runtime.candidate_affinity(pool, name, &bytes, config, wanted.limits, view)?;
            let loaded = started.elapsed();
            a.dry_run(view, DRY_RUN_CALLS).map_err(dry)?;
            (Swapped::Affinity(Some(a)), loaded, started.elapsed() - loaded)
        }
        (PluginKind::Health, list) if !list.is_empty() => {
            let mut evaluators = Vec::with_capacity(list.len());
            for wanted in list {
                let bytes = bytes_of(wanted, kind)?;
                let (name, config) = (&wanted.name, &wanted.config_json);
                evaluators.push(runtime.candidate_health(pool, name, &bytes, config, wanted.limits, view)?);
            }
            let loaded = started.elapsed();
            for h in &evaluators {
                h.dry_run(view).map_err(|e| SwapError::HealthDryRun {
                    pool: pool.to_owned(),
                    plugin: h.name.to_string(),
                    source: e,
                })?;
            }
            (Swapped::Health(crate::health::Evaluators::new(evaluators)), loaded, started.elapsed() - loaded)
        }
        _ => return Err(LoadError::Pack(format!("a {} swap takes one plugin", kind.as_str())).into()),
    };
    let code = if runtime.compiled.load(Ordering::Relaxed) > before.0 {
        "compiled"
    } else if runtime.cache_hits.load(Ordering::Relaxed) > before.1 {
        "disk cache"
    } else {
        "in memory"
    };
    Ok((plugin, loaded, dry_run, code))
}

/// The JSON answer to a swap or rollback.
fn swapped(pool: &str, plugin: &Swapped, t: &Timings) -> serde_json::Value {
    let shown = match plugin {
        Swapped::Balancer(b) => status::plugin(b, "balancer"),
        Swapped::Affinity(Some(a)) => status::plugin(a, "affinity"),
        Swapped::Affinity(None) => serde_json::Value::Null,
        Swapped::Health(h) => h.iter().map(|h| status::plugin(h, h.world())).collect(),
    };
    json!({
        "pool": pool,
        "kind": plugin.kind().as_str(),
        "plugin": shown,
        "code": t.code,
        "load_ms": t.load.as_secs_f64() * 1e3,
        "dry_run_ms": t.dry_run.as_secs_f64() * 1e3,
        "switch_ms": t.switch.as_secs_f64() * 1e3,
    })
}

/// `PUT /api/v1/pools/{pool}/{balancer|affinity|health}`: a safe swap.
pub(crate) async fn swap(admin: &Admin, req: Request<Incoming>, pool: &str, which: &str) -> Reply {
    let Some(kind) = kind(which) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("`{which}` cannot be swapped: `balancer`, `affinity` or `health`"),
        );
    };
    let (parts, body) = match super::body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let base = admin.control.config_file_now().and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    let wanted = match wanted(&parts, body, base.as_deref().unwrap_or(std::path::Path::new(".")), kind) {
        Ok(w) => w,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let name = wanted.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ");
    let cluster = match cluster_wanted(admin, &parts) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Published: the components (a named file's too) go to etcd, pack names as names.
    let published = match &cluster {
        Some(_) => match wanted.iter().map(|w| to_publish(w, kind)).collect::<Result<Vec<_>, _>>() {
            Ok(p) => Some(p),
            Err(e) => return error(e.status(), e),
        },
        None => None,
    };
    match swap_in(&admin.control, pool, kind, wanted).await {
        Ok((plugin, t)) => {
            let mut answer = swapped(pool, &plugin, &t);
            if let (Some(cluster), Some(published)) = (cluster, published) {
                match cluster.publish(pool, kind, Some(published)).await {
                    Ok(p) => answer["published"] = publication(&p),
                    Err(e) => {
                        tracing::error!(%pool, kind = kind.as_str(), error = %e, "swapped here but not published to the cluster");
                        return error(
                            StatusCode::BAD_GATEWAY,
                            format!("swapped on this instance, but not published to the cluster: {e}"),
                        );
                    }
                }
            }
            reply(StatusCode::OK, &answer)
        }
        Err(e) => {
            tracing::warn!(%pool, kind = kind.as_str(), plugin = %name, error = %e, "swap refused; the current plugin keeps serving");
            error(e.status(), e)
        }
    }
}

/// `POST /api/v1/pools/{pool}/{balancer|affinity|health}/rollback`: back to the version the last
/// swap replaced, as a fresh version of it (dry-run first, like any swap); the version
/// rolled back from becomes the one a next rollback returns to.
pub(crate) async fn rollback(admin: &Admin, req: Request<Incoming>, pool: &str, which: &str) -> Reply {
    let Some(kind) = kind(which) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("`{which}` cannot be rolled back: `balancer`, `affinity` or `health`"),
        );
    };
    let parts = match super::body(req).await {
        Ok((parts, _)) => parts,
        Err(r) => return r,
    };
    match cluster_wanted(admin, &parts) {
        Err(r) => return r,
        Ok(Some(cluster)) => {
            // Every instance (this one too, through its watch) puts back what the
            // publication replaced.
            let published = cluster.publish(pool, kind, None).await;
            admin.control.counters().record(
                "rollback",
                pool,
                format!("{} (cluster)", kind.as_str()),
                published.is_ok(),
            );
            return match published {
                Ok(p) => reply(
                    StatusCode::ACCEPTED,
                    &json!({ "pool": pool, "kind": kind.as_str(), "published": publication(&p) }),
                ),
                Err(e) => error(StatusCode::CONFLICT, e),
            };
        }
        Ok(None) => {}
    }
    let rolled = roll_back(admin, pool, kind).await;
    let counters = admin.control.counters();
    if rolled.is_ok() {
        counters.rollbacks.inc();
    }
    counters.record("rollback", pool, kind.as_str(), rolled.is_ok());
    match rolled {
        Ok((plugin, t)) => reply(StatusCode::OK, &swapped(pool, &plugin, &t)),
        Err(e) => {
            tracing::warn!(%pool, kind = kind.as_str(), error = %e, "rollback refused");
            error(e.status(), e)
        }
    }
}

async fn roll_back(admin: &Admin, pool: &str, kind: PluginKind) -> Result<(Swapped, Timings), SwapError> {
    let previous = admin.control.previous(pool, kind).await?;
    let snapshot = admin.control.ctx.snapshot.load_full();
    let live = snapshot.pools.get(pool).ok_or_else(|| SwapError::NoPool(pool.to_owned()))?;
    let view = if kind == PluginKind::Health { live.view.clone() as Arc<dyn PoolHost> } else { live.host().clone() };
    let pool_name = pool.to_owned();
    let started = Instant::now();
    let fresh = tokio::task::spawn_blocking(move || {
        let dry = |e| SwapError::DryRun { pool: pool_name.clone(), source: e };
        match previous {
            Swapped::Balancer(b) => {
                let b = b.fresh();
                b.dry_run(&view, DRY_RUN_CALLS).map_err(dry)?;
                Ok(Swapped::Balancer(b))
            }
            Swapped::Affinity(Some(a)) => {
                let a = a.fresh();
                a.dry_run(&view, DRY_RUN_CALLS).map_err(dry)?;
                Ok(Swapped::Affinity(Some(a)))
            }
            Swapped::Affinity(None) => Ok::<_, SwapError>(Swapped::Affinity(None)),
            Swapped::Health(list) => {
                let fresh: Vec<_> = list.iter().map(|h| h.fresh()).collect();
                for h in &fresh {
                    h.dry_run(&view).map_err(|e| SwapError::HealthDryRun {
                        pool: pool_name.clone(),
                        plugin: h.name.to_string(),
                        source: e,
                    })?;
                }
                Ok(Swapped::Health(crate::health::Evaluators::new(fresh)))
            }
        }
    })
    .await
    .map_err(|e| LoadError::Interrupted(e.to_string()))??;
    let dry_run = started.elapsed();
    let switching = Instant::now();
    admin.control.swap(pool, fresh.clone()).await?;
    Ok((fresh, Timings { load: Duration::ZERO, dry_run, switch: switching.elapsed(), code: "in memory" }))
}

/// `?cluster=true`: the cluster to publish through (an error reply when the server is in
/// none, or the value is not a boolean).
// The error is the reply itself, built once per call off the data path.
#[allow(clippy::result_large_err)]
fn cluster_wanted<'a>(
    admin: &'a Admin,
    parts: &http::request::Parts,
) -> Result<Option<&'a Arc<crate::cluster::Cluster>>, Reply> {
    match query(parts, "cluster").as_deref() {
        None | Some("false") => Ok(None),
        Some("true") => admin.cluster.as_ref().map(Some).ok_or_else(|| {
            error(StatusCode::BAD_REQUEST, "?cluster=true: this instance is in no cluster (no [cluster] in its config)")
        }),
        Some(v) => Err(error(StatusCode::BAD_REQUEST, format!("?cluster: `{v}` is not `true` or `false`"))),
    }
}

/// What a publication says, as the API answers it.
fn publication(p: &crate::cluster::Publication) -> serde_json::Value {
    let plugins: Vec<_> = p
        .plugins
        .iter()
        .map(|p| json!({ "name": p.name, "pack": p.pack, "sha256": p.sha256, "config": p.config }))
        .collect();
    json!({ "by": p.by, "plugins": plugins })
}

/// A wanted plugin as published: a pack name, or its component's bytes.
fn to_publish(wanted: &Wanted, kind: PluginKind) -> Result<crate::cluster::Fetched, SwapError> {
    let config = serde_json::from_str(&wanted.config_json).unwrap_or_else(|_| json!({}));
    let (memory_limit_mib, call_timeout_ms) = (
        wanted.limits.memory_limit.map(|m| (m >> 20) as u64),
        wanted.limits.call_timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    );
    let (pack, bytes) = match (&wanted.source, &wanted.bytes) {
        (Some(PluginSource::Pack(name)), None) => (Some(name.clone()), None),
        _ => (None, Some(Bytes::from(bytes_of(wanted, kind)?.into_owned()))),
    };
    let plugin = crate::cluster::PublishedPlugin {
        pack,
        sha256: None,
        name: wanted.name.clone(),
        config,
        memory_limit_mib,
        call_timeout_ms,
    };
    Ok((plugin, bytes))
}

/// The safe-swap path for swaps published through the cluster (wired by the server).
#[derive(Debug)]
pub struct ClusterSwaps;

impl crate::cluster::Swapper for ClusterSwaps {
    fn swap(
        &self,
        control: Arc<Control>,
        pool: String,
        kind: PluginKind,
        plugins: Vec<crate::cluster::Fetched>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let decides = kind != PluginKind::Health;
            let mut wanted = Vec::with_capacity(plugins.len());
            for (p, bytes) in plugins {
                let limits = limits(p.memory_limit_mib, p.call_timeout_ms.map(Duration::from_millis), decides)?;
                let config_json = match &p.config {
                    c @ serde_json::Value::Object(_) => c.to_string(),
                    _ => return Err(format!("{}: `config` must be a JSON object", p.name)),
                };
                let source = match (&p.pack, &bytes) {
                    (_, Some(_)) => None,
                    (Some(name), None) => Some(PluginSource::Pack(name.clone())),
                    (None, None) => return Err(format!("{}: neither a pack name nor a component", p.name)),
                };
                wanted.push(Wanted { source, name: p.name, bytes, config_json, limits });
            }
            swap_in(&control, &pool, kind, wanted).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }
}

/// How often the plugin file watch looks at the files.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `[plugins] watch`: swaps a pool's balancer, affinity or health plugins that the config
/// names by a path when such a file changes (a health evaluator's file swaps the pool's
/// whole list), through the same safe path as the admin API's swap (a
/// file that does not compile, is of the wrong world, refuses its config or fails the dry
/// run is logged and ignored; the plugin in place keeps serving). Debounced: a changed
/// file is swapped in once it has stayed the same (size and modification time) for one
/// more look, half a second, so a file being written is not read half-way. The files are
/// the config's, asked again at each look, so a reload that names another file is
/// followed. Ends when the server stops serving.
pub(crate) async fn watch(
    control: std::sync::Weak<Control>,
    mut stop: tokio::sync::watch::Receiver<crate::net::listen::Stop>,
) {
    use std::collections::HashMap;
    type Seen = Option<(std::time::SystemTime, u64)>;
    let look = |path: &std::path::Path| -> Seen {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    // Per file: what it looked like, and whether a change waits to settle.
    let mut seen: HashMap<(String, PluginKind, std::path::PathBuf), (Seen, bool)> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            () = crate::net::listen::stop_serving(&mut stop) => return,
        }
        let Some(control) = control.upgrade() else { return };
        let snapshot = control.ctx.snapshot.load_full();
        let mut now = HashMap::with_capacity(seen.len());
        for (name, pool) in &snapshot.pools {
            // The plugins of each kind, as one swap would replace them: a balancer, an
            // affinity, or the pool's whole list of health evaluators (any one file of the
            // list changing swaps the list, the unchanged ones reloaded with it).
            let groups: [(PluginKind, Vec<&crate::config::PluginRef>); 3] = [
                (PluginKind::Balancer, vec![&pool.config.balancer]),
                (PluginKind::Affinity, pool.config.affinity.iter().collect()),
                (PluginKind::Health, pool.config.health.plugins.iter().collect()),
            ];
            for (kind, plugins) in groups {
                let mut changed = None;
                for plugin in &plugins {
                    let PluginSource::File(path) = &plugin.source else { continue };
                    let key = (name.clone(), kind, path.clone());
                    let state = look(path);
                    let (before, pending) = seen.get(&key).copied().unwrap_or((state, false));
                    let settled = pending && before == state;
                    if settled && state.is_some() {
                        changed.get_or_insert(path.clone());
                    }
                    now.insert(key, (state, !settled && (pending || before != state)));
                }
                let Some(path) = changed else { continue };
                let wanted = plugins
                    .iter()
                    .map(|plugin| Wanted {
                        name: plugin.source.to_string(),
                        source: Some(plugin.source.clone()),
                        bytes: None,
                        config_json: plugin.config_json.clone(),
                        limits: plugin.limits,
                    })
                    .collect();
                match swap_in(&control, name, kind, wanted).await {
                    Ok((_, t)) => {
                        tracing::info!(pool = %name, kind = kind.as_str(), file = %path.display(), load_ms = t.load.as_secs_f64() * 1e3, "plugin file changed: swapped")
                    }
                    Err(e) => {
                        tracing::error!(pool = %name, kind = kind.as_str(), file = %path.display(), error = %e, "plugin file changed but not swapped; the plugin in place keeps serving")
                    }
                }
            }
        }
        seen = now;
    }
}
