use super::*;
use weir_guest::types::BackendId;

fn plugin(json: &str, backends: usize) -> Latency {
    let mut l = Latency::configure(json).unwrap();
    l.book.rebuild((0..backends).map(address));
    l
}

fn address(i: usize) -> String {
    format!("10.0.0.{i}:80")
}

/// Windows where every backend served 10 exchanges, with these EWMAs (µs).
fn fresh(ewmas: &[u32]) -> Vec<Window> {
    ewmas.iter().map(|&us| Window { successes: 10, failures: 0, latency_ewma_us: us }).collect()
}

fn said(assessments: &[Assessment]) -> Vec<(BackendId, Verdict, &str)> {
    assessments.iter().map(|a| (a.id, a.verdict, a.reason.as_str())).collect()
}

/// Ticks with fresh windows and returns only (id, verdict) of what changed.
fn verdicts(l: &mut Latency, at_ms: u64, ewmas: &[u32]) -> Vec<(BackendId, Verdict)> {
    l.tick(at_ms, &fresh(ewmas)).iter().map(|a| (a.id, a.verdict)).collect()
}

#[test]
fn the_median_is_the_middle_or_the_mean_of_the_two_middles() {
    assert_eq!(median(&mut [3, 1, 2]), Some(2.0));
    assert_eq!(median(&mut [4, 1, 3, 2]), Some(2.5));
    assert_eq!(median(&mut [5]), Some(5.0));
    assert_eq!(median(&mut []), None);
    assert_eq!(median(&mut [1, 1000, 1000, 1]), Some(500.5));
}

#[test]
fn a_slow_backend_is_degraded_then_unhealthy() {
    let mut l = plugin("{}", 4);
    assert!(l.tick(0, &fresh(&[2000, 2000, 2000, 3900])).is_empty());
    assert_eq!(
        said(&l.tick(1000, &fresh(&[2000, 2000, 2000, 5000]))),
        [(3, Verdict::Degraded, "latency 5.0 ms is 2.5× the pool median 2.0 ms (degraded above 2×)")]
    );
    assert!(l.tick(2000, &fresh(&[2000, 2000, 2000, 9000])).is_empty());
    assert_eq!(
        said(&l.tick(3000, &fresh(&[2000, 2000, 2000, 12_000]))),
        [(3, Verdict::Unhealthy, "latency 12.0 ms is 6.0× the pool median 2.0 ms (unhealthy above 5×)")]
    );
    // Straight from healthy to unhealthy.
    let mut l = plugin("{}", 4);
    assert_eq!(verdicts(&mut l, 0, &[2000, 30_000, 2000, 2000]), [(1, Verdict::Unhealthy)]);
}

#[test]
fn recovery_needs_to_fall_below_eight_tenths_of_the_threshold_crossed() {
    let mut l = plugin("{}", 4);
    let pool = |x| [2000, 2000, 2000, x];
    assert_eq!(verdicts(&mut l, 0, &pool(5000)), [(3, Verdict::Degraded)]);
    for x in [3900, 3500, 3300, 4000] {
        assert!(verdicts(&mut l, 0, &pool(x)).is_empty(), "{x}");
    }
    assert_eq!(
        said(&l.tick(0, &fresh(&pool(3000)))),
        [(3, Verdict::Healthy, "latency 3.0 ms is 1.5× the pool median 2.0 ms (back under 1.6×)")]
    );
    // Unhealthy: back to degraded under 4×, to healthy under 1.6×.
    assert_eq!(verdicts(&mut l, 0, &pool(12_000)), [(3, Verdict::Unhealthy)]);
    assert!(verdicts(&mut l, 0, &pool(9000)).is_empty());
    assert!(verdicts(&mut l, 0, &pool(8100)).is_empty());
    assert_eq!(
        said(&l.tick(0, &fresh(&pool(7800)))),
        [(3, Verdict::Degraded, "latency 7.8 ms is 3.9× the pool median 2.0 ms (back under 4×)")]
    );
    assert!(verdicts(&mut l, 0, &pool(3900)).is_empty());
    assert_eq!(verdicts(&mut l, 0, &pool(3100)), [(3, Verdict::Healthy)]);
    // Unhealthy straight to healthy.
    assert_eq!(verdicts(&mut l, 0, &pool(12_000)), [(3, Verdict::Unhealthy)]);
    assert_eq!(verdicts(&mut l, 0, &pool(2500)), [(3, Verdict::Healthy)]);
}

#[test]
fn a_backend_hovering_at_a_threshold_does_not_flap() {
    let mut l = plugin("{}", 4);
    let mut changes = Vec::new();
    for (i, x) in [4100, 3900, 4100, 3900, 4200, 3800, 4100, 3700].into_iter().enumerate() {
        changes.extend(verdicts(&mut l, i as u64 * 1000, &[2000, 2000, 2000, x]));
    }
    assert_eq!(changes, [(3, Verdict::Degraded)]);
}

#[test]
fn latencies_under_min_latency_are_not_judged() {
    // 6× the median, but 0.6 ms.
    let mut l = plugin("{}", 4);
    assert!(l.tick(0, &fresh(&[100, 100, 100, 600])).is_empty());
    let mut l = plugin(r#"{"min_latency_us": 0}"#, 4);
    assert_eq!(
        said(&l.tick(0, &fresh(&[100, 100, 100, 600]))),
        [(3, Verdict::Unhealthy, "latency 0.6 ms is 6.0× the pool median 0.1 ms (unhealthy above 5×)")]
    );
    // A backend judged slow is healthy again once under it, whatever the ratio.
    let mut l = plugin("{}", 4);
    assert_eq!(verdicts(&mut l, 0, &[2000, 2000, 2000, 12_000]), [(3, Verdict::Unhealthy)]);
    assert_eq!(
        said(&l.tick(0, &fresh(&[100, 100, 100, 900]))),
        [(3, Verdict::Healthy, "latency 0.9 ms is under min_latency_us (1.0 ms)")]
    );
}

#[test]
fn too_few_sampled_backends_judge_nothing() {
    // Two of four have a sample: below minimum_hosts 3.
    let mut l = plugin("{}", 4);
    assert!(l.tick(0, &fresh(&[2000, 0, 50_000, 0])).is_empty());
    // A third sample: judged. The backends without one never are.
    assert_eq!(verdicts(&mut l, 0, &[2000, 0, 50_000, 2000]), [(2, Verdict::Unhealthy)]);
    // minimum_hosts 5: four samples are not enough.
    let mut l = plugin(r#"{"minimum_hosts": 5}"#, 5);
    assert!(l.tick(0, &fresh(&[2000, 2000, 2000, 50_000, 0])).is_empty());
    assert_eq!(verdicts(&mut l, 0, &[2000, 2000, 2000, 50_000, 1000]), [(3, Verdict::Unhealthy)]);
    // Windows shorter than the pool leave the rest unsampled.
    assert!(l.tick(0, &fresh(&[2000, 2000])).is_empty());
}

#[test]
fn a_held_backend_without_traffic_is_put_on_trial() {
    let mut l = plugin("{}", 4);
    assert_eq!(verdicts(&mut l, 0, &[2000, 2000, 2000, 12_000]), [(3, Verdict::Unhealthy)]);
    // From now on it gets no traffic: its EWMA is frozen.
    let idle = |x: u32| {
        let mut w = fresh(&[2000, 2000, 2000, x]);
        w[3].successes = 0;
        w
    };
    assert!(l.tick(1000, &idle(12_000)).is_empty());
    assert!(l.tick(30_999, &idle(12_000)).is_empty());
    assert_eq!(
        said(&l.tick(31_000, &idle(12_000))),
        [(3, Verdict::Healthy, "no live traffic for 30s, so latency 12.0 ms is stale: on trial until measured again")]
    );
    // Not judged until it served 20 exchanges (10 per fresh window)...
    assert!(l.tick(32_000, &idle(12_000)).is_empty());
    assert!(l.tick(33_000, &fresh(&[2000, 2000, 2000, 11_000])).is_empty());
    // ... then judged on what they show: still slow.
    assert_eq!(verdicts(&mut l, 34_000, &[2000, 2000, 2000, 11_000]), [(3, Verdict::Unhealthy)]);

    // A backend that recovered stays healthy after its trial.
    let mut l = plugin("{}", 4);
    verdicts(&mut l, 0, &[2000, 2000, 2000, 12_000]);
    l.tick(1000, &idle(12_000));
    assert_eq!(verdicts(&mut l, 31_000, &[2000, 2000, 2000, 12_000]).len(), 0, "it had traffic: not idle");
    l.tick(32_000, &idle(12_000));
    assert_eq!(l.tick(62_000, &idle(12_000)).len(), 1);
    for at in [63_000, 64_000, 65_000] {
        assert!(verdicts(&mut l, at, &[2000, 2000, 2000, 2600]).is_empty());
    }

    // recheck_ms is configurable; a degraded backend is held the same way.
    let mut l = plugin(r#"{"recheck_ms": 5000}"#, 4);
    assert_eq!(verdicts(&mut l, 0, &[2000, 2000, 2000, 5000]), [(3, Verdict::Degraded)]);
    l.tick(1000, &idle(5000));
    assert_eq!(l.tick(6000, &idle(5000)).iter().map(|a| a.verdict).collect::<Vec<_>>(), [Verdict::Healthy]);
}

#[test]
fn verdicts_follow_the_address_across_a_reload() {
    let mut l = plugin("{}", 4);
    assert_eq!(verdicts(&mut l, 0, &[2000, 12_000, 2000, 2000]), [(1, Verdict::Unhealthy)]);
    l.book.rebuild([address(2), address(1), address(0)]);
    assert!(verdicts(&mut l, 0, &[2000, 12_000, 2000]).is_empty());
    l.book.rebuild([address(1), address(2), address(0)]);
    assert_eq!(verdicts(&mut l, 0, &[2000, 2000, 2000]), [(0, Verdict::Healthy)]);
    assert!(l.observe(0, &weir_guest::health::Observation::default()).is_empty());
}

#[test]
fn config_is_validated() {
    assert_eq!(Config::parse("{}").unwrap(), Config::default());
    assert_eq!(
        Config::parse(r#"{"degraded_factor": 1.5, "unhealthy_factor": 1.5, "minimum_hosts": 2}"#).unwrap(),
        Config { degraded_factor: 1.5, unhealthy_factor: 1.5, minimum_hosts: 2, ..Config::default() }
    );
    for (bad, names) in [
        (r#"{"degraded_factor": 1}"#, "degraded_factor: "),
        (r#"{"degraded_factor": 0.5, "unhealthy_factor": 0.6}"#, "degraded_factor: "),
        (r#"{"unhealthy_factor": 1.9}"#, "unhealthy_factor: "),
        (r#"{"degraded_factor": 6}"#, "unhealthy_factor: "),
        (r#"{"minimum_hosts": 1}"#, "minimum_hosts: "),
        (r#"{"min_latency_us": -1}"#, "min_latency_us: "),
        (r#"{"recheck_ms": 0}"#, "recheck_ms: "),
        (r#"{"median": 3}"#, "`median`"),
    ] {
        let Err(PluginError::InvalidConfig(m)) = Config::parse(bad) else { panic!("{bad} accepted") };
        assert!(m.starts_with(names) || m.contains(names), "{bad}: {m}");
    }
    assert_eq!(factor(2.0), "2");
    assert_eq!(factor(1.6), "1.6");
    assert_eq!(factor(0.8 * 2.5), "2");
    assert_eq!(factor(2.25), "2.25");
}
