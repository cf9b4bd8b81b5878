//! One lookup of a pool's `discover` name, and how its records become backends.
//!
//! SRV (RFC 2782): only the lowest-priority group whose targets resolve is used; each
//! target's addresses get its port and weight (when every record of the group has weight
//! 0, each gets 1, as RFC 2782 gives them an equal chance; otherwise a weight 0 stays 0,
//! as in the file: no new work). A target's addresses come from the answer's additional
//! section when the server sends them (Consul, CoreDNS and dnsmasq do), else from A/AAAA
//! lookups of the target. A/AAAA (`host:port`): each address with the port, weight 1.
//!
//! Backends are named by their socket address (`10.0.0.1:8080`), so a backend found
//! again is the same backend (its live state, tunnels and health carry over), and every
//! instance reading the same records builds the same member list, in address order.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, Record};

use crate::config::{BackendConfig, DiscoverConfig, DnsName};

/// Most target lookups of one SRV answer in flight at once (a resolver connection takes
/// 32 queries at a time).
const TARGETS_AT_ONCE: usize = 16;

/// The label each discovered backend carries: the DNS name its address came from.
pub const LABEL: &str = "dns_name";

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The backends, in address order (empty: nothing usable was found).
    pub backends: Vec<BackendConfig>,
    /// The records the answer held (SRV records, or addresses).
    pub records: usize,
    /// How long the shortest-lived record used stays valid.
    pub ttl: Option<Duration>,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (the system's configuration did not read).
    #[error("resolver: {0}")]
    Resolver(String),
    /// The name does not exist, or has no records of the type asked.
    #[error("{name}: no {kind} records (NXDOMAIN or an empty answer)")]
    NoRecords {
        /// The name.
        name: String,
        /// `SRV` or `A/AAAA`.
        kind: &'static str,
    },
    /// The query failed (timeout, refused, server failure).
    #[error("{name}: {message}")]
    Query {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
}

impl LookupError {
    /// Failures of the same kind are logged once (a changing message, such as a query id,
    /// does not count as a change).
    pub fn kind(&self) -> &'static str {
        match self {
            LookupError::Resolver(_) => "resolver",
            LookupError::NoRecords { .. } => "no records",
            LookupError::Query { .. } => "query failed",
        }
    }
}

/// The resolver for `config`: its `resolver` over UDP (TCP for truncated answers), or the
/// system's; no cache (each refresh asks the server: the refresh timing is ours), no
/// hosts file. Builds on the current tokio runtime (its connections run there).
pub fn resolver(config: &DiscoverConfig) -> Result<TokioResolver, LookupError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match config.resolver {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![server]), provider)
        }
        None => TokioResolver::builder(provider).map_err(|e| LookupError::Resolver(e.to_string()))?,
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Never;
    // A refresh is due again soon: a query waits at most 2 s (or the refresh), twice.
    options.timeout = config.refresh.clamp(Duration::from_millis(100), Duration::from_secs(2));
    options.attempts = 1;
    options.cache_size = 0;
    builder.build().map_err(|e| LookupError::Resolver(e.to_string()))
}

/// Looks `config`'s name up once.
pub async fn lookup(resolver: &TokioResolver, config: &DiscoverConfig) -> Result<Answer, LookupError> {
    resolver.clear_cache();
    match &config.dns {
        DnsName::Host { host, port } => {
            let found = resolver.lookup_ip(host.as_str()).await.map_err(|e| error(host, "A/AAAA", &e))?;
            let ttl = remaining(found.valid_until());
            let mut list: Vec<(IpAddr, u16, u32, &str)> =
                found.iter().map(|ip| (ip, *port, 1, host.as_str())).collect();
            let records = list.len();
            Ok(Answer { backends: backends(&mut list), records, ttl: Some(ttl) })
        }
        DnsName::Srv(name) => {
            let found = resolver.srv_lookup(name.as_str()).await.map_err(|e| error(name, "SRV", &e))?;
            let mut ttl = remaining(found.valid_until());
            let srv: Vec<Srv> = found
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect();
            if srv.is_empty() {
                return Err(LookupError::NoRecords { name: name.clone(), kind: "SRV" });
            }
            let mut addresses = additional_addresses(found.additionals());
            let missing: Vec<String> = {
                let mut m: Vec<String> =
                    srv.iter().filter(|s| !addresses.contains_key(&s.target)).map(|s| s.target.clone()).collect();
                m.sort();
                m.dedup();
                m
            };
            let mut resolved = futures_util::stream::iter(missing)
                .map(|target| async move {
                    let found = resolver.lookup_ip(format!("{target}.")).await;
                    (target, found)
                })
                .buffer_unordered(TARGETS_AT_ONCE);
            while let Some((target, found)) = resolved.next().await {
                match found {
                    Ok(found) => {
                        ttl = ttl.min(remaining(found.valid_until()));
                        addresses.insert(target, found.iter().collect());
                    }
                    Err(e) => tracing::debug!(%target, error = %e, "an SRV target did not resolve"),
                }
            }
            let records = srv.len();
            Ok(Answer { backends: from_srv(&srv, &addresses), records, ttl: Some(ttl) })
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Share within the priority.
    pub weight: u16,
    /// The backend's port.
    pub port: u16,
    /// The host, without the final dot.
    pub target: String,
}

/// The backends `srv` names, given each target's addresses: the lowest priority with an
/// address (module docs).
pub fn from_srv(srv: &[Srv], addresses: &BTreeMap<String, Vec<IpAddr>>) -> Vec<BackendConfig> {
    let usable = |s: &&Srv| addresses.get(&s.target).is_some_and(|a| !a.is_empty());
    let Some(priority) = srv.iter().filter(usable).map(|s| s.priority).min() else { return Vec::new() };
    let group: Vec<&Srv> = srv.iter().filter(|s| s.priority == priority).filter(usable).collect();
    let all_zero = group.iter().all(|s| s.weight == 0);
    let mut list = Vec::new();
    for s in group {
        let weight = if all_zero { 1 } else { u32::from(s.weight) };
        for ip in addresses.get(&s.target).into_iter().flatten() {
            list.push((*ip, s.port, weight, s.target.as_str()));
        }
    }
    backends(&mut list)
}

/// Backends from `(address, port, weight, name)`, in address order; an address found twice
/// (two records naming it) takes the sum of its weights.
fn backends(list: &mut [(IpAddr, u16, u32, &str)]) -> Vec<BackendConfig> {
    list.sort_by_key(|(ip, port, _, _)| SocketAddr::new(*ip, *port));
    let mut out: Vec<BackendConfig> = Vec::with_capacity(list.len());
    for (ip, port, weight, name) in list.iter() {
        let socket_addr = SocketAddr::new(*ip, *port);
        if let Some(last) = out.last_mut().filter(|b| b.socket_addr == socket_addr) {
            last.weight = last.weight.saturating_add(*weight);
            continue;
        }
        out.push(BackendConfig {
            address: socket_addr.to_string(),
            socket_addr,
            weight: *weight,
            max_connections: 0,
            labels: vec![(LABEL.to_owned(), (*name).to_owned())],
            discovered: true,
        });
    }
    out
}

/// The A/AAAA records of an answer's additional section, by name (without the final dot).
fn additional_addresses(records: &[Record]) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for r in records {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        out.entry(r.name.to_ascii().trim_end_matches('.').to_owned()).or_default().push(ip);
    }
    out
}

fn remaining(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now())
}

fn error(name: &str, kind: &'static str, e: &NetError) -> LookupError {
    if e.is_no_records_found() || e.is_nx_domain() {
        LookupError::NoRecords { name: name.to_owned(), kind }
    } else {
        LookupError::Query { name: name.to_owned(), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv { priority, weight, port, target: target.into() }
    }

    fn ips(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        list.iter().map(|(n, a)| ((*n).to_owned(), a.iter().map(|a| a.parse().unwrap()).collect())).collect()
    }

    fn summary(b: &[BackendConfig]) -> Vec<(String, u32)> {
        b.iter().map(|b| (b.address.clone(), b.weight)).collect()
    }

    #[test]
    fn lowest_priority_with_an_address_wins() {
        let records = [srv(10, 5, 80, "b"), srv(0, 3, 80, "a"), srv(0, 1, 81, "gone"), srv(20, 1, 80, "c")];
        let addrs = ips(&[("a", &["10.0.0.2", "10.0.0.1"]), ("b", &["10.0.1.1"]), ("c", &["10.0.2.1"])]);
        assert_eq!(summary(&from_srv(&records, &addrs)), [("10.0.0.1:80".into(), 3), ("10.0.0.2:80".into(), 3)]);
        // The first group's targets do not resolve: the next group serves.
        let addrs = ips(&[("b", &["10.0.1.1"]), ("c", &["10.0.2.1"])]);
        assert_eq!(summary(&from_srv(&records, &addrs)), [("10.0.1.1:80".into(), 5)]);
        assert!(from_srv(&records, &ips(&[])).is_empty());
    }

    #[test]
    fn zero_weights() {
        let addrs = ips(&[("a", &["10.0.0.1"]), ("b", &["10.0.0.2"])]);
        let all_zero = [srv(0, 0, 80, "a"), srv(0, 0, 80, "b")];
        assert_eq!(summary(&from_srv(&all_zero, &addrs)), [("10.0.0.1:80".into(), 1), ("10.0.0.2:80".into(), 1)]);
        let some_zero = [srv(0, 0, 80, "a"), srv(0, 7, 80, "b")];
        assert_eq!(summary(&from_srv(&some_zero, &addrs)), [("10.0.0.1:80".into(), 0), ("10.0.0.2:80".into(), 7)]);
    }

    #[test]
    fn an_address_named_twice_sums_its_weights_and_is_labelled() {
        let addrs = ips(&[("a", &["10.0.0.1"]), ("b", &["10.0.0.1"])]);
        let b = from_srv(&[srv(0, 2, 80, "a"), srv(0, 3, 80, "b")], &addrs);
        assert_eq!(summary(&b), [("10.0.0.1:80".into(), 5)]);
        assert!(b[0].discovered);
        assert_eq!(b[0].labels, [(LABEL.to_owned(), "a".to_owned())]);
    }
}
