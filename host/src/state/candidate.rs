//! Candidate balancers beside a pool's live one: a *shadow* is asked about a sample of
//! the decisions and never acts (its agreement with where the request went, and where
//! it would have sent it, are counted); a *canary* places a share of the decisions for
//! real. Either can be promoted to be the live balancer ([`crate::control`]).
//!
//! A candidate has its own plugin instances (one per worker thread, as the live balancer)
//! and its own pool-named objects (counters, stick tables, secrets: [`CandidateHost`]),
//! so a candidate using the same counter name as the live balancer (every `round-robin`
//! does) neither advances the live cycle nor follows it. It reads the same members,
//! eligible set and live loads. What it counts survives rebuilds of its pool (a verdict,
//! a reload that leaves the candidate as it was) and restarts when the candidate changes.
//!
//! Costs: a pool without candidates pays one `Option` check per candidate per decision;
//! a pool with one pays a draw from a per-thread generator (a few multiplies) per
//! decision, and a sampled decision one more plugin call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::live::PoolLive;
use super::view::PoolView;
use crate::config::{BackendConfig, CandidateConfig};
use crate::plugin::{Balancer, PoolHost};

/// Which kind of candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// Asked, never acts.
    Shadow,
    /// Places its share for real.
    Canary,
}

impl CandidateKind {
    /// `shadow` or `canary`: the config key, the API path segment, the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Shadow => "shadow",
            CandidateKind::Canary => "canary",
        }
    }

    /// The kind named `name` (`shadow`, `canary`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "shadow" => Some(CandidateKind::Shadow),
            "canary" => Some(CandidateKind::Canary),
            _ => None,
        }
    }
}

impl std::fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a candidate did, since it was set (kept across rebuilds of its pool).
#[derive(Debug, Default)]
pub struct CandidateStats {
    /// Decisions the candidate was asked about.
    pub asked: AtomicU64,
    /// Of those, where it picked the backend the request went to (shadow), or placed the
    /// request itself (canary).
    pub agreed: AtomicU64,
    /// Of those, where it failed (trap, timeout, ineligible pick, `no-backend`).
    pub failed: AtomicU64,
}

impl CandidateStats {
    /// `agreed / (asked - failed)`, 0 to 1; `None` before any answer.
    pub fn agreement(&self) -> Option<f64> {
        let answered = self.asked.load(Ordering::Relaxed).saturating_sub(self.failed.load(Ordering::Relaxed));
        (answered > 0).then(|| self.agreed.load(Ordering::Relaxed) as f64 / answered as f64)
    }
}

/// A loaded candidate of one pool version.
#[derive(Debug)]
pub struct Candidate {
    /// Shadow or canary.
    pub kind: CandidateKind,
    /// What the config said.
    pub config: CandidateConfig,
    /// The candidate balancer.
    pub balancer: Arc<Balancer>,
    /// The pool as the candidate sees it.
    pub(super) host: Arc<dyn PoolHost>,
    /// Its own pool-named objects, kept across rebuilds.
    objects: Arc<PoolLive>,
    /// Its counts, kept across rebuilds.
    pub stats: Arc<CandidateStats>,
    /// A draw below this (of a `u32`) samples the decision.
    threshold: u64,
}

impl Candidate {
    /// A candidate over `view`: `balancer` loaded for it, with fresh counts.
    pub(super) fn new(
        kind: CandidateKind,
        config: CandidateConfig,
        balancer: Arc<Balancer>,
        host: Arc<dyn PoolHost>,
        objects: Arc<PoolLive>,
    ) -> Self {
        let threshold = (u64::from(config.per_million) << 32) / 1_000_000;
        Self { kind, config, balancer, host, objects, stats: Arc::default(), threshold }
    }

    /// The same candidate over a new view of its pool (its instances, objects and counts
    /// carry over).
    pub(super) fn over(&self, view: &Arc<PoolView>) -> Self {
        Self {
            kind: self.kind,
            config: self.config.clone(),
            balancer: self.balancer.clone(),
            host: CandidateHost::host(view.clone(), self.objects.clone()),
            objects: self.objects.clone(),
            stats: self.stats.clone(),
            threshold: self.threshold,
        }
    }

    /// The host a candidate of `view` reads, with fresh pool-named objects (for a
    /// candidate being loaded).
    pub(super) fn fresh_host(view: &Arc<PoolView>) -> (Arc<dyn PoolHost>, Arc<PoolLive>) {
        let objects = Arc::new(PoolLive::new(view.name.clone()));
        (CandidateHost::host(view.clone(), objects.clone()), objects)
    }

    /// Whether this decision is one of the candidate's share.
    #[inline]
    pub(super) fn sampled(&self) -> bool {
        (super::draw() >> 32) < self.threshold
    }
}

/// A pool view with a candidate's own pool-named objects: everything but counters,
/// secrets and stick tables is the live view's.
#[derive(Debug)]
struct CandidateHost {
    view: Arc<PoolView>,
    objects: Arc<PoolLive>,
}

impl CandidateHost {
    fn host(view: Arc<PoolView>, objects: Arc<PoolLive>) -> Arc<dyn PoolHost> {
        Arc::new(Self { view, objects })
    }
}

impl PoolHost for CandidateHost {
    fn generation(&self) -> u64 {
        self.view.generation()
    }

    fn members(&self) -> &[BackendConfig] {
        self.view.members()
    }

    fn eligible(&self) -> &[u32] {
        PoolHost::eligible(&*self.view)
    }

    fn is_eligible(&self, id: u32) -> bool {
        self.view.is_eligible(id)
    }

    fn active(&self, id: u32) -> u32 {
        self.view.active(id)
    }

    fn in_flight(&self, id: u32) -> u32 {
        self.view.in_flight(id)
    }

    fn load(&self, id: u32) -> u64 {
        PoolHost::load(&*self.view, id)
    }

    fn latency_ewma_us(&self, id: u32) -> u32 {
        self.view.latency_ewma_us(id)
    }

    fn total_load(&self) -> u64 {
        self.view.total_load()
    }

    fn counter(&self, name: &str) -> Option<u32> {
        self.objects.counter(name)
    }

    fn counter_next(&self, id: u32) -> u64 {
        self.objects.next(id)
    }

    fn secret(&self, name: &str) -> Option<[u8; 32]> {
        self.objects.secret(name)
    }

    fn stick_table(&self, name: &str, ttl: Duration) -> Option<u32> {
        self.objects.stick_table(name, ttl)
    }

    fn stick_get(&self, table: u32, key: u64) -> Option<u32> {
        self.view.stick_get_in(&self.objects, table, key)
    }

    fn stick_set(&self, table: u32, key: u64, id: u32) -> bool {
        self.view.stick_set_in(&self.objects, table, key, id)
    }
}
