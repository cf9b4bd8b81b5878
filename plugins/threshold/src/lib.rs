//! `threshold`: HAProxy's `check ... rise R fall F` on the host's timed probes.
//!
//! Every backend starts healthy. `fall` consecutive failed probes make it unhealthy
//! (`3 consecutive probe failures (last: timeout)`); while it is unhealthy, `rise`
//! consecutive successful probes make it healthy again (`2 consecutive probe successes`).
//! A result of the other kind breaks a run, so alternating results never change anything.
//! The counts are kept by backend address, so they survive reloads and reorderings; a
//! backend new to the pool starts healthy with no run.
//!
//! Config (all optional):
//! - `rise` (default 2, 1 to 1000): consecutive probe successes that make an unhealthy
//!   backend healthy.
//! - `fall` (default 3, 1 to 1000): consecutive failures that make a healthy backend
//!   unhealthy.
//! - `passive` (default false): whether failures of live traffic count too. They then
//!   count toward `fall` exactly as failed probes do, and a live success breaks a failure
//!   run; but only probe successes count toward `rise`: the host reports only the first
//!   live success after a failure (the rest are only counted for `tick`), and an unhealthy
//!   backend gets no live traffic, so live successes cannot make a run.
//!
//! This is the host's built-in rule (rise 2, fall 3 on the probes) as a plugin, and the
//! evaluator a pool gets when it sets a `probe` and names none. It needs a probe: without
//! one (and without `passive`) nothing is ever observed and every backend stays healthy.
//! `tick` does nothing.

use serde::Deserialize;
use weir_guest::health::{Assessment, Book, Evaluator, Observation, Verdict};
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

/// The plugin's config table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Consecutive probe successes that make an unhealthy backend healthy (1..=1000).
    rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy (1..=1000).
    fall: u32,
    /// Whether failures of live traffic count toward `fall`.
    passive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { rise: 2, fall: 3, passive: false }
    }
}

impl Config {
    fn parse(json: &str) -> Result<Self, PluginError> {
        let config: Self = weir_guest::parse_config(json)?;
        for (key, value) in [("rise", config.rise), ("fall", config.fall)] {
            if !(1..=1000).contains(&value) {
                return Err(PluginError::InvalidConfig(format!("{key}: must be 1 to 1000, got {value}")));
            }
        }
        Ok(config)
    }
}

/// The current run of one backend: at most one of the two is non-zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// Consecutive probe successes.
    successes: u32,
    /// Consecutive failures.
    failures: u32,
}

/// The evaluator: the config and each backend's run.
#[derive(Debug)]
struct Threshold {
    config: Config,
    book: Book<Run>,
}

impl Threshold {
    fn new(config: Config) -> Self {
        Self { config, book: Book::new() }
    }

    fn assess(&mut self, id: BackendId, obs: &Observation) -> Option<Assessment> {
        if !obs.active_probe && !self.config.passive {
            return None;
        }
        let Config { rise, fall, passive } = self.config;
        let entry = self.book.get_mut(id)?;
        let run = &mut entry.state;
        if obs.succeeded() {
            run.failures = 0;
            if !obs.active_probe {
                return None;
            }
            run.successes = run.successes.saturating_add(1);
            let n = run.successes;
            if n < rise {
                return None;
            }
            entry.say(Verdict::Healthy, || format!("{n} consecutive probe successes"))
        } else {
            run.successes = 0;
            run.failures = run.failures.saturating_add(1);
            let n = run.failures;
            if n < fall {
                return None;
            }
            let last = obs.describe();
            entry.say(Verdict::Unhealthy, || match (passive, obs.active_probe) {
                (false, _) => format!("{n} consecutive probe failures (last: {last})"),
                (true, true) => format!("{n} consecutive failures (last: {last} on a probe)"),
                (true, false) => format!("{n} consecutive failures (last: {last} on live traffic)"),
            })
        }
    }
}

impl Evaluator for Threshold {
    fn configure(json: &str) -> Result<Self, PluginError> {
        Config::parse(json).map(Self::new)
    }

    fn pool_changed(&mut self) {
        self.book.refresh();
    }

    fn observe(&mut self, id: BackendId, obs: &Observation) -> Vec<Assessment> {
        self.assess(id, obs).into_iter().collect()
    }
}

weir_guest::export_health!(Threshold, batch);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::health::Failure;

    const OK: Option<Failure> = None;
    const TIMEOUT: Option<Failure> = Some(Failure::Timeout);

    fn probe(failure: Option<Failure>) -> Observation {
        Observation { active_probe: true, failure, ..Observation::default() }
    }

    fn live(failure: Option<Failure>) -> Observation {
        Observation { failure, status: failure.map(|_| 503), ..Observation::default() }
    }

    fn plugin(json: &str, backends: usize) -> Threshold {
        let mut t = Threshold::configure(json).unwrap();
        t.book.rebuild((0..backends).map(|i| format!("10.0.0.{i}:80")));
        t
    }

    /// Feeds `results` to backend 0 and returns, after each, the verdict it returned (if
    /// any), as `H` (healthy), `U` (unhealthy) or `.` (nothing).
    fn trace(t: &mut Threshold, results: &[Observation]) -> String {
        results
            .iter()
            .map(|obs| match t.observe(0, obs).as_slice() {
                [] => '.',
                [a] if a.verdict == Verdict::Healthy => 'H',
                [a] if a.verdict == Verdict::Unhealthy => 'U',
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn fall_then_rise_with_the_defaults() {
        let mut t = plugin("{}", 2);
        let f = probe(TIMEOUT);
        let s = probe(OK);
        assert_eq!(trace(&mut t, &[f, f, f, f, s, f, s, s, s, f]), "..U....H..");
        let mut t = plugin("{}", 2);
        let said = t.observe(0, &f).into_iter().chain(t.observe(0, &f)).chain(t.observe(0, &f)).collect::<Vec<_>>();
        assert_eq!(
            said,
            [Assessment {
                id: 0,
                verdict: Verdict::Unhealthy,
                reason: "3 consecutive probe failures (last: timeout)".into()
            }]
        );
        assert_eq!(
            t.observe(0, &s).into_iter().chain(t.observe(0, &s)).collect::<Vec<_>>(),
            [Assessment { id: 0, verdict: Verdict::Healthy, reason: "2 consecutive probe successes".into() }]
        );
        // The other backend was never touched.
        assert_eq!(t.book.get(1).map(|e| (e.said(), e.state)), Some((Verdict::Healthy, Run::default())));
    }

    #[test]
    fn alternating_results_never_change_anything() {
        let (f, s) = (probe(TIMEOUT), probe(OK));
        let mut t = plugin("{}", 1);
        assert_eq!(trace(&mut t, &[f, s, f, s, f, f, s, f, f, s]), "..........");
        // Unhealthy, alternating keeps it unhealthy.
        let mut t = plugin(r#"{"rise": 2, "fall": 2}"#, 1);
        assert_eq!(trace(&mut t, &[f, f, s, f, s, f, s, s]), ".U.....H");
    }

    #[test]
    fn rise_and_fall_of_one_react_at_once() {
        let (f, s) = (probe(Some(Failure::Status)), probe(OK));
        let mut t = plugin(r#"{"rise": 1, "fall": 1}"#, 1);
        assert_eq!(trace(&mut t, &[s, f, f, s, s, f]), ".U.H.U");
        let mut t = plugin(r#"{"rise": 1, "fall": 1}"#, 1);
        let said = t.observe(0, &Observation { status: Some(500), ..f });
        assert_eq!(said[0].reason, "1 consecutive probe failures (last: status 500)");
    }

    #[test]
    fn live_traffic_is_ignored_unless_passive() {
        let mut t = plugin("{}", 1);
        assert_eq!(trace(&mut t, &[live(TIMEOUT); 10]), "..........");
        assert_eq!(t.book.get(0).map(|e| e.state), Some(Run::default()));
        // Nor does a live success break a probe run.
        assert_eq!(trace(&mut t, &[probe(TIMEOUT), probe(TIMEOUT), live(OK), probe(TIMEOUT)]), "...U");
    }

    #[test]
    fn passive_failures_count_toward_fall_and_only_probes_toward_rise() {
        let mut t = plugin(r#"{"passive": true}"#, 1);
        let (pf, ps, lf, ls) = (probe(TIMEOUT), probe(OK), live(Some(Failure::Status)), live(OK));
        // A live success breaks the failure run.
        assert_eq!(trace(&mut t, &[lf, pf, ls, lf, lf]), ".....");
        let said = t.observe(0, &lf);
        assert_eq!(said[0].reason, "3 consecutive failures (last: status 503 on live traffic)");
        // Live successes neither make nor break a rise; a live failure breaks it.
        assert_eq!(trace(&mut t, &[ls, ps, ls, ls, ps]), "....H");
        assert_eq!(trace(&mut t, &[pf, pf, lf, ps, lf, ps, ps]), "..U...H");
    }

    #[test]
    fn state_follows_the_address_across_a_reorder() {
        let mut t = plugin("{}", 3);
        let f = probe(TIMEOUT);
        t.observe(2, &f);
        t.observe(2, &f);
        t.book.rebuild(["10.0.0.2:80", "10.0.0.0:80"]);
        let said = t.observe(0, &f);
        assert_eq!(said.iter().map(|a| (a.id, a.verdict)).collect::<Vec<_>>(), [(0, Verdict::Unhealthy)]);
        // An unknown id is ignored.
        assert!(t.observe(7, &f).is_empty());
        assert!(t.tick(0, &[]).is_empty());
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(Config::parse("{}").unwrap(), Config { rise: 2, fall: 3, passive: false });
        assert_eq!(
            Config::parse(r#"{"rise": 1000, "fall": 1, "passive": true}"#).unwrap(),
            Config { rise: 1000, fall: 1, passive: true }
        );
        for (bad, names) in [
            (r#"{"rise": 0}"#, "rise: "),
            (r#"{"fall": 1001}"#, "fall: "),
            (r#"{"fall": -1}"#, "fall: "),
            (r#"{"rise": "2"}"#, "rise: "),
            (r#"{"passive": 1}"#, "passive: "),
            (r#"{"rize": 2}"#, "`rize`"),
        ] {
            let Err(PluginError::InvalidConfig(m)) = Config::parse(bad) else { panic!("{bad} accepted") };
            assert!(m.starts_with(names) || m.contains(names), "{bad}: {m}");
        }
    }
}
