//! A pool's `discover` setting: the DNS name its backends are found under (an SRV name,
//! or `host:port` for A/AAAA records), the resolver asked and how often. Validated here
//! without resolving anything, so `weir check` passes on a machine that cannot reach the
//! name; the lookups themselves are [`crate::discover`]'s (a layer above).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::bounds::DISCOVER_REFRESH;
use super::{Cx, FileDuration, Location};
use crate::config::ConfigError;

/// `discover = { dns = "...", resolver = "...", refresh_ms = N }` of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDiscover {
    /// `"_service._proto.domain"` (SRV: each record's target and port, its priority and
    /// weight) or `"host:port"` (A and AAAA records, each address with that port).
    /// Required. Reloadable.
    dns: Spanned<String>,
    /// The DNS server asked, `ip` or `ip:port` (port 53 when absent). Default: the
    /// system's (`/etc/resolv.conf`). Reloadable.
    resolver: Option<Spanned<String>>,
    /// The longest time between two lookups; a record whose TTL is shorter is asked again
    /// when it expires (but not sooner than 1 s, nor later than this). Default 5 s. Range
    /// 100 ms to 1 day. Reloadable.
    refresh_ms: Option<Spanned<FileDuration>>,
}

/// What a pool's `discover` looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsName {
    /// SRV records of this name (`_http._tcp.web.internal`).
    Srv(String),
    /// A and AAAA records of `host`, each address with `port`.
    Host {
        /// The name.
        host: String,
        /// The backends' port.
        port: u16,
    },
}

impl DnsName {
    /// The name queried.
    pub fn name(&self) -> &str {
        match self {
            DnsName::Srv(name) | DnsName::Host { host: name, .. } => name,
        }
    }
}

/// A pool's validated `discover` setting.
#[derive(Debug, Clone)]
pub struct DiscoverConfig {
    /// What is looked up.
    pub dns: DnsName,
    /// The DNS server asked; `None`: the system's resolver configuration.
    pub resolver: Option<SocketAddr>,
    /// The longest time between two lookups.
    pub refresh: Duration,
    /// Where the file writes the setting.
    pub at: Location,
}

/// Two settings are the same when they look up the same name, the same way, wherever the
/// file writes them.
impl PartialEq for DiscoverConfig {
    fn eq(&self, other: &Self) -> bool {
        self.dns == other.dns && self.resolver == other.resolver && self.refresh == other.refresh
    }
}

impl Eq for DiscoverConfig {}

impl DiscoverConfig {
    /// The default `refresh_ms`.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

    /// The `dns` value as written (`host:port` or the SRV name).
    pub fn written(&self) -> String {
        match &self.dns {
            DnsName::Srv(name) => name.clone(),
            DnsName::Host { host, port } => format!("{host}:{port}"),
        }
    }
}

/// Whether `name` is a DNS name weir can look up: dot-separated labels of 1 to 63
/// letters, digits, `-` or `_`, 253 characters at most (a final dot allowed).
fn valid_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("is empty".into());
    }
    if bare.len() > 253 {
        return Err(format!("is {} characters long; a DNS name has at most 253", bare.len()));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("has a label of {} characters (1 to 63 allowed)", label.len()));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("has `{c}`, which a DNS name cannot hold"));
        }
    }
    Ok(())
}

/// Parses a `dns` value (see [`FileDiscover::dns`]).
pub(super) fn parse_dns(text: &str) -> Result<DnsName, String> {
    let text = text.trim();
    let bad = |why: String| format!("`{text}` {why}");
    if let Some((host, port)) = text.rsplit_once(':') {
        if host.parse::<IpAddr>().is_ok() || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return Err(bad("is an address, not a name: list it in `backends`".into()));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(format!("has port `{port}`; a port is 1 to 65535")))?;
        if host.starts_with('_') {
            return Err(bad("is an SRV name with a port: SRV records carry their own ports; drop `:PORT`".into()));
        }
        valid_dns_name(host).map_err(bad)?;
        return Ok(DnsName::Host { host: host.to_owned(), port });
    }
    if text.starts_with('_') {
        valid_dns_name(text).map_err(bad)?;
        return Ok(DnsName::Srv(text.to_owned()));
    }
    Err(bad("is neither an SRV name (`_service._proto.domain`) nor `host:port` (A/AAAA records with that port)".into()))
}

/// Parses a `resolver` value: `ip` or `ip:port` (IPv6 as `[ip]:port`).
pub(super) fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("`{text}` has port 0"));
        }
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!("`{text}` is not `ip` or `ip:port` (a resolver is named by its address, not a host name)"))
}

impl Cx<'_> {
    /// Validates a pool's `discover` table (`key` is the pool's, `pool.NAME`).
    pub(super) fn discover(&self, file: Spanned<FileDiscover>, key: &str) -> Result<DiscoverConfig, ConfigError> {
        let key = format!("{key}.discover");
        let at = self.location(Some(file.span()), key.clone());
        let file = file.into_inner();
        let dns = parse_dns(file.dns.get_ref()).map_err(|m| self.spanned(&file.dns, format!("{key}.dns"), m))?;
        let resolver = match &file.resolver {
            Some(r) => Some(parse_resolver(r.get_ref()).map_err(|m| self.spanned(r, format!("{key}.resolver"), m))?),
            None => None,
        };
        let refresh = self
            .duration(file.refresh_ms.as_ref(), || format!("{key}.refresh_ms"), DISCOVER_REFRESH)?
            .unwrap_or(DiscoverConfig::DEFAULT_REFRESH);
        Ok(DiscoverConfig { dns, resolver, refresh, at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_parse() {
        assert_eq!(parse_dns("_http._tcp.web.internal"), Ok(DnsName::Srv("_http._tcp.web.internal".into())));
        assert_eq!(parse_dns("web.internal:8080"), Ok(DnsName::Host { host: "web.internal".into(), port: 8080 }));
        assert_eq!(parse_dns("web:80"), Ok(DnsName::Host { host: "web".into(), port: 80 }));
        for bad in [
            "web.internal",
            "web.internal:0",
            "web.internal:70000",
            "web.internal:http",
            "10.0.0.1:80",
            "[::1]:80",
            "_http._tcp.web:80",
            "we b.internal:80",
            "a..b:80",
            "",
            ":80",
        ] {
            assert!(parse_dns(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}.internal:80", "a".repeat(64));
        assert!(parse_dns(&long).unwrap_err().contains("64 characters"));
    }

    #[test]
    fn resolvers_parse() {
        assert_eq!(parse_resolver("127.0.0.1:5353"), Ok("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(parse_resolver("127.0.0.1"), Ok("127.0.0.1:53".parse().unwrap()));
        assert_eq!(parse_resolver("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(parse_resolver("[::1]:54"), Ok("[::1]:54".parse().unwrap()));
        assert!(parse_resolver("dns.internal:53").is_err());
        assert!(parse_resolver("127.0.0.1:0").is_err());
    }
}
