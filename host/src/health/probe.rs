//! Timed probes: tcp, http and websocket, each on its own connection.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::ProbeConfig;
use crate::core::Failure;

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// `None` when the probe passed.
    pub failure: Option<Failure>,
    /// Why it failed, one line; empty when it passed.
    pub detail: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// Time to the first response byte.
    pub latency: Duration,
}

/// Probes one backend once (a tcp connect, until the full prober lands).
pub async fn probe(config: &ProbeConfig, addr: SocketAddr, _host: &str) -> ProbeResult {
    let addr = config.port.map_or(addr, |p| SocketAddr::new(addr.ip(), p));
    let started = std::time::Instant::now();
    match tokio::time::timeout(config.timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeResult { failure: None, detail: String::new(), status: None, latency: started.elapsed() },
        Ok(Err(e)) => ProbeResult { failure: Some(Failure::Connect), detail: format!("connect: {e}"), status: None, latency: Duration::ZERO },
        Err(_) => ProbeResult { failure: Some(Failure::Timeout), detail: "no answer".into(), status: None, latency: Duration::ZERO },
    }
}
