//! HTTP/1.1 to a backend as bytes, with no I/O: the request head written from
//! `http::request::Parts` and how its body is framed (as hyper's client framed it), the
//! response head parsed with `httparse` (interim `1xx` answers skipped, size and header
//! count bounded), how the response body is delimited (RFC 9112 §6.3), and the body
//! decoders (length, chunked with trailers, until close). [`super::exchange`] drives
//! these over the connection.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::SizeHint;
use smallvec::SmallVec;

/// The largest response head (status line and headers) taken from a backend.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines taken in a response head (or its trailers).
pub(super) const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with its extensions) taken.
const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with what a backend sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// The head is not HTTP/1.x (httparse's reason).
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head is over [`MAX_HEAD`] bytes.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The head has over [`MAX_HEADERS`] headers.
    #[error("response head with more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// A header name http does not take.
    #[error("invalid response header name")]
    HeaderName,
    /// `Content-Length` values that are not one decimal number.
    #[error("invalid or conflicting Content-Length in the response")]
    ContentLength,
    /// A `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedSwitch,
    /// A malformed chunk size line, or a chunk not followed by CRLF.
    #[error("malformed chunked response body")]
    Chunk,
    /// Malformed or oversized trailers.
    #[error("malformed response trailers")]
    Trailers,
}

impl ParseError {
    fn from_httparse(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            e => ParseError::Head(e),
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    /// `Content-Length` (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the request head into `buf` (cleared first) and returns how its body is
/// framed, as hyper's client does: no body (the body is already at its end) → nothing
/// sent; a `Content-Length` the request has → that; a known size → `Content-Length`;
/// else `Transfer-Encoding: chunked`, except for GET, HEAD and CONNECT, which get no
/// body. `body` is `None` when the body is at its end, else its size hint.
pub(super) fn encode_head(head: &mut http::request::Parts, body: Option<SizeHint>, buf: &mut Vec<u8>) -> ReqFraming {
    let headers = &mut head.headers;
    // Hop-by-hop, removed from requests before they get here; framing is weir's.
    headers.remove(header::TRANSFER_ENCODING);
    let framing = match body {
        None => ReqFraming::Length(0),
        Some(hint) => match content_length(headers) {
            Ok(Some(len)) => ReqFraming::Length(len),
            _ => {
                headers.remove(header::CONTENT_LENGTH);
                match hint.exact() {
                    Some(len) => {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                        ReqFraming::Length(len)
                    }
                    None if matches!(head.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                        ReqFraming::Length(0)
                    }
                    None => {
                        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                        ReqFraming::Chunked
                    }
                }
            }
        },
    };
    buf.clear();
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(&head.headers, buf);
    buf.extend_from_slice(b"\r\n");
    framing
}

/// `name: value\r\n` for each field.
pub(super) fn write_fields(headers: &HeaderMap, buf: &mut Vec<u8>) {
    for (name, value) in headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// The one length the `Content-Length` fields give (repeated equal values, as lines or
/// comma-separated, are one), `None` without any, an error if they are not one decimal
/// number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ParseError> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            match decimal(part.trim_ascii()) {
                Some(n) if found.is_none_or(|f| f == n) => found = Some(n),
                _ => return Err(ParseError::ContentLength),
            }
        }
    }
    Ok(found)
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RespFraming {
    /// `Content-Length` (0 and no-body responses: none).
    Length(u64),
    /// Chunked, maybe ending in trailers.
    Chunked,
    /// Until the backend closes.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub(super) struct Head {
    /// Status, version and headers.
    pub(super) parts: http::response::Parts,
    pub(super) framing: RespFraming,
    /// Whether the backend lets the connection be reused.
    pub(super) keep_alive: bool,
}

/// Parses a response head from the start of `buf`, taking it (and any interim `1xx`
/// answers before it) out. `None`: not all of it is there yet.
pub(super) fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ParseError> {
    loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        // Offsets of each name and value in the head: the values are then shared slices
        // of it, not copies.
        let mut spans = SmallVec::<[(u32, u32, u32, u32); MAX_HEADERS]>::new();
        let config = httparse::ParserConfig::default();
        let (len, code, minor) = match config.parse_response_with_uninit_headers(&mut res, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                for h in res.headers.iter() {
                    let name = h.name.as_ptr() as usize - base;
                    let value = h.value.as_ptr() as usize - base;
                    spans.push((name as u32, h.name.len() as u32, value as u32, h.value.len() as u32));
                }
                (len, res.code.unwrap_or(0), res.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(ParseError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ParseError::from_httparse(e)),
        };
        if len > MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        if code == 101 {
            return Err(ParseError::UnexpectedSwitch);
        }
        if (100..200).contains(&code) {
            // Interim (100 Continue, 103 Early Hints): skipped, as hyper skips them.
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| ParseError::Head(httparse::Error::Status))?;
        let head = buf.split_to(len).freeze();
        // One pass: the framing and connection fields are read here and, being
        // hop-by-hop, left out of the map (no lookups after, nothing to remove later).
        let mut fields = Fields::default();
        let mut map = HeaderMap::with_capacity(spans.len());
        for &(n, nl, v, vl) in &spans {
            let name = header_name(&head[n as usize..(n + nl) as usize])?;
            let (v, vl) = (v as usize, vl as usize);
            if fields.note(&name, &head[v..v + vl]) {
                if name == header::CONTENT_LENGTH {
                    fields.length_at.get_or_insert((v, vl));
                }
                continue;
            }
            // A shared slice of the head, not a copy (checked again: the unchecked
            // constructor is `unsafe`, which weir denies).
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| ParseError::Head(httparse::Error::HeaderValue))?;
            map.append(name, value);
        }
        if fields.connection_other {
            // Fields the backend named in `Connection` are hop-by-hop too.
            for &(n, nl, v, vl) in &spans {
                if head[n as usize..(n + nl) as usize].eq_ignore_ascii_case(b"connection") {
                    for token in head[v as usize..(v + vl) as usize].split(|&b| b == b',') {
                        if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                            map.remove(name);
                        }
                    }
                }
            }
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        // HTTP/1.1 is kept unless either side says `close`; HTTP/1.0 only with `keep-alive`.
        let mut keep_alive = if minor == 0 { fields.keep_alive } else { !fields.close };
        // The length as the backend wrote it (a shared slice) when it wrote it once, else
        // written again from the number (`5, 5` → `5`).
        let length_value = |len: u64| match fields.length_at {
            Some((v, vl)) if !fields.length_repeated => {
                HeaderValue::from_maybe_shared(head.slice(v..v + vl)).unwrap_or_else(|_| HeaderValue::from(len))
            }
            _ => HeaderValue::from(len),
        };
        let framing = if head_request || code == 204 || code == 304 {
            if let Some(len) = fields.length {
                // Said of what a GET would have got: passed on as it is.
                map.append(header::CONTENT_LENGTH, length_value(len));
            }
            RespFraming::Length(0)
        } else if fields.transfer_encoding {
            // With a length too: Transfer-Encoding wins, the length goes (RFC 9112 §6.3),
            // and a connection that sent such a message is not trusted again.
            keep_alive &= fields.length.is_none() && !fields.length_invalid;
            if fields.chunked {
                RespFraming::Chunked
            } else {
                keep_alive = false;
                RespFraming::Close
            }
        } else if fields.length_invalid {
            return Err(ParseError::ContentLength);
        } else if let Some(len) = fields.length {
            map.append(header::CONTENT_LENGTH, length_value(len));
            RespFraming::Length(len)
        } else {
            keep_alive = false;
            RespFraming::Close
        };
        parts.headers = map;
        return Ok(Some(Head { parts, framing, keep_alive }));
    }
}

/// A common field name: its lowercase spelling, the name, and the spelling's ends folded
/// as [`folded_ends`] folds a name (made at compile time).
struct Common {
    lower: &'static [u8],
    name: HeaderName,
    ends: (u64, u64),
}

/// The entry for `lower` (a lowercase name), its ends folded at compile time.
const fn common(lower: &'static [u8], name: HeaderName) -> Common {
    let mut first = [0x20u8; 8];
    let mut last = [0x20u8; 8];
    let n = lower.len();
    let start = n.saturating_sub(8);
    let mut i = 0;
    while i < 8 {
        if i < n {
            first[i] = lower[i] | 0x20;
        }
        if start + i < n && n >= 8 {
            last[i] = lower[start + i] | 0x20;
        }
        i += 1;
    }
    let first = u64::from_le_bytes(first);
    let last = if n >= 8 { u64::from_le_bytes(last) } else { first };
    Common { lower, name, ends: (first, last) }
}

// The names backends send most, by length (see [`header_name`]).
static LEN2: [Common; 1] = [common(b"te", header::TE)];
static LEN3: [Common; 2] = [common(b"age", header::AGE), common(b"via", header::VIA)];
static LEN4: [Common; 4] = [
    common(b"date", header::DATE),
    common(b"etag", header::ETAG),
    common(b"vary", header::VARY),
    common(b"link", header::LINK),
];
static LEN6: [Common; 1] = [common(b"server", header::SERVER)];
static LEN7: [Common; 4] = [
    common(b"expires", header::EXPIRES),
    common(b"trailer", header::TRAILER),
    common(b"upgrade", header::UPGRADE),
    common(b"alt-svc", header::ALT_SVC),
];
static LEN8: [Common; 1] = [common(b"location", header::LOCATION)];
static LEN10: [Common; 2] = [common(b"connection", header::CONNECTION), common(b"set-cookie", header::SET_COOKIE)];
static LEN12: [Common; 1] = [common(b"content-type", header::CONTENT_TYPE)];
static LEN13: [Common; 3] = [
    common(b"cache-control", header::CACHE_CONTROL),
    common(b"last-modified", header::LAST_MODIFIED),
    common(b"accept-ranges", header::ACCEPT_RANGES),
];
static LEN14: [Common; 1] = [common(b"content-length", header::CONTENT_LENGTH)];
static LEN15: [Common; 1] = [common(b"x-frame-options", header::X_FRAME_OPTIONS)];
static LEN16: [Common; 2] =
    [common(b"content-encoding", header::CONTENT_ENCODING), common(b"content-language", header::CONTENT_LANGUAGE)];
static LEN17: [Common; 1] = [common(b"transfer-encoding", header::TRANSFER_ENCODING)];
static LEN22: [Common; 1] = [common(b"x-content-type-options", header::X_CONTENT_TYPE_OPTIONS)];
static LEN25: [Common; 1] = [common(b"strict-transport-security", header::STRICT_TRANSPORT_SECURITY)];
static LEN27: [Common; 1] = [common(b"access-control-allow-origin", header::ACCESS_CONTROL_ALLOW_ORIGIN)];

/// The names backends send most with `len` bytes (see [`header_name`]).
fn common_names(len: usize) -> &'static [Common] {
    match len {
        2 => &LEN2,
        3 => &LEN3,
        4 => &LEN4,
        6 => &LEN6,
        7 => &LEN7,
        8 => &LEN8,
        10 => &LEN10,
        12 => &LEN12,
        13 => &LEN13,
        14 => &LEN14,
        15 => &LEN15,
        16 => &LEN16,
        17 => &LEN17,
        22 => &LEN22,
        25 => &LEN25,
        27 => &LEN27,
        _ => &[],
    }
}

/// The first and last eight bytes of a name (overlapping below 16 bytes; below 8, the
/// name padded with spaces, twice) as words, every byte ORed with 0x20: ASCII case
/// folded, as `b | 0x20` is a lowercase letter or `-` only for that letter in either
/// case, or for `-` (the other bytes that OR to those are not token bytes).
fn folded_ends(name: &[u8]) -> (u64, u64) {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if let (Some(first), Some(last)) = (name.first_chunk::<8>(), name.last_chunk::<8>()) {
        return (u64::from_le_bytes(*first) | FOLD, u64::from_le_bytes(*last) | FOLD);
    }
    let mut word = [0x20u8; 8];
    for (w, &b) in word.iter_mut().zip(name) {
        *w = b | 0x20;
    }
    let word = u64::from_le_bytes(word);
    (word, word)
}

/// The name of a field of a response head (a token, as httparse checked). The common
/// ones are matched by length and then as two folded words (and the bytes between them
/// for names over 16 bytes); the rest go through `HeaderName::from_bytes`, which
/// lowercases every name into a buffer before it looks it up (about 160 instructions a
/// common name, against about 30 here).
fn header_name(name: &[u8]) -> Result<HeaderName, ParseError> {
    let candidates = common_names(name.len());
    if !candidates.is_empty() {
        let ends = folded_ends(name);
        let middle = if name.len() > 16 { 8..name.len() - 8 } else { 0..0 };
        let inner = &name[middle.clone()];
        for c in candidates {
            if c.ends == ends && inner.iter().zip(&c.lower[middle.clone()]).all(|(&b, &l)| b | 0x20 == l) {
                return Ok(c.name.clone());
            }
        }
    }
    HeaderName::from_bytes(name).map_err(|_| ParseError::HeaderName)
}

/// The framing and connection fields of a response head, read as the head is.
#[derive(Debug, Default)]
struct Fields {
    /// The one `Content-Length`, if there is one.
    length: Option<u64>,
    /// `Content-Length` values that are not one number.
    length_invalid: bool,
    /// Where the first `Content-Length` value is in the head.
    length_at: Option<(usize, usize)>,
    /// The length was given more than once.
    length_repeated: bool,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// `Connection` names other fields.
    connection_other: bool,
}

impl Fields {
    /// Notes a framing or connection field; true for those left out of the map.
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if *name == header::CONTENT_LENGTH {
            self.length_repeated |= self.length.is_some() || value.contains(&b',');
            for part in value.split(|&b| b == b',') {
                match decimal(part.trim_ascii()) {
                    Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                    _ => self.length_invalid = true,
                }
            }
            // Put back once, after the framing is settled.
            true
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            self.chunked =
                value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            true
        } else if *name == header::CONNECTION {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                    self.connection_other = true;
                }
            }
            true
        } else {
            *name == header::TE
                || *name == header::UPGRADE
                || name.as_str() == "keep-alive"
                || name.as_str() == "proxy-connection"
        }
    }
}

/// A decimal number of at most 19 digits (a `Content-Length`, RFC 9110 §8.6).
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What the response body decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailers that end a chunked body.
    Trailers(HeaderMap),
    /// The end of the body.
    End,
    /// More bytes are needed.
    More,
}

/// The body decoder: a response's here, and a request's in weir's own HTTP/1.1 server
/// (which starts it at [`Decoder::Length`] or [`Decoder::ChunkSize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked: at a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes of a chunk still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section (maybe empty) after the last chunk.
    Trailers,
    /// Until the connection closes.
    Close,
    /// The body ended.
    Done,
}

impl Decoder {
    pub(super) fn new(framing: RespFraming) -> Self {
        match framing {
            RespFraming::Length(0) => Decoder::Done,
            RespFraming::Length(n) => Decoder::Length(n),
            RespFraming::Chunked => Decoder::ChunkSize,
            RespFraming::Close => Decoder::Close,
        }
    }

    /// The body's size hint: exact for a length.
    pub(super) fn size_hint(&self) -> SizeHint {
        match *self {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Takes what it can from `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(_) | Decoder::ChunkData(_) | Decoder::Close if buf.is_empty() => {
                    return Ok(Decoded::More);
                }
                Decoder::Close => return Ok(Decoded::Data(buf.split().freeze())),
                Decoder::Length(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    *self = if left == 0 { Decoder::Done } else { Decoder::Length(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    *self = if left == 0 { Decoder::ChunkEnd } else { Decoder::ChunkData(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        buf.advance(len);
                        *self = if size == 0 { Decoder::Trailers } else { Decoder::ChunkData(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => return Err(ParseError::Chunk),
                    Ok(httparse::Status::Partial) => return Ok(Decoded::More),
                    Err(_) => return Err(ParseError::Chunk),
                },
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return if buf.first().is_none_or(|&b| b == b'\r') {
                            Ok(Decoded::More)
                        } else {
                            Err(ParseError::Chunk)
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk);
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name =
                                    HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ParseError::Trailers)?;
                                let value = HeaderValue::from_bytes(f.value).map_err(|_| ParseError::Trailers)?;
                                map.append(name, value);
                            }
                            buf.advance(len);
                            *self = Decoder::Done;
                            return Ok(Decoded::Trailers(map));
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(ParseError::Trailers),
                        Ok(httparse::Status::Partial) => return Ok(Decoded::More),
                        Err(_) => return Err(ParseError::Trailers),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
