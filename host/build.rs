//! Builds the default plugin pack (`plugins/`) for wasm32-wasip2 with a nested cargo,
//! then writes `pack.rs` into `OUT_DIR` so the pack is embedded in the binary. The same
//! approach as wasmtime's test-programs and spin's test-components: `cargo build` alone
//! produces a working `weir`. The test fixtures are built by `tests/fixture-artifacts`,
//! a dev-dependency, so a product build never compiles them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

#[path = "build_support.rs"]
mod build_support;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ is inside the workspace").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for dir in ["wit", "plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    build_support::check_target();
    let target_dir = root.join("target").join("wasm");
    let pack = build_support::build_workspace(&root.join("plugins"), &target_dir);

    let mut code = String::from("/// `(name, component bytes)` for every plugin in the pack, sorted by name.\n");
    code.push_str("pub static PACK: &[(&str, &[u8])] = &[\n");
    for (name, path) in &pack {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("pack.rs"), code).expect("write pack.rs");

    // `weir --version` names the embedded pack: its version (plugins/Cargo.toml), how many
    // plugins, and a digest of their bytes (FNV-1a, no build dependency needed) that tells
    // two builds of the same version apart.
    let manifest = std::fs::read_to_string(root.join("plugins/Cargo.toml")).expect("read plugins/Cargo.toml");
    let version = manifest
        .split("[workspace.package]")
        .nth(1)
        .and_then(|t| t.lines().find_map(|l| l.trim().strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("plugins/Cargo.toml has [workspace.package] version");
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, path) in &pack {
        for byte in name.bytes().chain(std::fs::read(path).expect("read a built plugin")) {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=WEIR_PACK_VERSION={version} ({} plugins, digest {:08x})", pack.len(), digest >> 32);
}
