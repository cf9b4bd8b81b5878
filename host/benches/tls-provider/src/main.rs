//! In-memory TLS handshakes (client and server in one thread), the server side timed
//! apart in the thread's CPU time: the cost of a full and a resumed handshake with one
//! rustls crypto provider, ECDSA P-256 certificate, X25519 (what curl and OpenSSL 3.0
//! offer). Usage: `tls-provider-bench ring|aws 1.3|1.2 HANDSHAKES`.
use std::sync::Arc;
use std::time::Duration;
#[derive(Clone, Copy)]
struct Instant(Duration);
impl Instant {
    fn now() -> Self {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Instant(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }
    fn elapsed(&self) -> Duration {
        Instant::now().0 - self.0
    }
}
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

fn pump(c: &mut ClientConnection, s: &mut ServerConnection, server_time: &mut Duration) {
    let mut buf = Vec::with_capacity(16 << 10);
    loop {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            moved = true;
            let t = Instant::now();
            let mut r = &buf[..];
            while !r.is_empty() {
                s.read_tls(&mut r).unwrap();
                s.process_new_packets().unwrap();
            }
            *server_time += t.elapsed();
        }
        let t = Instant::now();
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        *server_time += t.elapsed();
        if !out.is_empty() {
            moved = true;
            let mut r = &out[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        if !moved && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        if !moved {
            break;
        }
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "ring".into());
    let tls13 = std::env::args().nth(2).map_or(true, |v| v == "1.3");
    let n: usize = std::env::args().nth(3).map_or(2000, |v| v.parse().unwrap());
    let mut provider: CryptoProvider = match which.as_str() {
        "ring" => rustls::crypto::ring::default_provider(),
        _ => rustls::crypto::aws_lc_rs::default_provider(),
    };
    // What curl/OpenSSL 3.0 offers: X25519 first (no post-quantum hybrid).
    provider.kx_groups.retain(|g| g.name() == rustls::NamedGroup::X25519);
    let provider = Arc::new(provider);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".into()]).unwrap().self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let kder = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], kder)
        .unwrap();
    sc.ticketer = match which.as_str() {
        "ring" => rustls::crypto::ring::Ticketer::new().unwrap(),
        _ => rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
    };
    let sc = Arc::new(sc);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mk_client = || {
        Arc::new(
            ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        )
    };
    let name = ServerName::try_from("bench.test").unwrap();
    for resumed in [false, true] {
        let shared = mk_client();
        let mut st = Duration::ZERO;
        let total = Instant::now();
        for i in 0..n + 1 {
            let cc = if resumed { shared.clone() } else { mk_client() };
            let mut c = ClientConnection::new(cc, name.clone()).unwrap();
            let mut s = ServerConnection::new(sc.clone()).unwrap();
            let mut t = Duration::ZERO;
            pump(&mut c, &mut s, &mut t);
            // Send one byte so TLS 1.3 tickets arrive.
            use std::io::Write;
            c.writer().write_all(b"x").unwrap();
            pump(&mut c, &mut s, &mut t);
            assert!(!c.is_handshaking() && !s.is_handshaking());
            if resumed && i > 0 {
                assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            }
            if i > 0 {
                st += t;
            }
        }
        println!(
            "{which} tls{} {}: server {:.1} us/handshake ({:.0}/s), client+server CPU {:.1} us",
            if tls13 { "1.3" } else { "1.2" },
            if resumed { "resumed" } else { "full" },
            st.as_secs_f64() * 1e6 / n as f64,
            n as f64 / st.as_secs_f64(),
            total.elapsed().as_secs_f64() * 1e6 / (n + 1) as f64
        );
    }
}
