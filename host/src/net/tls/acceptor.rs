//! The TLS handshake of one client connection, and the rustls settings it runs with.
//!
//! The handshake runs in the connection's own task, after the PROXY header, under the
//! listener's `handshake_timeout_ms`: the ClientHello is read first (its SNI and offered
//! ALPN protocols are kept for plugins), then the handshake completes with the acceptor
//! current at that moment. A bad, truncated or slow ClientHello costs that one
//! connection.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ProducesTickets, ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs::{Certificates, subject};
use super::{TlsError, provider};
use crate::config::{ClientAuth, TlsConfig, TlsVersion, read_certificates};

/// Sessions remembered per listener for resumption (TLS 1.2 clients without ticket
/// support; HAProxy's `tune.ssl.cachesize` default).
const SESSION_CACHE: usize = 20_000;

/// ALPN protocols the server side speaks. The configured list is filtered to these, so a
/// client is never promised a protocol the server cannot serve.
const SERVED: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A listener's session state, kept across reloads: the ticket keys (rotated by rustls
/// every 6 hours) and the server-side session cache.
#[derive(Debug)]
pub(crate) struct Sessions {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Sessions {
    pub(crate) fn new() -> Result<Self, TlsError> {
        Ok(Self {
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE),
        })
    }
}

/// One version of a listener's TLS settings: what new handshakes use.
#[derive(Debug)]
pub struct Acceptor {
    server: Arc<ServerConfig>,
    timeout: Duration,
}

/// What a connection's handshake learnt, for plugins and the backend.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The server name the client asked for (shared with each request's `PickRequest`).
    pub sni: Option<Arc<str>>,
    /// The ALPN protocols the client offered, in its order; none if it offered none
    /// (shared as `sni`).
    pub offered_alpn: Option<Arc<[String]>>,
    /// The protocol ALPN settled on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The verified client certificate's subject (RFC 4514), with mTLS.
    pub client_subject: Option<Arc<str>>,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// It did not complete within `handshake_timeout_ms`.
    #[error("no complete TLS handshake within {0:?}")]
    Timeout(Duration),
    /// The client sent something that is not a good handshake, or left.
    #[error("TLS handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl Acceptor {
    /// rustls settings from `config`, its files read now.
    pub(crate) fn build(config: &TlsConfig, sessions: &Sessions) -> Result<Self, TlsError> {
        let certificates = Certificates::load(&config.certificates)?;
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let fail = |message: String| TlsError::File { at: ca.at.clone(), message };
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(&ca.path).map_err(fail)? {
                    roots
                        .add(cert)
                        .map_err(|e| fail(format!("{}: not a usable CA certificate: {e}", ca.path.display())))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match config.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| fail(format!("{}: cannot verify clients with it: {e}", ca.path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(Arc::new(certificates));
        server.alpn_protocols =
            config.alpn.iter().filter(|p| SERVED.contains(&p.as_bytes())).map(|p| p.as_bytes().to_vec()).collect();
        server.session_storage = sessions.cache.clone();
        server.ticketer = sessions.ticketer.clone();
        Ok(Self { server: Arc::new(server), timeout: config.handshake_timeout })
    }

    /// Completes the handshake of a client connection, under the listener's handshake
    /// timeout.
    pub async fn accept<S>(&self, stream: S) -> Result<(TlsStream<S>, TlsInfo), HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let hello = start.client_hello();
            let sni = hello.server_name().map(Arc::from);
            let offered_alpn = hello
                .alpn()
                .map(|offered| {
                    offered.filter_map(|p| std::str::from_utf8(p).ok()).map(str::to_owned).collect::<Vec<_>>()
                })
                .filter(|offered| !offered.is_empty())
                .map(Arc::from);
            let stream = start.into_stream(self.server.clone()).await?;
            let conn = stream.get_ref().1;
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            let client_subject = conn.peer_certificates().and_then(|c| c.first()).and_then(subject).map(Arc::from);
            Ok::<_, HandshakeError>((stream, TlsInfo { sni, offered_alpn, alpn, client_subject }))
        };
        tokio::time::timeout(self.timeout, handshake).await.map_err(|_| HandshakeError::Timeout(self.timeout))?
    }
}
