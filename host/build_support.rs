//! What the build scripts that compile guest workspaces for wasm32-wasip2 share: the
//! host's (the plugin pack) and the test fixtures'. Included with `#[path]` by both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const TARGET: &str = "wasm32-wasip2";

/// Makes sure the wasm target is installed: when it is not and rustup is there, adds it
/// (saying so in one line); when it cannot, fails with one line naming the fix.
pub(crate) fn check_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    match ensure_target(Path::new(&rustc), Path::new("rustup")) {
        Ok(Target::Installed) => {}
        Ok(Target::Added) => {
            println!("cargo:warning=the {TARGET} target was missing: added it with `rustup target add {TARGET}`")
        }
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}

/// What [`ensure_target`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The toolchain of `rustc` had it.
    Installed,
    /// `rustup target add` added it.
    Added,
}

/// The check behind [`check_target`], with the programs given (a test runs it with a
/// fake toolchain and a fake rustup, without the network): is the target in `rustc`'s
/// sysroot; if not, `rustup target add` it (rustup picks the toolchain as cargo did:
/// `RUSTUP_TOOLCHAIN`, which cargo run by rustup sets, or `rust-toolchain.toml`) and look
/// again. The error is one line that names the fix.
pub(crate) fn ensure_target(rustc: &Path, rustup: &Path) -> Result<Target, String> {
    if installed(rustc) {
        return Ok(Target::Installed);
    }
    let fix = format!("run `rustup target add {TARGET}` (or install the {TARGET} standard library for this toolchain)");
    let added = Command::new(rustup).args(["target", "add", TARGET]).output();
    match added {
        Err(_) => Err(format!("the {TARGET} target is not installed and there is no rustup to add it: {fix}")),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("it failed").trim();
            Err(format!("the {TARGET} target is not installed and `rustup target add {TARGET}` failed ({why}): {fix}"))
        }
        Ok(_) if installed(rustc) => Ok(Target::Added),
        Ok(_) => Err(format!("`rustup target add {TARGET}` ran but {} still lacks the target: {fix}", rustc.display())),
    }
}

/// Whether `rustc`'s sysroot has the target's standard library.
fn installed(rustc: &Path) -> bool {
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output().ok().filter(|o| o.status.success());
    sysroot
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib").join(TARGET))
        .is_some_and(|p| p.exists())
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
