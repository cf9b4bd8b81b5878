//! Connections, below any protocol: binding and accepting ([`listen`]), joining two
//! connections into a tunnel ([`tunnel`]) and moving bytes between sockets without
//! copying them ([`splice`]). TLS, SNI peek and the PROXY protocol go here in time.

pub mod connect;
pub mod listen;
pub(crate) mod splice;
pub(crate) mod tunnel;
