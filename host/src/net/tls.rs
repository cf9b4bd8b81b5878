//! TLS: termination on http listeners (the listener's certificates chosen by SNI,
//! [`certs`], and the handshake in the connection task, under a timeout, after the
//! PROXY header, [`acceptor`]), and the client side weir speaks to backends ([`client`]).
//! rustls does the TLS.
//!
//! Each TLS listener has one [`Terminator`]: the current [`Acceptor`] (its rustls
//! `ServerConfig`: certificates, versions, ALPN, client verification) behind an
//! `ArcSwapOption`, and the session state that outlives reloads (the ticket keys and the
//! session cache, so a client resumes across a certificate reload). A reload (SIGHUP, a
//! changed file on disk) builds a new acceptor from the files and swaps it in: new
//! handshakes get the new certificates, open connections keep what they negotiated. A
//! file that does not load keeps the old acceptor; the error names the file.
//!
//! The crypto provider is *ring* 0.17, the one provider of the process ([`provider`]),
//! chosen by measurement on this machine (BENCHMARKS.md, "TLS crypto provider"): the
//! server's CPU per ECDSA P-256 handshake with X25519 is the same within the noise for
//! TLS 1.3, full (142-188 µs ring, 126-175 µs aws-lc-rs) and resumed (129-141 against
//! 114-163 µs), and for resumed TLS 1.2 (20-23 against 22-30 µs); aws-lc-rs is about 20%
//! cheaper only for a full TLS 1.2 handshake (106-117 against 133-155 µs). Building it
//! costs four times the CPU (aws-lc-sys's C: 85 s against ring's 21 s, user + system),
//! on a machine where build time on two cores matters. Upstream TLS (pools) uses the
//! same provider.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;

pub(crate) mod acceptor;
pub(crate) mod certs;
pub(crate) mod client;

pub use acceptor::{Acceptor, TlsInfo};

/// The crypto provider of every rustls config of the process (server and client side).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Why a listener's TLS settings could not be built. Each error names the file it is
/// about and where the config names that file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file is unreadable, not PEM, or unusable.
    #[error("{at}: {message}")]
    File {
        /// Where the config names the file (`file:line:col: key`).
        at: crate::config::Location,
        /// What is wrong, naming the file.
        message: String,
    },
    /// rustls refused the settings (or the system's random source failed).
    #[error("TLS settings: {0}")]
    Settings(#[from] rustls::Error),
}

/// A TLS listener's current acceptor and its lasting session state.
#[derive(Debug, Default)]
pub struct Terminator {
    current: ArcSwapOption<Acceptor>,
    sessions: OnceLock<acceptor::Sessions>,
}

impl Terminator {
    /// Builds an acceptor from `config`'s files (read now) with this listener's session
    /// state. It serves nothing until [`Terminator::set`].
    pub fn build(&self, config: &crate::config::TlsConfig) -> Result<Arc<Acceptor>, TlsError> {
        let sessions = match self.sessions.get() {
            Some(s) => s,
            None => {
                let made = acceptor::Sessions::new()?;
                self.sessions.get_or_init(|| made)
            }
        };
        Acceptor::build(config, sessions).map(Arc::new)
    }

    /// Serves new handshakes with `acceptor` (none: the listener is cleartext).
    pub fn set(&self, acceptor: Option<Arc<Acceptor>>) {
        self.current.store(acceptor);
    }

    /// The acceptor for a new connection.
    pub fn current(&self) -> Option<Arc<Acceptor>> {
        self.current.load_full()
    }
}

/// How often [`watch`] looks at the files.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the files `files()` names (asked again each time) and calls `changed` when one
/// of them is modified, replaced, appears or goes, or is new to the watch (polled every second: no dependency,
/// and it sees a file replaced by a rename, as certificate tools do). Ends when the
/// server stops serving or `changed` answers false (its receiver is gone).
pub(crate) async fn watch(
    files: impl Fn() -> Vec<std::path::PathBuf>,
    changed: impl Fn() -> bool,
    mut stop: tokio::sync::watch::Receiver<super::listen::Stop>,
) {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    type Seen = Option<(std::time::SystemTime, u64, u64, u64)>;
    let look = |path: &std::path::Path| -> Seen {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino(), m.dev()))
    };
    let mut seen: HashMap<std::path::PathBuf, Seen> = HashMap::new();
    loop {
        let mut now = HashMap::with_capacity(seen.len());
        let mut differs = false;
        for path in files() {
            let state = look(&path);
            // A file new to the watch (a listener just added) counts as changed: it may
            // have changed between its first reading and this first look.
            differs |= seen.get(&path).is_none_or(|before| *before != state);
            now.insert(path, state);
        }
        seen = now;
        if differs && !changed() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            () = super::listen::stop_serving(&mut stop) => return,
        }
    }
}
