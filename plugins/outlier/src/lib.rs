//! `outlier`: Envoy's outlier detection on live traffic: a backend that keeps failing
//! requests is ejected (unhealthy) for a while, longer each time it is ejected again.
//!
//! Detectors, each optional:
//! - **consecutive errors**: `consecutive_errors` failed exchanges in a row, of any kind
//!   (connect, timeout, reset, a status in the pool's `passive_failure_statuses`, ...).
//! - **consecutive gateway errors**: `consecutive_gateway_errors` in a row that say the
//!   backend is unreachable or failing rather than the request bad: connect, timeout,
//!   reset, or status 502, 503 or 504. Any other failure breaks the run.
//! - **success rate** (`success_rate = { ... }`): every `interval_ms`, among the backends
//!   that served at least `request_volume` exchanges in the interval (from the `tick`
//!   windows), if there are at least `minimum_hosts`, those whose success rate is below
//!   `mean - stdev_factor × stdev` are ejected, worst first.
//!
//! A success resets both consecutive counts. An ejection lasts `base_ejection_ms × n`,
//! capped at `max_ejection_ms`, where `n` counts the backend's ejections and goes down by
//! one for each `base_ejection_ms` it then spends healthy (so a backend that fails again
//! soon after it came back is ejected for longer, and one that behaved for a while starts
//! again from the base time). Reasons: `5 consecutive errors (last: status 500); ejected
//! for 30s (ejection 1)` and `ejection ended`. No ejection may leave more than
//! `max_ejection_percent` of the members ejected, except that one backend may always be
//! ejected; a refused ejection leaves the backend healthy (logged at debug) and is tried
//! again on its next error, or at the next success-rate evaluation.
//!
//! Observations of the timed probe are ignored, and so is live traffic to an ejected
//! backend (requests that were already in flight); an ejection ends on the first `tick`
//! past its end, whatever the probes say. Time is the host's: `at-ms` of observations and
//! ticks. State is kept by backend address, so an ejection survives a reload.
//!
//! Config (all optional), with Envoy's defaults:
//! - `consecutive_errors` (default 5; 0 disables)
//! - `consecutive_gateway_errors` (default 0: disabled)
//! - `base_ejection_ms` (default 30000, 1 ms to 1 day)
//! - `max_ejection_ms` (default the larger of 300000 and `base_ejection_ms`; from
//!   `base_ejection_ms` to 1 day)
//! - `max_ejection_percent` (default 10, 0 to 100)
//! - `success_rate` (default absent: off): a table with `minimum_hosts` (5, ≥ 1),
//!   `request_volume` (100, ≥ 1), `stdev_factor` (1.9, > 0) and `interval_ms` (10000, 1 ms
//!   to 1 hour; Envoy's `interval`); `success_rate = {}` turns it on with those defaults.

use serde::Deserialize;
use weir_guest::health::{self, Assessment, Book, Evaluator, Observation, Verdict, Window};
use weir_guest::types::{BackendId, PluginError};

wit_bindgen::generate!({
    world: "health-batch-plugin",
    path: "../../wit",
    with: {
        "weir:plugin/types@0.1.0": weir_guest::types,
        "weir:plugin/pool@0.1.0": weir_guest::pool,
        "weir:plugin/log@0.1.0": weir_guest::log,
    },
});

/// Longest ejection time that can be configured: one day.
const MAX_MS: u64 = 86_400_000;

/// The plugin's config table, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    consecutive_errors: u32,
    consecutive_gateway_errors: u32,
    base_ejection_ms: u64,
    max_ejection_ms: Option<u64>,
    max_ejection_percent: u32,
    success_rate: Option<SuccessRate>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            consecutive_gateway_errors: 0,
            base_ejection_ms: 30_000,
            max_ejection_ms: None,
            max_ejection_percent: 10,
            success_rate: None,
        }
    }
}

/// `success_rate = { ... }`: Envoy's success-rate detector.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SuccessRate {
    /// Least number of backends with enough volume for the detector to judge (≥ 1).
    minimum_hosts: u32,
    /// Least number of exchanges in an interval for a backend to be judged (≥ 1).
    request_volume: u64,
    /// A backend is ejected below `mean - stdev_factor × stdev` (> 0).
    stdev_factor: f64,
    /// How often it is evaluated, over the exchanges since the previous evaluation.
    interval_ms: u64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self { minimum_hosts: 5, request_volume: 100, stdev_factor: 1.9, interval_ms: 10_000 }
    }
}

/// The validated config.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    /// Consecutive errors that eject; 0: never.
    consecutive_errors: u32,
    /// Consecutive gateway errors that eject; 0: never.
    consecutive_gateway_errors: u32,
    /// The first ejection's length, and the unit of later ones and of their decay.
    base_ejection_ms: u64,
    /// The longest ejection.
    max_ejection_ms: u64,
    /// Most members that may be ejected at once, in percent (one always may).
    max_ejection_percent: u32,
    /// The success-rate detector, if on.
    success_rate: Option<SuccessRate>,
}

impl Config {
    fn parse(json: &str) -> Result<Self, PluginError> {
        let file: FileConfig = weir_guest::parse_config(json)?;
        let invalid = |m: String| Err(PluginError::InvalidConfig(m));
        let base = file.base_ejection_ms;
        if !(1..=MAX_MS).contains(&base) {
            return invalid(format!("base_ejection_ms: must be 1 to {MAX_MS} (1 day), got {base}"));
        }
        let max = file.max_ejection_ms.unwrap_or(base.max(300_000));
        if !(base..=MAX_MS).contains(&max) {
            return invalid(format!(
                "max_ejection_ms: must be from base_ejection_ms ({base}) to {MAX_MS} (1 day), got {max}"
            ));
        }
        if file.max_ejection_percent > 100 {
            return invalid(format!("max_ejection_percent: must be 0 to 100, got {}", file.max_ejection_percent));
        }
        if let Some(sr) = &file.success_rate {
            if sr.minimum_hosts == 0 {
                return invalid("success_rate.minimum_hosts: must be at least 1".into());
            }
            if sr.request_volume == 0 {
                return invalid("success_rate.request_volume: must be at least 1".into());
            }
            if !(sr.stdev_factor.is_finite() && sr.stdev_factor > 0.0) {
                return invalid(format!("success_rate.stdev_factor: must be greater than 0, got {}", sr.stdev_factor));
            }
            if !(1..=3_600_000).contains(&sr.interval_ms) {
                return invalid(format!(
                    "success_rate.interval_ms: must be 1 to 3600000 (1 hour), got {}",
                    sr.interval_ms
                ));
            }
        }
        Ok(Self {
            consecutive_errors: file.consecutive_errors,
            consecutive_gateway_errors: file.consecutive_gateway_errors,
            base_ejection_ms: base,
            max_ejection_ms: max,
            max_ejection_percent: file.max_ejection_percent,
            success_rate: file.success_rate,
        })
    }
}

/// What the plugin keeps about one backend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Backend {
    /// Failed live exchanges in a row.
    errors: u32,
    /// Gateway errors in a row.
    gateway_errors: u32,
    /// When the current ejection ends (host ms), if the backend is ejected.
    ejected_until: Option<u64>,
    /// The ejection multiplier: ejections, less one per `base_ejection_ms` spent healthy.
    times_ejected: u32,
    /// Start of the healthy time not yet counted toward the multiplier's decay.
    decay_from: u64,
    /// Successful exchanges in the current success-rate interval.
    successes: u64,
    /// Failed exchanges in the current success-rate interval.
    failures: u64,
}

impl Backend {
    fn ejected(&self) -> bool {
        self.ejected_until.is_some()
    }
}

/// The evaluator: the config, each backend's state, and the success-rate interval.
#[derive(Debug)]
struct Outlier {
    config: Config,
    book: Book<Backend>,
    /// When the current success-rate interval began (at the first tick).
    interval_start: Option<u64>,
}

impl Outlier {
    fn new(config: Config) -> Self {
        Self { config, book: Book::new(), interval_start: None }
    }

    /// One live exchange of backend `id`: counts it, and ejects on a run of errors.
    fn assess(&mut self, id: BackendId, obs: &Observation) -> Option<Assessment> {
        if obs.active_probe {
            return None;
        }
        let Config { consecutive_errors, consecutive_gateway_errors, .. } = self.config;
        let b = &mut self.book.get_mut(id)?.state;
        if b.ejected() {
            return None;
        }
        if obs.succeeded() {
            b.errors = 0;
            b.gateway_errors = 0;
            return None;
        }
        b.errors = b.errors.saturating_add(1);
        b.gateway_errors = if obs.is_gateway_error() { b.gateway_errors.saturating_add(1) } else { 0 };
        let cause = if consecutive_gateway_errors > 0 && b.gateway_errors >= consecutive_gateway_errors {
            format!("{} consecutive gateway errors (last: {})", b.gateway_errors, obs.describe())
        } else if consecutive_errors > 0 && b.errors >= consecutive_errors {
            format!("{} consecutive errors (last: {})", b.errors, obs.describe())
        } else {
            return None;
        };
        self.eject(id, obs.at_ms, cause)
    }

    /// Ejects backend `id` at `at_ms` because of `cause`, unless that would eject more
    /// than `max_ejection_percent` of the members (one backend always may be).
    fn eject(&mut self, id: BackendId, at_ms: u64, cause: String) -> Option<Assessment> {
        let members = self.book.len();
        let ejected = self.book.iter().filter(|e| e.state.ejected()).count();
        let percent = self.config.max_ejection_percent as usize;
        if ejected > 0 && (ejected + 1) * 100 > percent * members {
            let address = self.book.get(id).map_or("", |e| e.address());
            health::debug(|| {
                format!(
                    "outlier: not ejecting {address} ({cause}): {ejected} of {members} backends are ejected \
                     and max_ejection_percent is {percent}"
                )
            });
            return None;
        }
        let Config { base_ejection_ms, max_ejection_ms, .. } = self.config;
        let entry = self.book.get_mut(id)?;
        let b = &mut entry.state;
        if b.ejected() {
            return None;
        }
        b.times_ejected = b.times_ejected.saturating_add(1);
        let n = b.times_ejected;
        let ms = base_ejection_ms.saturating_mul(u64::from(n)).min(max_ejection_ms);
        b.ejected_until = Some(at_ms.saturating_add(ms));
        b.errors = 0;
        b.gateway_errors = 0;
        entry.say(Verdict::Unhealthy, || format!("{cause}; ejected for {} (ejection {n})", health::duration(ms)))
    }

    /// Ends the ejections that are over and decays the multipliers of healthy backends.
    fn expire(&mut self, at_ms: u64) -> Vec<Assessment> {
        let base = self.config.base_ejection_ms;
        let mut said = Vec::new();
        for entry in self.book.iter_mut() {
            let b = &mut entry.state;
            match b.ejected_until {
                Some(until) if at_ms >= until => {
                    b.ejected_until = None;
                    b.decay_from = at_ms;
                    said.extend(entry.say(Verdict::Healthy, || "ejection ended".into()));
                }
                Some(_) => {}
                None if b.times_ejected > 0 => {
                    let steps = at_ms.saturating_sub(b.decay_from) / base;
                    b.times_ejected = b.times_ejected.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX));
                    b.decay_from = b.decay_from.saturating_add(steps.saturating_mul(base));
                }
                None => {}
            }
        }
        said
    }

    /// Adds the tick's windows to the interval's counts and, once `interval_ms` has
    /// passed, ejects the backends whose success rate is an outlier.
    fn success_rate(&mut self, at_ms: u64, windows: &[Window], sr: SuccessRate) -> Vec<Assessment> {
        for entry in self.book.iter_mut() {
            let w = windows.get(entry.id() as usize).copied().unwrap_or_default();
            let b = &mut entry.state;
            if b.ejected() {
                (b.successes, b.failures) = (0, 0);
            } else {
                b.successes = b.successes.saturating_add(u64::from(w.successes));
                b.failures = b.failures.saturating_add(u64::from(w.failures));
            }
        }
        let start = *self.interval_start.get_or_insert(at_ms);
        if at_ms.saturating_sub(start) < sr.interval_ms {
            return Vec::new();
        }
        self.interval_start = Some(at_ms);
        let mut rates: Vec<(BackendId, f64)> = Vec::new();
        for entry in self.book.iter_mut() {
            let id = entry.id();
            let b = &mut entry.state;
            let total = b.successes + b.failures;
            if !b.ejected() && total >= sr.request_volume {
                rates.push((id, 100.0 * b.successes as f64 / total as f64));
            }
            (b.successes, b.failures) = (0, 0);
        }
        let Some(outliers) = outliers(&rates, sr) else { return Vec::new() };
        outliers
            .into_iter()
            .filter_map(|(id, rate, o)| {
                let cause = format!(
                    "success rate {rate:.1}% < {:.1}% (mean {:.1}% - {} × stdev {:.1}% over {} backends)",
                    o.threshold,
                    o.mean,
                    sr.stdev_factor,
                    o.stdev,
                    rates.len()
                );
                self.eject(id, at_ms, cause)
            })
            .collect()
    }
}

/// What the success-rate detector computed over one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    mean: f64,
    stdev: f64,
    threshold: f64,
}

/// The backends of `rates` (id, success rate in percent) whose rate is below
/// `mean - stdev_factor × stdev`, worst first, with the figures; `None` when fewer than
/// `minimum_hosts` backends were judged. The standard deviation is the population's, as
/// Envoy computes it.
fn outliers(rates: &[(BackendId, f64)], sr: SuccessRate) -> Option<Vec<(BackendId, f64, Stats)>> {
    if rates.is_empty() || rates.len() < sr.minimum_hosts as usize {
        return None;
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|&(_, r)| r).sum::<f64>() / n;
    let stdev = (rates.iter().map(|&(_, r)| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    let stats = Stats { mean, stdev, threshold: mean - sr.stdev_factor * stdev };
    let mut below: Vec<(BackendId, f64, Stats)> =
        rates.iter().filter(|&&(_, r)| r < stats.threshold).map(|&(id, r)| (id, r, stats)).collect();
    below.sort_by(|a, b| a.1.total_cmp(&b.1));
    Some(below)
}

impl Evaluator for Outlier {
    fn configure(json: &str) -> Result<Self, PluginError> {
        Config::parse(json).map(Self::new)
    }

    fn pool_changed(&mut self) {
        self.book.refresh();
    }

    fn observe(&mut self, id: BackendId, obs: &Observation) -> Vec<Assessment> {
        self.assess(id, obs).into_iter().collect()
    }

    fn tick(&mut self, at_ms: u64, windows: &[Window]) -> Vec<Assessment> {
        let mut said = self.expire(at_ms);
        if let Some(sr) = self.config.success_rate {
            said.extend(self.success_rate(at_ms, windows, sr));
        }
        said
    }
}

weir_guest::export_health!(Outlier, batch);

#[cfg(test)]
mod tests;
