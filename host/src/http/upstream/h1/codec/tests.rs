use super::*;

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn encode(mut head: http::request::Parts, body: Option<SizeHint>) -> (String, ReqFraming) {
    let mut buf = b"stale".to_vec();
    let framing = encode_head(&mut head, body, &mut buf);
    (String::from_utf8(buf).unwrap(), framing)
}

#[test]
fn request_heads_are_framed_as_hypers_client_frames_them() {
    let unknown = Some(SizeHint::default());
    // No body.
    let (text, f) = encode(request(Method::GET, "/a?b=c", &[("host", "h")]), None);
    assert_eq!(text, "GET /a?b=c HTTP/1.1\r\nhost: h\r\n\r\n");
    assert_eq!(f, ReqFraming::Length(0));
    // The request's own length.
    let (text, f) = encode(request(Method::POST, "/", &[("content-length", "7")]), unknown);
    assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 7\r\n\r\n");
    assert_eq!(f, ReqFraming::Length(7));
    // A known size.
    let (text, f) = encode(request(Method::PUT, "/", &[]), Some(SizeHint::with_exact(3)));
    assert_eq!(text, "PUT / HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
    assert_eq!(f, ReqFraming::Length(3));
    // Unknown: chunked, but GET gets no body.
    let (text, f) = encode(request(Method::POST, "/", &[("transfer-encoding", "gzip")]), unknown);
    assert_eq!(text, "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(f, ReqFraming::Chunked);
    assert_eq!(encode(request(Method::GET, "/", &[]), unknown).1, ReqFraming::Length(0));
}

fn parse(raw: &[u8], head_request: bool) -> Result<Option<Head>, ParseError> {
    parse_head(&mut BytesMut::from(raw), head_request)
}

#[test]
fn response_framing_follows_rfc_9112_section_6_3() {
    let framing = |raw: &str| parse(raw.as_bytes(), false).unwrap().unwrap().framing;
    assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), RespFraming::Length(5));
    assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"), RespFraming::Length(5));
    assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), RespFraming::Chunked);
    assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), RespFraming::Close);
    assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), RespFraming::Close);
    assert_eq!(framing("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"), RespFraming::Length(0));
    assert_eq!(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), RespFraming::Length(0));
    let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap().unwrap();
    assert_eq!(head.framing, RespFraming::Length(0));
    assert_eq!(head.parts.headers["content-length"], "9");
    // Both: chunked wins, the length goes, the connection is not kept.
    let head =
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap().unwrap();
    assert_eq!(head.framing, RespFraming::Chunked);
    assert!(!head.parts.headers.contains_key("content-length"));
    assert!(!head.keep_alive);
    for bad in
        ["Content-Length: 5\r\nContent-Length: 6", "Content-Length: -1", "Content-Length: 1x", "Content-Length: "]
    {
        let raw = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
        assert_eq!(parse(raw.as_bytes(), false).unwrap_err(), ParseError::ContentLength, "{bad}");
    }
}

#[test]
fn keep_alive_is_http_1_1_without_close_or_http_1_0_with_keep_alive() {
    let kept = |raw: &str| parse(raw.as_bytes(), false).unwrap().unwrap().keep_alive;
    assert!(kept("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(!kept("HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n"));
    assert!(!kept("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(kept("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
}

#[test]
fn interim_answers_are_skipped_partial_heads_wait_and_bad_ones_fail() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
    let head = parse_head(&mut buf, false).unwrap().unwrap();
    assert_eq!(head.parts.status, 200);
    assert!(!head.parts.headers.contains_key("link"));
    assert_eq!(&buf[..], b"ok");
    assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap().is_none());
    assert_eq!(parse(b"HTTP/1.1 101 Switching\r\n\r\n", false).unwrap_err(), ParseError::UnexpectedSwitch);
    assert!(matches!(parse(b"garbage\r\n\r\n", false).unwrap_err(), ParseError::Head(_)));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse(&many, false).unwrap_err(), ParseError::TooManyHeaders);
    let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    huge.resize(MAX_HEAD + 10, b'a');
    assert_eq!(parse(&huge, false).unwrap_err(), ParseError::HeadTooLarge);
}

/// Decodes `raw` fed one byte at a time: the data and the trailers.
fn decode_bytewise(framing: RespFraming, raw: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), ParseError> {
    let mut d = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        match d.decode(&mut buf)? {
            Decoded::Data(b) => data.extend_from_slice(&b),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => return Ok((data, trailers)),
            Decoded::More if fed < raw.len() => {
                buf.extend_from_slice(&raw[fed..=fed]);
                fed += 1;
            }
            Decoded::More => return Err(ParseError::Chunk),
        }
    }
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers_even_a_byte_at_a_time() {
    let raw = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\nx-b: 2\r\n\r\n";
    let (data, trailers) = decode_bytewise(RespFraming::Chunked, raw).unwrap();
    assert_eq!(data, b"hello world");
    let trailers = trailers.unwrap();
    assert_eq!((trailers["x-sum"].to_str().unwrap(), trailers["x-b"].to_str().unwrap()), ("11", "2"));
    let (data, trailers) = decode_bytewise(RespFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\n").unwrap();
    assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    assert_eq!(decode_bytewise(RespFraming::Chunked, b"3\r\nabcX\r\n0\r\n\r\n").unwrap_err(), ParseError::Chunk);
    assert_eq!(decode_bytewise(RespFraming::Chunked, b"zz\r\n").unwrap_err(), ParseError::Chunk);
    let (data, _) = decode_bytewise(RespFraming::Length(4), b"abcdEXTRA").unwrap();
    assert_eq!(data, b"abcd");
}

#[test]
fn hop_by_hop_fields_stay_out_of_the_parsed_head() {
    let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-private\r\nKeep-Alive: timeout=5\r\nx-private: 1\r\nx-public: 2\r\nContent-Length: 0\r\n\r\n";
    let head = parse(raw, false).unwrap().unwrap();
    let names: Vec<&str> = head.parts.headers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-public", "content-length"]);
    assert!(head.keep_alive);
}

/// Every token byte (RFC 9110 §5.6.2), as httparse takes them in a field name.
const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[test]
fn common_names_match_as_the_general_parser_does() {
    for len in 0..40 {
        for Common { lower, name: known, .. } in common_names(len) {
            assert_eq!(lower.len(), len);
            assert_eq!(known.as_str().as_bytes(), *lower, "a name filed under its own spelling");
            // Capitalised as nginx and Apache write them, upper case, lower case.
            let capitalised: Vec<u8> = lower
                .iter()
                .enumerate()
                .map(|(i, &b)| if i == 0 || lower[i - 1] == b'-' { b.to_ascii_uppercase() } else { b })
                .collect();
            for spelling in [capitalised, lower.to_ascii_uppercase(), lower.to_vec()] {
                assert_eq!(header_name(&spelling).unwrap(), *known);
            }
        }
    }
}

proptest::proptest! {
    /// Any token as a name (common names with one byte changed to any token byte among
    /// them): the same name `HeaderName::from_bytes` gives.
    #[test]
    fn any_token_name_is_the_general_parsers_name(
        pick in 0usize..64,
        at in 0usize..64,
        byte in proptest::sample::select(TOKEN),
        other in proptest::collection::vec(proptest::sample::select(TOKEN), 1..30),
    ) {
        let names: Vec<&[u8]> = (0..40).flat_map(|n| common_names(n).iter().map(|c| c.lower)).collect();
        let mut name = names[pick % names.len()].to_vec();
        let i = at % name.len();
        name[i] = byte;
        for name in [name, other] {
            let expected = HeaderName::from_bytes(&name).unwrap();
            proptest::prop_assert_eq!(header_name(&name).unwrap(), expected);
        }
    }
}
