use super::*;
use weir_guest::health::Failure;

fn plugin(json: &str, backends: usize) -> Outlier {
    let mut o = Outlier::configure(json).unwrap();
    o.book.rebuild((0..backends).map(address));
    o
}

fn address(i: usize) -> String {
    format!("10.0.0.{i}:80")
}

/// A failed live exchange at `at_ms`: a 500.
fn error(at_ms: u64) -> Observation {
    Observation { failure: Some(Failure::Status), status: Some(500), at_ms, ..Observation::default() }
}

fn failed(failure: Failure, status: Option<u16>, at_ms: u64) -> Observation {
    Observation { failure: Some(failure), status, at_ms, ..Observation::default() }
}

fn success(at_ms: u64) -> Observation {
    Observation { at_ms, ..Observation::default() }
}

/// Feeds `obs` to backend `id` `n` times and returns everything it said.
fn feed(o: &mut Outlier, id: BackendId, obs: Observation, n: usize) -> Vec<Assessment> {
    (0..n).flat_map(|_| o.observe(id, &obs)).collect()
}

fn said(assessments: &[Assessment]) -> Vec<(BackendId, Verdict, &str)> {
    assessments.iter().map(|a| (a.id, a.verdict, a.reason.as_str())).collect()
}

fn ejected(o: &Outlier) -> Vec<BackendId> {
    o.book.iter().filter(|e| e.state.ejected()).map(|e| e.id()).collect()
}

const EJECT_1: &str = "5 consecutive errors (last: status 500); ejected for 30s (ejection 1)";

#[test]
fn consecutive_errors_eject_and_a_success_resets_the_count() {
    let mut o = plugin("{}", 10);
    assert!(feed(&mut o, 0, error(1000), 4).is_empty());
    assert!(o.observe(0, &success(1000)).is_empty());
    assert!(feed(&mut o, 0, error(1000), 4).is_empty());
    assert_eq!(said(&o.observe(0, &error(1000))), [(0, Verdict::Unhealthy, EJECT_1)]);
    assert_eq!(o.book.get(0).and_then(|e| e.state.ejected_until), Some(31_000));
    // Traffic to an ejected backend is ignored.
    assert!(feed(&mut o, 0, error(2000), 20).is_empty());
    assert_eq!(o.book.get(0).map(|e| e.state.errors), Some(0));
}

#[test]
fn probe_results_are_ignored() {
    let mut o = plugin("{}", 3);
    let probe = Observation { active_probe: true, ..error(0) };
    assert!(feed(&mut o, 1, probe, 50).is_empty());
    assert_eq!(o.book.get(1).map(|e| e.state.errors), Some(0));
}

#[test]
fn gateway_errors_are_counted_on_their_own() {
    let mut o = plugin(r#"{"consecutive_errors": 0, "consecutive_gateway_errors": 3}"#, 10);
    let run = [
        failed(Failure::Timeout, None, 0),
        failed(Failure::Status, Some(503), 0),
        // A 500 is an error, not a gateway error: it breaks the gateway run.
        failed(Failure::Status, Some(500), 0),
        failed(Failure::Timeout, None, 0),
        failed(Failure::Reset, None, 0),
    ];
    for obs in run {
        assert!(o.observe(0, &obs).is_empty());
    }
    assert_eq!(
        said(&o.observe(0, &failed(Failure::Connect, None, 0))),
        [(0, Verdict::Unhealthy, "3 consecutive gateway errors (last: connect failed); ejected for 30s (ejection 1)")]
    );
    // With consecutive_errors 0, errors alone never eject.
    assert!(feed(&mut o, 1, error(0), 100).is_empty());
    // Both on: the gateway run fires first.
    let mut o = plugin(r#"{"consecutive_errors": 3, "consecutive_gateway_errors": 2}"#, 10);
    assert!(o.observe(0, &error(0)).is_empty());
    assert!(o.observe(0, &failed(Failure::Timeout, None, 0)).is_empty());
    assert_eq!(
        said(&o.observe(0, &failed(Failure::Status, Some(502), 0))),
        [(0, Verdict::Unhealthy, "2 consecutive gateway errors (last: status 502); ejected for 30s (ejection 1)")]
    );
}

#[test]
fn an_ejection_ends_on_the_first_tick_past_it() {
    let mut o = plugin("{}", 10);
    feed(&mut o, 3, error(1000), 5);
    assert!(o.tick(30_999, &[]).is_empty());
    assert_eq!(said(&o.tick(31_000, &[])), [(3, Verdict::Healthy, "ejection ended")]);
    assert!(o.tick(32_000, &[]).is_empty());
    assert!(ejected(&o).is_empty());
}

#[test]
fn a_second_ejection_lasts_twice_as_long_and_the_time_is_capped() {
    let mut o = plugin("{}", 10);
    feed(&mut o, 0, error(0), 5);
    o.tick(30_000, &[]);
    // Fails again at once: twice the base time.
    let again = feed(&mut o, 0, error(31_000), 5);
    assert_eq!(
        said(&again),
        [(0, Verdict::Unhealthy, "5 consecutive errors (last: status 500); ejected for 1m (ejection 2)")]
    );
    assert!(o.tick(90_999, &[]).is_empty());
    assert_eq!(said(&o.tick(91_000, &[])), [(0, Verdict::Healthy, "ejection ended")]);
    // 30s, 60s, ... 300s, then 300s again.
    let mut o = plugin("{}", 10);
    let mut at = 0;
    let mut lengths = Vec::new();
    for _ in 0..12 {
        feed(&mut o, 0, error(at), 5);
        let until = o.book.get(0).and_then(|e| e.state.ejected_until).unwrap();
        lengths.push((until - at) / 1000);
        at = until;
        o.tick(at, &[]);
    }
    assert_eq!(lengths, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]);
    // max_ejection_ms caps it where it is set.
    let mut o = plugin(r#"{"base_ejection_ms": 1000, "max_ejection_ms": 1500}"#, 10);
    feed(&mut o, 0, error(0), 5);
    o.tick(1000, &[]);
    assert_eq!(
        said(&feed(&mut o, 0, error(1000), 5)),
        [(0, Verdict::Unhealthy, "5 consecutive errors (last: status 500); ejected for 1.5s (ejection 2)")]
    );
}

#[test]
fn the_multiplier_decays_by_one_per_base_time_spent_healthy() {
    let mut o = plugin("{}", 10);
    let times = |o: &Outlier| o.book.get(0).map(|e| e.state.times_ejected);
    feed(&mut o, 0, error(0), 5);
    o.tick(30_000, &[]);
    feed(&mut o, 0, error(30_000), 5); // ejection 2, until 90 s
    o.tick(90_000, &[]);
    assert_eq!(times(&o), Some(2));
    o.tick(119_999, &[]);
    assert_eq!(times(&o), Some(2));
    o.tick(120_000, &[]);
    assert_eq!(times(&o), Some(1));
    // Ejected again now: 2 × base, not 3 ×.
    assert_eq!(
        said(&feed(&mut o, 0, error(121_000), 5)),
        [(0, Verdict::Unhealthy, "5 consecutive errors (last: status 500); ejected for 1m (ejection 2)")]
    );
    o.tick(181_000, &[]);
    // A long healthy spell decays it all at once, not below zero.
    o.tick(181_000 + 10 * 30_000, &[]);
    assert_eq!(times(&o), Some(0));
    assert_eq!(said(&feed(&mut o, 0, error(500_000), 5)), [(0, Verdict::Unhealthy, EJECT_1)]);
    // While ejected, nothing decays.
    o.tick(529_999, &[]);
    assert_eq!(times(&o), Some(1));
}

#[test]
fn max_ejection_percent_caps_ejections_but_one_always_may_be() {
    // 10 backends at 10%: one.
    let mut o = plugin("{}", 10);
    assert_eq!(said(&feed(&mut o, 0, error(0), 5)), [(0, Verdict::Unhealthy, EJECT_1)]);
    assert!(feed(&mut o, 1, error(0), 5).is_empty());
    assert!(feed(&mut o, 2, error(0), 7).is_empty());
    assert_eq!(ejected(&o), [0]);
    assert_eq!(o.book.get(1).map(|e| e.said()), Some(Verdict::Healthy));
    // Once 0 is back, the next error of 1 ejects it (its run kept counting).
    assert_eq!(said(&o.tick(30_000, &[])), [(0, Verdict::Healthy, "ejection ended")]);
    assert_eq!(
        said(&o.observe(1, &error(30_000))),
        [(1, Verdict::Unhealthy, "6 consecutive errors (last: status 500); ejected for 30s (ejection 1)")]
    );
    assert_eq!(ejected(&o), [1]);

    // 3 backends at 10% (a third is over 10%): still one.
    let mut o = plugin("{}", 3);
    assert_eq!(said(&feed(&mut o, 2, error(0), 5)), [(2, Verdict::Unhealthy, EJECT_1)]);
    assert!(feed(&mut o, 0, error(0), 5).is_empty());
    assert_eq!(ejected(&o), [2]);

    // 20 backends at 10%: two.
    let mut o = plugin("{}", 20);
    for id in 0..5 {
        feed(&mut o, id, error(0), 5);
    }
    assert_eq!(ejected(&o), [0, 1]);

    // 0% still lets one go; 100% lets all go.
    let mut o = plugin(r#"{"max_ejection_percent": 0}"#, 4);
    for id in 0..4 {
        feed(&mut o, id, error(0), 5);
    }
    assert_eq!(ejected(&o), [0]);
    let mut o = plugin(r#"{"max_ejection_percent": 100}"#, 3);
    for id in 0..3 {
        feed(&mut o, id, error(0), 5);
    }
    assert_eq!(ejected(&o), [0, 1, 2]);
}

fn window(successes: u32, failures: u32) -> Window {
    Window { successes, failures, latency_ewma_us: 0 }
}

#[test]
fn success_rate_ejects_a_clear_outlier() {
    let mut o = plugin(r#"{"consecutive_errors": 0, "success_rate": {}}"#, 10);
    // Nine backends at 100%, one at 50%, over two ticks: mean 95, stdev 15, threshold 66.5.
    let mut windows = vec![window(50, 0); 10];
    windows[7] = window(25, 25);
    assert!(o.tick(0, &windows).is_empty());
    assert!(o.tick(5_000, &windows).is_empty(), "evaluated before interval_ms");
    assert_eq!(
        said(&o.tick(10_000, &windows)),
        [(
            7,
            Verdict::Unhealthy,
            "success rate 50.0% < 66.5% (mean 95.0% - 1.9 × stdev 15.0% over 10 backends); ejected for 30s (ejection 1)"
        )]
    );
    // The next interval starts afresh; the ejected backend is not judged.
    assert!(o.tick(20_000, &windows).is_empty());
    assert_eq!(ejected(&o), [7]);
    assert_eq!(said(&o.tick(40_000, &windows)), [(7, Verdict::Healthy, "ejection ended")]);
}

#[test]
fn success_rate_needs_volume_and_enough_hosts() {
    let sr = r#"{"consecutive_errors": 0, "success_rate": {"interval_ms": 1000}}"#;
    // The bad backend served 99 requests: too few to judge.
    let mut o = plugin(sr, 10);
    let mut windows = vec![window(200, 0); 10];
    windows[3] = window(0, 99);
    o.tick(0, &[]);
    assert!(o.tick(1000, &windows).is_empty());
    // Only 4 backends with volume (minimum_hosts 5): nothing judged.
    let mut o = plugin(sr, 10);
    let mut windows = vec![window(10, 0); 10];
    windows[..3].fill(window(100, 0));
    windows[3] = window(0, 100);
    o.tick(0, &[]);
    assert!(o.tick(1000, &windows).is_empty());
    // The same with a fifth: judged.
    windows[4] = window(100, 0);
    o.tick(1500, &[]);
    assert_eq!(said(&o.tick(2000, &windows)).iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(), [(3, Verdict::Unhealthy)]);
    // All equal: nobody is below the mean.
    let mut o = plugin(sr, 10);
    o.tick(0, &[]);
    assert!(o.tick(1000, &[window(90, 10); 10]).is_empty());
}

#[test]
fn success_rate_ejects_the_worst_first_within_max_ejection_percent() {
    let mut o = plugin(
        r#"{"consecutive_errors": 0, "success_rate": {"interval_ms": 1, "stdev_factor": 1.0, "minimum_hosts": 3}}"#,
        10,
    );
    let mut windows = vec![window(100, 0); 10];
    windows[2] = window(20, 80);
    windows[5] = window(10, 90);
    o.tick(0, &[]);
    let out = o.tick(1, &windows);
    assert_eq!(out.iter().map(|a| (a.id, a.verdict)).collect::<Vec<_>>(), [(5, Verdict::Unhealthy)]);
    assert!(out[0].reason.starts_with("success rate 10.0% < "), "{}", out[0].reason);
    assert_eq!(ejected(&o), [5]);
}

#[test]
fn outliers_are_computed_with_the_population_stdev() {
    let sr = SuccessRate::default();
    let rates: Vec<(BackendId, f64)> = (0..9).map(|i| (i, 100.0)).chain([(9, 50.0)]).collect();
    let out = outliers(&rates, sr).unwrap();
    assert_eq!(out.len(), 1);
    let (id, rate, s) = out[0];
    assert_eq!((id, rate), (9, 50.0));
    assert!((s.mean - 95.0).abs() < 1e-9 && (s.stdev - 15.0).abs() < 1e-9 && (s.threshold - 66.5).abs() < 1e-9);
    assert_eq!(outliers(&rates[..4], sr), None);
    assert_eq!(outliers(&[], SuccessRate { minimum_hosts: 1, ..sr }), None);
}

#[test]
fn an_ejection_follows_its_address_across_a_reload() {
    let mut o = plugin("{}", 4);
    feed(&mut o, 3, error(0), 5);
    // Reordered; 1 removed.
    o.book.rebuild([address(3), address(0), address(2)]);
    assert_eq!(ejected(&o), [0]);
    assert_eq!(said(&o.tick(30_000, &[])), [(0, Verdict::Healthy, "ejection ended")]);
    // A run in progress moves too.
    feed(&mut o, 2, error(30_000), 4);
    o.book.rebuild([address(2), address(0)]);
    assert_eq!(said(&o.observe(0, &error(30_000))).len(), 1);
    // Unknown ids and windows shorter than the pool are harmless.
    assert!(o.observe(9, &error(0)).is_empty());
    assert!(o.tick(40_000, &[window(1, 1)]).is_empty());
}

#[test]
fn config_is_validated() {
    let c = Config::parse("{}").unwrap();
    assert_eq!(
        c,
        Config {
            consecutive_errors: 5,
            consecutive_gateway_errors: 0,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
            success_rate: None,
        }
    );
    assert_eq!(Config::parse(r#"{"base_ejection_ms": 600000}"#).unwrap().max_ejection_ms, 600_000);
    assert_eq!(Config::parse(r#"{"success_rate": {}}"#).unwrap().success_rate, Some(SuccessRate::default()));
    assert_eq!(
        Config::parse(r#"{"success_rate": {"stdev_factor": 2.5, "request_volume": 10}}"#).unwrap().success_rate,
        Some(SuccessRate { stdev_factor: 2.5, request_volume: 10, ..SuccessRate::default() })
    );
    for (bad, names) in [
        (r#"{"base_ejection_ms": 0}"#, "base_ejection_ms: "),
        (r#"{"base_ejection_ms": 86400001}"#, "base_ejection_ms: "),
        (r#"{"base_ejection_ms": 60000, "max_ejection_ms": 30000}"#, "max_ejection_ms: "),
        (r#"{"max_ejection_percent": 101}"#, "max_ejection_percent: "),
        (r#"{"consecutive_errors": -1}"#, "consecutive_errors: "),
        (r#"{"success_rate": {"minimum_hosts": 0}}"#, "success_rate.minimum_hosts: "),
        (r#"{"success_rate": {"request_volume": 0}}"#, "success_rate.request_volume: "),
        (r#"{"success_rate": {"stdev_factor": 0}}"#, "success_rate.stdev_factor: "),
        (r#"{"success_rate": {"stdev_factor": -1.9}}"#, "success_rate.stdev_factor: "),
        (r#"{"success_rate": {"interval_ms": 0}}"#, "success_rate.interval_ms: "),
        (r#"{"success_rate": {"stdev": 2}}"#, "`stdev`"),
        (r#"{"consecutive_5xx": 5}"#, "`consecutive_5xx`"),
    ] {
        let Err(PluginError::InvalidConfig(m)) = Config::parse(bad) else { panic!("{bad} accepted") };
        assert!(m.starts_with(names) || m.contains(names), "{bad}: {m}");
    }
}
