//! `weir plugin test` (the conformance kit) and `weir plugin new` (scaffolds), run as a
//! user runs them: the binary, on real components.

use std::process::Command;

use crate::support;

/// A config whose `[plugins]` table shares the tests' compiled-plugin cache.
fn cache_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, format!("[plugins]\ncache_dir = {:?}\n", support::cache_dir().display().to_string()))
        .unwrap();
    (dir, path.display().to_string())
}

/// Runs `weir plugin test PLUGIN --json ARGS` (fewer decisions than the default 100,000:
/// two cores run the whole suite); its exit status and report.
fn kit(plugin: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let (_dir, config) = cache_config();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--config", &config, "plugin", "test", plugin, "--json", "--decisions", "20000"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{plugin}: {e}: {stdout} {:?}", out.stderr));
    (out.status.success(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `(scenario, result)` of every row.
fn rows(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("scenario"), s("result"), s("detail"))
        })
        .collect()
}

#[test]
fn every_pack_balancer_passes_the_conformance_kit() {
    for name in weir::plugin::pack::names_of(weir::plugin::pack::Role::Balancer) {
        let (ok, report, stderr) = kit(name, &[]);
        let rows = rows(&report);
        assert!(ok, "{name}: {rows:#?} {stderr}");
        assert_eq!(rows.len(), 10, "{name}: {rows:#?}");
        for (scenario, result, detail) in &rows {
            // round-robin and first ignore weights by design (docs/algorithms.md).
            let want = if scenario == "weights honoured" && ["round-robin", "first"].contains(&name) {
                "skip"
            } else {
                "pass"
            };
            assert_eq!(result, want, "{name}: {scenario}: {detail}");
        }
        assert!(report["ns_per_decision"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["memory_per_instance"].as_u64().unwrap() > 0, "{report}");
    }
}

#[test]
fn pack_affinity_and_health_plugins_pass_their_scenarios() {
    for (name, config) in [
        ("cookie", "{}"),
        ("header", r#"{"name": "x-key"}"#),
        ("source-ip", "{}"),
        ("threshold", "{}"),
        ("outlier", "{}"),
        ("latency", "{}"),
    ] {
        let (ok, report, stderr) = kit(name, &["--plugin-config", config]);
        let rows = rows(&report);
        assert!(ok, "{name}: {rows:#?} {stderr}");
        assert!(rows.len() >= 5 && rows.iter().all(|(_, r, _)| r == "pass"), "{name}: {rows:#?}");
    }
}

/// Each broken fixture fails the row that catches its fault, says why, and the kit
/// exits 1; the rows its fault does not touch pass.
#[test]
fn broken_plugins_fail_the_row_that_catches_them() {
    for (fixture, row, why) in [
        ("ignores-health", "ineligible backend never picked", "picked backend 2, which is not eligible"),
        ("leaky", "memory stops growing", "grew from"),
        ("lenient", "bad config refused", "accepted {\"weir-conformance-no-such-key\": true}"),
        ("spin", "decisions within the deadline", "ran past the deadline"),
    ] {
        let (ok, report, _) = kit(support::fixture(fixture).to_str().unwrap(), &[]);
        let rows = rows(&report);
        assert!(!ok, "{fixture}: {rows:#?}");
        let (_, result, detail) = rows.iter().find(|(s, _, _)| s == row).unwrap();
        assert_eq!(result, "fail", "{fixture}: {rows:#?}");
        assert!(detail.contains(why), "{fixture}: {detail}");
        if fixture != "spin" {
            let failed: Vec<_> = rows.iter().filter(|(_, r, _)| r == "fail").map(|(s, _, _)| s.as_str()).collect();
            assert_eq!(failed, [row], "{fixture}: {rows:#?}");
        }
    }
}

#[test]
fn the_kit_prints_a_table_and_exits_1_on_a_failure() {
    let (_dir, config) = cache_config();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--config", &config, "plugin", "test", "--decisions", "2000"])
        .arg(support::fixture("lenient"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("  FAIL  bad config refused")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("  pass  empty pool: no-backend")), "{stdout}");
    assert!(stdout.contains("ns/decision") && stdout.contains("memory/instance"), "{stdout}");
    assert!(stdout.contains("9 passed, 1 failed, 0 skipped"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 10 scenarios failed"), "{stderr}");
}

/// `weir plugin new --lang rust` makes a project that builds with one command (offline:
/// wit-bindgen is already in cargo's cache for the pack) and passes the kit as made.
#[test]
fn a_rust_scaffold_builds_and_passes_the_kit() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "--lang", "rust", "zone-policy", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let project = dir.path().join("zone-policy");
    assert!(project.join("wit/weir.wit").exists());
    // Made again: refused, nothing overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "--lang", "rust", "zone-policy", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The README's command, with a target directory the test runs share.
    let target = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scaffold-rust");
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let wasm = target.join("wasm32-wasip2/release/zone_policy.wasm");
    let (ok, report, stderr) = kit(wasm.to_str().unwrap(), &[]);
    let rows = rows(&report);
    assert!(ok, "{rows:#?} {stderr}");
    assert!(rows.iter().all(|(_, r, _)| r == "pass"), "{rows:#?}");
}

/// `weir plugin simulate` gives requests any header, and runs under the limits of
/// `--config`: a plugin cut by the deadline there is reported as traps, not as slow
/// decisions.
#[test]
fn simulate_takes_headers_and_the_limits_of_a_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "simulate", "--plugin", "consistent-hash", "--plugin-config", r#"{"key": "header:x-user"}"#])
        .args(["--header", "x-user: alice", "--backends", "4", "--requests", "400", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let picks: Vec<u64> = report["backends"].as_array().unwrap().iter().map(|b| b["picks"].as_u64().unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&p| p == 400).count(), 1, "one user, one backend: {picks:?}");
    assert_eq!(report["traps"], 0);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[plugins]\ncall_timeout_ms = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(&config)
        .args(["plugin", "simulate", "--requests", "3", "--json", "--plugin"])
        .arg(support::fixture("spin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["traps"], 3, "{report}");
    assert_eq!(report["unplaced"], 3, "{report}");
}
