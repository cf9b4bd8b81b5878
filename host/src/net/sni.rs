//! The server name (SNI) and ALPN protocols of a TLS ClientHello, read without
//! terminating TLS, for routing passthrough connections: [`parse_client_hello`] judges the
//! bytes a client has sent so far, and [`peek_sni`] waits for them with
//! [`super::peek::peek_until`], so the backend later receives the hello untouched.
//!
//! The hello may span several TLS records and TCP segments: the handshake message is
//! reassembled from consecutive handshake records (RFC 8446 §5.1) and must be a ClientHello
//! of at most [`MAX_HELLO`] bytes. Only what routing needs is extracted; every length is
//! checked against its enclosing one, so no input can make the parser read out of bounds
//! or panic (a property test throws arbitrary bytes at it). SSLv2-compatible hellos are
//! refused.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::time::Duration;

use tokio::net::TcpStream;

use super::peek::{PeekError, Peeked, peek_until};

/// The longest ClientHello handshake message accepted (its body, without the 4-byte
/// handshake header). Real ones are 200 bytes to 2 KiB; post-quantum key shares bring
/// them near 2 KiB more.
pub const MAX_HELLO: usize = 16 * 1024;

/// A peek limit that holds a [`MAX_HELLO`] hello sent in the usual records (2¹⁴ bytes of
/// payload each, 5-byte headers). A hello cut into many tiny records needs more.
pub const PEEK_MAX: usize = MAX_HELLO + 4 + 2 * RECORD_HEADER;

/// A TLS record header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// The largest plaintext record payload (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// Content type `handshake`.
const HANDSHAKE: u8 = 22;
/// Handshake type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Extension `server_name` (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 16;
/// Server name type `host_name`.
const HOST_NAME: u8 = 0;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The server name, lower-cased; `None` when the client sent none.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order (names that are not UTF-8 left
    /// out: nothing could be configured to match them); empty when none.
    pub alpn: Vec<String>,
}

/// Judges the first bytes of a connection as a TLS ClientHello: [`Peeked::Done`] once the
/// whole handshake message has arrived, [`Peeked::NeedMore`] while it is a valid beginning,
/// [`Peeked::Invalid`] as soon as it cannot be one. Bytes after the hello are ignored.
pub fn parse_client_hello(buf: &[u8]) -> Peeked<ClientHello> {
    match handshake_message(buf) {
        Peeked::Done(body) => match client_hello(&body) {
            Ok(hello) => Peeked::Done(hello),
            Err(reason) => Peeked::Invalid(reason),
        },
        Peeked::NeedMore => Peeked::NeedMore,
        Peeked::Invalid(reason) => Peeked::Invalid(reason),
    }
}

/// Waits (at most `timeout`) for a ClientHello of at most `max` bytes on `stream` (see
/// [`PEEK_MAX`]) and returns its SNI and ALPN, consuming nothing.
pub async fn peek_sni(stream: &TcpStream, timeout: Duration, max: usize) -> Result<ClientHello, PeekError> {
    peek_until(stream, max, timeout, parse_client_hello).await
}

/// The body of the first handshake message, reassembled from the records at the start of
/// `buf`; borrowed when one record holds it all.
fn handshake_message(buf: &[u8]) -> Peeked<Cow<'_, [u8]>> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    loop {
        // The record header, judged byte by byte as it arrives.
        if let Some(&kind) = rest.first()
            && kind != HANDSHAKE
        {
            return Peeked::Invalid("not a TLS handshake record");
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Peeked::Invalid("not a TLS record version (3.x)");
        }
        let Some(header) = rest.get(..RECORD_HEADER) else { return Peeked::NeedMore };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Peeked::Invalid("empty handshake record");
        }
        if len > MAX_RECORD {
            return Peeked::Invalid("TLS record longer than 2^14 bytes");
        }
        let payload = &rest[RECORD_HEADER..];
        let fragment = &payload[..len.min(payload.len())];
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }

        if let Some(&kind) = message.first()
            && kind != CLIENT_HELLO
        {
            return Peeked::Invalid("the first handshake message is not a ClientHello");
        }
        if let Some(header) = message.get(..4) {
            let body_len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
            if body_len > MAX_HELLO {
                return Peeked::Invalid("ClientHello longer than the limit");
            }
            if message.len() >= 4 + body_len {
                return Peeked::Done(match message {
                    Cow::Borrowed(m) => Cow::Borrowed(&m[4..4 + body_len]),
                    Cow::Owned(mut m) => {
                        m.truncate(4 + body_len);
                        m.drain(..4);
                        Cow::Owned(m)
                    }
                });
            }
        }
        if fragment.len() < len {
            return Peeked::NeedMore;
        }
        rest = &payload[len..];
    }
}

/// A cursor over a complete message; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("a length runs past the end of its ClientHello field");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The fields of a ClientHello body (RFC 8446 §4.1.2; RFC 5246 §7.4.1.2 for older ones).
fn client_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    let mut r = Reader(body);
    let [major, _] = r.u16()?.to_be_bytes();
    if major != 3 {
        return Err("ClientHello legacy_version is not 3.x");
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err("ClientHello session id longer than 32 bytes");
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("ClientHello cipher suites are empty or odd");
    }
    if r.vec8()?.is_empty() {
        return Err("ClientHello has no compression method");
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Ok(hello); // A hello without extensions (before TLS 1.2).
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.is_empty() {
        return Err("bytes after the ClientHello extensions");
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            EXT_SERVER_NAME if std::mem::replace(&mut seen_sni, true) => {
                return Err("two server_name extensions");
            }
            EXT_SERVER_NAME => hello.sni = Some(server_name(data)?),
            EXT_ALPN if std::mem::replace(&mut seen_alpn, true) => {
                return Err("two ALPN extensions");
            }
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The host name of a `server_name` extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<String, &'static str> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() {
        return Err("bytes after the server name list");
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind != HOST_NAME {
            continue; // No other type is defined; its length lets it be skipped.
        }
        if host.is_some() {
            return Err("two host names in server_name");
        }
        host = Some(name);
    }
    let name = host.ok_or("server_name without a host name")?;
    if !is_host_name(name) {
        return Err("server_name is not a valid host name");
    }
    let mut name = String::from_utf8_lossy(name).into_owned(); // ASCII: checked above
    name.make_ascii_lowercase();
    Ok(name)
}

/// Whether `name` is a DNS host name as RFC 6066 wants it: ASCII letters, digits, `-` and
/// `_` (seen in the wild) in dot-separated labels of 1 to 63 bytes, not starting or ending
/// with `-`, at most 253 bytes, no trailing dot, and not an IPv4 literal (an IPv6 literal
/// has `:` and fails already).
fn is_host_name(name: &[u8]) -> bool {
    let label_ok = |label: &[u8]| {
        (1..=63).contains(&label.len())
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
            && label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (1..=253).contains(&name.len())
        && name.split(|&b| b == b'.').all(label_ok)
        && std::str::from_utf8(name).is_ok_and(|s| s.parse::<std::net::Ipv4Addr>().is_err())
}

/// The protocol names of an ALPN extension (RFC 7301 §3.1).
fn alpn(data: &[u8]) -> Result<Vec<String>, &'static str> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    if !outer.is_empty() {
        return Err("bytes after the ALPN protocol list");
    }
    if list.is_empty() {
        return Err("empty ALPN protocol list");
    }
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8()?;
        if name.is_empty() {
            return Err("empty ALPN protocol name");
        }
        if let Ok(name) = std::str::from_utf8(name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
