//! zone-aware balancer in Rust: prefers eligible backends whose `zone` label matches the
//! request's `x-zone` header, picks between two of them by power of two choices on their
//! load, and falls back to every eligible backend when the header is absent or no
//! eligible backend is in that zone. The same policy as `examples/plugins/{js,python,c}`.
//!
//! Build: `just example-plugins` (or `examples/plugins/build.sh rust`), which runs
//! `cargo build --release --target wasm32-wasip2` here and copies the component to
//! `target/example-plugins/zone-rust.wasm`.
//! Load: `balancer = { plugin = "target/example-plugins/zone-rust.wasm", config = { header = "x-zone" } }`
//!
//! Config (both optional): `header`, the request header naming the client's zone (default
//! `x-zone`); `label`, the backend label holding a backend's zone (default `zone`).

use std::cell::RefCell;
use std::collections::HashMap;

use weir_guest::types::{BackendId, PickError, PluginError};
use weir_guest::{PoolCache, log, pool, request, rng, select};

wit_bindgen::generate!({
    world: "balancer-plugin",
    path: "../../../wit",
    with: {
        "weir:plugin/types@0.1.0": weir_guest::types,
        "weir:plugin/pool@0.1.0": weir_guest::pool,
        "weir:plugin/request@0.1.0": weir_guest::request,
        "weir:plugin/log@0.1.0": weir_guest::log,
    },
});

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_label")]
    label: String,
}

fn default_header() -> String {
    "x-zone".into()
}

fn default_label() -> String {
    "zone".into()
}

/// The instance's state: its config, its copy of the pool and the eligible ids by zone.
struct State {
    config: Config,
    pool: PoolCache,
    zones: HashMap<String, Vec<BackendId>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        config: Config { header: default_header(), label: default_label() },
        pool: PoolCache::new(),
        zones: HashMap::new(),
    });
}

/// Power of two choices among `ids`: the less loaded of two distinct random ones.
fn p2c(ids: &[BackendId]) -> BackendId {
    let n = ids.len() as u64;
    if n == 1 {
        return ids[0];
    }
    let i = rng::below(n);
    let mut j = rng::below(n - 1);
    if j >= i {
        j += 1;
    }
    let (a, b) = (ids[i as usize], ids[j as usize]);
    let (load_a, load_b) = select::unpack(pool::load_pair(a, b));
    if load_b < load_a { b } else { a }
}

struct Zone;

impl exports::weir::plugin::balancer::Guest for Zone {
    fn configure(config: String) -> Result<(), PluginError> {
        let config: Config = weir_guest::parse_config(&config)?;
        STATE.with_borrow_mut(|s| s.config = config);
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|s| {
            if !s.pool.refresh() {
                return;
            }
            s.zones.clear();
            for &id in s.pool.eligible() {
                let zone = s.pool.members()[id as usize].labels.iter().find(|(k, _)| *k == s.config.label);
                if let Some((_, zone)) = zone {
                    s.zones.entry(zone.clone()).or_default().push(id);
                }
            }
            let generation = s.pool.generation().unwrap_or(0);
            let message = format!("generation {generation}: {} eligible in {} zones", s.pool.eligible().len(), s.zones.len());
            log::write(log::Level::Debug, &message);
        });
    }

    fn pick() -> Result<BackendId, PickError> {
        STATE.with_borrow(|s| {
            let eligible = s.pool.eligible();
            if eligible.is_empty() {
                return Err(PickError::NoBackend);
            }
            let local = request::header(&s.config.header).and_then(|zone| s.zones.get(&zone));
            Ok(p2c(local.map_or(eligible, Vec::as_slice)))
        })
    }
}

export!(Zone);
