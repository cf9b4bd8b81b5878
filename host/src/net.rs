//! Connections, below any protocol: binding and accepting ([`listen`]), joining two
//! connections into a tunnel ([`tunnel`]) and moving bytes between sockets without
//! copying them ([`splice`]), and reading what a connection starts with before anything
//! consumes it ([`peek`]): the SNI of a TLS ClientHello ([`sni`]) and a PROXY protocol
//! header ([`proxy_protocol`], which also writes one for a backend); and TLS ([`tls`]:
//! termination, and the client side weir speaks to backends).

pub mod connect;
pub mod listen;
pub mod peek;
pub mod proxy_protocol;
pub mod sni;
pub(crate) mod splice;
pub mod tls;
pub(crate) mod tunnel;
