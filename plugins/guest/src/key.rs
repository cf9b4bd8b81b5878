//! Hash keys for the hashing balancers: what part of a request picks its backend.
//!
//! `key = "client-ip" | "header:NAME" | "cookie:NAME" | "path" | "query:NAME"` in a
//! plugin's config. A request without the key (no such header, cookie or parameter) is
//! placed by the plugin's fallback algorithm instead.

use crate::request;
use crate::types::PluginError;

/// What to hash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address (the default).
    #[default]
    ClientIp,
    /// A request header, by name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// The path, without the query.
    Path,
    /// A query parameter, by name.
    Query(String),
}

impl std::str::FromStr for HashKey {
    type Err = PluginError;

    fn from_str(s: &str) -> Result<Self, PluginError> {
        let named = |prefix: &str| s.strip_prefix(prefix).filter(|n| !n.is_empty()).map(str::to_owned);
        Ok(match s {
            "client-ip" => HashKey::ClientIp,
            "path" => HashKey::Path,
            _ => {
                if let Some(n) = named("header:") {
                    HashKey::Header(n.to_ascii_lowercase())
                } else if let Some(n) = named("cookie:") {
                    HashKey::Cookie(n)
                } else if let Some(n) = named("query:") {
                    HashKey::Query(n)
                } else {
                    return Err(PluginError::InvalidConfig(format!(
                        "key: `{s}` is not one of client-ip, header:NAME, cookie:NAME, path, query:NAME"
                    )));
                }
            }
        })
    }
}

impl<'de> serde::Deserialize<'de> for HashKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| match e {
            PluginError::InvalidConfig(m) | PluginError::Internal(m) => serde::de::Error::custom(m),
            PluginError::NoBackend => serde::de::Error::custom("invalid key"),
        })
    }
}

impl HashKey {
    /// The hash of the key of the request being placed, if it has one. The client ip is
    /// hashed from its numeric form by the host (no text crosses the ABI); the others
    /// from their text.
    pub fn hash(&self) -> Option<u64> {
        match self {
            HashKey::ClientIp => Some(client_addr_hash()),
            other => other.extract().map(|k| crate::hash::hash(k.as_bytes())),
        }
    }

    /// The key's value for the request being placed, if it has one.
    pub fn extract(&self) -> Option<String> {
        match self {
            HashKey::ClientIp => Some(request::client_ip()),
            HashKey::Header(name) => request::header(name),
            HashKey::Cookie(name) => request::cookie(name),
            HashKey::Path => request::path().map(|p| match p.split_once('?') {
                Some((path, _)) => path.to_owned(),
                None => p,
            }),
            HashKey::Query(name) => {
                let path = request::path()?;
                let (_, query) = path.split_once('?')?;
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then(|| v.to_owned())
                })
            }
        }
    }
}

/// Hash of the client's IP address: [`crate::hash::hash`] of its octets (4 for IPv4, 16
/// for IPv6), computed by the host (`request.client-addr-hash`) so that one scalar
/// crosses the ABI.
pub fn client_addr_hash() -> u64 {
    request::client_addr_hash()
}

/// The options every keyed balancer takes: `key` (default `client-ip`) and `fallback`
/// (default `p2c`). A plugin with more options declares its own struct with these two
/// fields (serde cannot flatten under `deny_unknown_fields`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    /// What to hash.
    pub key: HashKey,
    /// How to place a request without the key.
    pub fallback: crate::select::Fallback,
}

impl KeyConfig {
    /// Places the request being decided: by the hash of its key with `by_hash`, or with
    /// the fallback when it has no key.
    pub fn place(
        &self,
        cache: &crate::PoolCache,
        by_hash: impl FnOnce(u64) -> Result<crate::types::BackendId, crate::types::PickError>,
    ) -> Result<crate::types::BackendId, crate::types::PickError> {
        match self.key.hash() {
            Some(h) => by_hash(h),
            None => self.fallback.pick(cache),
        }
    }
}
