use std::process::Stdio;
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::{ClientHello, MAX_HELLO, PEEK_MAX, parse_client_hello, peek_sni};
use crate::net::peek::{PeekError, Peeked};

fn push16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A `server_name` extension with the given (raw) host names.
fn sni_ext(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.push(0);
        push16(&mut list, name);
    }
    let mut data = Vec::new();
    push16(&mut data, &list);
    let mut ext = vec![0, 0];
    push16(&mut ext, &data);
    ext
}

fn alpn_ext(names: &[&str]) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.push(u8::try_from(name.len()).unwrap());
        list.extend_from_slice(name.as_bytes());
    }
    let mut data = Vec::new();
    push16(&mut data, &list);
    let mut ext = vec![0, 16];
    push16(&mut ext, &data);
    ext
}

/// A ClientHello handshake message (with its 4-byte header) carrying `extensions`
/// between a GREASE value and `supported_versions`, as browsers send them (without
/// `signature_algorithms`, which a TLS-terminating server could require but routing must not).
fn message_with(extensions: &[Vec<u8>]) -> Vec<u8> {
    let mut ext = vec![0x0a, 0x0a, 0, 0];
    for e in extensions {
        ext.extend_from_slice(e);
    }
    ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(32);
    body.extend_from_slice(&[1; 32]); // session id
    push16(&mut body, &[0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[1, 0]); // compression: null
    push16(&mut body, &ext);
    let mut message = vec![1];
    message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    message
}

fn message(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = sni {
        extensions.push(sni_ext(&[name.as_bytes()]));
    }
    if !alpn.is_empty() {
        extensions.push(alpn_ext(alpn));
    }
    message_with(&extensions)
}

/// `message` cut into handshake records of the given payload sizes (the last record takes
/// what is left).
fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
        out.extend_from_slice(&[22, 3, 1]);
        push16(&mut out, &rest[..n]);
        rest = &rest[n..];
    }
    out
}

fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
    ClientHello { sni: sni.map(str::to_owned), alpn: alpn.iter().map(|s| s.to_string()).collect() }
}

fn assert_invalid(buf: &[u8]) -> &'static str {
    match parse_client_hello(buf) {
        Peeked::Invalid(reason) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn one_record_gives_the_lower_cased_name_and_alpn() {
    let wire = records(&message(Some("DB.Example.com"), &["h2", "http/1.1"]), &[]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &["h2", "http/1.1"])));
}

#[test]
fn every_prefix_needs_more_and_what_follows_is_ignored() {
    let mut wire = records(&message(Some("db.example.com"), &[]), &[]);
    for n in 0..wire.len() {
        assert_eq!(parse_client_hello(&wire[..n]), Peeked::NeedMore, "prefix of {n} bytes");
    }
    // Application bytes (or anything) after the hello do not matter.
    wire.extend_from_slice(b"\x17\x03\x03garbage");
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &[])));
}

#[test]
fn a_hello_split_over_two_records() {
    let message = message(Some("db.example.com"), &["h2"]);
    let wire = records(&message, &[message.len() / 2]);
    assert_eq!(wire.len(), message.len() + 10);
    for n in 0..wire.len() {
        assert_eq!(parse_client_hello(&wire[..n]), Peeked::NeedMore, "prefix of {n} bytes");
    }
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &["h2"])));
    // The handshake header itself split between records.
    let wire = records(&message, &[2]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &["h2"])));
}

#[test]
fn a_hello_in_one_byte_records() {
    let message = message(Some("db.example.com"), &[]);
    let wire = records(&message, &vec![1; message.len()]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &[])));
    // Cut inside any record header or payload, it asks for more rather than failing.
    for n in 0..wire.len() {
        assert_eq!(parse_client_hello(&wire[..n]), Peeked::NeedMore, "prefix of {n} bytes");
    }
}

/// A `padding` extension (RFC 7685) of `n` zero bytes.
fn padding_ext(n: usize) -> Vec<u8> {
    let mut ext = vec![0, 21];
    push16(&mut ext, &vec![0; n]);
    ext
}

#[test]
fn a_hello_of_the_largest_size_fits_the_peek_limit() {
    let small = message_with(&[sni_ext(&[b"db.example.com"]), padding_ext(0)]);
    let pad = MAX_HELLO + 4 - small.len();
    let largest = message_with(&[sni_ext(&[b"db.example.com"]), padding_ext(pad)]);
    assert_eq!(largest.len(), MAX_HELLO + 4);
    let wire = records(&largest, &[1 << 14]);
    assert_eq!(wire.len(), PEEK_MAX);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &[])));
    for n in [0, 4095, 4096, 4097, 8192, 1 << 14, (1 << 14) + 5, (1 << 14) + 7, PEEK_MAX - 1] {
        assert_eq!(parse_client_hello(&wire[..n]), Peeked::NeedMore, "prefix of {n} bytes");
    }
    // One byte more is refused from the handshake header.
    let over = message_with(&[sni_ext(&[b"db.example.com"]), padding_ext(pad + 1)]);
    assert_eq!(assert_invalid(&records(&over, &[1 << 14])[..9]), "ClientHello longer than the limit");
}

#[test]
fn what_follows_the_hello_in_its_own_record_is_ignored() {
    // No client sends more before the server's reply; the backend judges it.
    let mut message = message(Some("db.example.com"), &[]);
    message.extend_from_slice(&[20, 0, 0, 0]);
    assert_eq!(parse_client_hello(&records(&message, &[])), Peeked::Done(hello(Some("db.example.com"), &[])));
}

#[test]
fn a_hello_without_sni_or_without_any_extension() {
    let wire = records(&message(None, &["http/1.1"]), &[]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(None, &["http/1.1"])));

    // A TLS 1.0 hello without extensions (so without `signature_algorithms`, which rustls
    // requires): no SNI and no ALPN, the default route.
    let mut body = vec![3, 1];
    body.extend_from_slice(&[9; 32]);
    body.push(0);
    push16(&mut body, &[0, 0x2f]);
    body.extend_from_slice(&[1, 0]);
    let mut message = vec![1, 0, 0, u8::try_from(body.len()).unwrap()];
    message.extend_from_slice(&body);
    assert_eq!(parse_client_hello(&records(&message, &[])), Peeked::Done(ClientHello::default()));
}

#[test]
fn garbage_is_invalid_from_its_first_bytes() {
    assert_eq!(assert_invalid(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "not a TLS handshake record");
    assert_eq!(assert_invalid(b"G"), "not a TLS handshake record");
    assert_eq!(assert_invalid(b"\x17\x03\x03\x00\x10"), "not a TLS handshake record");
    // An SSLv2-compatible hello.
    assert_eq!(assert_invalid(b"\x80\x2e\x01\x03\x01"), "not a TLS handshake record");
    assert_eq!(assert_invalid(b"\x16\x02"), "not a TLS record version (3.x)");
    assert_eq!(assert_invalid(b"\x16\x03\x01\x00\x00"), "empty handshake record");
    // A handshake record, then a record of another type in the middle of the hello.
    let message = message(Some("db.example.com"), &[]);
    let mut wire = records(&message[..10], &[]);
    wire.extend_from_slice(b"\x17\x03\x03\x00\x01x");
    assert_eq!(assert_invalid(&wire), "not a TLS handshake record");
    assert_eq!(assert_invalid(b"\x16\x03\x01\x40\x01"), "TLS record longer than 2^14 bytes");
    // A ServerHello, not a ClientHello.
    assert_eq!(assert_invalid(b"\x16\x03\x03\x00\x10\x02"), "the first handshake message is not a ClientHello");
}

#[test]
fn a_hello_over_the_limit_is_refused_from_its_header() {
    let too_long = u32::try_from(MAX_HELLO + 1).unwrap().to_be_bytes();
    let wire = [22, 3, 1, 0x40, 0, 1, too_long[1], too_long[2], too_long[3]];
    assert_eq!(assert_invalid(&wire), "ClientHello longer than the limit");
    let at_limit = u32::try_from(MAX_HELLO).unwrap().to_be_bytes();
    let wire = [22, 3, 1, 0x40, 0, 1, at_limit[1], at_limit[2], at_limit[3]];
    assert_eq!(parse_client_hello(&wire), Peeked::NeedMore);
}

#[test]
fn inconsistent_lengths_are_invalid() {
    // The handshake length one short: the extensions run past it.
    let mut short = message(Some("db.example.com"), &[]);
    short[3] -= 1;
    short.pop();
    assert_eq!(assert_invalid(&records(&short, &[])), "malformed ClientHello");
    // One byte too many: trailing bytes after the extensions.
    let mut long = message(Some("db.example.com"), &[]);
    long[3] += 1;
    long.push(0);
    assert_eq!(assert_invalid(&records(&long, &[])), "malformed ClientHello");
}

/// Host names are read as rustls reads them (so as a TLS-terminating listener will): a
/// trailing dot is dropped (the name routes as without it), an IP literal is taken for no
/// name (the default route, as for a client that sends none), and a last label that is all
/// digits is refused.
#[test]
fn names_that_are_not_host_names_are_invalid() {
    for bad in [
        &b"db example.com"[..],
        b"db..example.com",
        b"-db.example.com",
        b"db-.example.com",
        b"\xc3\xa9t\xc3\xa9.example",
        b"db.example.com\0",
        b"db.example.123",
        b"",
        b".",
        &[b'a'; 64],
        format!("{}ab", "a.".repeat(126)).as_bytes(),
    ] {
        let wire = records(&message_with(&[sni_ext(&[bad])]), &[]);
        assert_eq!(parse_client_hello(&wire), Peeked::Invalid("server_name is not a valid host name"), "{bad:?}");
    }
    for good in
        ["a", "_dmarc.example.com", "xn--bcher-kva.example", "1.2.3.4.example", "db.0x1f", "a".repeat(63).as_str()]
    {
        let wire = records(&message_with(&[sni_ext(&[good.as_bytes()])]), &[]);
        assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some(good), &[])), "{good}");
    }
    let wire = records(&message_with(&[sni_ext(&[b"DB.example.com."])]), &[]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("db.example.com"), &[])));
    for ip in [&b"127.0.0.1"[..], b"::1"] {
        let wire = records(&message_with(&[sni_ext(&[ip])]), &[]);
        assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(None, &[])), "{ip:?}");
    }
}

#[test]
fn ambiguous_names_are_invalid() {
    let one = sni_ext(&[b"a.example"]);
    let wire = records(&message_with(&[one.clone(), one]), &[]);
    assert_eq!(assert_invalid(&wire), "two server_name extensions");
    let wire = records(&message_with(&[sni_ext(&[b"a.example", b"b.example"])]), &[]);
    assert_eq!(assert_invalid(&wire), "two host names in server_name");
    let wire = records(&message_with(&[sni_ext(&[])]), &[]);
    assert_eq!(assert_invalid(&wire), "server_name without a host name");
    // Only a name of another (undefined) type: skipped, so no host name.
    let mut other = sni_ext(&[b"a.example"]);
    other[6] = 1;
    let wire = records(&message_with(&[other]), &[]);
    assert_eq!(assert_invalid(&wire), "server_name without a host name");
    let wire = records(&message_with(&[alpn_ext(&["h2"]), alpn_ext(&["h2"])]), &[]);
    assert_eq!(assert_invalid(&wire), "two ALPN extensions");
}

/// `ext` with its list's length (bytes 4..6) grown by `extra` bytes, which are appended.
fn with_trailing_bytes(mut ext: Vec<u8>, extra: &[u8]) -> Vec<u8> {
    for at in [2, 4] {
        let len = u16::from_be_bytes([ext[at], ext[at + 1]]) + u16::try_from(extra.len()).unwrap();
        ext[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
    ext.extend_from_slice(extra);
    ext
}

/// tls-parser's list parsers stop quietly at an entry that does not fit; the glue refuses
/// what they leave.
#[test]
fn lists_with_bytes_that_fit_no_entry_are_invalid() {
    // A host name, then the start of a second one.
    let sni = with_trailing_bytes(sni_ext(&[b"a.example"]), &[0, 0, 9, b'b']);
    assert_eq!(assert_invalid(&records(&message_with(&[sni]), &[])), "malformed server_name");
    // The list shorter than the extension.
    let mut sni = sni_ext(&[b"a.example"]);
    sni[3] += 1;
    sni.push(0);
    assert_eq!(assert_invalid(&records(&message_with(&[sni]), &[])), "malformed server_name");
    let alpn = with_trailing_bytes(alpn_ext(&["h2"]), &[5, b'h']);
    assert_eq!(assert_invalid(&records(&message_with(&[alpn]), &[])), "malformed ALPN protocol list");
    let alpn = with_trailing_bytes(alpn_ext(&["h2"]), &[0]);
    assert_eq!(assert_invalid(&records(&message_with(&[alpn]), &[])), "malformed ALPN protocol list");
    assert_eq!(assert_invalid(&records(&message_with(&[alpn_ext(&[])]), &[])), "malformed ALPN protocol list");
    // An extension whose length runs past the others.
    let mut ext = sni_ext(&[b"a.example"]);
    ext[3] += 40;
    assert_eq!(assert_invalid(&records(&message_with(&[ext]), &[])), "malformed ClientHello");
}

/// Extensions other than server_name and ALPN are not decoded: one that tls-parser's own
/// decoder would refuse (`encrypt_then_mac` must be empty) is the backend's to judge.
#[test]
fn other_extensions_are_not_judged() {
    let odd = vec![0, 22, 0, 1, 7];
    let wire = records(&message_with(&[odd, sni_ext(&[b"a.example"])]), &[]);
    assert_eq!(parse_client_hello(&wire), Peeked::Done(hello(Some("a.example"), &[])));
}

/// Runs `openssl s_client` with `args` against a plain listener and peeks its hello.
async fn openssl_hello(args: &[&str]) -> ClientHello {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = tokio::process::Command::new("/usr/bin/openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed (by .ci/run)");
    let (mut stream, _) = listener.accept().await.unwrap();
    let hello = peek_sni(&stream, Duration::from_secs(10), PEEK_MAX).await.unwrap();
    // Nothing was consumed: the record header is still there.
    let mut head = [0; 3];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..2], &[22, 3]);
    drop(stream);
    child.kill().await.unwrap();
    hello
}

#[tokio::test]
async fn a_real_hello_from_openssl() {
    let hello = openssl_hello(&["-servername", "DB.example.com", "-alpn", "h2,http/1.1"]).await;
    assert_eq!(hello, self::hello(Some("db.example.com"), &["h2", "http/1.1"]));
    let hello = openssl_hello(&["-noservername", "-tls1_2"]).await;
    assert_eq!(hello, ClientHello::default());
}

#[tokio::test]
async fn peek_sni_waits_for_a_hello_in_pieces_and_times_out_on_half_a_hello() {
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = crate::net::peek::tests::pair().await;
    let wire = records(&message(Some("db.example.com"), &[]), &[40]);
    let (a, b) = wire.split_at(30);
    let b = b.to_vec();
    client.write_all(a).await.unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        client.write_all(&b).await.unwrap();
        client
    });
    let got = peek_sni(&server, Duration::from_secs(10), PEEK_MAX).await.unwrap();
    assert_eq!(got.sni.as_deref(), Some("db.example.com"));
    drop(writer.await.unwrap());

    let (mut client, server) = crate::net::peek::tests::pair().await;
    client.write_all(&wire[..30]).await.unwrap();
    let err = peek_sni(&server, Duration::from_millis(50), PEEK_MAX).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout { received: 30, .. }), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_client_hello(&bytes);
        // And behind a valid record and handshake header, so the hello parser sees them.
        let mut message = vec![1, 0];
        message.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        message.extend_from_slice(&bytes);
        let _ = parse_client_hello(&records(&message, &[]));
    }

    #[test]
    fn a_valid_hello_cut_and_split_anywhere(
        // Labels start with a letter: a last label of digits (like an IPv4's) is refused.
        name in "[a-zA-Z][a-zA-Z0-9]{0,19}(\\.[a-z]([a-z0-9_-]{0,10}[a-z0-9])?){0,4}",
        alpn in prop::collection::vec("[a-z0-9/.]{1,12}", 0..4),
        sizes in prop::collection::vec(1usize..200, 0..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let alpn: Vec<&str> = alpn.iter().map(String::as_str).collect();
        let wire = records(&message(Some(&name), &alpn), &sizes);
        let expected = hello(Some(&name.to_ascii_lowercase()), &alpn);
        prop_assert_eq!(parse_client_hello(&wire), Peeked::Done(expected));
        prop_assert_eq!(parse_client_hello(&wire[..cut.index(wire.len())]), Peeked::NeedMore);
    }

    #[test]
    fn a_valid_hello_with_a_byte_changed_never_panics(
        sizes in prop::collection::vec(1usize..200, 0..4),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut wire = records(&message(Some("db.example.com"), &["h2"]), &sizes);
        let at = at.index(wire.len());
        wire[at] = byte;
        let _ = parse_client_hello(&wire);
    }
}
