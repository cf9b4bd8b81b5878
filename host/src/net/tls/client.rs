//! TLS to backends: the rustls client settings of a pool's `upstream.tls` ([`settings`])
//! and the handshake on a connected socket ([`connect`]).
//!
//! The settings are built once per loaded config (the one writer builds them when it
//! loads a pool, so a key the provider cannot use is a load error) and cached in the
//! config's [`UpstreamTls`]; every connection shares them, and with them rustls's session
//! cache, so a reconnect to a backend resumes its session. Certificates are verified
//! against the configured CA only (never the system's roots): `verify = false` is the one
//! way around it, and says so in the log whenever the pool is loaded.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{UpstreamProtocol, UpstreamTls};

/// Why a pool's TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {source}")]
pub(crate) struct SettingsError {
    /// Where the file writes the pool's `upstream.tls`.
    at: String,
    /// What rustls refused (a key its provider cannot use, a key that is not the
    /// certificate's).
    source: rustls::Error,
}

/// The ALPN protocols offered for `protocol`: `h2` alone for HTTP/2 (a backend that does
/// not pick it is refused), `http/1.1` for HTTP/1.1.
fn alpn(protocol: UpstreamProtocol) -> Vec<Vec<u8>> {
    if protocol.is_h2() { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] }
}

/// The client settings of `tls` for `protocol`, built on the first call and cached in
/// `tls` (a config is loaded for one protocol, so the cache holds one).
pub(crate) fn settings(tls: &UpstreamTls, protocol: UpstreamProtocol) -> Result<Arc<ClientConfig>, SettingsError> {
    if let Some(built) = tls.client.get() {
        return Ok(built.clone());
    }
    let built = Arc::new(build(tls, protocol).map_err(|source| SettingsError { at: tls.at.to_string(), source })?);
    // Two callers racing build the same thing; the first one stored wins.
    Ok(tls.client.get_or_init(|| built).clone())
}

fn build(tls: &UpstreamTls, protocol: UpstreamProtocol) -> Result<ClientConfig, rustls::Error> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &tls.roots {
            roots.add(cert.clone()).map_err(|e| rustls::Error::General(format!("CA certificate: {e}")))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider)))
    };
    let mut config = match &tls.client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn(protocol);
    Ok(config)
}

/// The name a backend's certificate must hold: the configured `server_name`, else the
/// host of its address as written (`host:port`, `[v6]:port`).
pub(crate) fn server_name(tls: &UpstreamTls, address: &str) -> Result<ServerName<'static>, String> {
    if let Some(name) = &tls.server_name {
        return Ok(name.clone());
    }
    let host = match address.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => address.rsplit_once(':').map_or(address, |(h, _)| h),
    };
    ServerName::try_from(host)
        .map(|n| n.to_owned())
        .map_err(|_| format!("`{host}` is not a server name; set upstream.tls.server_name"))
}

/// Runs the TLS handshake on a connected socket. The caller bounds it in time.
pub(crate) async fn connect(
    stream: TcpStream,
    settings: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    TlsConnector::from(settings).connect(name, stream).await
}

/// `verify = false`: any certificate is taken, but the handshake's signatures are still
/// checked (the backend must hold the key of the certificate it shows), so the session is
/// encrypted to whoever answered, just not authenticated.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(name: Option<&str>) -> UpstreamTls {
        UpstreamTls {
            roots: Vec::new(),
            server_name: name.map(|n| ServerName::try_from(n).unwrap().to_owned()),
            client_auth: None,
            verify: false,
            at: crate::config::Location { file: "f".into(), line: 1, column: 1, key: "pool.p.upstream.tls".into() },
            client: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn the_server_name_is_the_configured_one_else_the_backends_host() {
        let host = |t: &UpstreamTls, a: &str| server_name(t, a).map(|n| n.to_str().into_owned());
        assert_eq!(host(&tls(None), "api.internal:8443").unwrap(), "api.internal");
        assert_eq!(host(&tls(None), "127.0.0.1:8443").unwrap(), "127.0.0.1");
        assert_eq!(host(&tls(None), "[::1]:8443").unwrap(), "::1");
        assert_eq!(host(&tls(Some("web.internal")), "127.0.0.1:8443").unwrap(), "web.internal");
        assert!(host(&tls(None), "bad_name!:1").is_err());
    }

    #[test]
    fn settings_offer_the_pools_protocol_by_alpn_and_are_built_once() {
        let t = tls(None);
        let a = settings(&t, UpstreamProtocol::H2).unwrap();
        assert_eq!(a.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(Arc::ptr_eq(&a, &settings(&t, UpstreamProtocol::H2).unwrap()));
        assert_eq!(settings(&tls(None), UpstreamProtocol::Http1).unwrap().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
