//! The L4 half: `tcp` and `tls-passthrough` listeners. Each connection goes to one
//! backend, chosen by the pool's affinity and balancer plugins from what L4 can see (the
//! client's address and, for tls-passthrough, the ClientHello's server name), and its
//! bytes are spliced both ways without weir reading them ([`session`]).
//!
//! The accept loop only accepts (`net::listen::serve`, shared with http listeners); the
//! PROXY header, the ClientHello peek, the routing ([`route`]), the placement and the
//! connect happen in the connection's task ([`session`]), under the listener's
//! `peek_timeout_ms` and the pool's `connect_timeout_ms`.

pub(crate) mod route;
pub(crate) mod session;
