//! The first run installs itself: the build adds the wasm target when rustup is there
//! (checked with a fake toolchain and a fake rustup, no network), `weir --version` names
//! the embedded pack, the binary works away from the source tree, and the systemd unit
//! in `examples/` is one systemd accepts.

#[path = "../../host/build_support.rs"]
mod build_support;

use std::path::Path;
use std::process::Command;

use build_support::{Target, ensure_target};

/// Writes an executable shell script.
#[cfg(unix)]
fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(unix)]
#[test]
fn the_build_adds_the_wasm_target_itself_when_rustup_is_there() {
    let dir = tempfile::tempdir().unwrap();
    // A toolchain whose sysroot lacks the target.
    let sysroot = dir.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).unwrap();
    let rustc = dir.path().join("rustc");
    script(&rustc, &format!("[ \"$1 $2\" = \"--print sysroot\" ] && echo {}", sysroot.display()));
    let target = sysroot.join("lib/rustlib/wasm32-wasip2");

    // rustup there and working: it is asked for exactly that target, which then exists.
    let rustup = dir.path().join("rustup");
    script(
        &rustup,
        &format!(
            "[ \"$*\" = \"target add wasm32-wasip2\" ] || exit 2\necho \"info: downloading component 'rust-std' for 'wasm32-wasip2'\" >&2\nmkdir -p {}",
            target.display()
        ),
    );
    assert_eq!(ensure_target(&rustc, &rustup), Ok(Target::Added));
    assert!(target.exists());
    // Installed now: rustup is not asked again.
    assert_eq!(ensure_target(&rustc, &dir.path().join("no-rustup")), Ok(Target::Installed));

    // rustup there but failing (no network): one line naming the fix, with rustup's reason.
    std::fs::remove_dir(&target).unwrap();
    let offline = dir.path().join("rustup-offline");
    script(&offline, "echo 'error: could not download file from https://static.rust-lang.org/...' >&2\nexit 1");
    let e = ensure_target(&rustc, &offline).unwrap_err();
    assert!(e.contains("`rustup target add wasm32-wasip2` failed (error: could not download file"), "{e}");
    assert!(
        e.ends_with(
            "run `rustup target add wasm32-wasip2` (or install the wasm32-wasip2 standard library for this toolchain)"
        ),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // No rustup at all.
    let e = ensure_target(&rustc, &dir.path().join("no-rustup")).unwrap_err();
    assert!(e.contains("there is no rustup to add it"), "{e}");
}

#[test]
fn version_names_the_embedded_pack() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let plugins = weir::plugin::pack::names().count();
    assert!(line.starts_with(&format!("weir {}, plugin pack ", env!("CARGO_PKG_VERSION"))), "{line}");
    assert!(line.contains(&format!("({plugins} plugins, digest ")), "{line}");
    assert!(line.contains(weir::plugin::pack::VERSION), "{line}");
}

/// A copy of the binary, run from a directory with no source tree, still has its pack.
#[test]
fn the_binary_carries_its_pack() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("weir");
    std::fs::copy(env!("CARGO_BIN_EXE_weir"), &copy).unwrap();
    let out = Command::new(&copy).args(["plugin", "inspect", "maglev"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("world:     balancer-plugin"));
}

#[test]
fn the_systemd_unit_checks_first_reloads_on_hup_and_drains_on_term() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/weir.service");
    let unit = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    assert!(lines.contains(&"ExecStartPre=/usr/local/bin/weir check --config /etc/weir/weir.toml"));
    assert!(lines.contains(&"ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(lines.contains(&"KillSignal=SIGTERM"));
    // systemd's own check, on the unit pointing at this build's binary.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("weir.service");
        std::fs::write(&copy, unit.replace("/usr/local/bin/weir", env!("CARGO_BIN_EXE_weir"))).unwrap();
        let out = Command::new("/usr/bin/systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "{said}");
    }
}
