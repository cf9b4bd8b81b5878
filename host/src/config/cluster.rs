//! `[cluster]`: the etcd cluster several weir instances share (stick tables today; see
//! `crate::cluster`), as written and validated. Every file it names is read here, so
//! `weir check` tells an unreadable certificate or credentials file at its key; whether
//! etcd answers is not checked (an instance starts and serves without it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Cx};

/// `[cluster]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    /// The etcd endpoints, `http://host:port` or `https://host:port`. Required, at
    /// least one. Read at start; not reloadable.
    etcd: Spanned<Vec<Spanned<String>>>,
    /// The key prefix every key of this cluster lives under. Default `"/weir"`. Read at
    /// start.
    prefix: Option<Spanned<String>>,
    /// This instance's name in the cluster (status, logs; one word). Required. Read at
    /// start.
    node: Spanned<String>,
    /// TLS to etcd: `{ ca = "ca.pem", cert = "client.pem", key = "client.key" }` (`cert`
    /// and `key` together, for client-certificate auth). Default none. Read at start.
    tls: Option<Spanned<FileClusterTls>>,
    /// A file holding `user:password` for etcd's authentication (trailing whitespace
    /// trimmed; relative to the config file). Default none. Read at start.
    credentials_file: Option<Spanned<PathBuf>>,
}

/// `[cluster] tls = { ... }`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileClusterTls {
    /// PEM file of the CAs etcd's certificate must chain to. Default none: the system's
    /// roots are not loaded, so set it for https endpoints.
    ca: Option<Spanned<PathBuf>>,
    /// PEM client certificate (chain), with `key`.
    cert: Option<Spanned<PathBuf>>,
    /// PEM private key of `cert`.
    key: Option<Spanned<PathBuf>>,
}

/// PEM bytes read from a file.
pub type Pem = Arc<[u8]>;

/// The validated `[cluster]`. Read at start; a reload keeps the one the process started
/// with (a warning says so when it changed).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// This instance's name.
    pub node: String,
    /// PEM bytes of the CA file, if any.
    pub ca: Option<Pem>,
    /// PEM bytes of the client certificate and key, if any.
    pub identity: Option<(Pem, Pem)>,
    /// `(user, password)`, if any.
    pub credentials: Option<(String, Arc<str>)>,
}

/// The password is a secret: never printed.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("etcd", &self.etcd)
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("tls", &(self.ca.is_some() || self.identity.is_some()))
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Cx<'_> {
    /// Validates `[cluster]`, reading the files it names.
    pub(super) fn cluster(&self, c: &Spanned<FileCluster>, base: &Path) -> Result<ClusterConfig, ConfigError> {
        let c = c.get_ref();
        if c.etcd.get_ref().is_empty() {
            return Err(self.spanned(&c.etcd, "cluster.etcd", "name at least one etcd endpoint"));
        }
        let mut etcd = Vec::with_capacity(c.etcd.get_ref().len());
        for (i, e) in c.etcd.get_ref().iter().enumerate() {
            let url = e.get_ref().trim();
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            let Some(authority) = rest.map(|r| r.trim_end_matches('/')) else {
                return Err(self.spanned(
                    e,
                    format!("cluster.etcd[{i}]"),
                    format!("`{url}` is not http://host:port or https://host:port"),
                ));
            };
            let port = authority.rsplit_once(':').map(|(_, p)| p);
            if authority.is_empty() || authority.contains('/') || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(self.spanned(
                    e,
                    format!("cluster.etcd[{i}]"),
                    format!("`{url}` is not http://host:port or https://host:port"),
                ));
            }
            etcd.push(url.trim_end_matches('/').to_owned());
        }
        let prefix = match &c.prefix {
            None => "/weir".to_owned(),
            Some(p) => {
                let v = p.get_ref().trim_end_matches('/');
                if !v.starts_with('/') || v.len() < 2 || v.chars().any(char::is_whitespace) {
                    return Err(self.spanned(
                        p,
                        "cluster.prefix",
                        "a key prefix starts with `/`, has a name after it and no spaces, e.g. \"/weir\"",
                    ));
                }
                v.to_owned()
            }
        };
        let node = c.node.get_ref().trim();
        if node.is_empty() || node.len() > 64 || !node.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(self.spanned(
                &c.node,
                "cluster.node",
                "one word of letters, digits, `-`, `_` or `.`, at most 64 bytes",
            ));
        }
        let read = |f: &Spanned<PathBuf>, key: &str| {
            let path = base.join(f.get_ref());
            std::fs::read(&path).map_err(|e| self.spanned(f, key, format!("cannot read {}: {e}", path.display())))
        };
        let pem = |f: &Spanned<PathBuf>, key: &str| {
            let bytes = read(f, key)?;
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(self.spanned(f, key, format!("{} holds no PEM", base.join(f.get_ref()).display())));
            }
            Ok(Pem::from(bytes))
        };
        let (mut ca, mut identity) = (None, None);
        if let Some(t) = &c.tls {
            let tr = t.get_ref();
            ca = tr.ca.as_ref().map(|f| pem(f, "cluster.tls.ca")).transpose()?;
            identity = match (&tr.cert, &tr.key) {
                (Some(cert), Some(key)) => Some((pem(cert, "cluster.tls.cert")?, pem(key, "cluster.tls.key")?)),
                (None, None) => None,
                _ => return Err(self.spanned(t, "cluster.tls", "`cert` and `key` go together")),
            };
            if !etcd.iter().all(|e| e.starts_with("https://")) {
                return Err(self.spanned(&c.etcd, "cluster.etcd", "with cluster.tls every endpoint is https://"));
            }
        }
        let credentials = match &c.credentials_file {
            None => None,
            Some(f) => {
                let text = String::from_utf8(read(f, "cluster.credentials_file")?)
                    .map_err(|_| self.spanned(f, "cluster.credentials_file", "the file is not UTF-8"))?;
                let Some((user, password)) = text.trim().split_once(':') else {
                    return Err(self.spanned(f, "cluster.credentials_file", "write `user:password` on one line"));
                };
                if user.is_empty() {
                    return Err(self.spanned(f, "cluster.credentials_file", "the user name is empty"));
                }
                Some((user.to_owned(), Arc::from(password)))
            }
        };
        Ok(ClusterConfig { etcd, prefix, node: node.to_owned(), ca, identity, credentials })
    }
}
