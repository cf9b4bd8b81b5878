//! [`PoolView`]: one pool's members as one snapshot has them, with the dense per-id
//! arrays the hot path reads, and the plugin layer's [`PoolHost`] answered from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::live::{BackendLive, PoolLive};
use super::stick;
use crate::config::{BackendConfig, HealthConfig};
use crate::core::{Verdict, clock};
use crate::plugin::PoolHost;

/// One backend in one snapshot.
#[derive(Debug)]
pub struct Backend {
    /// What the config said.
    pub config: BackendConfig,
    /// Live state, shared across snapshots by address.
    pub live: Arc<BackendLive>,
}

/// What a plugin sees of its pool during one call.
#[derive(Debug)]
pub struct PoolView {
    /// Pool name.
    pub name: Arc<str>,
    /// Changes with membership, weights or health; never repeats.
    pub generation: u64,
    /// All backends, config order; index = backend id.
    pub members: Vec<Backend>,
    /// The members' configs, config order (what `pool.members` answers).
    configs: Vec<BackendConfig>,
    /// Ids of backends that may take new work, ascending.
    pub eligible: Vec<u32>,
    /// `eligible_mask[id]` iff `eligible` contains `id`.
    eligible_mask: Vec<bool>,
    /// Too few backends are usable (healthy or degraded): every backend of weight > 0 is
    /// eligible (the pool's `panic_threshold_percent`).
    pub panic: bool,
    /// Backends in slow start: `(id, usable since, process clock ms)`, by id. Empty
    /// almost always, and then a placement pays one length check for it.
    pub(super) ramps: Vec<(u32, u64)>,
    /// The slow-start window.
    pub(super) slow_start_ms: u64,
    /// `max_connections` by id (0 = no limit), packed so the per-decision check touches
    /// 4 bytes, not a whole backend record.
    pub(super) limits: Vec<u32>,
    /// Each member's live state by id, packed for the same reason: a plugin's load read
    /// (`pool.load`, `pool.load-pair`) follows one pointer from a dense array instead of
    /// first reading a whole `Backend` record (a cache miss each at 10,000 backends).
    lives: Vec<Arc<BackendLive>>,
    /// Backend id by [`stick::address_key`] of its address, for stick entries.
    by_address: HashMap<u64, u32>,
    /// Pool-wide live figures (counters, stick tables, total load).
    pub live: Arc<PoolLive>,
}

impl PoolView {
    /// A view of `members` (config order) with a new generation. Eligible: the healthy
    /// backends of weight > 0; if there is none, the degraded ones; and every backend of
    /// weight > 0 when fewer than `health.panic_threshold_percent` of them are usable. A
    /// backend an operator drained is never eligible, not even in panic mode.
    pub(super) fn new(
        name: Arc<str>,
        generation: u64,
        members: Vec<Backend>,
        live: Arc<PoolLive>,
        health: &HealthConfig,
    ) -> Self {
        let weighted = || members.iter().enumerate().filter(|(_, b)| b.config.weight > 0 && !b.live.is_drained());
        let with = |v: Verdict| weighted().filter(move |(_, b)| b.live.verdict() == v).map(|(i, _)| i as u32);
        let total = weighted().count();
        let healthy: Vec<u32> = with(Verdict::Healthy).collect();
        let degraded = with(Verdict::Degraded).count();
        let threshold = usize::from(health.panic_threshold_percent);
        let panic = total > 0 && (healthy.len() + degraded) * 100 < threshold * total;
        let eligible: Vec<u32> = if panic {
            weighted().map(|(i, _)| i as u32).collect()
        } else if healthy.is_empty() {
            with(Verdict::Degraded).collect()
        } else {
            healthy
        };
        let mut eligible_mask = vec![false; members.len()];
        for &i in &eligible {
            eligible_mask[i as usize] = true;
        }
        let slow_start_ms = health.slow_start.as_millis() as u64;
        let now = clock::now_ms();
        let ramps = if slow_start_ms == 0 {
            Vec::new()
        } else {
            eligible
                .iter()
                .filter_map(|&i| {
                    let since = members[i as usize].live.usable_since_ms()?;
                    (now.saturating_sub(since) < slow_start_ms).then_some((i, since))
                })
                .collect()
        };
        Self {
            panic,
            ramps,
            slow_start_ms,
            name,
            generation,
            configs: members.iter().map(|b| b.config.clone()).collect(),
            limits: members.iter().map(|b| b.config.max_connections).collect(),
            lives: members.iter().map(|b| b.live.clone()).collect(),
            by_address: members
                .iter()
                .enumerate()
                .map(|(i, b)| (stick::address_key(&b.config.address), i as u32))
                .collect(),
            members,
            eligible,
            eligible_mask,
            live,
        }
    }

    /// Whether backend `id` may take new work.
    pub fn is_eligible(&self, id: u32) -> bool {
        self.eligible_mask.get(id as usize).copied().unwrap_or(false)
    }

    /// The live state of backend `id`, if it exists.
    pub fn live(&self, id: u32) -> Option<&BackendLive> {
        self.lives.get(id as usize).map(|l| &**l)
    }

    /// The share of new work backend `id` may take now, in 1/1024ths: 1024 unless it is
    /// in slow start, where it grows linearly with the time since it became usable, from
    /// 1/20 at the start to all of it at the end of the window (HAProxy `slowstart`).
    #[inline]
    pub fn ramp(&self, id: u32) -> u32 {
        if self.ramps.is_empty() {
            return 1024;
        }
        self.ramp_slow(id)
    }

    #[cold]
    fn ramp_slow(&self, id: u32) -> u32 {
        let Ok(i) = self.ramps.binary_search_by_key(&id, |&(id, _)| id) else { return 1024 };
        let elapsed = clock::now_ms().saturating_sub(self.ramps[i].1);
        (elapsed.saturating_mul(1024) / self.slow_start_ms.max(1)).clamp(51, 1024) as u32
    }

    /// The member a stick entry of `objects`' table points to, if it is still a member.
    pub(super) fn stick_get_in(&self, objects: &PoolLive, table: u32, key: u64) -> Option<u32> {
        let backend = objects.with_stick_table(table, |t| t.get(key))??;
        self.by_address.get(&backend).copied()
    }

    /// Points a stick entry of `objects`' table at member `id`; whether it was set.
    pub(super) fn stick_set_in(&self, objects: &PoolLive, table: u32, key: u64, id: u32) -> bool {
        let Some(b) = self.members.get(id as usize) else { return false };
        let backend = stick::address_key(&b.config.address);
        objects.with_stick_table(table, |t| t.set(key, backend)).is_some()
    }

    /// The configured address of the member a stick entry names (by its address key).
    pub fn address_of(&self, backend: u64) -> Option<&str> {
        let id = *self.by_address.get(&backend)?;
        self.members.get(id as usize).map(|m| m.config.address.as_str())
    }

    /// Whether any backend is in slow start.
    pub fn ramping(&self) -> bool {
        !self.ramps.is_empty()
    }
}

impl PoolHost for PoolView {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn members(&self) -> &[BackendConfig] {
        &self.configs
    }

    fn eligible(&self) -> &[u32] {
        &self.eligible
    }

    fn is_eligible(&self, id: u32) -> bool {
        PoolView::is_eligible(self, id)
    }

    fn active(&self, id: u32) -> u32 {
        self.live(id).map_or(0, |l| l.active.load(Ordering::Relaxed))
    }

    fn in_flight(&self, id: u32) -> u32 {
        self.live(id).map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
    }

    fn load(&self, id: u32) -> u64 {
        self.live(id).map_or(0, BackendLive::load)
    }

    fn latency_ewma_us(&self, id: u32) -> u32 {
        self.live(id).map_or(0, |l| l.latency_ewma_us.load(Ordering::Relaxed))
    }

    fn total_load(&self) -> u64 {
        self.live.total_load.load(Ordering::Relaxed)
    }

    fn counter(&self, name: &str) -> Option<u32> {
        self.live.counter(name)
    }

    fn counter_next(&self, id: u32) -> u64 {
        self.live.next(id)
    }

    fn secret(&self, name: &str) -> Option<[u8; 32]> {
        self.live.secret(name)
    }

    fn stick_table(&self, name: &str, ttl: Duration) -> Option<u32> {
        self.live.stick_table(name, ttl)
    }

    fn stick_get(&self, table: u32, key: u64) -> Option<u32> {
        self.stick_get_in(&self.live, table, key)
    }

    fn stick_set(&self, table: u32, key: u64, id: u32) -> bool {
        self.stick_set_in(&self.live, table, key, id)
    }
}
