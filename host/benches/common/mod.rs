//! What several benchmarks share: a real `weir` process on a config, and its memory and
//! file descriptors as /proc reports them.
// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `weir run` on `config` (one listener on 127.0.0.1:0) and returns the process,
/// the listener's address and the directory holding the config (keep it alive).
pub(crate) fn spawn_weir(config: &str) -> (Child, String, tempfile::TempDir) {
    let w = Weir::spawn(config);
    (w.child, w.addr, w.dir)
}

/// A running `weir` process whose log is read to the end and tallied. [`Weir::stop`] ends it.
pub(crate) struct Weir {
    pub(crate) child: Child,
    /// The first listener's address.
    pub(crate) addr: String,
    /// From spawning the process to its first "listening" log line.
    pub(crate) startup: Duration,
    /// Log lines at WARN or ERROR since the start, counted by message.
    pub(crate) warnings: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Holds the config file.
    pub(crate) dir: tempfile::TempDir,
}

impl Weir {
    /// Starts `weir run --log-format json` on `config` and waits for its first listener.
    pub(crate) fn spawn(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, config).unwrap();
        let start = Instant::now();
        let mut child = Command::new(weir_bin())
            .args(["run", "--log-format", "json", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn,weir=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let warnings: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "weir exited before listening");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            tally(&warnings, &v);
            if v["fields"]["message"] == "listening" {
                break v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        };
        let startup = start.elapsed();
        let tallied = warnings.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    tally(&tallied, &v);
                }
                line.clear();
            }
        });
        Self { child, addr, startup, warnings, dir }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and waits for it.
    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The WARN and ERROR lines so far, by message, as `message ×count` pairs.
    pub(crate) fn warnings(&self) -> BTreeMap<String, u64> {
        self.warnings.lock().unwrap().clone()
    }
}

fn tally(warnings: &Mutex<BTreeMap<String, u64>>, v: &serde_json::Value) {
    if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
        let message = v["fields"]["message"].as_str().unwrap_or("?").to_owned();
        *warnings.lock().unwrap().entry(message).or_default() += 1;
    }
}

/// The `weir` binary to run: `$WEIR_BIN` (to compare another build, e.g. an older
/// commit's), else the one this benchmark was built with.
pub(crate) fn weir_bin() -> std::ffi::OsString {
    std::env::var_os("WEIR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_weir").into())
}

/// Runs `weir check` on `config`: `Err` with weir's message when it rejects it.
pub(crate) fn weir_check(config: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(weir_bin()).arg("check").arg("--config").arg(&path).output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) }
}

/// The resident set of process `pid` (VmRSS), in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The open file descriptors of process `pid`, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fds {
    pub(crate) sockets: u32,
    pub(crate) pipes: u32,
    pub(crate) other: u32,
}

impl Fds {
    pub(crate) fn of(pid: u32) -> Self {
        let mut fds = Self::default();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            // An fd closed between the listing and the readlink is simply not counted.
            let Ok(target) = std::fs::read_link(entry.unwrap().path()) else { continue };
            let target = target.to_string_lossy();
            if target.starts_with("socket:") {
                fds.sockets += 1;
            } else if target.starts_with("pipe:") {
                fds.pipes += 1;
            } else {
                fds.other += 1;
            }
        }
        fds
    }

    pub(crate) fn total(&self) -> u32 {
        self.sockets + self.pipes + self.other
    }
}

impl std::fmt::Display for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fds ({} sockets, {} pipes, {} other)", self.total(), self.sockets, self.pipes, self.other)
    }
}

/// An environment variable parsed, or `default` when it is unset or does not parse.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
