//! TLS termination on http listeners, with clients nobody here wrote (`curl` and
//! `openssl s_client`, installed by `.ci/run`) and a rustls client where a test must hold
//! a connection open: certificates by SNI, mTLS, certificates reloaded from disk and by
//! a reload while a connection stays open, and clients that send no good ClientHello;
//! WebSockets over HTTP/2 chosen by ALPN.
//! Certificates are made here with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::{self, Upstream};

/// A CA made for one test, and the certificates it signs, written as PEM in `dir`.
struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "weir test CA");
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, issuer: rcgen::Issuer::new(params, key) }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `FILE.pem` and `FILE.key`: a certificate with common name `cn` and these
    /// DNS names, signed by the CA.
    fn issue(&self, file: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Weir Tests");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.path(&format!("{file}.pem")), self.path(&format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Config: one TLS listener `main` on 127.0.0.1:0 in front of `backend`, with `tls` as
/// the listener's `tls` table.
fn tls_config(backend: SocketAddr, tls: &str) -> String {
    support::config_text(&[backend], "").replace("pool = \"p\"\n\n", &format!("pool = \"p\"\ntls = {tls}\n\n"))
}

/// [`tls_config`] with one certificate, `site.pem` for `site.test` (common name
/// `cert-1`), issued by `pki` now.
fn one_site(pki: &Pki, backend: SocketAddr) -> String {
    pki.issue("site", "cert-1", &["site.test"]);
    tls_config(backend, &format!("{{ certificates = {} }}", certificates(pki, &["site"])))
}

fn certificates(pki: &Pki, files: &[&str]) -> String {
    let list: Vec<String> = files
        .iter()
        .map(|f| format!("{{ cert = {:?}, key = {:?} }}", pki.path(&format!("{f}.pem")), pki.path(&format!("{f}.key"))))
        .collect();
    format!("[{}]", list.join(", "))
}

/// `openssl s_client` to `proxy` with `servername` (None: no SNI), verifying against
/// `ca`: whether the handshake and verification succeeded, and the subject it got.
async fn s_client(proxy: SocketAddr, servername: Option<&str>, ca: &Path) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &proxy.to_string(), "-verify_return_error", "-brief"]).arg("-CAfile").arg(ca);
    match servername {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.stdin(Stdio::null()).output()).await.unwrap().unwrap();
    // -brief reports on stderr.
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let subject = text.lines().find_map(|l| l.strip_prefix("Peer certificate: ")).unwrap_or("").to_owned();
    (out.status.success() && text.contains("Verification: OK"), subject)
}

/// `curl` over HTTPS to `proxy` as `name` (resolved to the proxy), trusting `ca`, with
/// `extra` arguments: (exit status, body).
async fn curl(proxy: SocketAddr, name: &str, path: &str, ca: &Path, extra: &[&str]) -> (i32, String) {
    let url = format!("https://{name}:{}{path}", proxy.port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &format!("{name}:{}:127.0.0.1", proxy.port())])
        .arg("--cacert")
        .arg(ca)
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A rustls client that trusts `ca`, optionally presenting a client certificate.
fn rustls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    rustls_client_alpn(ca, &[])
}

/// [`rustls_client`] offering `alpn`.
fn rustls_client_alpn(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The common name of the certificate a TLS connection got: the tests that look use
/// `cert-N`, found as it is written in the DER.
fn peer_cn(conn: &rustls::ClientConnection) -> String {
    let der = conn.peer_certificates().unwrap()[0].as_ref();
    let at = der.windows(5).position(|w| w == b"cert-").expect("a cert-N certificate");
    String::from_utf8_lossy(&der[at..at + 6]).into_owned()
}

/// A keep-alive HTTP/1.1 connection over TLS, with the certificate it got.
async fn open(
    proxy: SocketAddr,
    name: &str,
    ca: &Path,
) -> (hyper::client::conn::http1::SendRequest<support::Body>, String) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = rustls_client(ca).connect(server_name, tcp).await.unwrap();
    let cn = peer_cn(tls.get_ref().1);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    (send, cn)
}

/// An HTTP/2 connection over TLS (ALPN `h2`) to `proxy` as `name`; the certificate's CN.
async fn open_h2(
    proxy: SocketAddr,
    name: &str,
    ca: &Path,
) -> (hyper::client::conn::http2::SendRequest<support::Body>, String) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let tls = rustls_client_alpn(ca, &[b"h2"]).connect(server_name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()), "ALPN chose h2");
    let cn = peer_cn(tls.get_ref().1);
    let (send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, cn)
}

/// GETs `path` on an open HTTP/2 connection; the body text.
async fn get_h2(send: &mut hyper::client::conn::http2::SendRequest<support::Body>, name: &str, path: &str) -> String {
    send.ready().await.unwrap();
    let req = Request::get(format!("https://{name}{path}")).body(support::empty()).unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!((res.status().as_u16(), res.version()), (200, http::Version::HTTP_2));
    support::body_text(res).await
}

/// Each name gets its certificate (an exact name, a wildcard), any other name and a
/// client without SNI get the first one; curl's requests arrive with
/// `X-Forwarded-Proto: https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_names_certificate_and_the_first_by_default() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    pki.issue("default", "default.test", &["default.test"]);
    pki.issue("a", "a.test", &["a.test", "www.a.test"]);
    pki.issue("wild", "wild.test", &["*.wild.test"]);
    let server = support::start(&tls_config(
        up.addr,
        &format!("{{ certificates = {} }}", certificates(&pki, &["default", "a", "wild"])),
    ))
    .await;
    let proxy = server.addr("main").unwrap();

    let cases: [(Option<&str>, &str); 6] = [
        (Some("a.test"), "CN = a.test"),
        (Some("WWW.A.test"), "CN = a.test"),
        (Some("x.wild.test"), "CN = wild.test"),
        (Some("x.y.wild.test"), "CN = default.test"),
        (Some("elsewhere.org"), "CN = default.test"),
        (None, "CN = default.test"),
    ];
    for (sni, cn) in cases {
        let (ok, subject) = s_client(proxy, sni, &pki.ca()).await;
        assert!(ok, "SNI {sni:?}: handshake or verification failed ({subject:?})");
        assert!(subject.contains(cn), "SNI {sni:?} got {subject:?}, not {cn}");
    }
    let (code, body) = curl(proxy, "www.a.test", "/headers", &pki.ca(), &["--http1.1"]).await;
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("host: www.a.test"), "{body}");
    let stats = server.control().listener_stats("main").unwrap();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
}

/// ALPN: `curl --http2` is served HTTP/2 and `curl --http1.1` HTTP/1.1 on the same TLS
/// listener, and plugins see `http2` as the request's protocol (the `by-protocol`
/// fixture picks the backend labelled with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_gives_h2_to_curl_http2_and_http1_to_curl_http1() {
    let (h1, h2) = (Upstream::start("one").await, Upstream::start("two").await);
    let pki = Pki::new();
    pki.issue("site", "site.test", &["site.test"]);
    let text = format!(
        "[plugins]\ncache_dir = {:?}\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\ntls = {{ certificates = {} }}\n\n[pool.p]\nbackends = [{{ address = \"{}\", labels = {{ match = \"http1\" }} }}, {{ address = \"{}\", labels = {{ match = \"http2\" }} }}]\nbalancer = {{ plugin = {:?} }}\n",
        support::cache_dir().display().to_string(),
        certificates(&pki, &["site"]),
        h1.addr,
        h2.addr,
        support::fixture("by-protocol").display().to_string(),
    );
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let version = ["-w", "%{http_version}"];
    let (code, out) = curl(proxy, "site.test", "/p", &pki.ca(), &[&["--http2"][..], &version].concat()).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "two: GET /p\n2", "curl --http2 was served HTTP/2, and plugins saw http2");
    let (code, out) = curl(proxy, "site.test", "/p", &pki.ca(), &[&["--http1.1"][..], &version].concat()).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "one: GET /p\n1.1", "curl --http1.1 was served HTTP/1.1");
}

/// With `client_auth = "required"`, curl with a certificate the CA signed is served (and
/// its subject reaches the backend in the configured header, a client's own header of
/// that name dropped); curl without one, or with one from another CA, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_serves_verified_clients_and_refuses_the_rest() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    pki.issue("site", "site.test", &["site.test"]);
    pki.issue("alice", "alice", &[]);
    let stranger = Pki::new();
    let (scert, skey) = stranger.issue("mallory", "mallory", &[]);
    let tls = format!(
        "{{ certificates = {}, client_ca = {:?}, client_subject_header = \"X-Client-Subject\" }}",
        certificates(&pki, &["site"]),
        pki.ca()
    );
    let server = support::start(&tls_config(up.addr, &tls)).await;
    let proxy = server.addr("main").unwrap();
    let ca = pki.ca();
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let alice = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];

    let (code, body) =
        curl(proxy, "site.test", "/headers", &ca, &[&alice[..], &["-H", "X-Client-Subject: CN=admin"]].concat()).await;
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("x-client-subject: O=Weir Tests,CN=alice\n"), "{body}");
    assert!(!body.contains("CN=admin"), "the client's own header went through: {body}");

    let (code, body) = curl(proxy, "site.test", "/", &ca, &[]).await;
    assert_ne!(code, 0, "served without a client certificate: {body}");
    let (code, body) =
        curl(proxy, "site.test", "/", &ca, &["--cert", scert.to_str().unwrap(), "--key", skey.to_str().unwrap()]).await;
    assert_ne!(code, 0, "served with a certificate from another CA: {body}");
    let stats = server.control().listener_stats("main").unwrap();
    support::eventually("both refusals counted", || stats.refused.load(Ordering::Relaxed) == 2).await;
}

/// With `client_auth = "optional"`, a client without a certificate is served too, and
/// the header says nothing about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_serves_clients_without_a_certificate() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    pki.issue("site", "site.test", &["site.test"]);
    pki.issue("bob", "bob", &[]);
    let tls = format!(
        "{{ certificates = {}, client_ca = {:?}, client_auth = \"optional\", client_subject_header = \"x-client-subject\" }}",
        certificates(&pki, &["site"]),
        pki.ca()
    );
    let server = support::start(&tls_config(up.addr, &tls)).await;
    let proxy = server.addr("main").unwrap();
    let (code, body) = curl(proxy, "site.test", "/headers", &pki.ca(), &["-H", "x-client-subject: CN=forged"]).await;
    assert_eq!(code, 0, "{body}");
    assert!(!body.contains("x-client-subject"), "{body}");
    let (cert, key) = (pki.path("bob.pem"), pki.path("bob.key"));
    let (code, body) = curl(
        proxy,
        "site.test",
        "/headers",
        &pki.ca(),
        &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("x-client-subject: O=Weir Tests,CN=bob\n"), "{body}");
}

/// A certificate replaced on disk is served to the next handshake (the file watcher),
/// while a connection opened before keeps working; a file that does not load keeps the
/// certificate served; a reload (the SIGHUP path) reads the files again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swapped_on_disk_serve_new_handshakes_and_keep_open_connections() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    let text = one_site(&pki, up.addr);
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let ca = pki.ca();

    // An HTTP/2 connection (ALPN h2) stays open through every swap below.
    let (mut open_conn, cn) = open_h2(proxy, "site.test", &ca).await;
    assert_eq!(cn, "cert-1");
    assert!(get_h2(&mut open_conn, "site.test", "/").await.starts_with("b0: "));

    // Replaced as certificate tools do: new files renamed over the old ones.
    pki.issue("next", "cert-2", &["site.test"]);
    std::fs::rename(pki.path("next.key"), pki.path("site.key")).unwrap();
    std::fs::rename(pki.path("next.pem"), pki.path("site.pem")).unwrap();
    let started = Instant::now();
    loop {
        let (_, cn) = open(proxy, "site.test", &ca).await;
        if cn == "cert-2" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get_h2(&mut open_conn, "site.test", "/").await.starts_with("b0: "), "the open connection broke");

    // A broken file: the served certificate stays, on the watcher's reload and on a
    // reload of the config.
    std::fs::write(pki.path("site.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, cn) = open(proxy, "site.test", &ca).await;
    assert_eq!(cn, "cert-2", "a file that does not load replaced the certificate");

    // The reload path: a certificate written in place, read by a reload of the same
    // config (its file names unchanged). The watcher may see it first; either way the
    // reload reads the files and the next handshake gets it.
    pki.issue("third", "cert-3", &["site.test"]);
    std::fs::rename(pki.path("third.key"), pki.path("site.key")).unwrap();
    std::fs::rename(pki.path("third.pem"), pki.path("site.pem")).unwrap();
    let applied = server.reload(weir::config::Config::parse(&text, None).unwrap()).await.unwrap();
    assert_eq!((applied.tls_reloaded, applied.tls_failed), (1, 0), "{applied:?}");
    let (_, cn) = open(proxy, "site.test", &ca).await;
    assert_eq!(cn, "cert-3");
    assert!(get_h2(&mut open_conn, "site.test", "/").await.starts_with("b0: "), "the open connection broke");

    // A reload with a key that does not match its certificate keeps what is served.
    let (_, other_key) = pki.issue("other", "cert-x", &["site.test"]);
    std::fs::copy(other_key, pki.path("site.key")).unwrap();
    let applied = server.control().apply(vec![weir::control::Command::ReloadCertificates]).await.unwrap();
    assert_eq!((applied.tls_reloaded, applied.tls_failed), (0, 1), "{applied:?}");
    let error = &applied.tls_errors[0];
    assert!(
        error.starts_with("listener `main`: ") && error.contains(&pki.path("site.key").display().to_string()),
        "{error}"
    );
    let (_, cn) = open(proxy, "site.test", &ca).await;
    assert_eq!(cn, "cert-3");
}

/// `POST /api/v1/reload` reads every certificate file again. One that does not load
/// refuses the reload whole (`422`, the error naming the file at its place in the config)
/// and the listener keeps serving its certificate; once the file is good, the next reload
/// answers how many TLS listeners it reloaded and serves the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_reload_reads_certificates_again_and_refuses_a_file_that_does_not_load() {
    use hyper::Method;
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    let config = pki.path("weir.toml");
    let text = one_site(&pki, up.addr);
    std::fs::write(&config, format!("{}{text}", crate::admin::admin_table(""))).unwrap();
    let server = weir::Server::start(weir::config::Config::load(&config).unwrap()).await.unwrap();
    let (admin, proxy, ca) = (server.admin_addr().unwrap(), server.addr("main").unwrap(), pki.ca());
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-1");

    std::fs::write(pki.path("site.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let (status, body) = crate::admin::call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, http::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    let want = format!(
        "weir.toml:12:34: listener[0].tls.certificates[0].cert: {}: bad PEM: no `-----END CERTIFICATE-----` line",
        pki.path("site.pem").display()
    );
    assert!(error.ends_with(&want), "{body}");
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-1", "a file that does not load replaced the certificate");

    pki.issue("site", "cert-2", &["site.test"]);
    let (status, body) = crate::admin::call(admin, Method::POST, "/api/v1/reload", None, support::empty()).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert_eq!((body["tls_reloaded"].as_u64(), body["tls_failed"].as_u64()), (Some(1), Some(0)), "{body}");
    assert_eq!(body["tls_errors"], serde_json::json!([]), "{body}");
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-2");
}

/// The weir binary logs a certificate file that does not load with the file's name: when
/// its file watcher sees the change (the listener keeps its certificate), and at a SIGHUP,
/// which it refuses whole ("reload failed; config unchanged"); the listener serves its
/// certificate throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_a_certificate_file_that_does_not_load_by_name_on_change_and_on_sighup() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    let config = pki.path("weir.toml");
    let text = one_site(&pki, up.addr);
    std::fs::write(&config, &text).unwrap();
    let run = config.clone();
    let weir = tokio::task::spawn_blocking(move || support::Weir::run(&run)).await.unwrap();
    let (proxy, ca) = (weir.addr(), pki.ca());
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-1");

    let file = pki.path("site.pem").display().to_string();
    let logged = |message: &'static str| {
        let file = file.clone();
        move |v: &serde_json::Value| {
            v["level"] == "ERROR"
                && v["fields"]["message"].as_str().is_some_and(|m| m.starts_with(message))
                && v["fields"]["error"].as_str().is_some_and(|e| e.contains(&file))
        }
    };
    let wait = async |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never logged: {what}: {:?}",
                weir.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    std::fs::write(pki.path("site.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let watcher = logged("TLS certificates not reloaded");
    wait("the watcher's error naming the file", &|| weir.logged(&watcher) >= 1).await;
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-1");

    let pid = weir.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let refused = logged("reload failed; config unchanged");
    wait("the SIGHUP reload refused, naming the file", &|| weir.logged(&refused) >= 1).await;
    assert_eq!(open(proxy, "site.test", &ca).await.1, "cert-1");
}

/// Garbage, a ClientHello cut short and a client that sends nothing each cost one
/// connection (closed, counted in `refused`, never reaching a backend) while a real
/// client is served at the same time; the silent one is closed at the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_silent_client_hellos_cost_one_connection() {
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    pki.issue("site", "site.test", &["site.test"]);
    let tls = format!("{{ certificates = {}, handshake_timeout_ms = 500 }}", certificates(&pki, &["site"]));
    let server = support::start(&tls_config(up.addr, &tls)).await;
    let proxy = server.addr("main").unwrap();

    // A real ClientHello, from a client writing into a buffer.
    let hello = {
        let (mut client, server_side) = tokio::io::duplex(64 << 10);
        let connector = rustls_client(&pki.ca());
        let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
        tokio::spawn(async move { connector.connect(name, server_side).await });
        let mut buf = vec![0; 64 << 10];
        let n = client.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    };
    assert_eq!(hello[0], 0x16, "a handshake record");

    let mut silent = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    let mut garbage = TcpStream::connect(proxy).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n").await.unwrap();
    let mut truncated = TcpStream::connect(proxy).await.unwrap();
    truncated.write_all(&hello[..hello.len() / 2]).await.unwrap();
    truncated.shutdown().await.unwrap();
    let mut stalled = TcpStream::connect(proxy).await.unwrap();
    stalled.write_all(&hello[..hello.len() / 2]).await.unwrap();

    for (what, conn) in [("garbage", &mut garbage), ("truncated", &mut truncated)] {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await.unwrap();
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "{what} got an HTTP answer: {got:?}");
    }
    assert!(started.elapsed() < Duration::from_millis(450), "garbage and truncated were not refused at once");

    let (ok, subject) = s_client(proxy, Some("site.test"), &pki.ca()).await;
    assert!(ok, "a real client was not served: {subject}");
    let (code, body) = curl(proxy, "site.test", "/", &pki.ca(), &[]).await;
    assert_eq!(code, 0, "{body}");

    for (what, conn) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(450), "{what} closed before the handshake timeout");
    }
    let stats = server.control().listener_stats("main").unwrap();
    support::eventually("four refusals counted", || stats.refused.load(Ordering::Relaxed) == 4).await;
    let snapshot = server.snapshot();
    assert_eq!(snapshot.pools["p"].view.members[0].live.requests.load(Ordering::Relaxed), 1, "only curl's request");
}

/// A user-written plugin (`tests/fixtures/by-tls`) reads what the handshake learnt: the
/// verified client certificate's subject (`request.client-cert-subject`) and the SNI
/// (`request.sni`) route each request to its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_client_certificate_subject_and_the_sni() {
    let (alice_up, sni_up, other_up) =
        (Upstream::start("alice").await, Upstream::start("sni").await, Upstream::start("other").await);
    let pki = Pki::new();
    pki.issue("site", "site.test", &["site.test", "other.test"]);
    pki.issue("alice", "alice", &[]);
    let tls = format!(
        "{{ certificates = {}, client_ca = {:?}, client_auth = \"optional\" }}",
        certificates(&pki, &["site"]),
        pki.ca()
    );
    let text = format!(
        "[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\ntls = {tls}\n\n[pool.p]\nbalancer = {{ plugin = {:?} }}\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\", labels = {{ match = \"O=Weir Tests,CN=alice\" }} }}, {{ address = \"{}\", labels = {{ match = \"site.test\" }} }}]\n",
        support::cache_dir().display().to_string(),
        support::fixture("by-tls").display().to_string(),
        other_up.addr,
        alice_up.addr,
        sni_up.addr,
    );
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let alice = ["--http1.1", "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let (code, body) = curl(proxy, "other.test", "/", &pki.ca(), &alice).await;
    assert_eq!((code, support::name_of(&body)), (0, "alice"), "{body}");
    let (code, body) = curl(proxy, "site.test", "/", &pki.ca(), &["--http1.1"]).await;
    assert_eq!((code, support::name_of(&body)), (0, "sni"), "{body}");
    let (code, body) = curl(proxy, "other.test", "/", &pki.ca(), &["--http1.1"]).await;
    assert_eq!((code, support::name_of(&body)), (0, "other"), "{body}");
}

/// One request on a new TLS connection from `connector` (HTTP/1.1, read to the end of the
/// answer, so the TLS 1.3 tickets that came before it are in the connector's store): how
/// the handshake went, the key exchange group, and the body.
async fn get_once(
    proxy: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> (rustls::HandshakeKind, Option<rustls::NamedGroup>, String) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    let conn = tls.get_ref().1;
    let kind = conn.handshake_kind().unwrap();
    let group = conn.negotiated_key_exchange_group().map(|g| g.name());
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let res = send.send_request(Request::get("/").header("host", "site.test").body(support::empty()).unwrap());
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    (kind, group, support::body_text(res).await)
}

/// Clients resume their sessions: TLS 1.3 by a ticket sent after the handshake (PSK with
/// an X25519 exchange, the only mode rustls serves), TLS 1.2 by a ticket and, for a client
/// that takes no ticket, from the session cache; each one still resumes after the
/// certificates are reloaded (the ticket keys and the cache outlive the acceptor), while a
/// new client gets the new certificate in a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_and_tls12_sessions_resume_and_outlive_a_certificate_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    use rustls::client::{Resumption, Tls12Resumption};
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    pki.issue("site", "cert-1", &["site.test"]);
    let text =
        tls_config(up.addr, &format!("{{ certificates = {}, alpn = [\"http/1.1\"] }}", certificates(&pki, &["site"])));
    let server = support::start(&text).await;
    let proxy = server.addr("main").unwrap();

    // Each client keeps its sessions in its config's in-memory store.
    let client = |version: &'static rustls::SupportedProtocolVersion, tls12: Tls12Resumption| {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::in_memory_sessions(16).tls12_resumption(tls12);
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let clients = [
        ("TLS 1.3", client(&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets)),
        ("TLS 1.2, ticket", client(&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets)),
        ("TLS 1.2, session id", client(&rustls::version::TLS12, Tls12Resumption::SessionIdOnly)),
    ];
    for (what, connector) in &clients {
        let (kind, group, body) = get_once(proxy, connector).await;
        assert_eq!(kind, Full, "{what}: the first connection");
        assert!(body.starts_with("b0: "), "{what}: {body}");
        for _ in 0..2 {
            let (kind, group_now, body) = get_once(proxy, connector).await;
            assert_eq!(kind, Resumed, "{what}: a later connection");
            assert!(body.starts_with("b0: "), "{what}: {body}");
            if *what == "TLS 1.3" {
                // PSK with (EC)DHE: a key exchange took place, as in the full handshake.
                assert_eq!((group_now, group), (Some(rustls::NamedGroup::X25519), Some(rustls::NamedGroup::X25519)));
            }
        }
    }

    pki.issue("site", "cert-2", &["site.test"]);
    let applied = server.control().apply(vec![weir::control::Command::ReloadCertificates]).await.unwrap();
    assert_eq!((applied.tls_reloaded, applied.tls_failed), (1, 0), "{applied:?}");
    let (_, cn) = open(proxy, "site.test", &pki.ca()).await;
    assert_eq!(cn, "cert-2", "a new client gets the new certificate");
    for (what, connector) in &clients {
        let (kind, _, body) = get_once(proxy, connector).await;
        assert_eq!(kind, Resumed, "{what}: after the reload");
        assert!(body.starts_with("b0: "), "{what}: {body}");
    }
}

/// RFC 8441 on a TLS listener: on an HTTP/2 connection chosen by ALPN, an extended
/// CONNECT opens a WebSocket, bridged to the backend's HTTP/1.1 Upgrade, and it echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_h2_chosen_by_alpn_echoes_through_a_backend_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backend = weir::demo::spawn_backend("demo-w").await.unwrap();
    let pki = Pki::new();
    let server = support::start(&one_site(&pki, backend)).await;
    let live = server.snapshot().pools["p"].view.members[0].live.clone();
    let (mut send, _) = open_h2(server.addr("main").unwrap(), "site.test", &pki.ca()).await;
    // A first exchange, so the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) are in.
    get_h2(&mut send, "site.test", "/warm").await;
    support::eventually("the first exchange no longer counts", || live.active.load(Ordering::Relaxed) == 0).await;

    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://site.test/chat")
        .header("sec-websocket-version", "13")
        .body(support::empty())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let res = send.send_request(req).await.unwrap();
    assert_eq!((res.status(), res.version()), (http::StatusCode::OK, http::Version::HTTP_2));
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2 and TLS")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("demo-w: over h2 and TLS"));
    assert_eq!(live.active.load(Ordering::Relaxed), 1, "the tunnel counts as its backend's connection");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    support::eventually("the closed tunnel no longer counts", || live.active.load(Ordering::Relaxed) == 0).await;
}

/// The rapid-reset flood of `h2::a_rapid_reset_flood_is_cut_off_and_does_not_starve_other_clients`
/// on a TLS listener, HTTP/2 chosen by ALPN: the flooding connection gets GOAWAY
/// (`ENHANCE_YOUR_CALM`) while an honest HTTP/2 client over TLS is served throughout, and
/// few of the flood's streams ever reach the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_over_tls_is_cut_off_and_does_not_starve_other_clients() {
    use crate::h2::ENHANCE_YOUR_CALM;
    let up = Upstream::start("b0").await;
    let pki = Pki::new();
    let server = support::start(&one_site(&pki, up.addr)).await;
    let proxy = server.addr("main").unwrap();
    let live = server.snapshot().pools["p"].view.members[0].live.clone();
    let ca = pki.ca();

    let flood = crate::h2::rapid_reset_flood();
    let attacker = async {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
        let tls = rustls_client_alpn(&ca, &[b"h2"]).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        let (mut read, mut write) = tokio::io::split(tls);
        let writer = tokio::spawn(async move {
            // The server may close before all of it is out.
            let _ = write.write_all(&flood).await;
            let _ = write.flush().await;
            write
        });
        let code = crate::h2::until_goaway(&mut read, Duration::from_secs(20)).await;
        drop(writer);
        code
    };
    let honest = async {
        let (mut send, _) = open_h2(proxy, "site.test", &ca).await;
        for i in 0..200 {
            assert!(get_h2(&mut send, "site.test", &format!("/honest/{i}")).await.starts_with("b0: "));
        }
    };
    let (code, ()) = tokio::join!(attacker, honest);
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "the flooding connection gets GOAWAY (ENHANCE_YOUR_CALM)");
    let forwarded = live.requests.load(Ordering::Relaxed);
    assert!(forwarded < 200 + 1000, "{forwarded} requests reached the backend");
}
