//! What the build scripts that compile guest workspaces for wasm32-wasip2 share: the
//! host's (the plugin pack) and the test fixtures'. Included with `#[path]` by both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const TARGET: &str = "wasm32-wasip2";

/// Fails with one line naming the fix when the wasm target is not installed.
pub(crate) fn check_target() {
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
pub(crate) fn build_workspace(dir: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
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
