//! A listener's TLS settings (`tls = { certificates = [...], ... }` on an http listener):
//! the files as written, checked here as far as reading them goes (each file readable
//! and holding the PEM it should, located at its key), and the validated [`TlsConfig`].
//! Whether a key matches its certificate and what names a certificate covers are told
//! when `net::tls` builds the listener's TLS settings (`weir check` builds them too).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::bounds::TIMEOUT;
use super::{ConfigError, Cx, FileDuration, Location};

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Whether a listener asks clients for a certificate (with `client_ca`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client without a certificate verified against `client_ca` is refused.
    #[default]
    Required,
    /// A client may send no certificate; one that sends a certificate that does not verify
    /// is refused.
    Optional,
}

/// `tls = { ... }` of a listener, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    /// The certificates, by SNI; the first is the default. Required, at least one.
    /// Reloadable (a reload, SIGHUP or a change of a file re-reads them).
    certificates: Spanned<Vec<FileCertificate>>,
    /// `"1.2"` or `"1.3"`. Default `"1.2"`. Reloadable (new handshakes).
    min_version: Option<Spanned<String>>,
    /// Protocols offered by ALPN, in preference order. Default `["h2", "http/1.1"]`.
    /// Reloadable (new handshakes).
    alpn: Option<Spanned<Vec<Spanned<String>>>>,
    /// PEM file of the CAs that client certificates must chain to: mTLS. Default none.
    /// Reloadable.
    client_ca: Option<Spanned<String>>,
    /// `"required"` or `"optional"`, with `client_ca`. Default `"required"`. Reloadable.
    client_auth: Option<Spanned<ClientAuth>>,
    /// The request header in which the verified client certificate's subject is sent to
    /// the backend (a client's own header of that name is removed). Default none.
    /// Reloadable.
    client_subject_header: Option<Spanned<String>>,
    /// Longest wait for a TLS handshake to complete, from the first byte after the PROXY
    /// header. Default 10 s. Range 1 ms to 7 days. Reloadable (new connections).
    handshake_timeout_ms: Option<Spanned<FileDuration>>,
}

/// `{ cert = "site.pem", key = "site.key" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertificate {
    /// PEM file: the certificate, then its chain. Relative to the config file.
    cert: Spanned<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1). Relative to the config file.
    key: Spanned<String>,
}

/// A listener's validated TLS settings. Files are named, not held: their contents are
/// read when the listener's TLS settings are built, and again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates in file order; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// The oldest version accepted.
    pub min_version: TlsVersion,
    /// ALPN protocols as configured, in preference order.
    pub alpn: Vec<String>,
    /// The CA file of client certificates, if clients are asked for one.
    pub client_ca: Option<CaFile>,
    /// Whether a client certificate is required (meaningful with `client_ca`).
    pub client_auth: ClientAuth,
    /// The header that carries the client certificate's subject to the backend, if any.
    pub client_subject_header: Option<http::HeaderName>,
    /// Longest wait for a handshake.
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// Every file these settings read (certificates, keys, the client CA), for the watcher.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.certificates
            .iter()
            .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
            .chain(self.client_ca.as_ref().map(|ca| ca.path.as_path()))
    }
}

/// One certificate's files, and where the config names them.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Where the config writes `cert`, for errors found when the files are loaded.
    pub at: Location,
}

/// The same files, wherever the config names them.
impl PartialEq for CertificateFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

impl Eq for CertificateFiles {}

/// The client CA file, and where the config names it.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// The CA certificates (PEM).
    pub path: PathBuf,
    /// Where the config writes it.
    pub at: Location,
}

impl PartialEq for CaFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for CaFile {}

/// Reads a PEM file of certificates: at least one, every PEM section well formed.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in PEM", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM file's private key (the first one in it).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{}: no PRIVATE KEY in PEM", path.display()),
        e => pem_error(path, e),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        // The library prints these lines as lists of numbers.
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("{}: bad PEM: no `-----END {}-----` line", path.display(), String::from_utf8_lossy(&end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            let line = String::from_utf8_lossy(&line);
            let shown: String = line.trim_end().chars().take(80).collect();
            format!("{}: bad PEM: malformed line {shown:?}", path.display())
        }
        e => format!("{}: bad PEM: {e}", path.display()),
    }
}

impl Cx<'_> {
    /// Validates a listener's `tls` table; `key` is the listener's dotted key.
    pub(super) fn tls(&self, tls: FileTls, base: &Path, key: &str) -> Result<TlsConfig, ConfigError> {
        let key = format!("{key}.tls");
        if tls.certificates.get_ref().is_empty() {
            return Err(self.spanned(
                &tls.certificates,
                format!("{key}.certificates"),
                "needs at least one certificate",
            ));
        }
        let mut certificates = Vec::with_capacity(tls.certificates.get_ref().len());
        for (i, c) in tls.certificates.into_inner().into_iter().enumerate() {
            let ckey = format!("{key}.certificates[{i}]");
            let cert = base.join(c.cert.get_ref());
            read_certificates(&cert).map_err(|m| self.spanned(&c.cert, format!("{ckey}.cert"), m))?;
            let path = base.join(c.key.get_ref());
            read_key(&path).map_err(|m| self.spanned(&c.key, format!("{ckey}.key"), m))?;
            let at = self.location(Some(c.cert.span()), format!("{ckey}.cert"));
            certificates.push(CertificateFiles { cert, key: path, at });
        }
        let min_version = match tls.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "1.2")) => TlsVersion::Tls12,
            Some((_, "1.3")) => TlsVersion::Tls13,
            Some((v, other)) => {
                return Err(self.spanned(
                    v,
                    format!("{key}.min_version"),
                    format!("`{other}` is not a TLS version weir speaks: \"1.2\" or \"1.3\""),
                ));
            }
        };
        let alpn = match tls.alpn {
            None => vec!["h2".to_owned(), "http/1.1".to_owned()],
            Some(list) => {
                let mut alpn = Vec::with_capacity(list.get_ref().len());
                for (i, p) in list.get_ref().iter().enumerate() {
                    let name = p.get_ref();
                    if name.is_empty() || name.len() > 255 {
                        return Err(self.spanned(
                            p,
                            format!("{key}.alpn[{i}]"),
                            "an ALPN protocol name is 1 to 255 bytes (`h2`, `http/1.1`)",
                        ));
                    }
                    alpn.push(name.clone());
                }
                alpn
            }
        };
        let client_ca = match tls.client_ca {
            None => None,
            Some(ca) => {
                let path = base.join(ca.get_ref());
                read_certificates(&path).map_err(|m| self.spanned(&ca, format!("{key}.client_ca"), m))?;
                Some(CaFile { path, at: self.location(Some(ca.span()), format!("{key}.client_ca")) })
            }
        };
        if let (Some(auth), None) = (&tls.client_auth, &client_ca) {
            return Err(self.spanned(
                auth,
                format!("{key}.client_auth"),
                "has no effect without `client_ca`, the CAs client certificates are verified against",
            ));
        }
        let client_subject_header = match tls.client_subject_header {
            None => None,
            Some(h) => {
                let name = http::HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                    self.spanned(
                        &h,
                        format!("{key}.client_subject_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    )
                })?;
                if client_ca.is_none() {
                    return Err(self.spanned(
                        &h,
                        format!("{key}.client_subject_header"),
                        "needs `client_ca`: without it no client certificate is asked for",
                    ));
                }
                Some(name)
            }
        };
        let handshake_timeout = self
            .duration(tls.handshake_timeout_ms.as_ref(), || format!("{key}.handshake_timeout_ms"), TIMEOUT)?
            .unwrap_or(Duration::from_secs(10));
        Ok(TlsConfig {
            certificates,
            min_version,
            alpn,
            client_ca,
            client_auth: tls.client_auth.map(Spanned::into_inner).unwrap_or_default(),
            client_subject_header,
            handshake_timeout,
        })
    }
}
