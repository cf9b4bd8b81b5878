//! The server name (SNI) and ALPN protocols of a TLS ClientHello, read without
//! terminating TLS, for routing passthrough connections: [`parse_client_hello`] judges the
//! bytes a client has sent so far, and [`peek_sni`] waits for them with
//! [`super::peek::peek_until`], so the backend later receives the hello untouched.
//!
//! The hello is parsed by rustls's server-side [`Acceptor`], which reassembles it from
//! consecutive handshake records (RFC 8446 §5.1) and validates it as a TLS server would
//! before handing out the names. It needs no crypto provider. Only the first record's
//! header and the handshake header in it are looked at here, so that garbage and a hello
//! over [`MAX_HELLO`] are refused from their first bytes rather than once rustls has a
//! whole record (a property test throws arbitrary bytes at both). SSLv2-compatible hellos
//! are refused.

#[cfg(test)]
mod tests;

use std::time::Duration;

use rustls::server::Acceptor;
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

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The server name: a valid DNS name, lower-cased, without a trailing dot; `None` when
    /// the client sent none or an IP address (which RFC 6066 forbids; rustls takes it
    /// for no name).
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order (names that are not UTF-8 left
    /// out: nothing could be configured to match them); empty when none.
    pub alpn: Vec<String>,
}

/// Judges the first bytes of a connection as a TLS ClientHello: [`Peeked::Done`] once the
/// whole handshake message has arrived, [`Peeked::NeedMore`] while it is a valid beginning,
/// [`Peeked::Invalid`] as soon as it cannot be one. Bytes after the hello are ignored.
///
/// Each call judges the whole buffer afresh (a new [`Acceptor`] each time): calls are
/// rare, since most hellos arrive in one segment, and nothing is kept between them.
pub fn parse_client_hello(buf: &[u8]) -> Peeked<ClientHello> {
    if let Err(reason) = first_record(buf) {
        return Peeked::Invalid(reason);
    }
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    // rustls takes at most 4 KiB per read and wants each read processed before the next.
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Peeked::Invalid("ClientHello longer than rustls buffers"),
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                return Peeked::Done(ClientHello {
                    // Validated as a DNS name and lower-cased by rustls.
                    sni: hello.server_name().map(str::to_owned),
                    alpn: hello
                        .alpn()
                        .into_iter()
                        .flatten()
                        .filter_map(|name| std::str::from_utf8(name).ok().map(str::to_owned))
                        .collect(),
                });
            }
            Err((error, _alert)) => return Peeked::Invalid(reason(&error)),
        }
    }
    Peeked::NeedMore
}

/// Waits (at most `timeout`) for a ClientHello of at most `max` bytes on `stream` (see
/// [`PEEK_MAX`]) and returns its SNI and ALPN, consuming nothing.
pub async fn peek_sni(stream: &TcpStream, timeout: Duration, max: usize) -> Result<ClientHello, PeekError> {
    peek_until(stream, max, timeout, parse_client_hello).await
}

/// Checks the first record's header and the handshake header in it as far as they have
/// arrived, byte by byte: what rustls would refuse only once the header (or the record) is
/// whole, and the [`MAX_HELLO`] limit, below rustls's own (64 KiB). A hello whose 4-byte
/// handshake header is itself split across records (no client does that) is held to
/// rustls's limit and to the caller's peek limit only.
fn first_record(buf: &[u8]) -> Result<(), &'static str> {
    if buf.first().is_some_and(|&kind| kind != HANDSHAKE) {
        return Err("not a TLS handshake record");
    }
    if buf.get(1).is_some_and(|&major| major != 3) {
        return Err("not a TLS record version (3.x)");
    }
    let Some(header) = buf.get(..RECORD_HEADER) else { return Ok(()) };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Err("TLS record longer than 2^14 bytes");
    }
    let payload = &buf[RECORD_HEADER..];
    let message = &payload[..len.min(payload.len())];
    if message.first().is_some_and(|&kind| kind != CLIENT_HELLO) {
        return Err("the first handshake message is not a ClientHello");
    }
    if let Some(&[_, a, b, c]) = message.get(..4)
        && (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)) > MAX_HELLO
    {
        return Err("ClientHello longer than the limit");
    }
    Ok(())
}

/// Why rustls refused a hello, in the few words [`Peeked::Invalid`] carries.
fn reason(error: &rustls::Error) -> &'static str {
    use rustls::{Error, InvalidMessage, PeerIncompatible, PeerMisbehaved};
    match error {
        Error::InvalidMessage(InvalidMessage::InvalidEmptyPayload) => "empty handshake record",
        Error::InvalidMessage(InvalidMessage::DuplicateExtension(_)) => "an extension appears twice",
        // RFC 6066 allows one name of each type: two host names are refused.
        Error::InvalidMessage(InvalidMessage::InvalidServerName) => "two host names in server_name",
        Error::InvalidMessage(_) => "malformed ClientHello",
        Error::PeerMisbehaved(PeerMisbehaved::ServerNameMustContainOneHostName) => {
            "server_name is not a valid host name"
        }
        Error::PeerMisbehaved(PeerMisbehaved::MessageInterleavedWithHandshakeMessage) => "not a TLS handshake record",
        Error::PeerIncompatible(PeerIncompatible::SignatureAlgorithmsExtensionRequired) => {
            "ClientHello without signature_algorithms"
        }
        Error::PeerIncompatible(PeerIncompatible::NullCompressionRequired) => "ClientHello without null compression",
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "the first handshake message is not a ClientHello"
        }
        _ => "ClientHello refused by rustls",
    }
}
