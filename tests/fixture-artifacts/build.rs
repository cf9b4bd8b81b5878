//! Builds the test fixtures (`tests/fixtures/`) for wasm32-wasip2 with a nested cargo
//! (wasmtime's test-programs-artifacts does the same) and tells the crate where they are.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[path = "../../host/build_support.rs"]
mod build_support;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root =
        manifest_dir.parent().and_then(Path::parent).expect("tests/fixture-artifacts is two levels down").to_path_buf();
    for dir in ["wit", "tests/fixtures"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    build_support::check_target();
    let fixtures = build_support::build_workspace(&root.join("tests/fixtures"), &root.join("target").join("wasm"));
    let dir = fixtures.first().and_then(|(_, p)| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    println!("cargo:rustc-env=WEIR_FIXTURES_DIR={}", dir.display());
}
