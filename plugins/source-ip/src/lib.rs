//! `source-ip`: pins a client by its IP address through a stick table of the pool, as
//! HAProxy's `stick on src`. Unlike `ip-hash` it survives pool changes: a pinned client
//! stays where it is when other backends come or go.
//!
//! Config: `ttl_s` (default 1800: an entry expires 30 min after its last request, or
//! after its last WebSocket closed).

use weir_guest::key::HashKey;
use weir_guest::stick::Sticky;
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

thread_local! {
    static STICKY: std::cell::OnceCell<Sticky> = const { std::cell::OnceCell::new() };
}

struct SourceIp;

impl exports::weir::plugin::affinity::Guest for SourceIp {
    fn configure(config: String) -> Result<(), PluginError> {
        let c: Config = weir_guest::parse_config(&config)?;
        STICKY.with(|s| s.set(Sticky::new("source-ip", c.ttl_s, HashKey::ClientIp)).ok());
        Ok(())
    }

    fn pool_changed() {}

    fn pinned() -> Option<BackendId> {
        STICKY.with(|s| s.get().and_then(Sticky::pinned))
    }

    fn bind(chosen: BackendId) -> Vec<(String, String)> {
        STICKY.with(|s| s.get().map(|s| s.bind(chosen)));
        Vec::new()
    }
}

export!(SourceIp);
