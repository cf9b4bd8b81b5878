//! `source-ip`: pins a client by its IP address through a stick table of the pool, as
//! HAProxy's `stick on src`. Unlike `ip-hash` it survives pool changes: a pinned client
//! stays where it is when other backends come or go.
//!
//! Config: `ttl_s` (default 1800: an entry expires 30 min after its last request, or
//! after its last WebSocket closed).

use weir_guest::key::HashKey;
use weir_guest::stick::{self, Sticky};
use weir_guest::types::{BackendId, PluginError};

wit_bindgen::generate!({
    world: "affinity-plugin",
    path: "../../wit",
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
    #[serde(default = "default_ttl")]
    ttl_s: u64,
}

fn default_ttl() -> u64 {
    1800
}

struct SourceIp;

impl exports::weir::plugin::affinity::Guest for SourceIp {
    fn configure(config: String) -> Result<(), PluginError> {
        let c: Config = weir_guest::parse_config(&config)?;
        stick::install(Sticky::new("source-ip", c.ttl_s, HashKey::ClientIp));
        Ok(())
    }

    fn pool_changed() {}

    fn pinned() -> Option<BackendId> {
        stick::pinned()
    }

    fn bind(chosen: BackendId) -> Vec<(String, String)> {
        stick::bind(chosen)
    }
}

export!(SourceIp);
