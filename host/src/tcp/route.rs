//! Routing a tls-passthrough connection by the server name of its ClientHello: the first
//! route whose `sni` matches, else the listener's default pool (also for a ClientHello
//! without a server name). A tcp listener has no routes.

use crate::config::ListenerConfig;

/// The pool for a connection with this server name.
pub(crate) fn route<'a>(config: &'a ListenerConfig, sni: Option<&str>) -> &'a str {
    config.routes.iter().find(|r| r.matches_sni(sni)).map_or(config.pool.as_str(), |r| r.pool.as_str())
}
