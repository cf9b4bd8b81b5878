//! The host side of the plugin imports, each answered from what the store holds for
//! the call: `pool` from the pinned [`PoolHost`] view, `request` from the request lent to
//! the store, `log` into `tracing`. WASI is linked with nothing granted (no files,
//! network, environment or stdio): see [`super::instance`].

use super::bindings::{self, WitBackend, WitProtocol};
use super::instance::{InstanceState, PoolHost};
use crate::core::Protocol;

impl bindings::pool::Host for InstanceState {
    fn members(&mut self) -> Vec<WitBackend> {
        let Some(view) = self.view() else { return Vec::new() };
        view.members()
            .iter()
            .enumerate()
            .map(|(i, b)| WitBackend {
                id: i as u32,
                address: b.address.clone(),
                weight: b.weight,
                max_connections: b.max_connections,
                labels: b.labels.clone(),
            })
            .collect()
    }

    fn generation(&mut self) -> u64 {
        self.view().map_or(0, PoolHost::generation)
    }

    fn eligible(&mut self) -> Vec<u32> {
        self.view().map_or_else(Vec::new, |v| v.eligible().to_vec())
    }

    fn active_connections(&mut self, id: u32) -> u32 {
        self.view().map_or(0, |v| v.active(id))
    }

    fn in_flight(&mut self, id: u32) -> u32 {
        self.view().map_or(0, |v| v.in_flight(id))
    }

    fn load(&mut self, id: u32) -> u64 {
        self.view().map_or(0, |v| v.load(id))
    }

    fn load_pair(&mut self, a: u32, b: u32) -> u64 {
        let Some(v) = self.view() else { return 0 };
        pack(saturate(v.load(a)), saturate(v.load(b)))
    }

    fn loads(&mut self) -> Vec<u32> {
        self.view().map_or_else(Vec::new, |v| (0..v.members().len() as u32).map(|id| saturate(v.load(id))).collect())
    }

    fn load_and_total(&mut self, id: u32) -> u64 {
        let Some(v) = self.view() else { return 0 };
        pack(saturate(v.load(id)), saturate(v.total_load()))
    }

    fn latency_pair(&mut self, a: u32, b: u32) -> u64 {
        let Some(v) = self.view() else { return 0 };
        pack(v.latency_ewma_us(a), v.latency_ewma_us(b))
    }

    fn latency_ewma_us(&mut self, id: u32) -> u32 {
        self.view().map_or(0, |v| v.latency_ewma_us(id))
    }

    fn counter(&mut self, name: String) -> u32 {
        // An unknown handle: `counter-next` answers 0 for it.
        self.view().and_then(|v| v.counter(&name)).unwrap_or(u32::MAX)
    }

    fn counter_next(&mut self, counter: u32) -> u64 {
        self.view().map_or(0, |v| v.counter_next(counter))
    }

    fn total_load(&mut self) -> u64 {
        self.view().map_or(0, PoolHost::total_load)
    }

    fn secret(&mut self, name: String) -> Vec<u8> {
        self.view().and_then(|v| v.secret(&name)).map_or_else(Vec::new, |k| k.to_vec())
    }

    fn stick_table(&mut self, name: String, ttl_ms: u64) -> u32 {
        let ttl = std::time::Duration::from_millis(ttl_ms);
        self.view().and_then(|v| v.stick_table(&name, ttl)).unwrap_or(u32::MAX)
    }

    fn stick_get(&mut self, table: u32, key: u64) -> Option<u32> {
        self.view()?.stick_get(table, key)
    }

    fn stick_set(&mut self, table: u32, key: u64, id: u32) {
        if self.view().is_some_and(|v| v.stick_set(table, key, id)) {
            self.stuck = Some((table, key));
        }
    }
}

/// A load figure capped at `u32::MAX`, as the packed reads give it.
fn saturate(load: u64) -> u32 {
    u32::try_from(load).unwrap_or(u32::MAX)
}

/// Two 32-bit figures in one `u64`, the first in the high half: what the `pool.*-pair`
/// reads return, so one scalar crosses the ABI.
fn pack(high: u32, low: u32) -> u64 {
    u64::from(high) << 32 | u64::from(low)
}

impl bindings::log::Host for InstanceState {
    fn write(&mut self, level: bindings::log::Level, message: String) {
        use bindings::log::Level;
        let (plugin, pool) = (&*self.plugin, &*self.pool);
        match level {
            Level::Trace => tracing::trace!(plugin, pool, "{message}"),
            Level::Debug => tracing::debug!(plugin, pool, "{message}"),
            Level::Info => tracing::info!(plugin, pool, "{message}"),
            Level::Warn => tracing::warn!(plugin, pool, "{message}"),
            Level::Error => tracing::error!(plugin, pool, "{message}"),
        }
    }
}

impl bindings::TypesHost for InstanceState {}

impl bindings::request::Host for InstanceState {
    fn protocol(&mut self) -> WitProtocol {
        match self.request.as_ref().map_or(Protocol::Tcp, |r| r.protocol) {
            Protocol::Http1 => WitProtocol::Http1,
            Protocol::Http2 => WitProtocol::Http2,
            Protocol::WebSocket => WitProtocol::Websocket,
            Protocol::Tcp => WitProtocol::Tcp,
            Protocol::TlsPassthrough => WitProtocol::TlsPassthrough,
        }
    }

    fn client_ip(&mut self) -> String {
        self.request.as_ref().map(|r| r.client.ip().to_string()).unwrap_or_default()
    }

    fn client_addr(&mut self) -> bindings::IpAddress {
        match self.request.as_ref().map(|r| r.client.ip()) {
            Some(std::net::IpAddr::V6(ip)) => {
                let g = ip.segments();
                bindings::IpAddress::Ipv6((g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]))
            }
            Some(std::net::IpAddr::V4(ip)) => {
                let [a, b, c, d] = ip.octets();
                bindings::IpAddress::Ipv4((a, b, c, d))
            }
            None => bindings::IpAddress::Ipv4((0, 0, 0, 0)),
        }
    }

    fn client_addr_hash(&mut self) -> u64 {
        match self.request.as_ref().map(|r| r.client.ip()) {
            Some(std::net::IpAddr::V6(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
            Some(std::net::IpAddr::V4(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
            None => xxhash_rust::xxh3::xxh3_64(&[0; 4]),
        }
    }

    fn client_port(&mut self) -> u16 {
        self.request.as_ref().map_or(0, |r| r.client.port())
    }

    fn sni(&mut self) -> Option<String> {
        self.request.as_ref().and_then(|r| r.sni.as_deref()).map(str::to_owned)
    }

    fn alpn(&mut self) -> Vec<String> {
        self.request.as_ref().and_then(|r| r.alpn.as_deref()).map(<[String]>::to_vec).unwrap_or_default()
    }

    fn client_cert_subject(&mut self) -> Option<String> {
        self.request.as_ref().and_then(|r| r.client_subject.as_deref()).map(str::to_owned)
    }

    fn method(&mut self) -> Option<String> {
        self.head().map(|h| h.method.as_str().to_owned())
    }

    fn authority(&mut self) -> Option<String> {
        let head = self.head()?;
        head.uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| head.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
            .map(str::to_owned)
    }

    fn path(&mut self) -> Option<String> {
        self.head().map(|h| h.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())
    }

    fn header(&mut self, name: String) -> Option<String> {
        self.head()?.headers.get(name.as_str())?.to_str().ok().map(str::to_owned)
    }

    fn cookie(&mut self, name: String) -> Option<String> {
        cookie(&self.head()?.headers, &name)
    }
}

/// The value of the first cookie called `name` in the `Cookie` headers (RFC 6265 §5.4:
/// `name=value` pairs split by `;`; a value's surrounding double quotes are dropped).
/// A header that is not visible ASCII is skipped.
pub(crate) fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_owned())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::cookie;
    use http::{HeaderMap, HeaderValue, header::COOKIE};
    use proptest::prelude::*;

    fn headers(values: &[Vec<u8>]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(COOKIE, v);
            }
        }
        h
    }

    #[test]
    fn the_first_cookie_of_that_name_wins_quotes_dropped() {
        let h = headers(&[b"a=1; WEIR=\"x.y\"".to_vec(), b"WEIR=later".to_vec()]);
        assert_eq!(cookie(&h, "WEIR").as_deref(), Some("x.y"));
        assert_eq!(cookie(&h, "a").as_deref(), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(cookie(&headers(&[b"\xff=1; b=2".to_vec()]), "b"), None, "not visible ASCII: skipped");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_cookie_headers_never_panic(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4), name in ".{0,8}") {
            let _ = cookie(&headers(&values), &name);
        }

        #[test]
        fn a_cookie_among_others_is_found(
            before in prop::collection::vec(("[a-z]{1,6}", "[!#-+\\--:<-\\[\\]-~]{0,12}"), 0..4),
            name in "[A-Z_]{1,8}",
            value in "[!#-+\\--:<-\\[\\]-~]{0,20}",
            after in prop::collection::vec(("[a-z]{1,6}", "[!#-+\\--:<-\\[\\]-~]{0,12}"), 0..4),
        ) {
            let pairs: Vec<String> = before.iter().map(|(k, v)| format!("{k}={v}"))
                .chain([format!("{name}={value}")])
                .chain(after.iter().map(|(k, v)| format!("{k}={v}")))
                .collect();
            let h = headers(&[pairs.join("; ").into_bytes()]);
            prop_assert_eq!(cookie(&h, &name), Some(value));
        }
    }
}
