//! Request and response headers on their way through: the client's head rewritten for
//! the backend (origin-form target, hop-by-hop headers removed, `X-Forwarded-*` added),
//! the upgrade check, and the headers an affinity plugin adds to a response.

use std::net::{IpAddr, Ipv6Addr};

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use super::errors::HostError;

/// Checks a request's host as RFC 9112 §3.2 asks of a server: an HTTP/1.1 request has
/// exactly one `Host`, an HTTP/1.0 one at most, and every `Host` value and absolute-form
/// authority is `host[:port]` (no userinfo, RFC 9110 §4.2.4; no empty host, §4.2.1). An
/// HTTP/2 request names its host in `:authority` (the target's authority here) or, when
/// it has none, in one `Host` (RFC 9113 §8.3.1).
pub(crate) fn check_host(head: &http::request::Parts) -> Result<(), HostError> {
    // One lookup of the name serves the count and the value.
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let h2_authority = head.version == http::Version::HTTP_2 && head.uri.authority().is_some();
    let host = hosts.next();
    match (host, hosts.count()) {
        (None, _) if head.version >= http::Version::HTTP_11 && !h2_authority => return Err(HostError::Missing),
        (None, _) => {}
        (Some(_), 0) => {}
        (Some(_), more) => return Err(HostError::Repeated { count: more + 1 }),
    }
    if let Some(value) = host
        && !is_host_port(value.as_bytes())
    {
        return Err(HostError::Malformed { value: quote(value.as_bytes()) });
    }
    if let Some(authority) = head.uri.authority()
        && !is_host_port(authority.as_str().as_bytes())
    {
        return Err(HostError::Target { authority: quote(authority.as_str().as_bytes()) });
    }
    Ok(())
}

/// A received value to quote in an error: lossy UTF-8, at most 100 characters.
fn quote(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(100).collect()
}

/// Whether `b` is `host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3): a bracketed IPv6
/// literal, or a non-empty reg-name (which covers IPv4 addresses); a port of digits up to
/// 65535.
fn is_host_port(b: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = b.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else { return false };
        let literal = std::str::from_utf8(&rest[..end]).ok().and_then(|s| s.parse::<Ipv6Addr>().ok());
        (literal.is_some(), &rest[end + 1..])
    } else {
        let end = b.iter().position(|&c| c == b':').unwrap_or(b.len());
        (!b[..end].is_empty() && is_reg_name(&b[..end]), &b[end..])
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        _ => false,
    };
    host_ok && port_ok
}

/// Whether `b` is a reg-name: unreserved characters, sub-delims and percent-encodings.
fn is_reg_name(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if REG_NAME[usize::from(c)] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The bytes a reg-name takes as they are: unreserved characters and sub-delims (one
/// load a byte where the matches took a dozen comparisons: the `Host` of every request
/// is checked).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        c += 1;
    }
    table
};

/// Appends the headers an affinity plugin asked for.
pub(crate) fn add_headers(to: &mut HeaderMap, headers: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in headers {
        to.append(name, value);
    }
}

/// Whether a request asks to become a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// Whether an HTTP/2 request is an extended CONNECT for a WebSocket (RFC 8441 §4:
/// `:method = CONNECT`, `:protocol = websocket`).
pub(crate) fn extended_connect(head: &http::request::Parts) -> bool {
    head.version == http::Version::HTTP_2
        && head.method == http::Method::CONNECT
        && head.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an RFC 8441 extended CONNECT head (already through [`prepare_upstream_head`])
/// into the HTTP/1.1 WebSocket handshake a backend expects (RFC 6455 §4.1): `GET` with
/// `Connection: upgrade`, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key` and the
/// client's `Sec-WebSocket-Version` (13 when it sent none). Subprotocols and extensions
/// the client asked for pass as they are.
pub(crate) fn connect_to_upgrade(head: &mut http::request::Parts) {
    head.method = http::Method::GET;
    head.extensions.remove::<hyper::ext::Protocol>();
    head.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    if let Ok(key) = HeaderValue::from_str(&key) {
        head.headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    if !head.headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
        head.headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
}

/// A client's address as the `X-Forwarded-For` entry weir adds for it: written once per
/// client connection and shared by its requests.
#[derive(Debug, Clone)]
pub(crate) struct ForwardedFor(HeaderValue);

impl ForwardedFor {
    /// The entry for a client at `ip`.
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 64];
        // An address in text is valid in a header value.
        Self(HeaderValue::from_bytes(ip_text(ip, &mut buf)).unwrap_or_else(|_| HeaderValue::from_static("unknown")))
    }
}

/// Rewrites a client request head (checked by [`check_host`]) for the backend:
/// origin-form URI, with the authority of an absolute-form target as `Host` (RFC 9112
/// §3.2.2: the host the request was routed by), hop-by-hop headers removed,
/// `X-Forwarded-*` added (`peer` appended to `X-Forwarded-For`; `X-Forwarded-Proto:
/// https` when the client connected over `tls`).
pub(crate) fn prepare_upstream_head(head: &mut http::request::Parts, peer: &ForwardedFor, tls: bool) {
    // Room for what is added below at once, rather than the map growing twice on the way.
    head.headers.reserve(4);
    // The host routed by: an absolute-form target's authority (copied, and set as `Host`),
    // else the `Host` header's value (shared, not copied).
    let host = match head.uri.authority() {
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str()).ok();
            // The target's path and query, shared rather than parsed again.
            let mut parts = std::mem::take(&mut head.uri).into_parts();
            parts.scheme = None;
            parts.authority = None;
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            head.uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
            if let Some(host) = &host {
                head.headers.insert(header::HOST, host.clone());
            }
            host
        }
        None => head.headers.get(header::HOST).cloned(),
    };
    head.version = http::Version::HTTP_11;
    if has_hop_by_hop(&head.headers) {
        // `TE: trailers` says the client takes trailers; the backend is told so (gRPC
        // servers ask for it), whatever else the hop-by-hop `TE` said.
        let trailers = head
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
        remove_named_hop_by_hop(&mut head.headers);
        if trailers {
            head.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }

    let xff = match head.headers.get(X_FORWARDED_FOR) {
        // Every `X-Forwarded-For` line, in order, as one list, then the peer.
        Some(_) => {
            let mut xff = Vec::new();
            for prior in head.headers.get_all(X_FORWARDED_FOR) {
                let prior = prior.as_bytes().trim_ascii();
                if !prior.is_empty() {
                    xff.extend_from_slice(prior);
                    xff.extend_from_slice(b", ");
                }
            }
            xff.extend_from_slice(peer.0.as_bytes());
            // Made of received header values (no CR, LF or NUL) and an address, so valid.
            HeaderValue::from_bytes(&xff).unwrap_or_else(|_| peer.0.clone())
        }
        None => peer.0.clone(),
    };
    head.headers.insert(X_FORWARDED_FOR, xff);
    head.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    if let Some(host) = host {
        head.headers.insert(X_FORWARDED_HOST, host);
    }
}

/// An address as text, written into `buf` without the formatting machinery for IPv4
/// (the common case, once per request).
fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            &buf[..n]
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // At most 45 bytes (an IPv4-mapped address written out), so it fits.
            let _ = write!(cursor, "{v6}");
            let n = usize::try_from(cursor.position()).unwrap_or(0);
            &buf[..n]
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers every message loses (RFC 9110 §7.6.1), whatever `Connection`
/// names.
const HOP_BY_HOP: [HeaderName; 6] =
    [header::CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE];

/// Which of [`HOP_BY_HOP`] `name` is, as a bit.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    HOP_BY_HOP.iter().position(|h| h == name).map_or(0, |i| 1 << i)
}

/// Which of [`HOP_BY_HOP`] are present, as bits: one pass over the names, cheaper than a
/// hashed lookup per name when (as for most messages) there are none or one.
fn present_hop_by_hop(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |bits, name| bits | hop_by_hop_bit(name))
}

/// Whether any hop-by-hop header is present.
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    present_hop_by_hop(headers) != 0
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those named in `Connection`.
/// `Trailer` is not one (RFC 9110 §6.6.2): it stays, so the trailers it announces pass
/// through (hyper's HTTP/1.1 side writes only the trailer fields a message announces).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if has_hop_by_hop(headers) {
        remove_named_hop_by_hop(headers);
    }
}

/// [`remove_hop_by_hop`] without the first look.
fn remove_named_hop_by_hop(headers: &mut HeaderMap) {
    // `keep-alive` and `upgrade`, the usual tokens, name headers removed anyway below, so
    // the list stays empty and unallocated for them.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("upgrade"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Only those present: a response's `Connection: keep-alive` is one removal, not six.
    let present = present_hop_by_hop(headers);
    for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn peer(ip: &str) -> ForwardedFor {
        ForwardedFor::new(ip.parse().unwrap())
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    /// Header maps from arbitrary names and values (the ones `http` accepts), with
    /// `Connection` and `Upgrade` lines among them.
    fn arbitrary_headers() -> impl proptest::strategy::Strategy<Value = HeaderMap> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("connection".to_owned()),
            Just("upgrade".to_owned()),
            Just("keep-alive".to_owned()),
            Just("transfer-encoding".to_owned()),
            "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
            ".{0,6}",
        ];
        let value = prop_oneof![
            "[ ,]*(keep-alive|upgrade|Upgrade|x-a|te|websocket|WebSocket|close)?([ ,]+(upgrade|x-a|websocket|[a-z]{1,4}))*[ ,]*",
            prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ];
        prop::collection::vec((name, prop::collection::vec(any::<u8>(), 0..24), value, any::<bool>()), 0..12).prop_map(
            |lines| {
                let mut h = HeaderMap::new();
                for (name, raw, text, use_raw) in lines {
                    let value = if use_raw { HeaderValue::from_bytes(&raw) } else { HeaderValue::from_str(&text) };
                    if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), value) {
                        h.append(name, value);
                    }
                }
                h
            },
        )
    }

    proptest::proptest! {
        #[test]
        fn an_address_is_written_as_its_display_writes_it(v4 in proptest::prelude::any::<u32>(), v6 in proptest::prelude::any::<u128>()) {
            for ip in [std::net::IpAddr::from(v4.to_be_bytes()), std::net::IpAddr::from(v6.to_be_bytes()),
                       std::net::IpAddr::V6(std::net::Ipv4Addr::from(v4).to_ipv6_mapped())] {
                let mut buf = [0u8; 64];
                let text = ip.to_string();
                proptest::prop_assert_eq!(ip_text(ip, &mut buf), text.as_bytes());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn hop_by_hop_removal_takes_exactly_the_hop_by_hop_headers(headers in arbitrary_headers()) {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            let hop = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];
            let mut after = headers.clone();
            remove_hop_by_hop(&mut after);
            for (name, value) in &headers {
                let gone = hop.contains(&name.as_str()) || named.contains(name);
                proptest::prop_assert_eq!(after.get_all(name).iter().any(|v| v == value), !gone, "{}", name);
            }
            proptest::prop_assert!(after.keys().all(|k| headers.contains_key(k)));
        }

        #[test]
        fn a_websocket_upgrade_is_told_from_arbitrary_headers(headers in arbitrary_headers()) {
            let tokens = |name: HeaderName| -> Vec<String> {
                headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
                    .collect()
            };
            let want = tokens(header::CONNECTION).iter().any(|t| t == "upgrade")
                && tokens(header::UPGRADE).iter().any(|t| t == "websocket");
            proptest::prop_assert_eq!(is_websocket_upgrade(&headers), want);
        }
    }

    #[test]
    fn hosts_are_host_and_port() {
        for good in [
            "a.example",
            "a.example:8080",
            "A-b_c~d.e",
            "192.0.2.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "%41b",
            "a:",
            "a!$&'()*+,;=z",
        ] {
            assert!(is_host_port(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "a/b",
            "a@b",
            "a.example:http",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[nope]",
            "::1",
            "a:65536",
            "a:000001",
            "%4",
            "%zz",
            "a\u{e9}",
            "a\"b",
            "a<b",
            "a^b",
            "a`b",
            "a{b",
            "a\u{7f}",
        ] {
            assert!(!is_host_port(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn an_http2_request_names_its_host_in_its_authority() {
        let req = Request::get("http://a.example:8080/x").version(http::Version::HTTP_2).body(()).unwrap();
        let (mut head, ()) = req.into_parts();
        assert!(check_host(&head).is_ok());
        prepare_upstream_head(&mut head, &peer("10.1.2.3"), false);
        assert_eq!((head.uri.to_string().as_str(), head.version), ("/x", http::Version::HTTP_11));
        assert_eq!(head.headers["host"], "a.example:8080");
        let req = Request::get("/x").version(http::Version::HTTP_2).body(()).unwrap();
        assert!(matches!(check_host(&req.into_parts().0), Err(HostError::Missing)), "neither :authority nor Host");
        let bad = Request::get("http://u@a.example/x").version(http::Version::HTTP_2).body(()).unwrap();
        assert!(matches!(check_host(&bad.into_parts().0), Err(HostError::Target { .. })));
    }

    #[test]
    fn an_extended_connect_becomes_an_http1_websocket_handshake() {
        let mut req = Request::builder()
            .method(http::Method::CONNECT)
            .uri("http://a.example/chat")
            .version(http::Version::HTTP_2)
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        assert!(!extended_connect(&req.into_parts().0), "a plain CONNECT is not one");
        req = Request::builder()
            .method(http::Method::CONNECT)
            .uri("http://a.example/chat")
            .version(http::Version::HTTP_2)
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let (mut head, ()) = req.into_parts();
        assert!(extended_connect(&head));
        prepare_upstream_head(&mut head, &peer("10.1.2.3"), false);
        connect_to_upgrade(&mut head);
        assert_eq!(head.method, http::Method::GET);
        assert_eq!(head.uri, "/chat");
        assert!(is_websocket_upgrade(&head.headers));
        assert_eq!(head.headers["sec-websocket-version"], "13");
        assert_eq!(head.headers["sec-websocket-protocol"], "chat");
        assert_eq!(head.headers["sec-websocket-key"].len(), 24, "16 random bytes in base64");
    }

    #[test]
    fn forwarded_headers_are_added_and_appended() {
        let req =
            Request::builder().uri("http://example.com/a?b=1").header("x-forwarded-for", "192.0.2.7").body(()).unwrap();
        let (mut head, ()) = req.into_parts();
        prepare_upstream_head(&mut head, &peer("10.1.2.3"), false);
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.headers["host"], "example.com");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7, 10.1.2.3");
        assert_eq!(head.headers["x-forwarded-proto"], "http");
        assert_eq!(head.headers["x-forwarded-host"], "example.com");
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order() {
        let req = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-forwarded-for", " 192.0.2.2, 192.0.2.3 ")
            .header("x-forwarded-for", "")
            .body(())
            .unwrap();
        let (mut head, ()) = req.into_parts();
        prepare_upstream_head(&mut head, &peer("2001:db8::9"), true);
        let all: Vec<_> = head.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["192.0.2.1, 192.0.2.2, 192.0.2.3, 2001:db8::9"]);
        assert_eq!(head.headers["x-forwarded-proto"], "https", "over TLS");
    }

    #[test]
    fn te_trailers_and_trailer_reach_the_backend_and_other_te_does_not() {
        let head = |te: &str| {
            let req = Request::builder()
                .uri("/")
                .header("host", "a")
                .header("te", te)
                .header("trailer", "x-sum")
                .body(())
                .unwrap();
            let (mut head, ()) = req.into_parts();
            prepare_upstream_head(&mut head, &peer("10.1.2.3"), false);
            head.headers
        };
        let kept = head("gzip;q=0.5, Trailers");
        assert_eq!(kept["te"], "trailers");
        assert_eq!(kept["trailer"], "x-sum", "Trailer is not hop-by-hop: it names what follows");
        assert!(!head("gzip, deflate").contains_key("te"));
    }
}
