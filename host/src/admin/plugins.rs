//! Plugin swaps and rollbacks: `PUT /api/v1/pools/{pool}/{balancer|affinity}` and
//! `POST .../rollback`.
//!
//! A swap runs, in order and off the threads that serve traffic (a blocking thread):
//! compile (or find compiled), check the world, instantiate and `configure` a scratch
//! instance, then a dry run on another scratch instance against the live pool
//! (`pool-changed`, then picks whose answers must be eligible). Only then does the one
//! writer switch the pool to it ([`crate::control::Command::SwapPlugin`]), which is a
//! pointer swap. Any failure answers 4xx with the reason, and the old plugin keeps
//! serving. Requests already placed finish where they were placed: a request is placed
//! once, by the plugin of the snapshot it loaded, and tunnels and TCP sessions hold a
//! backend, never a plugin.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{Admin, Reply, error, json as reply, status};
use crate::config::PluginSource;
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
    /// The writer refused it.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl SwapError {
    fn status(&self) -> StatusCode {
        match self {
            SwapError::NoPool(_) | SwapError::Control(ControlError::NoSuchPool(_)) => StatusCode::NOT_FOUND,
            SwapError::Control(ControlError::NothingToRollBack { .. }) => StatusCode::CONFLICT,
            SwapError::Load(LoadError::Interrupted(_)) | SwapError::Control(ControlError::Interrupted(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// `balancer` or `affinity`.
fn kind(kind: &str) -> Option<PluginKind> {
    match kind {
        "balancer" => Some(PluginKind::Balancer),
        "affinity" => Some(PluginKind::Affinity),
        _ => None,
    }
}

/// The value of query parameter `name`, percent-decoded.
fn query(req: &http::request::Parts, name: &str) -> Option<String> {
    let q = req.uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| super::server::decode(&v.replace('+', " "))).flatten()
    })
}

/// Reads what a swap request asks for: a JSON body `{"plugin": NAME, "config": {..}}`,
/// or a component (`\0asm`) with its config in `?config=` and its name in `?name=`.
/// The error is the reason for a 400.
fn wanted(parts: &http::request::Parts, body: Bytes, base: &std::path::Path) -> Result<Wanted, String> {
    let bad = |m: String| m;
    if body.starts_with(b"\0asm") {
        let config = query(parts, "config").unwrap_or_else(|| "{}".into());
        let config_json = object(&config).map_err(|e| bad(format!("?config: {e}")))?;
        let name = query(parts, "name").unwrap_or_else(|| {
            let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
            format!("upload:{}", &status::hex(&sha)[..12])
        });
        return Ok(Wanted { source: None, name, bytes: Some(body), config_json, limits: Default::default() });
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        bad(format!("the body is neither a wasm component nor JSON {{\"plugin\": NAME, \"config\": {{..}}}}: {e}"))
    })?;
    let Some(obj) = v.as_object() else { return Err(bad("expected a JSON object {\"plugin\": NAME}".into())) };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "plugin" | "config")) {
        return Err(bad(format!("unknown field `{k}`, expected `plugin` or `config`")));
    }
    let Some(plugin) = obj.get("plugin").and_then(|p| p.as_str()) else {
        return Err(bad("`plugin` (a pack name or a .wasm path) is required".into()));
    };
    let config_json = match obj.get("config") {
        None => "{}".to_owned(),
        Some(c @ serde_json::Value::Object(_)) => c.to_string(),
        Some(_) => return Err(bad("`config` must be a JSON object".into())),
    };
    let source = PluginSource::parse(plugin, base);
    Ok(Wanted { name: source.to_string(), source: Some(source), bytes: None, config_json, limits: Default::default() })
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
/// one writer switch to it. Returns the new version and the timings.
pub(crate) async fn swap_in(
    control: &Control,
    pool: &str,
    kind: PluginKind,
    wanted: Wanted,
) -> Result<(Swapped, Timings), SwapError> {
    let detail = format!("{} {}", kind.as_str(), wanted.name);
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
    wanted: Wanted,
) -> Result<(Swapped, Timings), SwapError> {
    let snapshot = control.ctx.snapshot.load_full();
    let live = snapshot.pools.get(pool).ok_or_else(|| SwapError::NoPool(pool.to_owned()))?;
    let view = live.host().clone();
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

/// The blocking part of a swap: load, then dry-run.
fn load(
    runtime: &PluginRuntime,
    pool: &str,
    kind: PluginKind,
    wanted: &Wanted,
    view: &Arc<dyn PoolHost>,
) -> Result<(Swapped, Duration, Duration, &'static str), SwapError> {
    let started = Instant::now();
    let before = (runtime.compiled.load(Ordering::Relaxed), runtime.cache_hits.load(Ordering::Relaxed));
    let bytes = match (&wanted.bytes, &wanted.source) {
        (Some(b), _) => std::borrow::Cow::Borrowed(&b[..]),
        (None, Some(source)) => {
            let role = match kind {
                PluginKind::Balancer => pack::Role::Balancer,
                PluginKind::Affinity => pack::Role::Affinity,
            };
            pack::check(source, role).map_err(LoadError::Pack)?;
            PluginRuntime::bytes(source)?
        }
        (None, None) => return Err(LoadError::Pack("no plugin named".into()).into()),
    };
    let (name, config) = (&wanted.name, &wanted.config_json);
    let dry = |e| SwapError::DryRun { pool: pool.to_owned(), source: e };
    let (plugin, loaded, dry_run) = match kind {
        PluginKind::Balancer => {
            let b = runtime.candidate_balancer(pool, name, &bytes, config, wanted.limits, view)?;
            let loaded = started.elapsed();
            b.dry_run(view, DRY_RUN_CALLS).map_err(dry)?;
            (Swapped::Balancer(b), loaded, started.elapsed() - loaded)
        }
        PluginKind::Affinity => {
            let a = runtime.candidate_affinity(pool, name, &bytes, config, wanted.limits, view)?;
            let loaded = started.elapsed();
            a.dry_run(view, DRY_RUN_CALLS).map_err(dry)?;
            (Swapped::Affinity(Some(a)), loaded, started.elapsed() - loaded)
        }
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

/// `PUT /api/v1/pools/{pool}/{balancer|affinity}`: a safe swap.
pub(crate) async fn swap(admin: &Admin, req: Request<Incoming>, pool: &str, which: &str) -> Reply {
    let Some(kind) = kind(which) else {
        return error(StatusCode::NOT_FOUND, format!("`{which}` cannot be swapped: `balancer` or `affinity`"));
    };
    let (parts, body) = match super::body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let base = admin.control.config_file_now().and_then(|p| p.parent().map(std::path::Path::to_path_buf));
    let wanted = match wanted(&parts, body, base.as_deref().unwrap_or(std::path::Path::new("."))) {
        Ok(w) => w,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let name = wanted.name.clone();
    match swap_in(&admin.control, pool, kind, wanted).await {
        Ok((plugin, t)) => reply(StatusCode::OK, &swapped(pool, &plugin, &t)),
        Err(e) => {
            tracing::warn!(%pool, kind = kind.as_str(), plugin = %name, error = %e, "swap refused; the current plugin keeps serving");
            error(e.status(), e)
        }
    }
}

/// `POST /api/v1/pools/{pool}/{balancer|affinity}/rollback`: back to the version the last
/// swap replaced, as a fresh version of it (dry-run first, like any swap); the version
/// rolled back from becomes the one a next rollback returns to.
pub(crate) async fn rollback(admin: &Admin, req: Request<Incoming>, pool: &str, which: &str) -> Reply {
    let Some(kind) = kind(which) else {
        return error(StatusCode::NOT_FOUND, format!("`{which}` cannot be rolled back: `balancer` or `affinity`"));
    };
    if let Err(r) = super::body(req).await {
        return r;
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
    let view = snapshot.pools.get(pool).ok_or_else(|| SwapError::NoPool(pool.to_owned()))?.host().clone();
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
        }
    })
    .await
    .map_err(|e| LoadError::Interrupted(e.to_string()))??;
    let dry_run = started.elapsed();
    let switching = Instant::now();
    admin.control.swap(pool, fresh.clone()).await?;
    Ok((fresh, Timings { load: Duration::ZERO, dry_run, switch: switching.elapsed(), code: "in memory" }))
}

/// How often the plugin file watch looks at the files.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `[plugins] watch`: swaps a pool's balancer or affinity plugin that the config names by
/// a path when that file changes, through the same safe path as the admin API's swap (a
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
            let named = std::iter::once((PluginKind::Balancer, Some(&pool.config.balancer)))
                .chain(std::iter::once((PluginKind::Affinity, pool.config.affinity.as_ref())));
            for (kind, plugin) in named {
                let Some(plugin) = plugin else { continue };
                let PluginSource::File(path) = &plugin.source else { continue };
                let key = (name.clone(), kind, path.clone());
                let state = look(path);
                let (before, pending) = seen.get(&key).copied().unwrap_or((state, false));
                let settled = pending && before == state;
                if settled && state.is_some() {
                    let wanted = Wanted {
                        name: plugin.source.to_string(),
                        source: Some(plugin.source.clone()),
                        bytes: None,
                        config_json: plugin.config_json.clone(),
                        limits: plugin.limits,
                    };
                    match swap_in(&control, name, kind, wanted).await {
                        Ok((_, t)) => {
                            tracing::info!(pool = %name, kind = kind.as_str(), file = %path.display(), load_ms = t.load.as_secs_f64() * 1e3, "plugin file changed: swapped")
                        }
                        Err(e) => {
                            tracing::error!(pool = %name, kind = kind.as_str(), file = %path.display(), error = %e, "plugin file changed but not swapped; the plugin in place keeps serving")
                        }
                    }
                }
                now.insert(key, (state, !settled && (pending || before != state)));
            }
        }
        seen = now;
    }
}
