//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): a header a
//! proxy puts before a connection's bytes to tell the next hop who the client was.
//! [`expect`] reads one from a connection (a listener behind a trusted proxy), [`send`]
//! writes one for a backend. A shared core plus one file per role (DESIGN convention 3).
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the same client as its IPv4 form, so
//! every address read from a header is canonicalised to IPv4, and [`send`] writes an IPv4
//! header whenever both ends are IPv4 in either form.

pub mod expect;
pub mod send;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{ProxyAccept, ProxyProtocol, ProxyVersion};
use expect::ProxyError;

/// Who a new connection's client is, as its listener sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client: the PROXY header's source when a trusted source sent one, else the
    /// connection's peer.
    pub addr: SocketAddr,
    /// The address the client connected to, when a PROXY header said so.
    pub destination: Option<SocketAddr>,
}

/// The client of a connection from `peer` to a listener with PROXY protocol `settings`:
/// a source in `proxy_protocol_from` must start with a header (waited for up to
/// `timeout`; its bytes are consumed, nothing after them), whose address is the
/// client's; any other source is its own client, and is refused if what it has sent so
/// far is a header.
pub async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    settings: Option<&ProxyProtocol>,
    timeout: Duration,
) -> Result<Client, ProxyError> {
    let own = Client { addr: peer, destination: None };
    let Some(settings) = settings else { return Ok(own) };
    if !settings.trusts(peer.ip()) {
        if expect::header_arrived(stream) {
            return Err(ProxyError::Untrusted { peer });
        }
        return Ok(own);
    }
    let accept = match settings.accept {
        ProxyAccept::V1 => expect::Accept::V1,
        ProxyAccept::V2 => expect::Accept::V2,
        ProxyAccept::Any => expect::Accept::Any,
    };
    let header = expect::read_header(stream, accept, timeout).await?;
    Ok(match header.source {
        Some(addr) => Client { addr, destination: header.destination },
        // LOCAL or UNKNOWN: the proxy speaks for itself (a health check, say).
        None => own,
    })
}

impl From<ProxyVersion> for Version {
    fn from(v: ProxyVersion) -> Self {
        match v {
            ProxyVersion::V1 => Version::V1,
            ProxyVersion::V2 => Version::V2,
        }
    }
}

/// A version of the PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Version 1: one line of text (`PROXY TCP4 ...\r\n`).
    V1,
    /// Version 2: a binary header.
    V2,
}

/// What a PROXY protocol header says about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client, as the proxy saw it; `None` when the header carries no usable address
    /// (v1 `UNKNOWN`; v2 `LOCAL`, `AF_UNSPEC` or `AF_UNIX`): the connection's own peer
    /// address is then the one to use.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` when `source` is.
    pub destination: Option<SocketAddr>,
    /// The version the header was written in.
    pub version: Version,
}

/// The version 1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a version 2 header: signature, version and command, family and
/// transport, length.
const V2_FIXED: usize = 16;
/// The longest version 2 header accepted, TLVs included. The format allows 16 + 65535
/// bytes; addresses take at most 216 (`AF_UNIX`), and the TLVs proxies send (ALPN,
/// authority, unique id, TLS details) stay far below this.
pub const V2_MAX: usize = 4096;

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
