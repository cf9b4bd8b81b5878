//! `weir plugin test FILE.wasm`: the conformance kit. It runs a plugin in the real runtime
//! (the proxy's engine, limits and pool views, through [`weir::simulate::Sim`]) against
//! standard scenarios and prints one row per scenario, pass or fail with the reason, then
//! ns/decision and memory per instance; it fails (exit 1) when any row fails.
//!
//! The conformance logic lives here, on top of the library's offline simulation, because
//! it needs the state layer's pools (eligibility, generations) and the plugin layer may
//! not use them (DESIGN.md, host layout). What each world is checked for:
//!
//! - balancers, in full: the issue's scenarios (empty pool, one backend, weights, an
//!   ineligible backend, a pool change mid-run, 10000 backends, 100000 decisions with
//!   memory that stops growing, decisions within the deadline, a bad config refused);
//! - affinity plugins: they load and configure, refuse a bad config, `pinned` answers
//!   only members (or none), `bind` answers valid HTTP headers, a request that comes back
//!   with what `bind` gave it (its cookies) is pinned where it was bound, and memory stops
//!   growing over 100000 calls;
//! - health plugins: they load and configure, refuse a bad config, answer verdicts only
//!   about members with a reason, mark a backend that fails every probe and all its
//!   traffic as not healthy, and memory stops growing over 100000 observations.
//!
//! Scenarios run with the proxy's limits (`[plugins]` of `--config` when given, else the
//! defaults): a plugin that passes here passes them in production.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir::config::{PluginRef, PluginSettings, PluginSource};
use weir::core::Verdict;
use weir::plugin::{CallError, LoadError, Observation, PluginRuntime, Window};
use weir::simulate::{Sim, SimBackend, SimError};
use weir::state::BuildError;

/// `weir plugin test` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The component (`.wasm`), or a pack name.
    file: String,
    /// The plugin's config as JSON, for every scenario but the bad-config one.
    #[arg(long, default_value = "{}")]
    plugin_config: String,
    /// A config the plugin must refuse with `invalid-config`.
    #[arg(long, default_value = r#"{"weir-conformance-no-such-key": true}"#)]
    bad_config: String,
    /// The balancer ignores weights by design (as `round-robin` and `first` do): the
    /// weights scenario is skipped, its shares still shown.
    #[arg(long)]
    ignores_weights: bool,
    /// Decisions in the memory and deadline scenario.
    #[arg(long, default_value_t = 100_000)]
    decisions: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Pack balancers documented (docs/algorithms.md) as ignoring weights.
const IGNORE_WEIGHTS: &[&str] = &["round-robin", "first"];

/// A scenario stops at this many failed decisions: it has failed, and a plugin that
/// loops costs a whole deadline per call.
const MAX_FAILURES: u64 = 100;

/// The most the instance's memory may grow over the second half of the long run.
const GROWTH_ALLOWED: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: &'static str,
    result: Outcome,
    detail: String,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    plugin: String,
    world: Option<&'static str>,
    rows: Vec<Row>,
    /// Mean ns per decision in the long run (calls that built an instance excluded).
    ns_per_decision: Option<f64>,
    /// Linear memory of one instance at the end of the long run.
    memory_per_instance: Option<usize>,
}

impl Report {
    fn row(&mut self, scenario: &'static str, result: Result<String, String>) {
        let (result, detail) = match result {
            Ok(d) => (Outcome::Pass, d),
            Err(d) => (Outcome::Fail, d),
        };
        self.rows.push(Row { scenario, result, detail });
    }

    fn failed(&self) -> usize {
        self.rows.iter().filter(|r| r.result == Outcome::Fail).count()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "weir plugin test {} ({})", self.plugin, self.world.unwrap_or("no weir world"))?;
        for r in &self.rows {
            let mark = match r.result {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            writeln!(f, "  {mark:<4}  {:<34} {}", r.scenario, r.detail)?;
        }
        if let Some(ns) = self.ns_per_decision {
            writeln!(f, "ns/decision          {ns:.0}")?;
        }
        if let Some(bytes) = self.memory_per_instance {
            writeln!(f, "memory/instance      {} (linear memory)", size(bytes))?;
        }
        let count = |o| self.rows.iter().filter(|r| r.result == o).count();
        writeln!(
            f,
            "{} passed, {} failed, {} skipped",
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Skip)
        )
    }
}

/// Runs the kit; an error when any scenario failed (the caller exits 1).
pub(crate) fn run(args: Args, settings: PluginSettings) -> anyhow::Result<()> {
    let source = PluginSource::parse(&args.file, std::path::Path::new("."));
    let bytes = PluginRuntime::bytes(&source)?;
    let runtime = PluginRuntime::new(settings.clone())?;
    let inspection = runtime.inspect(&bytes)?;
    let mut report = Report {
        plugin: args.file.clone(),
        world: inspection.world,
        rows: Vec::new(),
        ns_per_decision: None,
        memory_per_instance: None,
    };
    let kit = Kit { args: &args, settings, source };
    match inspection.world {
        Some("balancer-plugin") => kit.balancer(&mut report),
        Some("affinity-plugin") => kit.affinity(&mut report, &runtime),
        Some("health-plugin" | "health-batch-plugin") => kit.health(&mut report, &runtime),
        _ => report
            .row("exports a weir world", Err("exports no weir:plugin interface (see `weir plugin inspect`)".into())),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    match report.failed() {
        0 => Ok(()),
        n => anyhow::bail!("{n} of {} scenarios failed", report.rows.len()),
    }
}

struct Kit<'a> {
    args: &'a Args,
    settings: PluginSettings,
    source: PluginSource,
}

/// Equal backends.
fn equal(n: usize) -> Vec<SimBackend> {
    vec![SimBackend::equal(); n]
}

/// Why a load failed, in a row.
fn load_error(e: &SimError) -> String {
    e.to_string()
}

impl Kit<'_> {
    fn sim(&self, backends: &[SimBackend]) -> Result<Sim, SimError> {
        Sim::with_settings(&self.args.file, &self.args.plugin_config, backends, self.settings.clone())
    }

    fn plugin_ref(&self, config: &str) -> Result<PluginRef, String> {
        let value: serde_json::Value = serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
        Ok(PluginRef {
            source: self.source.clone(),
            config_json: value.to_string(),
            at: None,
            config_at: None,
            limits: Default::default(),
        })
    }

    fn balancer(&self, report: &mut Report) {
        match self.sim(&equal(4)) {
            Ok(_) => report.row("loads and configures", Ok(format!("config {}", self.args.plugin_config))),
            Err(e) => {
                report.row("loads and configures", Err(load_error(&e)));
                return;
            }
        }
        report.row("empty pool: no-backend", self.empty_pool());
        report.row("one backend", self.one_backend());
        match self.weights() {
            // Still run, so the shares are shown.
            Ok(d) | Err(d) if self.ignores_weights() => report.rows.push(Row {
                scenario: "weights honoured",
                result: Outcome::Skip,
                detail: format!("ignores weights by design (--ignores-weights): {d}"),
            }),
            result => report.row("weights honoured", result),
        }
        report.row("ineligible backend never picked", self.ineligible());
        report.row("pool change mid-run", self.pool_change());
        report.row("10000 backends", self.large_pool());
        let (memory, deadline) = self.long_run(report);
        report.row("memory stops growing", memory);
        report.row("decisions within the deadline", deadline);
        report.row("bad config refused", self.bad_config(|config| self.sim_with(config, &equal(2)).map(|_| ())));
    }

    fn sim_with(&self, config: &str, backends: &[SimBackend]) -> Result<Sim, SimError> {
        Sim::with_settings(&self.args.file, config, backends, self.settings.clone())
    }

    fn ignores_weights(&self) -> bool {
        self.args.ignores_weights || IGNORE_WEIGHTS.contains(&self.args.file.as_str())
    }

    /// `n` decisions with distinct keys; every answer must be an eligible id. Stops at
    /// the [`MAX_FAILURES`]th failure (a plugin that loops costs a deadline per call).
    fn decide(sim: &Sim, n: u64, first_key: u64, mut each: impl FnMut(u32)) -> Result<(), String> {
        let mut failures = 0u64;
        let mut first = None;
        let mut tried = 0;
        for k in first_key..first_key + n {
            tried += 1;
            match sim.ask(Sim::request(Some(k))).1 {
                Ok(id) => each(id),
                Err(e) => {
                    failures += 1;
                    first.get_or_insert(e);
                    if failures == MAX_FAILURES {
                        break;
                    }
                }
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(format!("{failures} of {tried} decisions failed, first: {}", describe(&e))),
        }
    }

    fn empty_pool(&self) -> Result<String, String> {
        let none_eligible = vec![SimBackend { weight: 0, max_connections: 0 }; 3];
        for (what, backends) in [("an empty pool", Vec::new()), ("a pool of weight-0 backends", none_eligible)] {
            let sim = self.sim(&backends).map_err(|e| load_error(&e))?;
            for k in 0..10 {
                match sim.ask(Sim::request(Some(k))).1 {
                    Err(CallError::NoBackend) => {}
                    Ok(id) => return Err(format!("{what}: picked backend {id}, want no-backend")),
                    Err(e) => return Err(format!("{what}: {}, want no-backend", describe(&e))),
                }
            }
        }
        Ok("no-backend for an empty pool and for one with no eligible backend".into())
    }

    fn one_backend(&self) -> Result<String, String> {
        let sim = self.sim(&equal(1)).map_err(|e| load_error(&e))?;
        Self::decide(&sim, 1_000, 0, |_| {})?;
        Ok("1000 decisions, all to backend 0".into())
    }

    /// Weights 4, 2, 1, 1 with connections held open (so load-aware balancers weigh too)
    /// and equal latency; shares within 25% of weight / total.
    fn weights(&self) -> Result<String, String> {
        let weights = [4u32, 2, 1, 1];
        let backends: Vec<SimBackend> =
            weights.iter().map(|&weight| SimBackend { weight, max_connections: 0 }).collect();
        let sim = self.sim(&backends).map_err(|e| load_error(&e))?;
        for id in 0..weights.len() as u32 {
            sim.set_latency_us(id, 1_000);
        }
        let n = 16_000u64;
        let mut picks = [0u64; 4];
        Self::decide(&sim, n, 0, |id| {
            picks[id as usize] += 1;
            sim.open(id);
        })?;
        let total: u32 = weights.iter().sum();
        let shares: Vec<f64> = picks.iter().map(|&p| p as f64 / n as f64).collect();
        let text = shares.iter().map(|s| format!("{:.1}%", s * 100.0)).collect::<Vec<_>>().join("/");
        let off = weights.iter().zip(&shares).position(|(&w, &s)| {
            let want = f64::from(w) / f64::from(total);
            (s - want).abs() > want * 0.25
        });
        match off {
            None => Ok(format!("weights 4/2/1/1: shares {text} (within 25%)")),
            Some(i) => Err(format!(
                "weights 4/2/1/1: shares {text}; backend {i} got {:.1}%, want {:.1}% ± 25%",
                shares[i] * 100.0,
                f64::from(weights[i]) / f64::from(total) * 100.0
            )),
        }
    }

    /// Backend 1 has weight 0 and backend 2 is unhealthy: neither may be picked.
    fn ineligible(&self) -> Result<String, String> {
        let mut sim = self.sim(&equal(4)).map_err(|e| load_error(&e))?;
        sim.set_weight(1, 0).map_err(|e| e.to_string())?;
        sim.set_verdict(2, Verdict::Unhealthy).map_err(|e| e.to_string())?;
        Self::decide(&sim, 5_000, 0, |_| {})?;
        Ok("5000 decisions, none to the weight-0 or the unhealthy backend".into())
    }

    /// 2000 decisions, then backend 0 gets weight 0, backend 1 is removed and one is
    /// added (ids shift), then 2000 more: each must be eligible in the new generation.
    fn pool_change(&self) -> Result<String, String> {
        let mut sim = self.sim(&equal(5)).map_err(|e| load_error(&e))?;
        Self::decide(&sim, 2_000, 0, |_| {}).map_err(|e| format!("before the change: {e}"))?;
        sim.set_weight(0, 0).map_err(|e| e.to_string())?;
        sim.remove(1).map_err(|e| e.to_string())?;
        sim.add(SimBackend::equal()).map_err(|e| e.to_string())?;
        Self::decide(&sim, 2_000, 2_000, |_| {}).map_err(|e| format!("after the change: {e}"))?;
        Ok("2000 decisions, then a backend drained, one removed, one added: 2000 more, all eligible".into())
    }

    fn large_pool(&self) -> Result<String, String> {
        let sim = self.sim(&equal(10_000)).map_err(|e| load_error(&e))?;
        let started = Instant::now();
        Self::decide(&sim, 1, 0, |_| {}).map_err(|e| format!("first decision: {e}"))?;
        let first = started.elapsed();
        let started = Instant::now();
        Self::decide(&sim, 1_000, 1, |_| {})?;
        let each = started.elapsed() / 1_000;
        Ok(format!("first decision (pool-changed) {}, then {} per decision", duration(first), duration(each)))
    }

    /// The long run: memory must stop growing and decisions stay within the deadline.
    fn long_run(&self, report: &mut Report) -> (Result<String, String>, Result<String, String>) {
        let sim = match self.sim(&equal(10)) {
            Ok(s) => s,
            Err(e) => return (Err(load_error(&e)), Err(load_error(&e))),
        };
        let n = self.args.decisions.max(2);
        let stats = sim.stats();
        let (traps0, timeouts0, inst0) = (
            stats.traps.load(Ordering::Relaxed),
            stats.timeouts.load(Ordering::Relaxed),
            stats.instantiations.load(Ordering::Relaxed),
        );
        let mut times: Vec<u32> = Vec::with_capacity(n as usize);
        let (mut failures, mut first_failure, mut memory_at_half, mut nanos, mut timed) =
            (0u64, None, None, 0u128, 0u64);
        for i in 0..n {
            let req = Sim::request(Some(i % 50_000));
            let before = stats.instantiations.load(Ordering::Relaxed);
            let started = Instant::now();
            let (_, result) = sim.ask(req);
            let took = started.elapsed();
            // A call that built an instance (the first, or one after a trap) is not a
            // decision's cost.
            if stats.instantiations.load(Ordering::Relaxed) == before {
                nanos += took.as_nanos();
                timed += 1;
                times.push(u32::try_from(took.as_nanos()).unwrap_or(u32::MAX));
            }
            if let Err(e) = result {
                failures += 1;
                first_failure.get_or_insert((i, e));
                if failures == MAX_FAILURES {
                    break;
                }
            }
            if i + 1 == n / 2 {
                memory_at_half = sim.instance_memory();
            }
        }
        let memory_at_end = sim.instance_memory();
        report.memory_per_instance = memory_at_end;
        report.ns_per_decision = (timed > 0).then(|| nanos as f64 / timed as f64);
        let traps = stats.traps.load(Ordering::Relaxed) - traps0;
        let timeouts = stats.timeouts.load(Ordering::Relaxed) - timeouts0;
        let rebuilt = stats.instantiations.load(Ordering::Relaxed) - inst0;

        let memory = match (memory_at_half, memory_at_end, &first_failure) {
            (_, _, Some((i, CallError::MemoryLimit))) => {
                Err(format!("hit the memory limit ({}) at decision {}", size(self.settings.memory_limit), i + 1))
            }
            (Some(half), Some(end), _) if end > half + GROWTH_ALLOWED => Err(format!(
                "grew from {} to {} over the last {} decisions ({:.0} bytes per decision)",
                size(half),
                size(end),
                n - n / 2,
                (end - half) as f64 / (n - n / 2) as f64
            )),
            (Some(half), Some(end), _) => {
                Ok(format!("{} after {} decisions, {} after {n}", size(half), n / 2, size(end)))
            }
            _ => Err(format!("no live instance to measure ({traps} traps, {rebuilt} instances built)")),
        };
        times.sort_unstable();
        let pct = |p: f64| times.get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1))).copied();
        let deadline = self.settings.call_timeout;
        let (p99, max) = (pct(0.99).unwrap_or(0), times.last().copied().unwrap_or(0));
        let timing =
            format!("p99 {}, max {} (wall), deadline {}", duration(ns(p99)), duration(ns(max)), duration(deadline));
        let deadline_row = if timeouts > 0 {
            Err(format!("{timeouts} decisions ran past the deadline (stopped at {MAX_FAILURES} failures); {timing}"))
        } else if ns(p99) > deadline {
            Err(format!("p99 above the deadline: {timing}"))
        } else if failures > 0 {
            let (i, e) = first_failure.as_ref().map(|(i, e)| (*i, describe(e))).unwrap_or_default();
            Err(format!(
                "{failures} decisions failed ({traps} traps; stopped at {MAX_FAILURES}), first at {}: {e}",
                i + 1
            ))
        } else {
            Ok(format!("{n} decisions; {timing}"))
        };
        (memory, deadline_row)
    }

    /// Loads the plugin with the bad config: it must refuse it with a message.
    fn bad_config(&self, load: impl FnOnce(&str) -> Result<(), SimError>) -> Result<String, String> {
        let bad = &self.args.bad_config;
        match load(bad) {
            Ok(()) => Err(format!("accepted {bad}: a misspelt key would be ignored without a word")),
            Err(SimError::Build(BuildError::Plugin { error: LoadError::InvalidConfig(m), .. }))
                if !m.trim().is_empty() =>
            {
                Ok(format!("refused {bad}: {m}"))
            }
            Err(SimError::Build(BuildError::Plugin { error: LoadError::InvalidConfig(_), .. })) => {
                Err(format!("refused {bad} without saying why (empty message)"))
            }
            Err(e) => Err(format!("{bad}: {e} (want invalid-config with a message)")),
        }
    }

    fn affinity(&self, report: &mut Report, runtime: &PluginRuntime) {
        let sim = match Sim::with_settings("round-robin", "{}", &equal(4), self.settings.clone()) {
            Ok(s) => s,
            Err(e) => return report.row("loads and configures", Err(load_error(&e))),
        };
        let host = sim.pool().host().clone();
        let load = |config: &str| -> Result<Arc<weir::plugin::Affinity>, String> {
            let plugin = self.plugin_ref(config)?;
            runtime.load_affinity("test", &plugin, &host).map_err(|e| e.to_string())
        };
        let affinity = match load(&self.args.plugin_config) {
            Ok(a) => {
                report.row("loads and configures", Ok(format!("config {}", self.args.plugin_config)));
                a
            }
            Err(e) => return report.row("loads and configures", Err(e)),
        };
        let stats = &affinity.stats;
        let errors = |what: &str| -> Result<(), String> {
            let (traps, errors) = (stats.traps.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed));
            if traps + errors > 0 {
                return Err(format!("{what}: {traps} traps, {errors} wrong answers (see the log)"));
            }
            Ok(())
        };
        let members = sim.len() as u32;
        let mut wrong = None;
        for k in 0..1_000 {
            if let (_, Some(id)) = affinity.lookup(&host, Sim::request(Some(k)))
                && id >= members
            {
                wrong = Some(id);
            }
        }
        report.row(
            "pinned answers members or none",
            match wrong {
                Some(id) => Err(format!("pinned backend {id}, which does not exist")),
                None => errors("1000 lookups").map(|()| "1000 lookups of new clients".into()),
            },
        );
        let mut bound_headers = 0;
        for k in 0..1_000 {
            bound_headers += affinity.bind(&host, Sim::request(Some(k)), (k % 4) as u32).1.headers.len();
        }
        report.row(
            "bind answers valid headers",
            errors("1000 binds").map(|()| format!("1000 binds, {bound_headers} headers, all valid HTTP")),
        );
        // A client that comes back with what bind gave it (its cookies) is pinned there.
        let mut stuck = 0;
        for k in 0..100u64 {
            let chosen = (k % 4) as u32;
            let bound = affinity.bind(&host, Sim::request(Some(10_000 + k)), chosen).1;
            let mut req = Sim::request(Some(10_000 + k));
            if let Some(head) = req.head.as_mut() {
                for (name, value) in &bound.headers {
                    if name == http::header::SET_COOKIE
                        && let Some(pair) = value.to_str().ok().and_then(|v| v.split(';').next())
                        && let Ok(v) = http::HeaderValue::from_str(pair)
                    {
                        head.headers.append(http::header::COOKIE, v);
                    }
                }
            }
            if affinity.lookup(&host, req).1 == Some(chosen) {
                stuck += 1;
            }
        }
        report.row(
            "a bound client is pinned there",
            if stuck == 100 {
                Ok("100 of 100 clients came back to the backend bound".into())
            } else {
                Err(format!(
                    "{stuck} of 100 clients came back to the backend bound (same address, key header and cookies)"
                ))
            },
        );
        report.row(
            "memory stops growing",
            self.steady(
                &affinity,
                |i| {
                    let _ = affinity.lookup(&host, Sim::request(Some(i % 50_000)));
                },
                |a| a.instance_memory(),
            ),
        );
        report.row("bad config refused", self.refused(load(&self.args.bad_config).map(|_| ())));
    }

    fn health(&self, report: &mut Report, runtime: &PluginRuntime) {
        let sim = match Sim::with_settings("round-robin", "{}", &equal(4), self.settings.clone()) {
            Ok(s) => s,
            Err(e) => return report.row("loads and configures", Err(load_error(&e))),
        };
        let host = sim.pool().host().clone();
        let load = |config: &str| -> Result<Arc<weir::plugin::Health>, String> {
            let plugin = self.plugin_ref(config)?;
            runtime.load_health("test", &plugin, &host).map_err(|e| e.to_string())
        };
        let health = match load(&self.args.plugin_config) {
            Ok(h) => {
                report.row("loads and configures", Ok(format!("config {}", self.args.plugin_config)));
                h
            }
            Err(e) => return report.row("loads and configures", Err(e)),
        };
        // Backend 0 fails every probe and all its traffic, slowly; the others succeed.
        let mut verdicts = Vec::new();
        let mut failure = None;
        let mut at_ms = 1_000;
        for round in 0..30u64 {
            at_ms += 1_000;
            for id in 0..4 {
                let obs = if id == 0 {
                    Observation {
                        active_probe: true,
                        failure: Some(weir::core::Failure::Timeout),
                        status: Some(503),
                        latency_us: 5_000_000,
                        at_ms,
                    }
                } else {
                    Observation { active_probe: true, failure: None, status: Some(200), latency_us: 1_000, at_ms }
                };
                // Backend 0's live traffic fails too: a 503 (passive evaluators judge
                // those).
                let passive = Observation { active_probe: false, failure: Some(weir::core::Failure::Status), ..obs };
                let observations: &[Observation] = if id == 0 { &[obs, passive] } else { &[obs] };
                for o in observations {
                    match health.observe(&host, id, o) {
                        Ok(v) => verdicts.extend(v),
                        Err(e) => {
                            failure.get_or_insert(format!("observe in round {round}: {}", describe(&e)));
                        }
                    }
                }
            }
            let windows: Vec<Window> = (0..4)
                .map(|id| match id {
                    0 => Window { successes: 0, failures: 50, latency_ewma_us: 5_000_000 },
                    _ => Window { successes: 50, failures: 0, latency_ewma_us: 1_000 },
                })
                .collect();
            match health.tick(&host, at_ms, &windows) {
                Ok(v) => verdicts.extend(v),
                Err(e) => {
                    failure.get_or_insert(format!("tick in round {round}: {}", describe(&e)));
                }
            }
        }
        let errors = health.stats.errors.load(Ordering::Relaxed);
        let unreasoned = verdicts.iter().filter(|a| a.reason.trim().is_empty()).count();
        report.row(
            "verdicts about members, with reasons",
            match (failure, errors, unreasoned) {
                (Some(f), _, _) => Err(f),
                (None, e, _) if e > 0 => Err(format!("{e} verdicts about backends that do not exist")),
                (None, _, n) if n > 0 => Err(format!("{n} verdicts without a reason")),
                _ => Ok(format!("150 observations and 30 ticks: {} verdicts", verdicts.len())),
            },
        );
        let last = |id: u32| verdicts.iter().rev().find(|a| a.id == id).map(|a| a.verdict);
        report.row(
            "a failing backend is not healthy",
            match (last(0), (1..4).find(|&id| matches!(last(id), Some(Verdict::Unhealthy)))) {
                (_, Some(id)) => Err(format!("backend {id}, which passed every probe, was judged unhealthy")),
                (Some(Verdict::Unhealthy | Verdict::Degraded), None) => Ok(format!(
                    "backend 0 (every probe and exchange failed, 5 s latency): {:?}",
                    last(0).unwrap_or(Verdict::Healthy)
                )
                .to_lowercase()),
                _ => Err("backend 0 failed every probe and exchange (timeouts, 503s) for 30 s, with 5 s latency, and is still healthy".into()),
            },
        );
        let obs = Observation { active_probe: true, failure: None, status: Some(200), latency_us: 1_000, at_ms };
        report.row(
            "memory stops growing",
            self.steady(
                &health,
                |i| {
                    let _ = health.observe(&host, (i % 4) as u32, &Observation { at_ms: obs.at_ms + i, ..obs });
                },
                |h| h.instance_memory(),
            ),
        );
        report.row("bad config refused", self.refused(load(&self.args.bad_config).map(|_| ())));
    }

    /// `self.args.decisions` calls of `call`: memory must not grow over the second half.
    fn steady<P>(
        &self,
        plugin: &P,
        mut call: impl FnMut(u64),
        memory: impl Fn(&P) -> Option<usize>,
    ) -> Result<String, String> {
        let n = self.args.decisions.max(2);
        let mut half = None;
        for i in 0..n {
            call(i);
            if i + 1 == n / 2 {
                half = memory(plugin);
            }
        }
        match (half, memory(plugin)) {
            (Some(h), Some(e)) if e > h + GROWTH_ALLOWED => {
                Err(format!("grew from {} to {} over the last {} calls", size(h), size(e), n - n / 2))
            }
            (Some(h), Some(e)) => Ok(format!("{} after {} calls, {} after {n}", size(h), n / 2, size(e))),
            _ => Err("no live instance to measure (it trapped?)".into()),
        }
    }

    fn refused(&self, result: Result<(), String>) -> Result<String, String> {
        let bad = &self.args.bad_config;
        match result {
            Ok(()) => Err(format!("accepted {bad}: a misspelt key would be ignored without a word")),
            Err(e) if e.contains("invalid config: ") && !e.trim_end().ends_with("invalid config:") => {
                Ok(format!("refused {bad}: {e}"))
            }
            Err(e) => Err(format!("{bad}: {e} (want invalid-config with a message)")),
        }
    }
}

/// A call error as a row says it.
fn describe(e: &CallError) -> String {
    match e {
        CallError::InvalidBackend(id) => format!("picked backend {id}, which is not eligible"),
        other => other.to_string(),
    }
}

fn ns(n: u32) -> Duration {
    Duration::from_nanos(u64::from(n))
}

fn duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

fn size(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}
