//! The `weir` command line: run, check, demo and plugin tooling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use weir::config::{Config, PluginSettings};
use weir::plugin::PluginRuntime;

mod cli;

/// glibc's malloc, with tokio's 128-aligned blocks reused per thread (`weir::core::alloc`).
#[global_allocator]
static ALLOCATOR: weir::core::alloc::Allocator = weir::core::alloc::Allocator;

/// A load balancer whose routing decisions are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "weir", version = concat!(env!("CARGO_PKG_VERSION"), ", plugin pack ", env!("WEIR_PACK_VERSION"), ", WIT weir:plugin@0.1.0"), about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for `weir --config F`, the same as `weir run --config F`).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the listeners of a config file.
    Run,
    /// Validate a config file and load every plugin it names; exit 1 on any error.
    Check,
    /// Start three demo backends behind the proxy and print what to try.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API listens (loopback, no token). When it is taken the demo
        /// stops and says so: the documented address is the one to find it at.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// What a running weir's admin API reports, as tables.
    Status {
        #[command(flatten)]
        admin: cli::AdminArgs,
        /// Print the JSON the admin API answered.
        #[arg(long)]
        json: bool,
    },
    /// Plugin tooling.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Show which world a component implements, its imports, exports and size.
    Inspect {
        /// A `.wasm` component, or a pack name.
        file: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the plugins embedded in this binary.
    List,
    /// Run a balancer offline against a simulated pool: share per backend, max/mean load,
    /// keys remapped by a pool change, ns per decision.
    Simulate(SimulateArgs),
    /// The conformance kit: run a plugin against the standard scenarios and print a
    /// pass/fail table, ns/decision and memory per instance; exit 1 on any failure.
    /// Limits: `[plugins]` of `--config`, else the defaults.
    Test(cli::test::Args),
    /// Make a plugin project that builds with one command and passes `weir plugin test`.
    New(cli::new::Args),
    /// Swap a running pool's balancer, affinity or health plugin through the admin API
    /// (compiled, configured and dry-run before it serves; on any error the old one keeps
    /// serving). The plugin's config is JSON: `--plugin-config '{"key": "path"}'`, or
    /// `--config` with the same JSON (or a `.json` file holding it): the server's config
    /// file is not needed, the swap goes through the admin API.
    Swap {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// The new balancer: a pack name or a `.wasm` file (uploaded).
        #[arg(long, group = "which", required_unless_present_any = ["affinity", "health"])]
        balancer: Option<String>,
        /// The new affinity plugin: a pack name or a `.wasm` file (uploaded).
        #[arg(long, group = "which")]
        affinity: Option<String>,
        /// The new health plugin (it replaces the pool's whole list): a pack name or a
        /// `.wasm` file (uploaded), or the list as JSON (`[{"plugin": "threshold"}, ...]`).
        #[arg(long, group = "which")]
        health: Option<String>,
        /// The plugin's config as JSON (the same as `--config JSON`).
        #[arg(long)]
        plugin_config: Option<String>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Roll a pool's balancer, affinity or health plugins back to the version the last swap
    /// replaced.
    Rollback {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// Roll back the balancer.
        #[arg(long, group = "which", required_unless_present_any = ["affinity", "health"])]
        balancer: bool,
        /// Roll back the affinity plugin.
        #[arg(long, group = "which")]
        affinity: bool,
        /// Roll back the health plugins.
        #[arg(long, group = "which")]
        health: bool,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// A pack name or a `.wasm` component.
    #[arg(long)]
    plugin: String,
    /// The plugin's config as JSON.
    #[arg(long, default_value = "{}")]
    plugin_config: String,
    /// Number of equal backends.
    #[arg(long, default_value_t = 10)]
    backends: u32,
    /// Weights, one per backend (overrides --backends), e.g. 5,1,1.
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u32>,
    /// Requests to place [default: --keys, else 100000].
    #[arg(long)]
    requests: Option<u64>,
    /// Distinct hash keys (client ip, x-key header, key cookie, /k/KEY path, key= query).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Connections stay open, so load accumulates.
    #[arg(long)]
    long_lived: bool,
    /// Latency EWMA per backend in µs, e.g. 1000,1000,10000.
    #[arg(long, value_delimiter = ',')]
    latency_us: Vec<u32>,
    /// Remove this many backends after the run and report the keys remapped.
    #[arg(long, default_value_t = 0)]
    remove: u32,
    /// Add this many backends after the run and report the keys remapped.
    #[arg(long, default_value_t = 0)]
    add: u32,
    /// A label on a backend, `ID:KEY=VALUE` (repeatable), e.g. `0:zone=a`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(u32, String, String)>,
    /// A header on every request, `NAME: VALUE` (repeatable); `{key}` in the value becomes
    /// the request's key.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(u32, String, String), String> {
    let (id, kv) = s.split_once(':').ok_or("want ID:KEY=VALUE")?;
    let (k, v) = kv.split_once('=').ok_or("want ID:KEY=VALUE")?;
    let id = id.trim().parse().map_err(|e| format!("backend id `{id}`: {e}"))?;
    Ok((id, k.trim().to_owned(), v.trim().to_owned()))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or("want NAME: VALUE")?;
    http::HeaderName::try_from(name.trim()).map_err(|e| format!("header name `{}`: {e}", name.trim()))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The conformance kit reports a plugin's misbehaviour in its table: the warning the
    // proxy logs for each one would bury it.
    let kit = matches!(&cli.command, Some(Command::Plugin { command: PluginCommand::Test(_) }));
    init_logging(cli.log_format, if kit { "error" } else { "info" });
    let result = match cli.command {
        None | Some(Command::Run) => config_path(cli.config).and_then(|path| {
            // With one worker this thread serves everything; with more, each is a thread
            // of its own (`Server::start`) and this one serves the control plane.
            let config = Config::load(&path)?;
            block_on(run(path, config))
        }),
        Some(Command::Check) => config_path(cli.config).and_then(check),
        Some(Command::Demo { listen, admin }) => block_on(demo(listen, admin)),
        Some(Command::Status { admin, json }) => block_on(async move { cli::status::run(&admin, json).await }),
        Some(Command::Plugin {
            command: PluginCommand::Swap { pool, balancer, affinity, health, plugin_config, admin },
        }) => {
            // `--config` is global (the config file elsewhere); for a swap it is the
            // plugin's config, as `--plugin-config` is.
            let (kind, plugin) = match (balancer, affinity, health) {
                (Some(b), _, _) => ("balancer", b),
                (None, Some(a), _) => ("affinity", a),
                (None, None, Some(h)) => ("health", h),
                (None, None, None) => unreachable_args(),
            };
            cli::swap::plugin_config(plugin_config, cli.config).and_then(|config| {
                block_on(async move { cli::swap::swap(&admin, &pool, kind, &plugin, config.as_deref()).await })
            })
        }
        Some(Command::Plugin { command: PluginCommand::Rollback { pool, balancer, health, admin, .. } }) => {
            let kind = match (balancer, health) {
                (true, _) => "balancer",
                (false, true) => "health",
                (false, false) => "affinity",
            };
            block_on(async move { cli::swap::rollback(&admin, &pool, kind).await })
        }
        Some(Command::Plugin { command }) => plugin(command, cli.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// clap enforces `required_unless_present`: this is never reached.
fn unreachable_args() -> ! {
    eprintln!("error: give --balancer, --affinity or --health");
    std::process::exit(2)
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error and its causes on one line, each cause once: weir's errors already say their
/// cause in their own message, so a cause whose text is already there is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The plugin limits of `--config`'s `[plugins]` table, else the defaults.
fn plugin_settings(path: Option<PathBuf>) -> anyhow::Result<PluginSettings> {
    Ok(match path {
        Some(path) => Config::load(&path)?.plugins,
        None => PluginSettings::default(),
    })
}

fn config_path(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    path.context("no config file: pass --config FILE (or try `weir demo`)")
}

/// Runs `f` on tokio's current-thread runtime, on this thread. Never a multi-thread one:
/// under a load that keeps the proxy busy, the multi-thread scheduler's order of work
/// (issue 16, BENCHMARKS.md "Why the peers sleep" and "Worker model") lets clients and
/// backends run dry and sleep twice as often, and waking them costs weir system time:
/// 2-4.5 µs a request. More workers are threads of their own, each with a current-thread
/// runtime (`weir::Server::start`).
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(f)
}

async fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    weir::core::memory::release_freed_memory(config.runtime.release_memory);
    let worker_threads = config.runtime.worker_threads;
    let server = weir::Server::start(config).await?;
    tracing::info!(config = %path.display(), listeners = server.listeners().len(), worker_threads, "weir is running");
    let reloads = async {
        #[cfg(unix)]
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            while hup.recv().await.is_some() {
                // A bad new config is reported and changes nothing. Reading it resolves host
                // names: a blocking thread does that, not a worker serving traffic.
                let load = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || Config::load(&path))
                };
                let result = match load.await {
                    Ok(Ok(config)) => server.reload(config).await.map_err(anyhow::Error::from),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(anyhow::anyhow!("reading the config was interrupted: {e}")),
                };
                match result {
                    Ok(applied) => tracing::info!(config = %path.display(), ?applied, "reloaded"),
                    Err(e) => {
                        tracing::error!(config = %path.display(), error = %report(&e), "reload failed; config unchanged")
                    }
                }
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! { () = shutdown_signal() => {}, () = reloads => {} }
    tracing::info!("shutting down: finishing requests in flight, draining tunnels");
    let drained = server.shutdown().await;
    tracing::info!(tunnels = drained, "stopped");
    Ok(())
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let plugins = PluginRuntime::new(config.plugins.clone())?;
    let snapshot = weir::state::Snapshot::build(&config, &plugins, None)?;
    for pool in snapshot.pools.values() {
        weir::health::load(&pool.config, &plugins, pool)?;
    }
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            // Its errors are located at the file's key in the config.
            weir::net::tls::Terminator::default().build(tls)?;
        }
    }
    println!("{}: ok ({} listener(s), {} pool(s))", path.display(), config.listeners.len(), config.pools.len());
    for (name, pool) in &snapshot.pools {
        let affinity = pool.affinity.as_ref().map(|a| format!(", affinity {}", a.name)).unwrap_or_default();
        let health = &pool.config.health;
        let mut watched = health.plugins.iter().map(|p| p.source.to_string()).collect::<Vec<_>>().join(", ");
        if let Some(probe) = &health.probe {
            watched = format!("{watched} over {} probes every {:?}", probe.kind.as_str(), probe.interval);
        }
        let health = if watched.is_empty() { String::new() } else { format!(", health {watched}") };
        println!(
            "  pool {name}: {} backend(s), balancer {}{affinity}{health}",
            pool.view.members.len(),
            pool.balancer.name
        );
    }
    Ok(())
}

async fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let text = weir::demo::config(listen).await.context("cannot start the demo backends")?;
    let mut config = Config::parse(&text, None)?;
    if !admin.ip().is_loopback() {
        anyhow::bail!("--admin {admin}: the demo's admin API has no token, so it only listens on a loopback address");
    }
    config.admin = Some(weir::config::AdminConfig { listen: admin, token: None });
    let backends: Vec<String> = config.pools["demo"].backends.iter().map(|b| b.address.clone()).collect();
    let server = weir::Server::start(config)
        .await
        .context("cannot start the demo (is another weir demo running? try --listen and --admin)")?;
    let addr = server.addr("demo").unwrap_or(listen);
    let admin = server.admin_addr().unwrap_or(admin);
    println!("weir demo: proxy on http://{addr}, round-robin over 3 backends ({})", backends.join(", "));
    println!("admin API on http://{admin} (docs/admin.md); live dashboard: open http://{admin}/ (docs/dashboard.md)");
    println!();
    println!("Try:");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{addr}/; done    # cycles demo-1, demo-2, demo-3");
    println!("  curl -si http://{addr}/hello | grep -i x-backend");
    println!("  python3 -m websockets ws://{addr}/chat              # type a line: a demo backend echoes it");
    println!("  curl -s -c /tmp/weir.jar -b /tmp/weir.jar http://{addr}/sticky   # repeat: always the same backend");
    println!("  python3 examples/sticky_websocket.py ws://{addr}/sticky       # 5 WebSocket reconnects, one backend");
    if let Some(first) = backends.first() {
        println!(
            "  curl -s 'http://{first}/healthz/set?status=503'   # demo-1 fails its probe: out of the rotation within 2 s"
        );
        println!("  for i in 1 2 3 4 5 6; do curl -s http://{addr}/; done    # demo-2, demo-3 only (the log says why)");
        println!(
            "  curl -s 'http://{first}/healthz/set?status=200'   # back after 2 passing probes, its share ramping up over 5 s"
        );
    }
    println!("  curl -s http://{admin}/api/v1/status            # pools, backends, plugins, counters");
    println!("  weir status --admin http://{admin}");
    println!(
        "  weir plugin swap --admin http://{admin} --pool demo --balancer least-connections   # hot swap, nothing dropped"
    );
    println!("  weir plugin rollback --admin http://{admin} --pool demo --balancer");
    println!("  curl -s http://{admin}/metrics | grep candidate  # the p2c shadow's agreement with round-robin");
    println!("  curl -s -X POST http://{admin}/api/v1/pools/demo/shadow/promote   # p2c becomes the live balancer");
    println!();
    println!("Config in use:{text}");
    println!("Ctrl-C to stop.");
    shutdown_signal().await;
    Ok(())
}

fn plugin(command: PluginCommand, config: Option<PathBuf>) -> anyhow::Result<()> {
    match command {
        PluginCommand::Inspect { file, json } => {
            let source = weir::config::PluginSource::parse(&file, std::path::Path::new("."));
            let bytes = PluginRuntime::bytes(&source)?;
            let runtime = PluginRuntime::new(PluginSettings::default())?;
            let info = runtime.inspect(&bytes)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{info}");
            }
        }
        PluginCommand::List => {
            for name in weir::plugin::pack::names() {
                let role = weir::plugin::pack::role(name).map(|r| r.to_string()).unwrap_or_default();
                println!("{name:<22} {role}");
            }
        }
        PluginCommand::Test(args) => return cli::test::run(args, plugin_settings(config)?),
        PluginCommand::New(args) => return cli::new::run(&args),
        PluginCommand::Swap { .. } | PluginCommand::Rollback { .. } => {
            anyhow::bail!("swap and rollback talk to the admin API (dispatched in main)")
        }
        PluginCommand::Simulate(a) => {
            use weir::simulate::{Scenario, SimBackend};
            let backends = if a.weights.is_empty() {
                vec![SimBackend::equal(); a.backends as usize]
            } else {
                a.weights.iter().map(|&weight| SimBackend { weight, max_connections: 0 }).collect()
            };
            let scenario = Scenario {
                plugin: a.plugin,
                config_json: a.plugin_config,
                backends,
                requests: a.requests.unwrap_or(if a.keys > 0 { a.keys } else { 100_000 }),
                keys: a.keys,
                long_lived: a.long_lived,
                latency_us: a.latency_us,
                remove: a.remove,
                add: a.add,
                labels: a.labels,
                headers: a.headers,
                // Limits from `--config` when given (the proxy's), else generous ones.
                settings: config.map(|p| Config::load(&p).map(|c| c.plugins)).transpose()?,
            };
            let report = scenario.run()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, () = term => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
