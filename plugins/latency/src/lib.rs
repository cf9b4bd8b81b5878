//! `latency`: a backend whose response latency leaves the pack is degraded, and ejected
//! if it is far out: a relative check that needs no absolute target.
//!
//! On each `tick`, the median is taken over the members whose live-traffic latency EWMA
//! (`window.latency-ewma-us`, the host's response-head EWMA) is non-zero, provided there
//! are at least `minimum_hosts` of them. A backend whose EWMA is above
//! `degraded_factor × median` is degraded, above `unhealthy_factor × median` unhealthy
//! (`latency 12.3 ms is 6.1× the pool median 2.0 ms (unhealthy above 5×)`). It goes back
//! only once its EWMA is below 0.8 × the threshold it crossed (an unhealthy backend below
//! `0.8 × unhealthy_factor × median` is degraded, below `0.8 × degraded_factor × median`
//! healthy), so a backend hovering at a threshold does not flap. A backend whose EWMA is
//! under `min_latency_us` is never judged slow, and one judged before is healthy again
//! once under it: 0.3 ms against 0.1 ms is not "slow" in any sense that matters.
//!
//! The host's EWMA only moves when the backend answers (a new sample weighs 1/8), and a
//! degraded or unhealthy backend gets no new work while healthy ones remain, so its EWMA
//! freezes at the value that condemned it. Such a backend is therefore given a trial: once
//! it has had no live traffic for `recheck_ms`, it is made healthy again (`no live traffic
//! for 30s, so latency 12.3 ms is stale: on trial until measured again`) and is not judged
//! until it has served 20 exchanges, by which time the stale value weighs (7/8)^20 ≈ 7% of
//! its EWMA. If it is still slow it is degraded again; a backend that stays slow thus
//! takes a little traffic every `recheck_ms`.
//!
//! The timed probe's latency is not used (`observe` does nothing): a probe requests one
//! cheap path on a connection of its own, so its latency is on another scale than the
//! traffic's and comparing one with the other would be meaningless; mixing both into one
//! figure would make a slow backend look fast while it gets no traffic. A backend that
//! never answered live traffic (EWMA 0) is left out of the median and never judged.
//!
//! Config (all optional):
//! - `degraded_factor` (default 2.0, > 1): degraded above this multiple of the median.
//! - `unhealthy_factor` (default 5.0, ≥ `degraded_factor`): unhealthy above it.
//! - `min_latency_us` (default 1000): an EWMA under this is never judged slow.
//! - `minimum_hosts` (default 3, ≥ 2): members with a latency sample needed to judge.
//! - `recheck_ms` (default 30000, 1 ms to 1 day): time without live traffic after which a
//!   degraded or unhealthy backend is put back on trial.

use serde::Deserialize;
use weir_guest::health::{self, Assessment, Book, Evaluator, Verdict, Window};
use weir_guest::types::PluginError;

wit_bindgen::generate!({
    world: "health-batch-plugin",
    path: "../../wit",
    with: {
        "weir:plugin/types@0.1.0": weir_guest::types,
        "weir:plugin/pool@0.1.0": weir_guest::pool,
        "weir:plugin/log@0.1.0": weir_guest::log,
    },
});

/// A backend goes back once its EWMA is below this fraction of the threshold it crossed.
const RECOVERY: f64 = 0.8;

/// Live exchanges a backend on trial serves before it is judged again: the stale part of
/// the host's EWMA (new sample weight 1/8) is then (7/8)^20 ≈ 7%.
const TRIAL_EXCHANGES: u64 = 20;

/// The plugin's config table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Degraded above this multiple of the median (> 1).
    degraded_factor: f64,
    /// Unhealthy above this multiple of the median (≥ `degraded_factor`).
    unhealthy_factor: f64,
    /// An EWMA under this (µs) is never judged slow.
    min_latency_us: u32,
    /// Members with a latency sample needed to judge anything (≥ 2).
    minimum_hosts: u32,
    /// Time without live traffic after which a held backend is put on trial.
    recheck_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { degraded_factor: 2.0, unhealthy_factor: 5.0, min_latency_us: 1000, minimum_hosts: 3, recheck_ms: 30_000 }
    }
}

impl Config {
    fn parse(json: &str) -> Result<Self, PluginError> {
        let c: Self = weir_guest::parse_config(json)?;
        let invalid = |m: String| Err(PluginError::InvalidConfig(m));
        if !(c.degraded_factor.is_finite() && c.degraded_factor > 1.0) {
            return invalid(format!("degraded_factor: must be a number greater than 1, got {}", c.degraded_factor));
        }
        if !(c.unhealthy_factor.is_finite() && c.unhealthy_factor >= c.degraded_factor) {
            return invalid(format!(
                "unhealthy_factor: must be at least degraded_factor ({}), got {}",
                c.degraded_factor, c.unhealthy_factor
            ));
        }
        if c.minimum_hosts < 2 {
            return invalid(format!(
                "minimum_hosts: must be at least 2 (a backend is judged against the others), got {}",
                c.minimum_hosts
            ));
        }
        if !(1..=86_400_000).contains(&c.recheck_ms) {
            return invalid(format!("recheck_ms: must be 1 to 86400000 (1 day), got {}", c.recheck_ms));
        }
        Ok(c)
    }
}

/// What the plugin keeps about one backend, beyond the verdict the book remembers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Backend {
    /// Since when a degraded or unhealthy backend has had no live traffic.
    idle_since: Option<u64>,
    /// Exchanges still to serve before a backend on trial is judged again.
    trial: Option<u64>,
}

/// The evaluator: the config and each backend's state.
#[derive(Debug)]
struct Latency {
    config: Config,
    book: Book<Backend>,
}

/// The median of `samples` (which it sorts); the mean of the two middle ones for an even
/// count; `None` for none.
fn median(samples: &mut [u32]) -> Option<f64> {
    samples.sort_unstable();
    let n = samples.len();
    let upper = f64::from(*samples.get(n / 2)?);
    if n % 2 == 1 { Some(upper) } else { samples.get(n / 2 - 1).map(|&lower| (f64::from(lower) + upper) / 2.0) }
}

/// A factor for a reason: `2`, `1.6`, `2.25`.
fn factor(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The verdict a backend of latency EWMA `ewma` (µs) deserves against the pool's `median`,
/// when it is `now` judged so, and why; `None` when it stays as it is.
fn judge(config: &Config, now: Verdict, ewma: f64, median: f64) -> Option<(Verdict, String)> {
    if ewma < f64::from(config.min_latency_us) {
        let reason = || {
            format!(
                "latency {} is under min_latency_us ({})",
                health::millis(ewma),
                health::millis(config.min_latency_us.into())
            )
        };
        return (now != Verdict::Healthy).then(|| (Verdict::Healthy, reason()));
    }
    let (degraded, unhealthy) = (config.degraded_factor, config.unhealthy_factor);
    let (to, limit) = match now {
        Verdict::Healthy if ewma > unhealthy * median => {
            (Verdict::Unhealthy, format!("unhealthy above {}×", factor(unhealthy)))
        }
        Verdict::Healthy if ewma > degraded * median => {
            (Verdict::Degraded, format!("degraded above {}×", factor(degraded)))
        }
        Verdict::Degraded if ewma > unhealthy * median => {
            (Verdict::Unhealthy, format!("unhealthy above {}×", factor(unhealthy)))
        }
        Verdict::Degraded | Verdict::Unhealthy if ewma < RECOVERY * degraded * median => {
            (Verdict::Healthy, format!("back under {}×", factor(RECOVERY * degraded)))
        }
        Verdict::Unhealthy if ewma < RECOVERY * unhealthy * median => {
            (Verdict::Degraded, format!("back under {}×", factor(RECOVERY * unhealthy)))
        }
        _ => return None,
    };
    let reason = format!(
        "latency {} is {:.1}× the pool median {} ({limit})",
        health::millis(ewma),
        ewma / median,
        health::millis(median)
    );
    Some((to, reason))
}

impl Latency {
    fn new(config: Config) -> Self {
        Self { config, book: Book::new() }
    }
}

impl Evaluator for Latency {
    fn configure(json: &str) -> Result<Self, PluginError> {
        Config::parse(json).map(Self::new)
    }

    fn pool_changed(&mut self) {
        self.book.refresh();
    }

    fn tick(&mut self, at_ms: u64, windows: &[Window]) -> Vec<Assessment> {
        let config = self.config;
        let window = |id: u32| windows.get(id as usize).copied().unwrap_or_default();
        let mut samples: Vec<u32> =
            self.book.iter().map(|e| window(e.id()).latency_ewma_us).filter(|&us| us > 0).collect();
        let median = if samples.len() >= config.minimum_hosts as usize { median(&mut samples) } else { None };
        let mut said = Vec::new();
        for entry in self.book.iter_mut() {
            let w = window(entry.id());
            let held = entry.said() != Verdict::Healthy;
            let b = &mut entry.state;
            if let Some(left) = b.trial {
                let left = left.saturating_sub(w.exchanges());
                b.trial = (left > 0).then_some(left);
                if left > 0 {
                    continue;
                }
            }
            if held {
                if w.exchanges() > 0 {
                    b.idle_since = None;
                } else {
                    let since = *b.idle_since.get_or_insert(at_ms);
                    let idle = at_ms.saturating_sub(since);
                    if idle >= config.recheck_ms {
                        *b = Backend { idle_since: None, trial: Some(TRIAL_EXCHANGES) };
                        let reason = || {
                            format!(
                                "no live traffic for {}, so latency {} is stale: on trial until measured again",
                                health::duration(idle),
                                health::millis(w.latency_ewma_us.into())
                            )
                        };
                        said.extend(entry.say(Verdict::Healthy, reason));
                        continue;
                    }
                }
            }
            let (Some(median), ewma) = (median, w.latency_ewma_us) else { continue };
            if ewma == 0 {
                continue;
            }
            if let Some((verdict, reason)) = judge(&config, entry.said(), ewma.into(), median) {
                if verdict == Verdict::Healthy {
                    entry.state.idle_since = None;
                }
                said.extend(entry.say(verdict, || reason));
            }
        }
        said
    }
}

weir_guest::export_health!(Latency, batch);

#[cfg(test)]
mod tests;
