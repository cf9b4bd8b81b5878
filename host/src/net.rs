//! Connections, below any protocol: binding and accepting ([`listen`]), joining two
//! connections into a tunnel ([`tunnel`]) and moving bytes between sockets without
//! copying them ([`splice`]), and reading what a connection starts with before anything
//! consumes it ([`peek`]), such as the SNI of a TLS ClientHello ([`sni`]). TLS and the
//! PROXY protocol go here in time.

pub mod listen;
pub mod peek;
pub mod sni;
pub(crate) mod splice;
pub(crate) mod tunnel;
