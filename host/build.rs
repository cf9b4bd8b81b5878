//! Builds the default plugin pack (`plugins/`) and the test fixtures (`tests/fixtures/`)
//! for wasm32-wasip2 with a nested cargo, then writes `pack.rs` into `OUT_DIR` so the
//! pack is embedded in the binary. The same approach as wasmtime's test-programs and
//! spin's test-components: `cargo build` alone produces a working `weir`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ is inside the workspace").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for dir in ["wit", "plugins", "tests/fixtures"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    check_target();
    let target_dir = root.join("target").join("wasm");
    let pack = build_workspace(&root.join("plugins"), &target_dir);
    let fixtures = build_workspace(&root.join("tests/fixtures"), &target_dir);

    let mut code = String::from("/// `(name, component bytes)` for every plugin in the pack, sorted by name.\n");
    code.push_str("pub static PACK: &[(&str, &[u8])] = &[\n");
    for (name, path) in &pack {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("pack.rs"), code).expect("write pack.rs");

    let fixture_dir = fixtures.first().and_then(|(_, p)| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    println!("cargo:rustc-env=WEIR_FIXTURES_DIR={}", fixture_dir.display());
}

/// Fails with one line naming the fix when the wasm target is not installed.
fn check_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    let installed = sysroot
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib").join(TARGET))
        .is_some_and(|p| p.exists());
    if !installed {
        eprintln!("error: the {TARGET} target is not installed; run `rustup target add {TARGET}`");
        std::process::exit(1);
    }
}

/// Builds every cdylib of the guest workspace at `dir`; returns `(dir name, .wasm path)`.
fn build_workspace(dir: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--quiet")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags and wrappers are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the wasm plugins");
    if !status.success() {
        eprintln!("error: building the wasm plugins in {} failed (see above)", dir.display());
        std::process::exit(1);
    }

    let out = target_dir.join(TARGET).join("release");
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).expect("list guest workspace");
    for entry in entries.flatten() {
        let crate_dir = entry.path();
        let manifest = crate_dir.join("Cargo.toml");
        let is_cdylib = std::fs::read_to_string(&manifest).is_ok_and(|m| m.contains("cdylib"));
        if !is_cdylib {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let wasm = out.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.exists(), "{} was not produced", wasm.display());
        found.push((name, wasm));
    }
    found.sort();
    found
}
