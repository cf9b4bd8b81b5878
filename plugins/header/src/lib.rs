//! `header`: pins a client by the value of a request header (typically a session id)
//! through a stick table of the pool, as HAProxy's `stick on req.hdr(...)`.
//!
//! Config: `name` (the header, required), `ttl_s` (default 1800: an entry expires 30 min
//! after its last request, or after its last WebSocket closed). A request without the
//! header is left to the balancer and pins nothing.

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
    name: String,
    #[serde(default = "default_ttl")]
    ttl_s: u64,
}

fn default_ttl() -> u64 {
    1800
}

struct Header;

impl exports::weir::plugin::affinity::Guest for Header {
    fn configure(config: String) -> Result<(), PluginError> {
        let c: Config = weir_guest::parse_config(&config)?;
        let key: HashKey = format!("header:{}", c.name.trim())
            .parse()
            .map_err(|_| PluginError::InvalidConfig(format!("name: `{}` is not a header name", c.name)))?;
        stick::install(Sticky::new(&format!("header:{}", c.name.to_ascii_lowercase()), c.ttl_s, key));
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

export!(Header);
