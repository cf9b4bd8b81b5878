//! Upstream protocols per pool: HTTP/2 to backends (`h2c`, and `h2` over TLS by ALPN)
//! with many streams on one connection, trailers both ways (gRPC style), and TLS to
//! backends: verified against a CA made here with rcgen, refused with the wrong CA or
//! name, taken with `verify = false`, and client certificates (mTLS).
//!
//! The backends are hyper servers started here on 127.0.0.1:0 that count the connections
//! they accept; certificates are made per test with rcgen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support;

// ---------------------------------------------------------------------------------------
// Certificates.

/// A CA made for one test, and the files it wrote.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: &'static str,
}

/// A certificate and its key, as PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &'static str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("weir test {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).unwrap();
        Self { issuer, dir: dir.to_owned(), name }
    }

    /// The CA certificate's file.
    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for `names` (DNS names, or IP addresses) signed by this CA.
    fn issue(&self, file: &str, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().unwrap()),
            });
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf { cert: self.dir.join(format!("{file}.pem")), key: self.dir.join(format!("{file}.key")) };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A backend's TLS settings: its certificate, the ALPN protocols it offers, and the CA
/// its clients' certificates must chain to (mTLS), if it asks for one.
fn server_tls(leaf: &Leaf, alpn: &[&str], client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&leaf.cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

// ---------------------------------------------------------------------------------------
// Backends.

type BackendBody = UnsyncBoxBody<Bytes, Infallible>;

/// A hyper backend on 127.0.0.1:0 that counts the connections (and TLS handshakes) it
/// accepts. Plain: HTTP/2 with prior knowledge when `h2`, else HTTP/1.1. TLS: HTTP/2 when
/// ALPN picked `h2`, else HTTP/1.1. Answers:
/// - `/hold`: counted in `held`, answered once `release` is sent;
/// - `/grpc`: the request body and trailers read whole, answered as gRPC does: the body
///   back, then trailers `grpc-status: 0` and `grpc-message` naming the request trailer
///   `x-req-sum`;
/// - `/trailers`: the same, announcing and sending a trailer `x-checksum` (HTTP/1.1 style);
/// - anything else: `NAME VERSION METHOD URI`.
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_connections();
    }
}

impl Backend {
    async fn start(name: &'static str, h2: bool, tls: Option<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let accept = {
            let (accepted, handshakes, held, connections) =
                (accepted.clone(), handshakes.clone(), held.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, handshakes, held, released) =
                        (acceptor.clone(), handshakes.clone(), held.clone(), released.clone());
                    let task = tokio::spawn(async move {
                        match acceptor {
                            None => serve(stream, h2, name, held, released).await,
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(stream).await else { return };
                                handshakes.fetch_add(1, Ordering::SeqCst);
                                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve(tls, h2, name, held, released).await;
                            }
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Self { addr, accepted, handshakes, held, release, connections, accept }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection the backend holds (as a backend that restarts would).
    fn close_connections(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn serve<S>(io: S, h2: bool, name: &'static str, held: Arc<AtomicUsize>, released: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (held, released) = (held.clone(), released.clone());
        async move { Ok::<_, Infallible>(answer(name, req, held, released).await) }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    }
}

async fn answer(
    name: &str,
    req: Request<Incoming>,
    held: Arc<AtomicUsize>,
    mut released: watch::Receiver<bool>,
) -> Response<BackendBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/hold" => {
            held.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|r| *r).await;
            Response::new(full("held"))
        }
        "/grpc" | "/trailers" => {
            let collected = req.into_body().collect().await.unwrap();
            let sum = collected
                .trailers()
                .and_then(|t| t.get("x-req-sum"))
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            let body = collected.to_bytes();
            let mut trailers = HeaderMap::new();
            let mut res = Response::builder();
            if path == "/grpc" {
                res = res.header("content-type", "application/grpc");
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                trailers.insert("grpc-message", HeaderValue::from_str(&format!("x-req-sum={sum}")).unwrap());
            } else {
                res = res.header("trailer", "x-checksum");
                trailers.insert("x-checksum", HeaderValue::from_str(&format!("x-req-sum={sum}")).unwrap());
            }
            // A stream of frames without a known length, so an HTTP/1.1 server chunks it.
            let body = http_body_util::StreamBody::new(futures_util::stream::iter([
                Ok::<_, Infallible>(hyper::body::Frame::data(body)),
                Ok(hyper::body::Frame::trailers(trailers)),
            ]));
            res.body(UnsyncBoxBody::new(body)).unwrap()
        }
        _ => {
            let text = format!("{name} {:?} {} {}", req.version(), req.method(), req.uri());
            Response::new(full(&text))
        }
    }
}

fn full(text: &str) -> BackendBody {
    UnsyncBoxBody::new(Full::new(Bytes::from(text.to_owned())))
}

// ---------------------------------------------------------------------------------------
// weir.

/// weir with one pool `p` in front of `backends`, its `upstream` table `upstream`.
/// One worker: the connections a backend counts are those of one idle pool (each worker
/// keeps its own, and opens its own HTTP/2 connection to a backend).
async fn weir(backends: &[SocketAddr], upstream: &str) -> weir::Server {
    let text = support::config_text(backends, &format!("upstream = {upstream}"));
    support::start(&format!(
        "{text}
[runtime]
worker_threads = 1
"
    ))
    .await
}

/// A TOML string of a path.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// GETs `path` through weir; status and body.
async fn get(server: &weir::Server, path: &str) -> (StatusCode, String) {
    support::get(&support::client(), &format!("http://{}{path}", server.addr("main").unwrap())).await
}

/// Sends `n` concurrent `/hold` requests through weir and waits until the backend holds
/// them all; then checks what weir counts for the backend, releases them, and checks
/// every answer.
async fn hold_many(server: &weir::Server, backend: &Backend, n: usize) {
    let url = format!("http://{}/hold", server.addr("main").unwrap());
    let client = support::client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { support::get(&client, &url).await })
        })
        .collect();
    support::eventually("the backend holds every request", || backend.held.load(Ordering::SeqCst) == n).await;
    let snapshot = server.snapshot();
    let live = &snapshot.pools["p"].view.members[0].live;
    // Every stream is one request in flight, so a least-request balancer sees the load.
    assert_eq!(live.in_flight.load(Ordering::SeqCst) as usize, n, "every stream counts in in_flight");
    assert_eq!(live.load() as usize, n);
    backend.release.send(true).unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, "held".to_owned()));
    }
    assert_eq!(live.in_flight.load(Ordering::SeqCst), 0);
    support::eventually("no stream is counted once all are answered", || live.load() == 0).await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2 to backends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_carries_many_concurrent_streams_on_one_connection() {
    let backend = Backend::start("b", true, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"h2c\" }").await;
    let (status, body) = get(&server, "/x?y=1").await;
    assert_eq!(status, StatusCode::OK);
    // HTTP/2 at the backend, with the client's host as :authority.
    assert!(body.starts_with("b HTTP/2.0 GET http://"), "{body}");
    assert!(body.ends_with("/x?y=1"), "{body}");
    hold_many(&server, &backend, 60).await;
    assert_eq!(backend.accepted(), 1, "61 requests, 60 of them at once, over one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_over_tls_by_alpn_carries_trailers_and_many_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue("backend", &["127.0.0.1"]);
    let backend = Backend::start("t", false, Some(server_tls(&leaf, &["h2", "http/1.1"], None))).await;
    let server =
        weir(&[backend.addr], &format!("{{ protocol = \"h2\", tls = {{ ca = {} }} }}", toml_path(&ca.pem()))).await;
    let (status, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("t HTTP/2.0 GET https://"), "{body}");
    // gRPC's trailers both ways, over TLS too.
    let raw = post_with_trailer(server.addr("main").unwrap(), "/grpc", true).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(trailer_lines(&raw), ["grpc-status: 0", "grpc-message: x-req-sum=42"], "{raw}");
    hold_many(&server, &backend, 40).await;
    assert_eq!(backend.accepted(), 1);
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_refuses_a_tls_backend_that_does_not_pick_h2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue("backend", &["127.0.0.1"]);
    let upstream = format!("{{ protocol = \"h2\", tls = {{ ca = {} }} }}", toml_path(&ca.pem()));
    // A backend that does no ALPN: the handshake completes, and weir refuses it.
    let backend = Backend::start("t", false, Some(server_tls(&leaf, &[], None))).await;
    let (status, body) = get(&weir(&[backend.addr], &upstream).await, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("does not speak HTTP/2 over TLS (ALPN picked nothing)"), "{body}");
    // A backend that offers only HTTP/1.1: it refuses the handshake itself (rustls
    // answers an offer it shares nothing with by an alert).
    let backend = Backend::start("t", false, Some(server_tls(&leaf, &["http/1.1"], None))).await;
    let (status, body) = get(&weir(&[backend.addr], &upstream).await, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("NoApplicationProtocol"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_h2_connection_is_replaced() {
    let backend = Backend::start("b", true, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"h2c\" }").await;
    assert_eq!(get(&server, "/").await.0, StatusCode::OK);
    assert_eq!(backend.accepted(), 1);
    backend.close_connections();
    // The next request finds the connection closed (or gets it back unsent) and is sent
    // on a new one.
    for _ in 0..5 {
        let (status, body) = get(&server, "/again").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_to_an_h2_pool_gets_a_clear_501() {
    let backend = Backend::start("b", true, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"h2c\" }").await;
    let req = Request::get(format!("http://{}/ws", server.addr("main").unwrap()))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(support::empty())
        .unwrap();
    let res = support::client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED);
    let body = support::body_text(res).await;
    assert!(body.contains("WebSocket needs upstream.protocol = \"http1\""), "{body}");
    assert_eq!(backend.accepted(), 0, "nothing reached the backend");
}

// ---------------------------------------------------------------------------------------
// Trailers.

/// Sends a chunked POST with a trailer `x-req-sum: 42` to weir over HTTP/1.1 (with
/// `TE: trailers` when `te`), and returns the raw response.
async fn post_with_trailer(proxy: SocketAddr, path: &str, te: bool) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let te = if te { "TE: trailers\r\n" } else { "" };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: grpc.test\r\n{te}Trailer: x-req-sum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-req-sum: 42\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw)).await.unwrap().unwrap();
    raw
}

/// The trailer section of a raw chunked response: the lines after the last chunk.
fn trailer_lines(raw: &str) -> Vec<String> {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{raw}");
    let after = body.rsplit_once("\r\n0\r\n").map_or(body.strip_prefix("0\r\n").unwrap_or(""), |(_, t)| t);
    after.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_ascii_lowercase).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_both_ways_through_an_h2_backend() {
    let backend = Backend::start("g", true, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"h2c\" }").await;
    let proxy = server.addr("main").unwrap();

    // The request trailer reached the backend (over HTTP/2), which names it in its own
    // trailers; those reach the HTTP/1.1 client because it asked with `TE: trailers`.
    let raw = post_with_trailer(proxy, "/grpc", true).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("\r\ntrailer: grpc-status, grpc-message"), "{raw}");
    assert!(raw.contains("hello"), "{raw}");
    assert_eq!(trailer_lines(&raw), ["grpc-status: 0", "grpc-message: x-req-sum=42"], "{raw}");

    // hyper's HTTP/1.1 server writes trailers only to a client that sent `TE: trailers`:
    // without it the body ends with no trailer section.
    let raw = post_with_trailer(proxy, "/grpc", false).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(trailer_lines(&raw).is_empty(), "{raw}");
    assert_eq!(backend.accepted(), 1);
}

/// gRPC's shape end to end: a client speaking HTTP/2 with prior knowledge (hyper's) sends
/// a request whose body ends in trailers; weir passes it to an h2c backend and the
/// backend's `grpc-status` trailers back, on HTTP/2 both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_end_to_end_carries_trailers_both_ways() {
    let backend = Backend::start("g", true, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"h2c\" }").await;
    let proxy = server.addr("main").unwrap();
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request_trailers = HeaderMap::new();
    request_trailers.insert("x-req-sum", HeaderValue::from_static("42"));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(hyper::body::Frame::trailers(request_trailers)),
    ]));
    let req = Request::post(format!("http://{proxy}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("the response ends in trailers");
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "x-req-sum=42", "the request's trailer reached the backend");
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_through_an_h1_backend() {
    let backend = Backend::start("t", false, None).await;
    let server = weir(&[backend.addr], "{ protocol = \"http1\" }").await;
    let raw = post_with_trailer(server.addr("main").unwrap(), "/trailers", true).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    // The backend announced `Trailer: x-checksum` itself; weir passes it on, so the
    // trailer it names passes too, with the request trailer the backend read in it.
    assert_eq!(trailer_lines(&raw), ["x-checksum: x-req-sum=42"], "{raw}");
}

// ---------------------------------------------------------------------------------------
// TLS to backends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let leaf = ca.issue("backend", &["127.0.0.1", "backend.test"]);
    let backend = Backend::start("s", false, Some(server_tls(&leaf, &["http/1.1"], None))).await;

    // The right CA: served, over HTTP/1.1 (the default protocol) in TLS.
    let server = weir(&[backend.addr], &format!("{{ tls = {{ ca = {} }} }}", toml_path(&ca.pem()))).await;
    let (status, body) = get(&server, "/ok").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "s HTTP/1.1 GET /ok"));

    // Another CA: the handshake fails, so nothing was sent; the client gets 502 saying why.
    let server = weir(&[backend.addr], &format!("{{ tls = {{ ca = {} }} }}", toml_path(&other.pem()))).await;
    let (status, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("TLS handshake with") && body.contains("UnknownIssuer"), "{body}");

    // The right CA, but a name the certificate does not hold.
    let wrong_name = format!("{{ tls = {{ ca = {}, server_name = \"elsewhere.test\" }} }}", toml_path(&ca.pem()));
    let server = weir(&[backend.addr], &wrong_name).await;
    let (status, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("not valid for name \"elsewhere.test\""), "{body}");
    let right_name = format!("{{ tls = {{ ca = {}, server_name = \"backend.test\" }} }}", toml_path(&ca.pem()));
    assert_eq!(get(&weir(&[backend.addr], &right_name).await, "/").await.0, StatusCode::OK);

    // verify = false, written out: taken whatever signed it.
    let server = weir(&[backend.addr], "{ tls = { verify = false } }").await;
    assert_eq!(get(&server, "/").await.0, StatusCode::OK);
}

/// weir's HTTP/1.1 client over TLS: a kept connection carries request after request (one
/// handshake), a chunked request body with trailers passes, and a connection the backend
/// dropped (it restarted) is left for a new one at the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_tls_connection_is_kept_and_replaced_once_the_backend_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let leaf = ca.issue("backend", &["127.0.0.1"]);
    let backend = Backend::start("k", false, Some(server_tls(&leaf, &["http/1.1"], None))).await;
    let server = weir(&[backend.addr], &format!("{{ tls = {{ ca = {} }} }}", toml_path(&ca.pem()))).await;
    for i in 0..5 {
        let (status, body) = get(&server, &format!("/n{i}")).await;
        assert_eq!((status, body), (StatusCode::OK, format!("k HTTP/1.1 GET /n{i}")));
    }
    let raw = post_with_trailer(server.addr("main").unwrap(), "/trailers", true).await;
    assert_eq!(trailer_lines(&raw), ["x-checksum: x-req-sum=42"], "{raw}");
    assert_eq!((backend.accepted(), backend.handshakes.load(Ordering::SeqCst)), (1, 1), "one kept connection");

    backend.close_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = get(&server, "/after").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "k HTTP/1.1 GET /after"));
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_certificate_is_refused_is_retried_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let rogue = Ca::new(dir.path(), "rogue");
    let good = Backend::start("good", false, Some(server_tls(&ca.issue("good", &["127.0.0.1"]), &["h2"], None))).await;
    let bad = Backend::start("bad", false, Some(server_tls(&rogue.issue("bad", &["127.0.0.1"]), &["h2"], None))).await;
    let text = support::config_text(
        &[bad.addr, good.addr],
        &format!("upstream = {{ protocol = \"h2\", tls = {{ ca = {} }} }}", toml_path(&ca.pem())),
    );
    // One worker: one idle pool, so one HTTP/2 connection to the good backend.
    let server = support::start(&format!("{text}\n[runtime]\nworker_threads = 1\n")).await;
    for _ in 0..6 {
        let (status, body) = get(&server, "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.starts_with("good HTTP/2.0"), "{body}");
    }
    let snapshot = server.snapshot();
    let failures = snapshot.pools["p"].view.members[0].live.connect_failures.load(Ordering::SeqCst);
    assert!(failures >= 3, "the rogue backend was tried ({failures} refused handshakes)");
    assert_eq!(good.accepted(), 1, "the good backend's one HTTP/2 connection carried every request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_a_backend_that_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let clients = Ca::new(dir.path(), "client-ca");
    let leaf = ca.issue("backend", &["127.0.0.1"]);
    let backend = Backend::start("m", false, Some(server_tls(&leaf, &["h2", "http/1.1"], Some(&clients)))).await;

    // No client certificate: the backend refuses it. Under TLS 1.3 the client's side of
    // the handshake is over before the server has judged its certificate, so the refusal
    // (an alert, then the close) races the request being sent: the connection closed
    // before taking it (a connect failure, retryable elsewhere), or the request failed
    // with the alert or the broken connection. Either way a 502 naming the backend.
    let server =
        weir(&[backend.addr], &format!("{{ protocol = \"h2\", tls = {{ ca = {} }} }}", toml_path(&ca.pem()))).await;
    for _ in 0..5 {
        let (status, body) = get(&server, "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains(&backend.addr.to_string()), "{body}");
    }

    // A certificate from the CA it trusts: served.
    let weir_cert = clients.issue("weir", &["weir.test"]);
    let upstream = format!(
        "{{ protocol = \"h2\", tls = {{ ca = {}, cert = {}, key = {} }} }}",
        toml_path(&ca.pem()),
        toml_path(&weir_cert.cert),
        toml_path(&weir_cert.key)
    );
    let server = weir(&[backend.addr], &upstream).await;
    let (status, body) = get(&server, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("m HTTP/2.0"), "{body}");

    // A certificate from a CA it does not trust: refused.
    let stranger = ca.issue("stranger", &["weir.test"]);
    let upstream = format!(
        "{{ tls = {{ ca = {}, cert = {}, key = {} }} }}",
        toml_path(&ca.pem()),
        toml_path(&stranger.cert),
        toml_path(&stranger.key)
    );
    assert_eq!(get(&weir(&[backend.addr], &upstream).await, "/").await.0, StatusCode::BAD_GATEWAY);
}

#[test]
fn verify_false_is_logged_as_a_warning_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = support::config_text(&["127.0.0.1:1".parse().unwrap()], "upstream = { tls = { verify = false } }");
    std::fs::write(&path, text).unwrap();
    let warnings: Vec<_> = support::start_logs(&path).into_iter().filter(|v| v["level"] == "WARN").collect();
    let warned = warnings.iter().any(|w| {
        w["fields"]["pool"] == "p"
            && w["fields"]["message"].as_str().is_some_and(|m| m.contains("NOT verified"))
            && w["fields"]["at"].as_str().is_some_and(|at| at.ends_with("pool.p.upstream.tls"))
    });
    assert!(warned, "{warnings:?}");
}
