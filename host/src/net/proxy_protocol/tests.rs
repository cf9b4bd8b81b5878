use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::expect::{Accept, ProxyError, parse, read_header};
use super::send::encode;
use super::{ProxyHeader, V1_MAX, V2_MAX, Version};
use crate::net::peek::tests::pair;
use crate::net::peek::{PeekError, Peeked};

const ALL: [Accept; 3] = [Accept::V1, Accept::V2, Accept::Any];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn header(version: Version, source: &str, destination: &str) -> ProxyHeader {
    ProxyHeader { source: Some(addr(source)), destination: Some(addr(destination)), version }
}

fn unknown(version: Version) -> ProxyHeader {
    ProxyHeader { source: None, destination: None, version }
}

fn done(buf: &[u8], accept: Accept) -> (ProxyHeader, usize) {
    match parse(buf, accept) {
        Peeked::Done(d) => d,
        other => panic!("expected a header in {:?}, got {other:?}", buf.escape_ascii().to_string()),
    }
}

fn invalid(buf: &[u8], accept: Accept) -> &'static str {
    match parse(buf, accept) {
        Peeked::Invalid(reason) => reason,
        other => panic!("expected Invalid for {:?}, got {other:?}", buf.escape_ascii().to_string()),
    }
}

/// A v2 header: version and command byte, family and transport byte, then `block`.
fn v2(version_command: u8, family_transport: u8, block: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[version_command, family_transport]);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

#[test]
fn round_trips_of_both_versions_and_families() {
    for version in [Version::V1, Version::V2] {
        let accept = if version == Version::V1 { Accept::V1 } else { Accept::V2 };
        for (source, destination) in [
            ("192.168.0.1:56324", "192.168.0.11:443"),
            ("[2001:db8::1]:65535", "[2001:db8::2]:0"),
            ("[::1]:1", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80"),
        ] {
            let wire = encode(version, addr(source), addr(destination));
            let mut buf = wire.as_bytes().to_vec();
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
            for accept in [accept, Accept::Any] {
                assert_eq!(done(&buf, accept), (header(version, source, destination), wire.as_bytes().len()));
            }
        }
    }
}

#[test]
fn mapped_addresses_are_canonicalised_both_ways() {
    // Written as IPv4 when both ends are IPv4 in either form.
    let wire = encode(Version::V1, addr("[::ffff:10.0.0.1]:1000"), addr("10.0.0.2:80"));
    assert_eq!(wire.as_bytes(), b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n");
    let wire = encode(Version::V2, addr("[::ffff:10.0.0.1]:1000"), addr("10.0.0.2:80"));
    assert_eq!(wire.as_bytes()[13], 0x11);
    // Mixed families: IPv6, the IPv4 end mapped, in hexadecimal groups only.
    let wire = encode(Version::V1, addr("10.0.0.1:1000"), addr("[2001:db8::2]:80"));
    assert_eq!(wire.as_bytes(), b"PROXY TCP6 ::ffff:a00:1 2001:db8::2 1000 80\r\n");
    assert_eq!(done(wire.as_bytes(), Accept::V1).0, header(Version::V1, "10.0.0.1:1000", "[2001:db8::2]:80"));
    let wire = encode(Version::V2, addr("10.0.0.1:1000"), addr("[2001:db8::2]:80"));
    assert_eq!(done(wire.as_bytes(), Accept::V2).0, header(Version::V2, "10.0.0.1:1000", "[2001:db8::2]:80"));
    // An IPv4-compatible address (deprecated, not mapped) stays IPv6, written in hexadecimal.
    let wire = encode(Version::V1, addr("[::102:304]:1"), addr("[::1]:2"));
    assert_eq!(wire.as_bytes(), b"PROXY TCP6 ::102:304 ::1 1 2\r\n");
    // Received mapped addresses come out as IPv4.
    let line = b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:c000:202 5 6\r\n";
    assert_eq!(done(line, Accept::V1).0, header(Version::V1, "192.0.2.1:5", "192.0.2.2:6"));
}

#[test]
fn the_spec_examples() {
    let with_request = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    assert_eq!(done(with_request, Accept::V1), (header(Version::V1, "192.168.0.1:56324", "192.168.0.11:443"), 47));
    let longest4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(longest4.len(), 56);
    assert_eq!(done(longest4, Accept::V1).1, 56);
    let longest6 =
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(longest6.len(), 104);
    assert_eq!(done(longest6, Accept::Any).1, 104);
    assert_eq!(done(b"PROXY UNKNOWN\r\n", Accept::V1), (unknown(Version::V1), 15));
    // The worst case: UNKNOWN with addresses, ignored, in exactly 107 bytes.
    let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(worst.len(), V1_MAX);
    assert_eq!(done(worst, Accept::Any), (unknown(Version::V1), V1_MAX));
    // v2, TCP over IPv4 with the block of the spec's `proxy_addr` union.
    let wire = v2(0x21, 0x11, &[192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb]);
    assert_eq!(done(&wire, Accept::V2), (header(Version::V2, "192.168.0.1:56324", "192.168.0.11:443"), 28));
}

#[test]
fn v2_local_unspec_unix_and_tlvs() {
    // LOCAL, no address: the real endpoints are to be used.
    assert_eq!(done(&v2(0x20, 0x00, &[]), Accept::V2), (unknown(Version::V2), 16));
    // LOCAL with an address block anyway: skipped, the family ignored.
    let block = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    assert_eq!(done(&v2(0x20, 0x11, &block), Accept::V2), (unknown(Version::V2), 28));
    assert_eq!(done(&v2(0x20, 0x12, &block), Accept::V2), (unknown(Version::V2), 28));
    // PROXY with AF_UNSPEC, AF_UNIX, or an unspecified transport: no usable address.
    assert_eq!(done(&v2(0x21, 0x00, &[]), Accept::V2), (unknown(Version::V2), 16));
    assert_eq!(done(&v2(0x21, 0x31, &[b'/'; 216]), Accept::V2), (unknown(Version::V2), 232));
    assert_eq!(done(&v2(0x21, 0x10, &block), Accept::Any), (unknown(Version::V2), 28));
    // TLVs after the addresses are skipped: ALPN "h2", a NOOP, and a CRC32C (not checked).
    let mut with_tlvs = block.to_vec();
    with_tlvs.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 0, 0x03, 0, 4, 1, 2, 3, 4]);
    let wire = v2(0x21, 0x11, &with_tlvs);
    assert_eq!(done(&wire, Accept::V2), (header(Version::V2, "10.0.0.1:1", "10.0.0.2:2"), 16 + 12 + 15));
    // A mapped IPv6 block comes out as IPv4.
    let mut block6 = Vec::new();
    block6.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets());
    block6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    block6.extend_from_slice(&[0, 7, 0, 8]);
    assert_eq!(done(&v2(0x21, 0x21, &block6), Accept::V2).0, header(Version::V2, "10.0.0.1:7", "[::1]:8"));
}

#[test]
fn v2_refusals() {
    let block = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    assert_eq!(invalid(&v2(0x11, 0x11, &block), Accept::V2), "PROXY v2 header with a version other than 2");
    assert_eq!(invalid(&v2(0x22, 0x11, &block), Accept::V2), "PROXY v2 command is neither LOCAL nor PROXY");
    assert_eq!(invalid(&v2(0x21, 0x41, &block), Accept::V2), "PROXY v2 family or transport is not defined");
    assert_eq!(invalid(&v2(0x21, 0x13, &block), Accept::V2), "PROXY v2 family or transport is not defined");
    assert_eq!(invalid(&v2(0x21, 0x12, &block), Accept::V2), "PROXY v2 header for a datagram connection on a stream");
    assert_eq!(invalid(&v2(0x21, 0x11, &block[..11]), Accept::V2), "PROXY v2 IPv4 address block too short");
    assert_eq!(invalid(&v2(0x21, 0x21, &[0; 35]), Accept::V2), "PROXY v2 IPv6 address block too short");
    // Refused from the fixed part, before the block arrives.
    let len = u16::try_from(V2_MAX - 15).unwrap().to_be_bytes();
    let fixed = [&b"\r\n\r\n\0\r\nQUIT\n\x21\x11"[..], &len].concat();
    assert_eq!(invalid(&fixed, Accept::V2), "PROXY v2 header longer than the limit");
    let len = u16::try_from(V2_MAX - 16).unwrap().to_be_bytes();
    let fixed = [&b"\r\n\r\n\0\r\nQUIT\n\x21\x11"[..], &len].concat();
    assert_eq!(parse(&fixed, Accept::V2), Peeked::NeedMore);
    // One wrong byte of the signature.
    assert_eq!(invalid(b"\r\n\r\n\0\r\nQUIX", Accept::Any), "not a PROXY protocol v2 header");
}

#[test]
fn v1_refusals() {
    for (line, reason) in [
        (
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n"[..],
            "PROXY v1 port is not a decimal number without leading zeroes",
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n",
            "PROXY v1 port is not a decimal number without leading zeroes",
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +80 443\r\n",
            "PROXY v1 port is not a decimal number without leading zeroes",
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 80 \r\n",
            "PROXY v1 port is not a decimal number without leading zeroes",
        ),
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n", "PROXY v1 port is over 65535"),
        (b"PROXY TCP4 192.168.0.01 192.168.0.11 1 443\r\n", "PROXY v1 TCP4 address is not IPv4"),
        (b"PROXY TCP4 ::1 ::1 1 443\r\n", "PROXY v1 TCP4 address is not IPv4"),
        (b"PROXY TCP6 127.0.0.1 ::1 1 443\r\n", "PROXY v1 TCP6 address is not IPv6"),
        (b"PROXY tcp4 127.0.0.1 127.0.0.1 1 443\r\n", "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UDP4 127.0.0.1 127.0.0.1 1 443\r\n", "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4  127.0.0.1 127.0.0.1 1 443\r\n", "PROXY v1 line has too many fields"),
        (b"PROXY TCP4  127.0.0.1 127.0.0.1 1\r\n", "PROXY v1 TCP4 address is not IPv4"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n", "PROXY v1 line has too few fields"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2 3\r\n", "PROXY v1 line has too many fields"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1 443\n", "PROXY v1 line not ended by CRLF"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1 443\rX", "PROXY v1 line not ended by CRLF"),
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1 \xff\r\n", "PROXY v1 line is not ASCII"),
        (b"PROXY UNKNOWNX\r\n", "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
        (b"PROXY\r\n", "not a PROXY protocol v1 header"),
        (b"proxy ", "not a PROXY protocol v1 header"),
    ] {
        assert_eq!(invalid(line, Accept::V1), reason, "{}", line.escape_ascii());
    }
    // No CRLF within 107 bytes.
    let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
    assert_eq!(invalid(&long, Accept::V1), "PROXY v1 line longer than 107 bytes");
    let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 92], b"\r\n"].concat();
    assert_eq!(long.len(), 108);
    assert_eq!(invalid(&long, Accept::V1), "PROXY v1 line not ended by CRLF");
}

#[test]
fn garbage_and_the_wrong_version_are_refused_at_once() {
    for accept in ALL {
        assert_eq!(parse(b"", accept), Peeked::NeedMore);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n", accept), Peeked::Invalid(_)));
        assert!(matches!(parse(b"G", accept), Peeked::Invalid(_)));
        assert!(matches!(parse(b"\x16\x03\x01", accept), Peeked::Invalid(_)));
    }
    let v1 = encode(Version::V1, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    let v2 = encode(Version::V2, addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    assert_eq!(invalid(&v1.as_bytes()[..1], Accept::V2), "not a PROXY protocol v2 header");
    assert_eq!(invalid(&v2.as_bytes()[..1], Accept::V1), "not a PROXY protocol v1 header");
}

#[test]
fn every_prefix_of_a_header_needs_more() {
    let headers = [
        encode(Version::V1, addr("10.0.0.1:1"), addr("10.0.0.2:2")).as_bytes().to_vec(),
        encode(Version::V2, addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2")).as_bytes().to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(0x21, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0x04, 0, 1, 0]),
    ];
    for wire in headers {
        for n in 0..wire.len() {
            assert_eq!(parse(&wire[..n], Accept::Any), Peeked::NeedMore, "{} of {}", n, wire.escape_ascii());
        }
        assert_eq!(done(&wire, Accept::Any).1, wire.len());
    }
}

/// Writes `header` byte by byte, then `data`, then closes.
async fn send_slowly(mut client: tokio::net::TcpStream, header: Vec<u8>, data: &'static [u8]) {
    for b in header {
        client.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    client.write_all(data).await.unwrap();
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_header_byte_by_byte_leaves_the_data_behind_it_readable() {
    for (version, accept) in [(Version::V1, Accept::V1), (Version::V2, Accept::V2), (Version::V2, Accept::Any)] {
        let (client, mut server) = pair().await;
        let wire = encode(version, addr("[2001:db8::7]:4242"), addr("[2001:db8::1]:443")).as_bytes().to_vec();
        let writer = tokio::spawn(send_slowly(client, wire, b"\x16\x03\x01application data"));
        let got = read_header(&mut server, accept, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got, header(version, "[2001:db8::7]:4242", "[2001:db8::1]:443"));
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01application data");
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn a_header_and_data_in_one_write() {
    let (mut client, mut server) = pair().await;
    let mut wire = encode(Version::V1, addr("1.2.3.4:5"), addr("6.7.8.9:10")).as_bytes().to_vec();
    wire.extend_from_slice(b"PROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n"); // data, not a second header
    client.write_all(&wire).await.unwrap();
    let got = read_header(&mut server, Accept::Any, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.source, Some(addr("1.2.3.4:5")));
    let mut rest = [0; 32];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"PROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n");
}

#[tokio::test]
async fn a_connection_without_a_header_is_refused() {
    let (mut client, mut server) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = read_header(&mut server, Accept::Any, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, ProxyError::Header(PeekError::Invalid { received: 18, .. })), "{err:?}");

    let (_client, mut server) = pair().await;
    let err = read_header(&mut server, Accept::V2, Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, ProxyError::Header(PeekError::Timeout { received: 0, .. })), "{err:?}");

    let (mut client, mut server) = pair().await;
    client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    client.shutdown().await.unwrap();
    let err = read_header(&mut server, Accept::V1, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, ProxyError::Header(PeekError::Closed { received: 18 })), "{err:?}");
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()), port)),
    ]
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_overclaim(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        prefix in 0usize..3,
    ) {
        // Also behind a valid start, so the deeper parsers see arbitrary bytes.
        let start: &[u8] = [&b""[..], b"PROXY ", b"\r\n\r\n\0\r\nQUIT\n"][prefix];
        let buf = [start, &bytes].concat();
        for accept in ALL {
            if let Peeked::Done((_, len)) = parse(&buf, accept) {
                prop_assert!(len <= buf.len());
            }
        }
    }

    #[test]
    fn any_addresses_round_trip_and_split_anywhere(
        source in socket_addr(),
        destination in socket_addr(),
        v1 in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        trailing in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let version = if v1 { Version::V1 } else { Version::V2 };
        let wire = encode(version, source, destination);
        let wire = wire.as_bytes();
        if v1 && wire.starts_with(b"PROXY TCP6") {
            prop_assert!(!wire.contains(&b'.'), "dotted IPv6 in {}", wire.escape_ascii());
        }
        let buf = [wire, &trailing].concat();
        let expected = ProxyHeader { source: Some(canonical(source)), destination: Some(canonical(destination)), version };
        prop_assert_eq!(parse(&buf, Accept::Any), Peeked::Done((expected, wire.len())));
        prop_assert_eq!(parse(&wire[..cut.index(wire.len())], Accept::Any), Peeked::NeedMore);
    }
}
