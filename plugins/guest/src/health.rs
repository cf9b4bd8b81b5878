//! What the pack's health plugins share: plain Rust mirrors of the `health` interface's
//! types, the [`Evaluator`] trait a health plugin implements, the [`Book`] of per-backend
//! state kept by address across generations (with what the plugin last told the host about
//! each backend, so it returns only changes), reason formatting, and the
//! [`export_health!`](crate::export_health) macro that writes the WIT glue.
//!
//! The types are mirrors because wit-bindgen always generates an exported interface's
//! types in the exporting crate (a `with:` mapping applies to imports only); with mirrors,
//! an evaluator is pure code that unit-tests natively, and the conversions are written
//! once, in the macro. A health plugin is then:
//!
//! ```ignore
//! wit_bindgen::generate!({
//!     world: "health-plugin",
//!     path: "../../wit",
//!     with: {
//!         "weir:plugin/types@0.1.0": weir_guest::types,
//!         "weir:plugin/pool@0.1.0": weir_guest::pool,
//!         "weir:plugin/log@0.1.0": weir_guest::log,
//!     },
//! });
//!
//! struct MyEvaluator { book: Book<MyState>, /* config */ }
//! impl Evaluator for MyEvaluator { /* configure, pool_changed, observe, tick */ }
//! weir_guest::export_health!(MyEvaluator);
//! ```
//!
//! The pack's evaluators use the `health-batch-plugin` world and
//! `export_health!(MyEvaluator, batch)`, which also exports `health-batch`, so a slot's
//! probe results cost one call into the plugin rather than one each.

use std::collections::HashMap;

use crate::types::{BackendId, PluginError};

/// A health plugin's view of a backend (WIT `health.verdict`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Takes new work. Where every backend starts.
    #[default]
    Healthy,
    /// Takes new work only when no healthy backend is left.
    Degraded,
    /// Takes no new work until a later verdict says otherwise.
    Unhealthy,
}

impl Verdict {
    /// The verdict's name, as the WIT spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Unhealthy => "unhealthy",
        }
    }
}

/// What went wrong in a probe or a live exchange (WIT `health.failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The TCP connect was refused or the backend unreachable.
    Connect,
    /// No answer within the time allowed.
    Timeout,
    /// A status outside the probe's `expect_status`, or one of the pool's
    /// `passive_failure_statuses` for live traffic.
    Status,
    /// The probe's body did not contain its `expect_body`.
    Body,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// Not the expected protocol (a malformed response, a refused upgrade, no pong).
    Protocol,
}

/// One result about one backend (WIT `health.observation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// True for the host's timed probe, false for live traffic.
    pub active_probe: bool,
    /// `None` when the probe or exchange succeeded.
    pub failure: Option<Failure>,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// Time to the first response byte (to the connect for a `tcp` probe), µs; 0 when it
    /// failed before that.
    pub latency_us: u32,
    /// When it was observed, in ms on the host's monotonic clock (the one `tick` gives).
    pub at_ms: u64,
}

impl Observation {
    /// Whether the probe or exchange succeeded.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// Whether it is a gateway error in Envoy's sense: the backend could not be reached
    /// or did not answer (connect, timeout, reset), or answered 502, 503 or 504.
    pub fn is_gateway_error(&self) -> bool {
        match self.failure {
            Some(Failure::Connect | Failure::Timeout | Failure::Reset) => true,
            Some(_) => matches!(self.status, Some(502..=504)),
            None => false,
        }
    }

    /// What went wrong, in a few words for a reason (`timeout`, `status 503`); `success`
    /// when nothing did.
    pub fn describe(&self) -> String {
        let what = match self.failure {
            None => "success",
            Some(Failure::Connect) => "connect failed",
            Some(Failure::Timeout) => "timeout",
            Some(Failure::Status) => match self.status {
                Some(status) => return format!("status {status}"),
                None => "failure status",
            },
            Some(Failure::Body) => "unexpected body",
            Some(Failure::Reset) => "reset",
            Some(Failure::Protocol) => "protocol error",
        };
        match (self.failure, self.status) {
            (Some(Failure::Body | Failure::Protocol), Some(status)) => format!("{what} (status {status})"),
            _ => what.to_owned(),
        }
    }
}

/// What live traffic did to one backend since the previous tick (WIT `health.window`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Exchanges that succeeded.
    pub successes: u32,
    /// Exchanges that failed.
    pub failures: u32,
    /// The backend's response-head latency EWMA now, µs (0: no sample ever). It moves
    /// only when the backend answers, so it is stale for a backend that got no traffic.
    pub latency_ewma_us: u32,
}

impl Window {
    /// Exchanges in the window, failed or not.
    pub fn exchanges(&self) -> u64 {
        u64::from(self.successes) + u64::from(self.failures)
    }
}

/// A verdict about one backend and why (WIT `health.assessment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The backend, as an id of the current generation.
    pub id: BackendId,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: String,
}

/// A health plugin as pure code: what [`export_health!`](crate::export_health) turns into
/// the `health` export.
///
/// The host runs one instance per pool and calls it from one task, in order: `configure`
/// once, then `pool_changed` before the first `observe` or `tick` and again whenever the
/// pool's generation changed (membership, weights, health, drain), then `observe` and
/// `tick` in any order. Every call runs under the host's long deadline, so a scan of the
/// pool is fine; none may panic (a panic traps and drops the instance, and its state).
pub trait Evaluator: Sized {
    /// Parses and validates the plugin's config (JSON, `{}` when there is none); a bad key
    /// is `invalid-config` naming it, never a panic.
    fn configure(json: &str) -> Result<Self, PluginError>;

    /// The pool changed: re-read its members, keeping per-backend state by address
    /// (usually [`Book::refresh`]).
    fn pool_changed(&mut self);

    /// One probe result, failed live exchange, or first live success after a failure,
    /// about backend `id`. Returns the verdicts it changed (usually none or one).
    fn observe(&mut self, _id: BackendId, _obs: &Observation) -> Vec<Assessment> {
        Vec::new()
    }

    /// The pool's timer, at `at_ms` (the clock of [`Observation::at_ms`]), with the
    /// live-traffic window of every member since the previous tick (`windows[id]`).
    /// Returns the verdicts that changed.
    fn tick(&mut self, _at_ms: u64, _windows: &[Window]) -> Vec<Assessment> {
        Vec::new()
    }
}

/// One backend's line in a [`Book`]: its id in the current generation, its address, what
/// the plugin last said about it, and the plugin's own state `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    id: BackendId,
    address: String,
    said: Verdict,
    /// The plugin's state for this backend; kept while the address stays in the pool.
    pub state: T,
}

impl<T> Entry<T> {
    /// The backend's id in the current generation.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// The backend's address (`host:port` as configured): its identity across generations.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The verdict the plugin last returned for this backend ([`Verdict::Healthy`] for a
    /// backend it never judged, which is how the host starts it too).
    pub fn said(&self) -> Verdict {
        self.said
    }

    /// Records that the plugin now says `verdict`: the assessment to return if that is a
    /// change, `None` if the plugin already said it.
    pub fn say(&mut self, verdict: Verdict, reason: impl FnOnce() -> String) -> Option<Assessment> {
        if self.said == verdict {
            return None;
        }
        self.said = verdict;
        Some(Assessment { id: self.id, verdict, reason: reason() })
    }
}

/// Per-backend state of a health plugin, kept by address so that it survives reloads and
/// reorderings (the ids change, the addresses do not), and looked up by the current id.
///
/// A backend whose address leaves the pool is forgotten; one that comes (back) starts
/// afresh with `T::default()` and a healthy verdict, as the host starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Book<T> {
    /// By id of the current generation.
    entries: Vec<Entry<T>>,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Book<T> {
    /// An empty book; [`Book::refresh`] (or [`Book::rebuild`]) fills it.
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool has no member.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Backend `id`'s entry, if `id` is a member of the current generation.
    pub fn get(&self, id: BackendId) -> Option<&Entry<T>> {
        self.entries.get(id as usize)
    }

    /// Backend `id`'s entry, mutably.
    pub fn get_mut(&mut self, id: BackendId) -> Option<&mut Entry<T>> {
        self.entries.get_mut(id as usize)
    }

    /// Every entry, by id.
    pub fn iter(&self) -> std::slice::Iter<'_, Entry<T>> {
        self.entries.iter()
    }

    /// Every entry, by id, mutably.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Entry<T>> {
        self.entries.iter_mut()
    }
}

impl<T: Default> Book<T> {
    /// Re-reads `pool.members` and [`Book::rebuild`]s from their addresses; call it from
    /// `pool-changed`. Needs the host: native tests call `rebuild`.
    pub fn refresh(&mut self) {
        let members = crate::pool::members();
        self.rebuild(members.iter().map(|b| b.address.as_str()));
    }

    /// Makes the book that of a pool whose members, by id, have `addresses`: an address
    /// already in the book keeps its state and verdict under its new id, a new one starts
    /// with `T::default()`, healthy, and the rest are dropped. If an address is listed
    /// twice, the first keeps the state and the second starts afresh. O(members).
    pub fn rebuild<A: AsRef<str>>(&mut self, addresses: impl IntoIterator<Item = A>) {
        let mut old: HashMap<String, Entry<T>> = self.entries.drain(..).map(|e| (e.address.clone(), e)).collect();
        self.entries = addresses
            .into_iter()
            .enumerate()
            .map(|(id, address)| {
                let address = address.as_ref();
                let id = id as BackendId;
                match old.remove(address) {
                    Some(entry) => Entry { id, ..entry },
                    None => Entry { id, address: address.to_owned(), said: Verdict::Healthy, state: T::default() },
                }
            })
            .collect();
    }
}

/// A duration in ms for a reason: `250ms`, `1.5s`, `30s`, `5m`, `1h`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

/// A latency in µs for a reason, in milliseconds with one decimal: `12.3 ms`.
pub fn millis(us: f64) -> String {
    format!("{:.1} ms", us / 1000.0)
}

/// Writes a debug line through the host's log. Natively (in unit tests, where there is no
/// host) it writes nothing.
pub fn debug(message: impl FnOnce() -> String) {
    #[cfg(target_arch = "wasm32")]
    crate::log::write(crate::log::Level::Debug, &message());
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

/// Writes the `health` export of a plugin crate from an [`Evaluator`]: one instance of it
/// per plugin instance (in a `thread_local!`), built by `configure`, and the conversions
/// between the WIT types that crate's `wit_bindgen::generate!` made and this module's
/// mirrors. Invoke it at the crate root, after `generate!` for the `health-plugin` world.
/// Before a successful `configure`, `observe` and `tick` return nothing.
///
/// `export_health!(MyEvaluator, batch)`, after `generate!` for the `health-batch-plugin`
/// world, also writes the `health-batch` export: the host then hands over a slot's probe
/// results in one call, each given to [`Evaluator::observe`] in order within one borrow of
/// the evaluator (one entry into the plugin instead of one per result).
#[macro_export]
macro_rules! export_health {
    ($evaluator:ty, batch) => {
        $crate::export_health!(@health $evaluator);

        impl exports::weir::plugin::health_batch::Guest for HealthExport {
            fn observe_batch(
                observations: ::std::vec::Vec<($crate::types::BackendId, exports::weir::plugin::health::Observation)>,
            ) -> ::std::vec::Vec<exports::weir::plugin::health::Assessment> {
                let mut out = ::std::vec::Vec::new();
                EVALUATOR.with_borrow_mut(|e| {
                    if let ::std::option::Option::Some(e) = e {
                        for (id, obs) in observations {
                            let obs = HealthExport::observation(obs);
                            let said = $crate::health::Evaluator::observe(e, id, &obs);
                            out.extend(said.into_iter().map(HealthExport::assessment));
                        }
                    }
                });
                out
            }
        }

        export!(HealthExport);
    };
    ($evaluator:ty) => {
        $crate::export_health!(@health $evaluator);
        export!(HealthExport);
    };
    (@health $evaluator:ty) => {
        /// The `health` export, backed by the instance's evaluator.
        struct HealthExport;

        ::std::thread_local! {
            static EVALUATOR: ::std::cell::RefCell<::std::option::Option<$evaluator>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl exports::weir::plugin::health::Guest for HealthExport {
            fn configure(config: ::std::string::String) -> ::std::result::Result<(), $crate::types::PluginError> {
                let evaluator = <$evaluator as $crate::health::Evaluator>::configure(&config)?;
                EVALUATOR.with_borrow_mut(|e| *e = ::std::option::Option::Some(evaluator));
                ::std::result::Result::Ok(())
            }

            fn pool_changed() {
                EVALUATOR.with_borrow_mut(|e| {
                    if let ::std::option::Option::Some(e) = e {
                        $crate::health::Evaluator::pool_changed(e);
                    }
                });
            }

            fn observe(
                id: $crate::types::BackendId,
                obs: exports::weir::plugin::health::Observation,
            ) -> ::std::vec::Vec<exports::weir::plugin::health::Assessment> {
                let obs = HealthExport::observation(obs);
                let said = EVALUATOR.with_borrow_mut(|e| {
                    e.as_mut().map(|e| $crate::health::Evaluator::observe(e, id, &obs)).unwrap_or_default()
                });
                said.into_iter().map(HealthExport::assessment).collect()
            }

            fn tick(
                at_ms: u64,
                windows: ::std::vec::Vec<exports::weir::plugin::health::Window>,
            ) -> ::std::vec::Vec<exports::weir::plugin::health::Assessment> {
                let windows: ::std::vec::Vec<$crate::health::Window> = windows
                    .iter()
                    .map(|w| $crate::health::Window {
                        successes: w.successes,
                        failures: w.failures,
                        latency_ewma_us: w.latency_ewma_us,
                    })
                    .collect();
                let said = EVALUATOR.with_borrow_mut(|e| {
                    e.as_mut().map(|e| $crate::health::Evaluator::tick(e, at_ms, &windows)).unwrap_or_default()
                });
                said.into_iter().map(HealthExport::assessment).collect()
            }
        }

        impl HealthExport {
            fn observation(obs: exports::weir::plugin::health::Observation) -> $crate::health::Observation {
                use exports::weir::plugin::health::Failure as F;
                use $crate::health::Failure;
                $crate::health::Observation {
                    active_probe: obs.active_probe,
                    failure: obs.failure.map(|f| match f {
                        F::Connect => Failure::Connect,
                        F::Timeout => Failure::Timeout,
                        F::Status => Failure::Status,
                        F::Body => Failure::Body,
                        F::Reset => Failure::Reset,
                        F::Protocol => Failure::Protocol,
                    }),
                    status: obs.status,
                    latency_us: obs.latency_us,
                    at_ms: obs.at_ms,
                }
            }

            fn assessment(a: $crate::health::Assessment) -> exports::weir::plugin::health::Assessment {
                use exports::weir::plugin::health::Verdict as V;
                exports::weir::plugin::health::Assessment {
                    id: a.id,
                    verdict: match a.verdict {
                        $crate::health::Verdict::Healthy => V::Healthy,
                        $crate::health::Verdict::Degraded => V::Degraded,
                        $crate::health::Verdict::Unhealthy => V::Unhealthy,
                    },
                    reason: a.reason,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<T>(book: &Book<T>) -> Vec<(BackendId, &str)> {
        book.iter().map(|e| (e.id(), e.address())).collect()
    }

    #[test]
    fn the_book_keeps_state_by_address_across_a_reorder_and_drops_removed_backends() {
        let mut book: Book<u32> = Book::new();
        book.rebuild(["a:1", "b:1", "c:1"]);
        assert_eq!(ids(&book), [(0, "a:1"), (1, "b:1"), (2, "c:1")]);
        for (n, e) in book.iter_mut().enumerate() {
            e.state = 10 + n as u32;
        }
        let said = book.get_mut(2).and_then(|e| e.say(Verdict::Unhealthy, || "down".into()));
        assert_eq!(said, Some(Assessment { id: 2, verdict: Verdict::Unhealthy, reason: "down".into() }));

        // Reordered, `b` removed, `d` added.
        book.rebuild(vec!["c:1".to_string(), "d:1".into(), "a:1".into()]);
        assert_eq!(ids(&book), [(0, "c:1"), (1, "d:1"), (2, "a:1")]);
        let states: Vec<(u32, Verdict)> = book.iter().map(|e| (e.state, e.said())).collect();
        assert_eq!(states, [(12, Verdict::Unhealthy), (0, Verdict::Healthy), (10, Verdict::Healthy)]);
        // The verdict memo moved with the address: its assessment names the new id.
        let said = book.get_mut(0).and_then(|e| e.say(Verdict::Healthy, || "up".into()));
        assert_eq!(said.map(|a| a.id), Some(0));

        // `b` comes back: afresh.
        book.rebuild(["b:1", "a:1"]);
        assert_eq!(book.iter().map(|e| e.state).collect::<Vec<_>>(), [0, 10]);
        assert_eq!(book.len(), 2);
        assert!(book.get(2).is_none());
        book.rebuild(std::iter::empty::<&str>());
        assert!(book.is_empty());
    }

    #[test]
    fn a_duplicate_address_does_not_share_state() {
        let mut book: Book<u32> = Book::new();
        book.rebuild(["a:1"]);
        if let Some(e) = book.get_mut(0) {
            e.state = 7;
        }
        book.rebuild(["a:1", "a:1"]);
        assert_eq!(book.iter().map(|e| e.state).collect::<Vec<_>>(), [7, 0]);
    }

    #[test]
    fn say_returns_only_changes() {
        let mut book: Book<()> = Book::new();
        book.rebuild(["a:1"]);
        let Some(e) = book.get_mut(0) else { panic!("no entry") };
        assert_eq!(e.say(Verdict::Healthy, || unreachable!("not formatted when unchanged")), None);
        assert_eq!(e.say(Verdict::Degraded, || "slow".into()).map(|a| a.verdict), Some(Verdict::Degraded));
        assert_eq!(e.say(Verdict::Degraded, || "slow".into()), None);
        assert_eq!(e.said(), Verdict::Degraded);
    }

    #[test]
    fn observations_are_described_and_classified() {
        let failed = |failure, status| Observation { failure: Some(failure), status, ..Observation::default() };
        assert_eq!(failed(Failure::Timeout, None).describe(), "timeout");
        assert_eq!(failed(Failure::Status, Some(500)).describe(), "status 500");
        assert_eq!(failed(Failure::Protocol, Some(200)).describe(), "protocol error (status 200)");
        assert_eq!(failed(Failure::Connect, None).describe(), "connect failed");
        assert_eq!(Observation::default().describe(), "success");
        for (obs, gateway) in [
            (failed(Failure::Connect, None), true),
            (failed(Failure::Timeout, None), true),
            (failed(Failure::Reset, None), true),
            (failed(Failure::Status, Some(503)), true),
            (failed(Failure::Status, Some(500)), false),
            (failed(Failure::Body, Some(200)), false),
            (failed(Failure::Protocol, None), false),
            (Observation { status: Some(503), ..Observation::default() }, false),
        ] {
            assert_eq!(obs.is_gateway_error(), gateway, "{obs:?}");
        }
    }

    #[test]
    fn durations_and_latencies_read_well() {
        assert_eq!(duration(250), "250ms");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(30_000), "30s");
        assert_eq!(duration(90_000), "90s");
        assert_eq!(duration(300_000), "5m");
        assert_eq!(duration(7_200_000), "2h");
        assert_eq!(millis(12_345.0), "12.3 ms");
        assert_eq!(millis(300.0), "0.3 ms");
    }
}
