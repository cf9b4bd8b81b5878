//! Backends found by DNS (a pool's `discover`): SRV records, as Kubernetes headless
//! services and Consul publish them, or the A/AAAA records of `host:port`. Each pool that
//! discovers has a task ([`Monitor`]) that looks its name up every `refresh_ms` (sooner
//! when the records' TTL is shorter) and sends the set it finds, when it changes, to the
//! one writer ([`crate::control`]), which rebuilds the pool with the file's `backends`
//! plus those found. Backends are named by address, so one found again keeps its live
//! state, its tunnels and its health; one that is gone is retired as a reload retires it.
//!
//! Nothing here is on a request's path.

mod lookup;
mod monitor;

pub use lookup::{Answer, LABEL, LookupError, Srv, from_srv, lookup, resolver};
pub use monitor::{Found, Monitor, Status};
