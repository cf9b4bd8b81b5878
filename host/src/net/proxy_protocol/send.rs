//! Writing a PROXY protocol header for a backend: [`encode`] builds it on the stack (a
//! [`Header`] of at most 108 bytes), for the caller to write before any other byte.
//!
//! Both addresses are canonicalised first ([`super`]): two IPv4 addresses give `TCP4`
//! (v1) or `AF_INET` (v2); otherwise both are written as IPv6, an IPv4 one in its mapped
//! form (`::ffff:a.b.c.d`), since a header has one family. Version 2 headers carry the
//! `PROXY` command, the `STREAM` transport and no TLV.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{V2_SIGNATURE, Version, canonical};

/// Room for the longest header written: a v1 `TCP6` line takes 104 bytes, a v2 IPv6
/// header 52.
const CAPACITY: usize = 108;

/// An encoded header.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; CAPACITY],
    len: usize,
}

impl Header {
    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) -> fmt::Result {
        let end = self.len + bytes.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for Header {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes())
    }
}

impl AsRef<[u8]> for Header {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Header").field(&self.as_bytes().escape_ascii().to_string()).finish()
    }
}

/// The header telling a backend that `source` connected to `destination`.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Header {
    let (source, destination) = (canonical(source), canonical(destination));
    let mut header = Header { bytes: [0; CAPACITY], len: 0 };
    // Cannot fail: the longest header fits in CAPACITY (see there).
    let _ = match version {
        Version::V1 => v1(&mut header, source, destination),
        Version::V2 => v2(&mut header, source, destination),
    };
    header
}

/// `PROXY TCP4|TCP6 src dst sport dport\r\n`.
fn v1(out: &mut Header, source: SocketAddr, destination: SocketAddr) -> fmt::Result {
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => write!(out, "PROXY TCP4 {s} {d} ")?,
        (s, d) => {
            out.write_str("PROXY TCP6 ")?;
            v1_ipv6(out, ipv6(s))?;
            out.write_char(' ')?;
            v1_ipv6(out, ipv6(d))?;
            out.write_char(' ')?;
        }
    }
    write!(out, "{} {}\r\n", source.port(), destination.port())
}

/// An IPv6 address as the spec writes them: hexadecimal groups, at most one `::`. Rust's
/// `Display` writes a mapped address with a dotted tail (`::ffff:1.2.3.4`), which strict
/// receivers may refuse.
fn v1_ipv6(out: &mut Header, ip: Ipv6Addr) -> fmt::Result {
    match ip.to_ipv4_mapped() {
        Some(v4) => {
            let [a, b, c, d] = v4.octets();
            write!(out, "::ffff:{:x}:{:x}", u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
        }
        None => write!(out, "{ip}"),
    }
}

/// The 16-byte fixed part, then the address block.
fn v2(out: &mut Header, source: SocketAddr, destination: SocketAddr) -> fmt::Result {
    out.push(&V2_SIGNATURE)?;
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(&[0x21, 0x11, 0, 12])?; // v2 PROXY, AF_INET STREAM, 12 bytes
            out.push(&s.octets())?;
            out.push(&d.octets())?;
        }
        (s, d) => {
            out.push(&[0x21, 0x21, 0, 36])?; // v2 PROXY, AF_INET6 STREAM, 36 bytes
            out.push(&ipv6(s).octets())?;
            out.push(&ipv6(d).octets())?;
        }
    }
    out.push(&source.port().to_be_bytes())?;
    out.push(&destination.port().to_be_bytes())?;
    Ok(())
}

fn ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
