//! The server name (SNI) and ALPN protocols of a TLS ClientHello, read without
//! terminating TLS, for routing passthrough connections: [`parse_client_hello`] judges the
//! bytes a client has sent so far, and [`peek_sni`] waits for them with
//! [`super::peek::peek_until`], so the backend later receives the hello untouched.
//!
//! The hello is parsed by tls-parser (rusticata's passive parser, made for reading traffic
//! it does not terminate). It parses one record at a time, so the glue here reassembles
//! the handshake message from consecutive handshake records (RFC 8446 §5.1), judging the
//! record and handshake headers byte by byte as they arrive, and holds it to [`MAX_HELLO`].
//! Only a complete message is handed to tls-parser: on a cut message its ClientHello parser
//! can succeed without the cut extensions, so its `Incomplete` is not what says
//! [`Peeked::NeedMore`]. Where tls-parser is lenient the glue checks that it consumed every
//! byte: the message after its extensions, and the server-name and ALPN lists, whose parsers
//! stop quietly at an entry that does not fit. Only those two extensions are decoded; the
//! others are only delimited, so no TLS version or extension is required (a TLS 1.0 hello
//! without extensions gives no name): a proxy that does not terminate TLS imposes no TLS
//! policy. Every length is checked against its enclosing one, and no input can make the
//! parsing panic (property tests throw arbitrary bytes at it). SSLv2-compatible hellos are
//! refused.
//!
//! Weighed and set aside: rustls's server-side `Acceptor` refuses legal hellos without
//! `signature_algorithms` (TLS 1.0/1.1 clients) and cost about 9 times the instructions of
//! the hand-written parser this module had before.

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::Duration;

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, TlsHandshakeType, TlsRecordType, parse_tls_extension_alpn_content,
    parse_tls_extension_sni_content, parse_tls_extension_unknown, parse_tls_handshake_client_hello,
    parse_tls_record_header,
};
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
/// The handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The server name: a DNS host name, lower-cased, without a trailing dot; `None` when
    /// the client sent none or an IP address (see [`host_name`]).
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
fn handshake_message(buf: &[u8]) -> Peeked<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    loop {
        // The record header, judged byte by byte as it arrives.
        if rest.first().is_some_and(|&kind| kind != TlsRecordType::Handshake.0) {
            return Peeked::Invalid("not a TLS handshake record");
        }
        if rest.get(1).is_some_and(|&major| major != 3) {
            return Peeked::Invalid("not a TLS record version (3.x)");
        }
        // Only `Incomplete` is possible: the header has no field to refuse.
        let Ok((payload, header)) = parse_tls_record_header(rest) else { return Peeked::NeedMore };
        let len = usize::from(header.len);
        if len == 0 {
            return Peeked::Invalid("empty handshake record");
        }
        if len > MAX_RECORD {
            return Peeked::Invalid("TLS record longer than 2^14 bytes");
        }
        let fragment = &payload[..len.min(payload.len())];
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }

        if message.first().is_some_and(|&kind| kind != TlsHandshakeType::ClientHello.0) {
            return Peeked::Invalid("the first handshake message is not a ClientHello");
        }
        if let Some(&[_, a, b, c]) = message.get(..HANDSHAKE_HEADER) {
            let end = HANDSHAKE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if end - HANDSHAKE_HEADER > MAX_HELLO {
                return Peeked::Invalid("ClientHello longer than the limit");
            }
            if message.len() >= end {
                return Peeked::Done(match message {
                    Cow::Borrowed(m) => Cow::Borrowed(&m[HANDSHAKE_HEADER..end]),
                    Cow::Owned(mut m) => {
                        m.truncate(end);
                        m.drain(..HANDSHAKE_HEADER);
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

/// The routing fields of a complete ClientHello body, read by tls-parser.
fn client_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    const MALFORMED: &str = "malformed ClientHello";
    let (rest, contents) = parse_tls_handshake_client_hello(body).map_err(|_| MALFORMED)?;
    // Extensions whose length runs past the message are taken by tls-parser for none.
    if !rest.is_empty() {
        return Err(MALFORMED);
    }
    if contents.version.0 >> 8 != 3 {
        return Err("ClientHello legacy_version is not 3.x");
    }
    let mut hello = ClientHello::default();
    let (mut seen_sni, mut seen_alpn) = (false, false);
    let mut extensions = contents.ext.unwrap_or_default();
    while !extensions.is_empty() {
        // Delimits an extension without decoding it.
        let Ok((rest, TlsExtension::Unknown(kind, data))) = parse_tls_extension_unknown(extensions) else {
            return Err(MALFORMED);
        };
        extensions = rest;
        if kind == TlsExtensionType::ServerName {
            if std::mem::replace(&mut seen_sni, true) {
                return Err("two server_name extensions");
            }
            hello.sni = server_name(data)?;
        } else if kind == TlsExtensionType::ApplicationLayerProtocolNegotiation {
            if std::mem::replace(&mut seen_alpn, true) {
                return Err("two ALPN extensions");
            }
            hello.alpn = alpn(data)?;
        }
    }
    Ok(hello)
}

/// The host name of a `server_name` extension (RFC 6066 §3). Names of another type (none
/// is defined) are skipped; two host names are refused.
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    const MALFORMED: &str = "malformed server_name";
    let Ok((rest, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else { return Err(MALFORMED) };
    // tls-parser stops quietly at an entry that does not fit the list: all must fit.
    if !rest.is_empty() || data.len() != 2 + names.iter().map(|(_, name)| 3 + name.len()).sum::<usize>() {
        return Err(MALFORMED);
    }
    let mut hosts = names.iter().filter(|(kind, _)| *kind == SNIType::HostName);
    let (_, name) = hosts.next().ok_or("server_name without a host name")?;
    if hosts.next().is_some() {
        return Err("two host names in server_name");
    }
    host_name(name)
}

/// A `host_name` as routing takes it, as rustls (and so a TLS-terminating listener) reads
/// it too: an IP literal, which RFC 6066 forbids, is taken for no name (the default route,
/// as for a client that sends none); one trailing dot is dropped (the name routes as
/// without it); anything else must be a DNS host name (ASCII letters, digits, `-` and `_`,
/// seen in the wild, in dot-separated labels of 1 to 63 bytes not starting or ending with
/// `-`, at most 253 bytes, the last label not all digits), or the hello is refused.
fn host_name(name: &[u8]) -> Result<Option<String>, &'static str> {
    const INVALID: &str = "server_name is not a valid host name";
    let name = std::str::from_utf8(name).map_err(|_| INVALID)?;
    if name.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let numeric = |label: &str| label.bytes().all(|b| b.is_ascii_digit());
    if !(1..=253).contains(&name.len())
        || !name.split('.').all(label_ok)
        || name.rsplit('.').next().is_some_and(numeric)
    {
        return Err(INVALID);
    }
    Ok(Some(name.to_ascii_lowercase()))
}

/// The protocol names of an ALPN extension (RFC 7301 §3.1).
fn alpn(data: &[u8]) -> Result<Vec<String>, &'static str> {
    const MALFORMED: &str = "malformed ALPN protocol list";
    let Ok((rest, TlsExtension::ALPN(names))) = parse_tls_extension_alpn_content(data) else { return Err(MALFORMED) };
    // As for server names, every byte of the list must be in a name; none may be empty.
    if !rest.is_empty()
        || names.is_empty()
        || names.iter().any(|name| name.is_empty())
        || data.len() != 2 + names.iter().map(|name| 1 + name.len()).sum::<usize>()
    {
        return Err(MALFORMED);
    }
    Ok(names.into_iter().filter_map(|name| std::str::from_utf8(name).ok().map(str::to_owned)).collect())
}
