//! The HTTP/1.1 wire format, without I/O: request heads in (parsed by
//! `httparse`, the parser hyper uses), the request body's framing and its
//! chunked decoding, response heads out. Every rule here follows hyper's
//! server (`proto/h1/role.rs`) so the bytes a client sees do not change
//! with the server underneath: lowercase header names, a `date` header,
//! `content-length` for bodies of known size, `transfer-encoding: chunked`
//! otherwise (close-delimited for HTTP/1.0), no body for `HEAD`, 1xx, 204
//! and 304, and the same statuses for heads it refuses (400, 431).

use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// The largest request head accepted (431 beyond). hyper's default buffer
/// allows ~400 KB; Node.js 16 KB. 64 KB keeps every real client and bounds
/// what one connection can make the worker hold.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header lines in a request head (431 beyond), hyper's default.
pub const MAX_HEADERS: usize = 100;

/// The longest chunk-size line or trailer section accepted in a chunked
/// request body: enough for any extension a client sends, small enough
/// that a malformed body is refused before it costs memory.
const MAX_CHUNK_LINE: usize = 4096;

/// The trailers of a chunked request body, at most (ignored, as hyper does
/// for a service that does not ask for them).
const MAX_TRAILERS: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one,
    /// as far as the request is concerned (HTTP/1.1 unless `close`;
    /// HTTP/1.0 only with `keep-alive`).
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// A request head the server refuses; answered with [`HeadError::status`]
/// and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The status hyper answers the same refusal with.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and the number of bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    // On this call's stack only (3.2 KB): never part of a connection's
    // future, which lives as long as the connection.
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Token) if req.method.is_none() => {
            return Err(HeadError::Malformed("method"));
        }
        Err(httparse::Error::Token) => return Err(HeadError::Malformed("request target")),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("version")),
        Err(_) => return Err(HeadError::Malformed("syntax")),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let path = req.path.unwrap_or("/");
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("method"))?;
    let uri = Uri::try_from(path).map_err(|_| HeadError::Malformed("request target"))?;
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length: Option<u64> = None;
    let (mut te, mut chunked, mut saw_close) = (false, false, false);
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("header"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed("header"))?;
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return Err(HeadError::Malformed("transfer-encoding on HTTP/1.0"));
                }
                te = true;
                // The last coding must be `chunked` (RFC 9112 §6.3).
                chunked = last_token_is(h.value, b"chunked");
            }
            header::CONTENT_LENGTH => {
                let n =
                    parse_content_length(h.value).ok_or(HeadError::Malformed("content-length"))?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(HeadError::Malformed("content-length"));
                }
                length = Some(n);
            }
            header::CONNECTION => {
                if has_token(h.value, b"close") {
                    saw_close = true;
                } else if !http11 && has_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
            }
            header::EXPECT => {
                expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if saw_close {
        keep_alive = false;
    }
    let framing = if te {
        if !chunked {
            return Err(HeadError::Malformed(
                "transfer-encoding not ending in chunked",
            ));
        }
        if length.is_some() {
            // Both: the coding wins and the connection cannot be trusted
            // for another request (request smuggling).
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    Ok(Some((
        Head {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue: expect_continue && http11,
        },
        len,
    )))
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    // `1, 1` (repeated in one line) is allowed if every value agrees.
    let mut out = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if out.is_some_and(|prev| prev != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token_is(v: &[u8], token: &[u8]) -> bool {
    tokens(v)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// What a chunked body's decoder found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// The next piece of the body.
    Data(Bytes),
    /// More bytes are needed.
    Incomplete,
    /// The last chunk and the trailers have been read.
    End,
}

/// Decodes a `transfer-encoding: chunked` request body from the bytes the
/// connection has read, taking only what belongs to the body so the next
/// request's bytes stay in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedDecoder {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines up to an empty one.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Takes what it can from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, &'static str> {
        loop {
            match *self {
                ChunkedDecoder::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 {
                            ChunkedDecoder::Trailers
                        } else {
                            ChunkedDecoder::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err("chunk size line too long");
                    }
                    Ok(httparse::Status::Partial) => return Ok(Chunk::Incomplete),
                    Err(_) => return Err("invalid chunk size"),
                },
                ChunkedDecoder::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::Incomplete);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = if left == 0 {
                        ChunkedDecoder::DataEnd
                    } else {
                        ChunkedDecoder::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkedDecoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::Incomplete);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    *self = ChunkedDecoder::Size;
                }
                ChunkedDecoder::Trailers => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_TRAILERS {
                            return Err("trailers too large");
                        }
                        return Ok(Chunk::Incomplete);
                    };
                    if eol > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    buf.advance(eol + 2);
                    if eol == 0 {
                        *self = ChunkedDecoder::Done;
                    }
                }
                ChunkedDecoder::Done => return Ok(Chunk::End),
            }
        }
    }
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body bytes at all (`HEAD`, 1xx, 204, 304), whatever the body is.
    None,
    /// Exactly this many bytes (`content-length`).
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0 with a body of unknown size).
    Close,
}

/// The request facts that shape a response head.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub head_request: bool,
    pub version: Version,
    /// The request allows another request on the connection.
    pub keep_alive: bool,
}

/// A response head, encoded.
#[derive(Debug)]
pub struct EncodedHead {
    pub bytes: Vec<u8>,
    pub framing: BodyFraming,
    /// The connection must close after this response (the response said
    /// `connection: close`, or its body is close-delimited).
    pub close: bool,
}

/// Encodes the head of a response whose body has `size` bytes when known
/// (its exact size hint). `date` is the `date` header's value, added when
/// the response has none.
pub fn encode_head(
    status: StatusCode,
    headers: &HeaderMap,
    size: Option<u64>,
    ex: Exchange,
    date: &[u8],
) -> EncodedHead {
    let mut out = Vec::with_capacity(64 + headers.len() * 40);
    if ex.version == Version::HTTP_10 {
        out.extend_from_slice(b"HTTP/1.0 ");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
    }
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");

    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body_allowed = !no_content && !ex.head_request;
    let mut close = false;
    let mut wrote_date = false;
    let mut said_length: Option<u64> = None;
    let mut said_connection = false;
    for (name, value) in headers {
        match *name {
            // Framing is decided here from the body, not taken on trust.
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING => {
                if *name == header::CONTENT_LENGTH && said_length.is_none() {
                    said_length = parse_content_length(value.as_bytes());
                }
                continue;
            }
            header::CONNECTION => {
                said_connection = true;
                close |= has_token(value.as_bytes(), b"close");
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = match (size.or(said_length), no_content) {
        (_, true) => BodyFraming::None,
        (Some(n), false) => {
            // `HEAD` keeps the length of the body it would have had, but
            // not an implicit zero (hyper's rule).
            if !(ex.head_request && n == 0) {
                push_header(&mut out, b"content-length", n.to_string().as_bytes());
            }
            if body_allowed {
                BodyFraming::Length(n)
            } else {
                BodyFraming::None
            }
        }
        (None, false) if ex.head_request => BodyFraming::None,
        (None, false) if ex.version == Version::HTTP_10 => {
            close = true;
            BodyFraming::Close
        }
        (None, false) => {
            push_header(&mut out, b"transfer-encoding", b"chunked");
            BodyFraming::Chunked
        }
    };
    if ex.version == Version::HTTP_10 && ex.keep_alive && !close && !said_connection {
        // An HTTP/1.0 client keeps the connection only when told so.
        push_header(&mut out, b"connection", b"keep-alive");
    }
    if !wrote_date {
        push_header(&mut out, b"date", date);
    }
    out.extend_from_slice(b"\r\n");
    EncodedHead {
        bytes: out,
        framing,
        close,
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The bare response to a refused request head (hyper's: no body, then
/// the connection closes).
pub fn refusal(status: StatusCode, date: &[u8]) -> Vec<u8> {
    let head = encode_head(
        status,
        &HeaderMap::new(),
        Some(0),
        Exchange {
            head_request: false,
            version: Version::HTTP_11,
            keep_alive: false,
        },
        date,
    );
    head.bytes
}

/// The chunk-size line for a chunk of `len` bytes (`len` in hex, CRLF).
pub fn chunk_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The current `date` header value (IMF-fixdate), formatted once a second
/// per thread as hyper does.
pub fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let (at, value) = c.get();
        if at == secs {
            return value;
        }
        let mut fresh = [0u8; 29];
        let text = httpdate::fmt_http_date(now);
        let n = text.len().min(29);
        fresh[..n].copy_from_slice(&text.as_bytes()[..n]);
        c.set((secs, fresh));
        fresh
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        let (h, n) = parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(n, raw.len());
        h
    }

    #[test]
    fn a_plain_request_head_parses_with_keep_alive() {
        let h = head(
            "POST /api/v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        );
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.uri.path(), "/api/v1/chat");
        assert_eq!(h.uri.query(), Some("x=1"));
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        let xs: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(xs, ["1", "2"]);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_a_huge_one_is_refused() {
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .is_none()
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&big).unwrap_err(), HeadError::TooLarge);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let e = parse_head(many.as_bytes()).unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn malformed_heads_are_400() {
        for raw in [
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/3.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let e = parse_head(raw.as_bytes()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        }
    }

    #[test]
    fn connection_and_version_decide_keep_alive() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        // Chunked beats a content-length, and the connection is not reused.
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(h.headers.get("content-length").is_none());
    }

    #[test]
    fn chunked_bodies_decode_across_arbitrary_splits_and_leave_the_next_request() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for split in 1..wire.len() {
            let mut dec = ChunkedDecoder::Size;
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            let mut ended = false;
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                loop {
                    match dec.decode(&mut buf).unwrap() {
                        Chunk::Data(d) => body.extend_from_slice(&d),
                        Chunk::Incomplete => break,
                        Chunk::End => {
                            ended = true;
                            break;
                        }
                    }
                }
            }
            assert!(ended, "split at {split}");
            assert_eq!(body, b"Wikipedia");
            assert_eq!(&buf[..], b"GET /next");
        }
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for wire in [&b"zz\r\n"[..], b"2\r\nabXY", b"1\r\na\r\n0\r\n"] {
            let mut dec = ChunkedDecoder::Size;
            let mut buf = BytesMut::from(wire);
            let mut res = Ok(Chunk::Incomplete);
            for _ in 0..8 {
                res = dec.decode(&mut buf);
                if !matches!(res, Ok(Chunk::Data(_))) {
                    break;
                }
            }
            // The last one is merely incomplete (no final CRLF yet).
            if wire == b"1\r\na\r\n0\r\n" {
                assert_eq!(res, Ok(Chunk::Incomplete));
            } else {
                assert!(res.is_err(), "{wire:?}");
            }
        }
        let mut dec = ChunkedDecoder::Size;
        let mut long = BytesMut::from(&[b'1'; MAX_CHUNK_LINE + 2][..]);
        assert!(dec.decode(&mut long).is_err());
    }

    const DATE: &[u8] = b"Sun, 06 Dec 2026 09:00:00 GMT";

    fn ex(version: Version, keep_alive: bool, head_request: bool) -> Exchange {
        Exchange {
            head_request,
            version,
            keep_alive,
        }
    }

    fn text(h: &EncodedHead) -> &str {
        std::str::from_utf8(&h.bytes).unwrap()
    }

    #[test]
    fn a_known_size_body_gets_content_length_and_date() {
        let mut hs = HeaderMap::new();
        hs.insert("content-type", HeaderValue::from_static("application/json"));
        let h = encode_head(
            StatusCode::OK,
            &hs,
            Some(7),
            ex(Version::HTTP_11, true, false),
            DATE,
        );
        assert_eq!(
            text(&h),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\ndate: Sun, 06 Dec 2026 09:00:00 GMT\r\n\r\n"
        );
        assert_eq!(h.framing, BodyFraming::Length(7));
        assert!(!h.close);
    }

    #[test]
    fn a_stream_is_chunked_on_1_1_and_close_delimited_on_1_0() {
        let hs = HeaderMap::new();
        let h = encode_head(
            StatusCode::OK,
            &hs,
            None,
            ex(Version::HTTP_11, true, false),
            DATE,
        );
        assert!(text(&h).contains("transfer-encoding: chunked\r\n"));
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = encode_head(
            StatusCode::OK,
            &hs,
            None,
            ex(Version::HTTP_10, true, false),
            DATE,
        );
        assert!(text(&h).starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(!text(&h).contains("transfer-encoding"));
        assert!(!text(&h).contains("keep-alive"));
        assert_eq!((h.framing, h.close), (BodyFraming::Close, true));
        let h = encode_head(
            StatusCode::OK,
            &hs,
            Some(2),
            ex(Version::HTTP_10, true, false),
            DATE,
        );
        assert!(text(&h).contains("connection: keep-alive\r\n"));
        assert!(!h.close);
    }

    #[test]
    fn head_204_and_connection_close_follow_hypers_rules() {
        let mut hs = HeaderMap::new();
        hs.insert("content-length", HeaderValue::from_static("99"));
        let h = encode_head(
            StatusCode::OK,
            &hs,
            Some(5),
            ex(Version::HTTP_11, true, true),
            DATE,
        );
        assert!(text(&h).contains("content-length: 5\r\n"));
        assert!(!text(&h).contains("99"));
        assert_eq!(h.framing, BodyFraming::None);
        let h = encode_head(
            StatusCode::OK,
            &HeaderMap::new(),
            Some(0),
            ex(Version::HTTP_11, true, true),
            DATE,
        );
        assert!(!text(&h).contains("content-length"));
        let h = encode_head(
            StatusCode::NO_CONTENT,
            &hs,
            Some(0),
            ex(Version::HTTP_11, true, false),
            DATE,
        );
        assert!(text(&h).starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text(&h).contains("content-length"));
        assert_eq!(h.framing, BodyFraming::None);
        let mut hs = HeaderMap::new();
        hs.insert("connection", HeaderValue::from_static("close"));
        hs.insert("date", HeaderValue::from_static("x"));
        let h = encode_head(
            StatusCode::NOT_FOUND,
            &hs,
            Some(0),
            ex(Version::HTTP_11, true, false),
            DATE,
        );
        assert_eq!(
            text(&h),
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ndate: x\r\ncontent-length: 0\r\n\r\n"
        );
        assert!(h.close);
    }

    #[test]
    fn refusals_are_bare_and_the_date_is_well_formed() {
        let d = http_date();
        let r = refusal(StatusCode::BAD_REQUEST, &d);
        let t = String::from_utf8(r).unwrap();
        assert!(t.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: "));
        assert!(t.ends_with(" GMT\r\n\r\n"), "{t}");
        assert!(httpdate::parse_http_date(std::str::from_utf8(&d).unwrap()).is_ok());
        assert_eq!(&chunk_line(255)[..], b"ff\r\n");
    }
}
