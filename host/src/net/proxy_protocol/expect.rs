//! Reading a PROXY protocol header from the start of a connection: [`parse`] judges the
//! bytes received so far, [`read_header`] waits for a whole header (peeking, under a
//! timeout) and then consumes exactly its bytes, so the application data behind it is left
//! in the socket for whoever serves the connection.
//!
//! Parsing is strict, as the specification asks ("any sequence which does not exactly
//! match the protocol must be discarded"): a connection that does not start with a header
//! is refused as soon as its first bytes show it, never guessed at. Version 2 headers are
//! limited to [`V2_MAX`] bytes, carry a `STREAM` transport (a datagram header makes no
//! sense on a TCP listener), and their TLVs are skipped unread (so a CRC32C is not
//! checked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use std::os::fd::AsFd;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{ProxyHeader, V1_MAX, V1_PREFIX, V2_FIXED, V2_MAX, V2_SIGNATURE, Version, canonical};
use crate::core::Origin;
use crate::net::peek::{PeekError, Peeked, peek_until};

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accept {
    /// Version 1 only.
    V1,
    /// Version 2 only.
    V2,
    /// Either, told apart by the first byte.
    Any,
}

impl Accept {
    /// The most bytes a header can take.
    pub fn max_len(self) -> usize {
        match self {
            Accept::V1 => V1_MAX,
            Accept::V2 | Accept::Any => V2_MAX,
        }
    }
}

/// Why no header was read. The fault is the client's ([`ProxyError::origin`]): the proxy
/// in front, or whoever connected in its place.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No valid header arrived: timeout, end of stream, garbage or too long.
    #[error("no valid PROXY protocol header: {0}")]
    Header(#[from] PeekError),
    /// A source outside `proxy_protocol_from` sent a header.
    #[error("{peer} sent a PROXY protocol header but is not in proxy_protocol_from")]
    Untrusted {
        /// Who sent it.
        peer: std::net::SocketAddr,
    },
    /// Consuming the header's bytes after peeking them failed.
    #[error("reading the PROXY protocol header failed: {source}")]
    Read {
        /// Why.
        source: std::io::Error,
    },
}

impl ProxyError {
    /// Whose fault it is: always the client's.
    pub fn origin(&self) -> Origin {
        Origin::Client
    }
}

/// Waits (at most `timeout`) for a PROXY protocol header of a version `accept` allows at
/// the start of `stream`, and consumes exactly its bytes: what follows stays unread.
pub async fn read_header(stream: &mut TcpStream, accept: Accept, timeout: Duration) -> Result<ProxyHeader, ProxyError> {
    let (header, len) = peek_until(stream, accept.max_len(), timeout, |buf| parse(buf, accept)).await?;
    // The bytes are in the socket already (peeked), so this returns at once.
    let mut sink = [0; 512];
    let mut left = len;
    while left > 0 {
        let n = left.min(sink.len());
        stream.read_exact(&mut sink[..n]).await.map_err(|source| ProxyError::Read { source })?;
        left -= n;
    }
    Ok(header)
}

/// Whether the bytes `stream` has already received (looked at now, neither waiting nor
/// consuming) begin a PROXY protocol header of either version: at least 6 bytes that are
/// the start of one. For a connection from a source not allowed to send a header, which
/// is then refused; one whose first bytes have not arrived yet is not judged, since
/// on a tcp listener the server may be the one to speak first.
pub fn header_arrived(stream: &TcpStream) -> bool {
    // A duplicate descriptor for a plain, non-blocking peek (it shares the non-blocking
    // file status of the original); what it sees is the same socket's.
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else { return false };
    let dup = std::net::TcpStream::from(fd);
    let mut buf = [0u8; 12];
    match dup.peek(&mut buf) {
        Ok(n) if n >= 6 => !matches!(parse(&buf[..n], Accept::Any), Peeked::Invalid(_)),
        _ => false,
    }
}

/// Judges the first bytes of a connection as a PROXY protocol header of a version
/// `accept` allows: [`Peeked::Done`] with the header and its length in bytes (at most
/// `buf.len()`) once it is complete, [`Peeked::NeedMore`] while it is a valid beginning,
/// [`Peeked::Invalid`] as soon as it cannot be one. Bytes after the header are ignored.
pub fn parse(buf: &[u8], accept: Accept) -> Peeked<(ProxyHeader, usize)> {
    let version = match (accept, buf.first()) {
        (_, None) => return Peeked::NeedMore,
        (Accept::V1, _) => Version::V1,
        (Accept::V2, _) => Version::V2,
        (Accept::Any, Some(&b)) if b == V1_PREFIX[0] => Version::V1,
        (Accept::Any, Some(&b)) if b == V2_SIGNATURE[0] => Version::V2,
        (Accept::Any, Some(_)) => return Peeked::Invalid("the connection does not start with a PROXY protocol header"),
    };
    match version {
        Version::V1 => v1(buf),
        Version::V2 => v2(buf),
    }
}

/// `buf` starts like `prefix` (as far as either goes).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// A version 1 line (spec §2.1).
fn v1(buf: &[u8]) -> Peeked<(ProxyHeader, usize)> {
    if !starts_like(buf, V1_PREFIX) {
        return Peeked::Invalid("not a PROXY protocol v1 header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    // The first CR or LF must be the CRLF that ends the line.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if window.len() == V1_MAX {
            Peeked::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            Peeked::NeedMore
        };
    };
    match window.get(cr..cr + 2) {
        Some(b"\r\n") => {}
        Some(_) => return Peeked::Invalid("PROXY v1 line not ended by CRLF"),
        None if window[cr] == b'\r' && window.len() < V1_MAX => return Peeked::NeedMore,
        None => return Peeked::Invalid("PROXY v1 line not ended by CRLF"),
    }
    match v1_line(&window[V1_PREFIX.len()..cr]) {
        Ok((source, destination)) => Peeked::Done((ProxyHeader { source, destination, version: Version::V1 }, cr + 2)),
        Err(reason) => Peeked::Invalid(reason),
    }
}

/// The addresses of a version 1 line (after `PROXY `, before CRLF).
fn v1_line(line: &[u8]) -> Result<(Option<SocketAddr>, Option<SocketAddr>), &'static str> {
    // Whatever follows UNKNOWN is to be ignored.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok((None, None));
    }
    let line = std::str::from_utf8(line).map_err(|_| "PROXY v1 line is not ASCII")?;
    let mut fields = line.split(' ');
    let v6 = match fields.next() {
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let mut next = || fields.next().ok_or("PROXY v1 line has too few fields");
    let (source, destination, source_port, destination_port) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err("PROXY v1 line has too many fields");
    }
    let ip = |text: &str| -> Result<IpAddr, &'static str> {
        if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "PROXY v1 TCP6 address is not IPv6")
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| "PROXY v1 TCP4 address is not IPv4")
        }
    };
    let source = canonical(SocketAddr::new(ip(source)?, port(source_port)?));
    let destination = canonical(SocketAddr::new(ip(destination)?, port(destination_port)?));
    Ok((Some(source), Some(destination)))
}

/// A decimal port without leading zeroes (spec §2.1).
fn port(text: &str) -> Result<u16, &'static str> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    if !digits || text.is_empty() || text.len() > 5 || (text.len() > 1 && text.starts_with('0')) {
        return Err("PROXY v1 port is not a decimal number without leading zeroes");
    }
    text.parse().map_err(|_| "PROXY v1 port is over 65535")
}

/// A version 2 header (spec §2.2).
fn v2(buf: &[u8]) -> Peeked<(ProxyHeader, usize)> {
    if !starts_like(buf, &V2_SIGNATURE) {
        return Peeked::Invalid("not a PROXY protocol v2 header");
    }
    let Some(&version_command) = buf.get(12) else { return Peeked::NeedMore };
    if version_command >> 4 != 2 {
        return Peeked::Invalid("PROXY v2 header with a version other than 2");
    }
    let local = match version_command & 0xf {
        0 => true,
        1 => false,
        _ => return Peeked::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    };
    let Some(&family_transport) = buf.get(13) else { return Peeked::NeedMore };
    let (family, transport) = (family_transport >> 4, family_transport & 0xf);
    if family > 3 || transport > 2 {
        return Peeked::Invalid("PROXY v2 family or transport is not defined");
    }
    if transport == 2 && !local {
        return Peeked::Invalid("PROXY v2 header for a datagram connection on a stream");
    }
    let Some(&[hi, lo]) = buf.get(14..16) else { return Peeked::NeedMore };
    let len = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX {
        return Peeked::Invalid("PROXY v2 header longer than the limit");
    }
    let Some(block) = buf.get(V2_FIXED..len) else { return Peeked::NeedMore };
    let none = ProxyHeader { source: None, destination: None, version: Version::V2 };
    // LOCAL: the proxy's own connection; the family (and any address) is ignored.
    if local || transport == 0 {
        return Peeked::Done((none, len));
    }
    let (source, destination) = match family {
        1 => {
            let Some(a) = block.get(..12) else { return Peeked::Invalid("PROXY v2 IPv4 address block too short") };
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
        }
        2 => {
            let Some(a) = block.get(..36) else { return Peeked::Invalid("PROXY v2 IPv6 address block too short") };
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
        }
        // AF_UNSPEC or AF_UNIX: no address a TCP connection can use.
        _ => return Peeked::Done((none, len)),
    };
    let header = ProxyHeader {
        source: Some(canonical(source)),
        destination: Some(canonical(destination)),
        version: Version::V2,
    };
    Peeked::Done((header, len))
}
