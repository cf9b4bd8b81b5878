//! Request and response headers on their way through: the client's head rewritten for
//! the backend (origin-form target, hop-by-hop headers removed, `X-Forwarded-*` added),
//! the upgrade check, and the headers an affinity plugin adds to a response.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::route::request_host;

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

/// Rewrites a client request head for the backend: origin-form URI, hop-by-hop headers
/// removed, `X-Forwarded-*` added.
pub(crate) fn prepare_upstream_head(head: &mut http::request::Parts, peer: SocketAddr) {
    let host = request_host(head).and_then(|h| HeaderValue::from_str(h).ok());
    if head.uri.authority().is_some() {
        let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = pq.parse() {
            head.uri = uri;
        }
    }
    if let Some(host) = &host {
        head.headers.entry(header::HOST).or_insert_with(|| host.clone());
    }
    head.version = http::Version::HTTP_11;
    remove_hop_by_hop(&mut head.headers);

    let ip = peer.ip().to_string();
    let xff = match head.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        head.headers.insert(X_FORWARDED_FOR, v);
    }
    head.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        head.headers.insert(X_FORWARDED_HOST, host);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

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
            let hop = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];
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
    fn forwarded_headers_are_added_and_appended() {
        let req =
            Request::builder().uri("http://example.com/a?b=1").header("x-forwarded-for", "192.0.2.7").body(()).unwrap();
        let (mut head, ()) = req.into_parts();
        prepare_upstream_head(&mut head, "10.1.2.3:5555".parse().unwrap());
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.headers["host"], "example.com");
        assert_eq!(head.headers["x-forwarded-for"], "192.0.2.7, 10.1.2.3");
        assert_eq!(head.headers["x-forwarded-proto"], "http");
        assert_eq!(head.headers["x-forwarded-host"], "example.com");
    }
}
