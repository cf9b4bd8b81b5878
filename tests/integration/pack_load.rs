//! The load-based and weighted balancers of the pack (`round-robin`, `weighted-round-robin`,
//! `least-connections`, `p2c`, `peak-ewma`, `random`, `first`), run in the real runtime
//! against a simulated pool ([`weir::simulate::Sim`]): exact shares, smoothness, balance
//! under long-lived connections, latency awareness, fill order, and the edge cases every
//! balancer must get right (weight 0, one backend, membership changes, bad config).
//!
//! A `Sim` runs every pick under the host's normal 2 ms call deadline, which counts wall
//! time: on a loaded machine the scheduler can park a thread mid-call for longer and the
//! call is cut (`timeouts`). The tests run one at a time ([`serial`]) to make that rare,
//! [`pick`] retries a pick cut that way, and exact-sequence checks ([`exact`]) void an
//! attempt in which one was cut, since it may have moved the host counter.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, mpsc};

use weir::simulate::{Sim, SimBackend};
use weir::state::Placement;

/// Every balancer this file covers.
const PLUGINS: &[&str] =
    &["round-robin", "weighted-round-robin", "least-connections", "p2c", "peak-ewma", "random", "first"];

fn sim(plugin: &str, backends: &[SimBackend]) -> Sim {
    Sim::new(plugin, "{}", backends).unwrap_or_else(|e| panic!("{plugin}: {e}"))
}

fn equal(n: usize) -> Vec<SimBackend> {
    vec![SimBackend::equal(); n]
}

fn weighted(weights: &[u32]) -> Vec<SimBackend> {
    weights.iter().map(|&weight| SimBackend { weight, max_connections: 0 }).collect()
}

/// Holds the other tests of this file off while one runs (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn timeouts(sim: &Sim) -> u64 {
    sim.stats().timeouts.load(Ordering::Relaxed)
}

/// Plugin failures other than blown deadlines: traps of other causes, and errors.
fn failures(sim: &Sim) -> u64 {
    let s = sim.stats();
    s.traps.load(Ordering::Relaxed) - s.timeouts.load(Ordering::Relaxed) + s.errors.load(Ordering::Relaxed)
}

/// One pick, which must place the request on a backend. A pick rejected only because the
/// scheduler blew its deadline is retried.
fn pick(sim: &Sim) -> u32 {
    for _ in 0..5 {
        let before = timeouts(sim);
        match sim.pick(None) {
            Placement::Backend(id) => return id,
            Placement::Rejected if timeouts(sim) > before && failures(sim) == 0 => continue,
            other => {
                panic!("expected a backend, got {other:?} (failures {}, timeouts {})", failures(sim), timeouts(sim))
            }
        }
    }
    panic!("5 picks in a row cut by the deadline")
}

/// Runs an exact-sequence check until it passes, or fails in an attempt where no call was
/// cut by the deadline; at most 3 attempts. `attempt` returns its verdict and the timeouts
/// it saw.
fn exact(mut attempt: impl FnMut() -> (Result<(), String>, u64)) {
    for _ in 0..3 {
        match attempt() {
            (Ok(()), _) => return,
            (Err(e), 0) => panic!("{e}"),
            (Err(e), n) => eprintln!("attempt voided by {n} blown deadline(s): {e}"),
        }
    }
    panic!("3 attempts voided by blown deadlines");
}

/// `Err(message)` unless `a == b`.
fn same<T: PartialEq + std::fmt::Debug>(a: T, b: T, what: &str) -> Result<(), String> {
    if a == b { Ok(()) } else { Err(format!("{what}: {a:?} != {b:?}")) }
}

/// How many of `picks` picks land on each backend.
fn counts(sim: &Sim, picks: usize) -> Vec<usize> {
    let mut c = vec![0; sim.len()];
    for _ in 0..picks {
        c[pick(sim) as usize] += 1;
    }
    c
}

/// Places `connections` long-lived connections (each stays open) and returns the busiest
/// backend's open connections over the mean.
fn max_over_mean_long_lived(plugin: &str, backends: usize, connections: usize) -> f64 {
    let sim = sim(plugin, &equal(backends));
    for _ in 0..connections {
        sim.open(pick(&sim));
    }
    let active: Vec<u32> = (0..backends as u32).map(|id| sim.active(id)).collect();
    assert_eq!(active.iter().sum::<u32>() as usize, connections, "{plugin}: {active:?}");
    let max = active.iter().copied().max().unwrap_or(0);
    f64::from(max) / (connections as f64 / backends as f64)
}

#[test]
fn round_robin_gives_exact_shares_over_every_cycle() {
    let _serial = serial();
    exact(|| {
        let sim = sim("round-robin", &equal(4));
        let verdict = (0..5).try_for_each(|round| same(counts(&sim, 4), vec![1; 4], &format!("cycle {round}")));
        (verdict, timeouts(&sim))
    });
}

#[test]
fn weighted_round_robin_gives_exact_shares_over_every_cycle() {
    let _serial = serial();
    // One cycle is sum(weights) picks, after division by the gcd.
    for (weights, cycle, want) in [
        (&[3, 2, 1, 4][..], 10, &[3, 2, 1, 4][..]),
        (&[300, 100, 100], 5, &[3, 1, 1]),
        (&[1000, 999, 1], 2000, &[1000, 999, 1]),
        (&[2, 2, 2], 3, &[1, 1, 1]),
    ] {
        exact(|| {
            let sim = sim("weighted-round-robin", &weighted(weights));
            let verdict = (0..4).try_for_each(|round| {
                same(&counts(&sim, cycle)[..], want, &format!("weights {weights:?}, cycle {round}"))
            });
            (verdict, timeouts(&sim))
        });
    }
}

/// `picks` picks as letters: backend 0 is `a`.
fn letters(picks: impl IntoIterator<Item = u32>) -> String {
    picks.into_iter().map(|id| char::from(b'a' + id as u8)).collect()
}

#[test]
fn weighted_round_robin_is_smooth_like_nginx() {
    let _serial = serial();
    exact(|| {
        let sim = sim("weighted-round-robin", &weighted(&[5, 1, 1]));
        let verdict = (0..5).try_for_each(|round| {
            same(letters((0..7).map(|_| pick(&sim))), "aabacaa".into(), &format!("cycle {round}"))
        });
        (verdict, timeouts(&sim))
    });
}

#[test]
fn weighted_round_robin_is_one_cycle_across_threads() {
    let _serial = serial();
    // Two threads (hence two plugin instances) pick in strict alternation: if the position
    // were per instance, each would replay the cycle from its own start (`aaaabbaa...`).
    exact(|| {
        let sim = sim("weighted-round-robin", &weighted(&[5, 1, 1]));
        let (done_tx, done_rx) = mpsc::channel();
        let seq = std::thread::scope(|s| {
            let workers: Vec<mpsc::Sender<()>> = (0..2)
                .map(|_| {
                    let (go_tx, go_rx) = mpsc::channel::<()>();
                    let (done_tx, sim) = (done_tx.clone(), &sim);
                    s.spawn(move || {
                        while go_rx.recv().is_ok() {
                            done_tx.send(pick(sim)).unwrap();
                        }
                    });
                    go_tx
                })
                .collect();
            letters((0..28).map(|i| {
                workers[i % 2].send(()).unwrap();
                done_rx.recv().unwrap()
            }))
        });
        (same(seq, "aabacaa".repeat(4), "alternating threads"), timeouts(&sim))
    });
}

#[test]
fn weighted_round_robin_scales_huge_weights_into_a_bounded_cycle() {
    let _serial = serial();
    // Reduced sum 200,000 is over the 65,536-pick cycle bound: weights are scaled down
    // in proportion, so shares stay right to a fraction of a percent.
    let sim = sim("weighted-round-robin", &weighted(&[100_000, 99_999, 1]));
    let c = counts(&sim, 200_000);
    assert!(c[0].abs_diff(100_000) < 200 && c[1].abs_diff(99_999) < 200 && c[2] >= 1, "{c:?}");
}

#[test]
fn least_connections_and_p2c_balance_long_lived_connections_better_than_random() {
    let _serial = serial();
    // 10 backends, 1000 connections that stay open. Random's max/mean varies a lot from
    // run to run (≈1.1–1.3), so each is averaged over several runs before comparing.
    const RUNS: usize = 5;
    let mean_ratio = |plugin: &str| -> (f64, f64) {
        let ratios: Vec<f64> = (0..RUNS).map(|_| max_over_mean_long_lived(plugin, 10, 1000)).collect();
        let worst = ratios.iter().copied().fold(0.0, f64::max);
        (ratios.iter().sum::<f64>() / RUNS as f64, worst)
    };
    let (lc, lc_worst) = mean_ratio("least-connections");
    let (p2c, p2c_worst) = mean_ratio("p2c");
    let (random, random_worst) = mean_ratio("random");
    eprintln!(
        "max/mean over {RUNS} runs (mean, worst): least-connections {lc:.3} {lc_worst:.3}, \
         p2c {p2c:.3} {p2c_worst:.3}, random {random:.3} {random_worst:.3}"
    );
    assert!(lc_worst <= 1.1, "least-connections max/mean {lc_worst}");
    assert!(p2c_worst <= 1.1, "p2c max/mean {p2c_worst}");
    assert!(lc < random && p2c < random, "least-connections {lc}, p2c {p2c}, random {random}");
}

#[test]
fn least_connections_is_weight_aware() {
    let _serial = serial();
    // Weights 3 and 1: long-lived connections settle at 3:1.
    let sim = sim("least-connections", &weighted(&[3, 1]));
    for _ in 0..400 {
        sim.open(pick(&sim));
    }
    assert_eq!((sim.active(0), sim.active(1)), (300, 100));
}

#[test]
fn peak_ewma_avoids_a_backend_ten_times_slower() {
    let _serial = serial();
    let sim = sim("peak-ewma", &equal(10));
    for id in 0..10 {
        sim.set_latency_us(id, if id == 3 { 10_000 } else { 1_000 });
    }
    let c = counts(&sim, 10_000);
    let share = c[3] as f64 / 10_000.0;
    eprintln!("peak-ewma: share of the 10x slower backend {:.4}% ({c:?})", share * 100.0);
    assert!(share < 0.05, "{c:?}");
}

#[test]
fn peak_ewma_tries_a_backend_with_no_latency_sample() {
    let _serial = serial();
    // By default an untried backend borrows its rival's estimate: it gets about its fair
    // share (1/4 here) until its first answer. A fixed high guess keeps it cold instead.
    let latencies = |sim: &Sim| {
        for id in 1..4 {
            sim.set_latency_us(id, 1_000);
        }
    };
    let sim_default = sim("peak-ewma", &equal(4));
    latencies(&sim_default);
    let c = counts(&sim_default, 4_000);
    assert!(c[0] > 500, "untried backend starved: {c:?}");

    let sim_fixed = Sim::new("peak-ewma", r#"{"default_latency_us": 50000}"#, &equal(4)).unwrap();
    latencies(&sim_fixed);
    let c = counts(&sim_fixed, 4_000);
    assert_eq!(c[0], 0, "{c:?}");
}

#[test]
fn first_fills_backends_in_order_up_to_max_connections() {
    let _serial = serial();
    let backends = [
        SimBackend { weight: 1, max_connections: 3 },
        SimBackend { weight: 1, max_connections: 2 },
        SimBackend { weight: 1, max_connections: 0 },
    ];
    let sim = sim("first", &backends);
    let mut order = Vec::new();
    for _ in 0..8 {
        let id = pick(&sim);
        sim.open(id);
        order.push(id);
    }
    assert_eq!(order, [0, 0, 0, 1, 1, 2, 2, 2]);
    // A slot frees up on the first backend: it is preferred again.
    sim.close(0);
    assert_eq!(pick(&sim), 0);
}

#[test]
fn when_every_backend_is_full_nothing_is_placed_until_one_frees_up() {
    let _serial = serial();
    let backends = [SimBackend { weight: 1, max_connections: 2 }, SimBackend { weight: 1, max_connections: 4 }];
    let sim = sim("first", &backends);
    for _ in 0..6 {
        sim.open(pick(&sim));
    }
    assert_eq!((sim.active(0), sim.active(1)), (2, 4));
    // The host honours max_connections: a full backend takes no new work (503).
    assert_eq!(sim.pick(None), Placement::NoBackend);
    sim.close(1);
    assert_eq!(pick(&sim), 1);
    sim.close(0);
    assert_eq!(pick(&sim), 0);
}

#[test]
fn weight_zero_is_never_picked() {
    let _serial = serial();
    for plugin in PLUGINS {
        let sim = sim(plugin, &weighted(&[0, 1, 0, 2]));
        for _ in 0..200 {
            let id = pick(&sim);
            assert!(id == 1 || id == 3, "{plugin} picked weight-0 backend {id}");
            sim.open(id);
        }
        let all_zero = self::sim(plugin, &weighted(&[0, 0]));
        assert_eq!(all_zero.pick(None), Placement::NoBackend, "{plugin}");
    }
}

#[test]
fn one_backend_takes_everything() {
    let _serial = serial();
    for plugin in PLUGINS {
        let sim = sim(plugin, &[SimBackend { weight: 3, max_connections: 0 }]);
        for _ in 0..20 {
            assert_eq!(pick(&sim), 0, "{plugin}");
            sim.open(0);
        }
        assert_eq!(failures(&sim), 0, "{plugin}");
    }
}

#[test]
fn membership_changes_between_picks_are_seen() {
    let _serial = serial();
    for plugin in PLUGINS {
        let mut sim = sim(plugin, &weighted(&[1, 2, 1, 3]));
        for _ in 0..20 {
            sim.open(pick(&sim));
        }
        let removed = sim.address(1);
        sim.remove(1).unwrap();
        for _ in 0..50 {
            let id = pick(&sim);
            assert!((id as usize) < sim.len(), "{plugin}: id {id} out of range");
            assert_ne!(sim.address(id), removed, "{plugin} picked the removed backend");
        }
        sim.add(SimBackend { weight: 5, max_connections: 0 }).unwrap();
        let c = counts(&sim, 200);
        assert_eq!(c.iter().sum::<usize>(), 200, "{plugin}");
        // Every plugin but `first` (which fills in order) spreads work onto the new backend.
        if *plugin != "first" {
            assert!(c[3] > 0, "{plugin} never picked the added backend: {c:?}");
        }
        assert_eq!(failures(&sim), 0, "{plugin}");
    }
}

#[test]
fn invalid_config_is_refused_naming_the_key() {
    let _serial = serial();
    for plugin in PLUGINS {
        let err = Sim::new(plugin, r#"{"bogus": 1}"#, &equal(2)).err().unwrap_or_else(|| panic!("{plugin} took it"));
        let msg = err.to_string();
        assert!(msg.contains("invalid config") && msg.contains("bogus"), "{plugin}: {msg}");
    }
    for (config, want) in [
        (r#"{"default_latency_us": 0}"#, "default_latency_us: must be at least 1"),
        (r#"{"default_latency_us": "fast"}"#, "default_latency_us: invalid type"),
    ] {
        let err = Sim::new("peak-ewma", config, &equal(2)).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("invalid config") && msg.contains(want), "{config}: {msg}");
    }
    assert!(Sim::new("peak-ewma", r#"{"default_latency_us": 2000}"#, &equal(2)).is_ok());
}
