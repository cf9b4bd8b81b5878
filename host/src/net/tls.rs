//! TLS: the one crypto provider of the process ([`provider`]) and the client side that
//! weir speaks to backends ([`client`]). Listener TLS (the acceptor and its certificates)
//! goes here too.

use std::sync::Arc;

pub(crate) mod client;

/// The crypto provider every TLS configuration of the process is built with.
///
/// PLACEHOLDER: aws-lc-rs's default provider, until the listener TLS work (which measures
/// aws-lc-rs against ring for handshake cost and build time) replaces this function with
/// its choice. Everything TLS in weir takes its provider from here, so that choice is
/// made in one place.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
