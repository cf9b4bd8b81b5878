//! The `weir` binary as a user runs it.

use std::process::Command;

fn weir(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_file_line_column_and_key_of_a_misspelt_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n[pool.web]\nbackends = [{ address = \"127.0.0.1:1\" }]\nbalancr = { plugin = \"round-robin\" }\n",
    )
    .unwrap();
    let (ok, _, stderr) = weir(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    let want = format!("{}:7:1: pool.web.balancr: unknown field `balancr`", path.display());
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn check_accepts_the_basic_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/basic.toml");
    let (ok, stdout, stderr) = weir(&["check", "--config", example]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn inspect_reports_the_world_of_a_pack_plugin() {
    let (ok, stdout, stderr) = weir(&["plugin", "inspect", "round-robin"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("world:   balancer-plugin"), "{stdout}");
    assert!(stdout.contains("weir:plugin/pool@0.1.0"), "{stdout}");
}
