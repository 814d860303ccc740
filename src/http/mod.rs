//! HTTP/1.1 on bytes: request parsing (with `httparse`) and response writing.
//!
//! Everything here is a plain function of a byte slice, so it is unit tested
//! and fuzzed without sockets. It never allocates more than the configured
//! limits allow, never panics on what a peer sends, and never does I/O.

mod chunked;
mod response;

pub use chunked::Chunked;
pub use response::{switching_protocols, timestamp, Response};

use std::borrow::Cow;

use crate::error::HttpError;

/// Most headers a request may carry; more is `431`.
pub const MAX_HEADERS: usize = 64;

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

/// One parsed request, borrowing from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path without the query, still percent-encoded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: Cow<'a, [u8]>,
    /// HTTP/1.1 without `Connection: close`, or 1.0 with `keep-alive`.
    pub keep_alive: bool,
}

impl<'a> Request<'a> {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// True when a comma-separated header holds `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The value of a query parameter, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

/// Result of feeding the read buffer to the parser.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// More bytes of the head are needed.
    Partial,
    /// The head is complete and valid, the body is still arriving. A client
    /// that sent `Expect: 100-continue` waits for a `100 Continue` first.
    NeedBody { expect_continue: bool },
    /// A whole request, and how many bytes of the buffer it used.
    Complete(Request<'a>, usize),
}

/// Parses the first request in `buf`. Pipelined requests after it stay in the
/// buffer for the next call. The connection reads the same way in steps
/// ([`parse_head`], then a [`BodyReader`] fed as bytes arrive); this is the
/// whole-buffer form, for tests and fuzzing.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HttpError> {
    let Some(head) = parse_head(buf, limits)? else {
        return Ok(Parsed::Partial);
    };
    let mut reader = BodyReader::new(head.framing, head.req.method, limits)?;
    let rest = &buf[head.len..];
    if !reader.advance(rest, limits.max_body_bytes)? {
        return Ok(Parsed::NeedBody {
            expect_continue: head.expect_continue,
        });
    }
    let (body, used) = reader.take(rest);
    let len = head.len + used;
    Ok(Parsed::Complete(head.with_body(body), len))
}

/// A complete, valid request head and what it says about the body.
#[derive(Debug)]
pub struct Head<'a> {
    /// The request, its body still empty.
    pub req: Request<'a>,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub framing: Framing,
    /// The client sent `Expect: 100-continue` and waits before the body.
    pub expect_continue: bool,
}

impl<'a> Head<'a> {
    /// The whole request once its body has arrived.
    pub fn with_body(self, body: Cow<'a, [u8]>) -> Request<'a> {
        Request { body, ..self.req }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(usize),
    /// Neither header: no body (a `POST` then gets `411`).
    None,
}

impl Framing {
    /// Whether a body follows the head.
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}

/// The head at the front of `buf`, checked (target, framing, `Expect`);
/// `None` while it is incomplete.
pub fn parse_head<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Head<'a>>, HttpError> {
    let too_large = HttpError::HeadersTooLarge {
        limit: limits.max_header_bytes,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => {
            return Err(too_large)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large),
        Err(e) => {
            return Err(HttpError::BadRequest(format!(
                "malformed HTTP request: {e}"
            )))
        }
    };
    if len > limits.max_header_bytes {
        return Err(too_large);
    }
    // httparse guarantees these are set on a complete parse.
    let method = req.method.unwrap_or("");
    let version = req.version.unwrap_or(1);
    // Absolute-form (`http://host/path`), which HTTP/1.1 servers must accept.
    let target = strip_authority(req.path.unwrap_or("/"));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(HttpError::BadRequest(
            "request target must be an absolute path".into(),
        ));
    }
    let headers: Vec<(&'a str, &'a [u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    let framing = body_framing(&headers, version)?;
    let expect_continue = expects_continue(&headers)?;
    let keep_alive = keep_alive(&headers, version);
    Ok(Some(Head {
        req: Request {
            method,
            path,
            query,
            headers,
            body: Cow::Borrowed(&[]),
            keep_alive,
        },
        len,
        framing,
        expect_continue,
    }))
}

/// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn keep_alive(headers: &[(&str, &[u8])], version: u8) -> bool {
    let has = |tok: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(tok))
    };
    if version == 1 {
        !has("close")
    } else {
        has("keep-alive")
    }
}

fn headers_named<'h, 'a>(
    headers: &'h [(&'a str, &'a [u8])],
    name: &'h str,
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// `Expect: 100-continue` is the only expectation a server can meet; any
/// other is `417`.
fn expects_continue(headers: &[(&str, &[u8])]) -> Result<bool, HttpError> {
    let mut expect = false;
    for v in headers_named(headers, "expect") {
        if !v.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            let v = String::from_utf8_lossy(v);
            return Err(HttpError::ExpectationFailed(format!(
                "unsupported Expect {v:?}; only 100-continue is"
            )));
        }
        expect = true;
    }
    Ok(expect)
}

/// Reads the body framing from the headers. Anything two parsers could
/// read differently is a `400` (request smuggling starts there): more than
/// one `Transfer-Encoding`, one on HTTP/1.0, one that is not `chunked`, or
/// one beside a `Content-Length`, and more than one `Content-Length`.
fn body_framing(headers: &[(&str, &[u8])], version: u8) -> Result<Framing, HttpError> {
    let bad = |m: String| Err(HttpError::BadRequest(m));
    let mut te = headers_named(headers, "transfer-encoding");
    let chunked = match (te.next(), te.next()) {
        (None, _) => false,
        (Some(_), Some(_)) => return bad("more than one Transfer-Encoding header".into()),
        (Some(_), None) if version == 0 => {
            return bad("Transfer-Encoding is not allowed in HTTP/1.0".into())
        }
        (Some(v), None) => {
            let v = std::str::from_utf8(v).unwrap_or("");
            if !v.trim().eq_ignore_ascii_case("chunked") {
                return bad(format!(
                    "unsupported Transfer-Encoding {v:?}; only chunked is accepted"
                ));
            }
            true
        }
    };
    let mut lengths = headers_named(headers, "content-length");
    match (lengths.next(), lengths.next()) {
        (Some(_), _) if chunked => bad("both Content-Length and Transfer-Encoding given".into()),
        (Some(_), Some(_)) => bad("more than one Content-Length".into()),
        (Some(v), None) => Ok(Framing::Length(parse_content_length(v)?)),
        (None, _) if chunked => Ok(Framing::Chunked),
        (None, _) => Ok(Framing::None),
    }
}

/// A request body as its bytes arrive.
#[derive(Debug)]
pub enum BodyReader {
    Length(usize),
    Chunked(Chunked),
}

impl BodyReader {
    /// The reader for `framing`; refuses at once what no body can fix: a
    /// `Content-Length` over the limit (`413`), a `POST` without framing (`411`).
    pub fn new(framing: Framing, method: &str, limits: &Limits) -> Result<BodyReader, HttpError> {
        match framing {
            Framing::Chunked => Ok(BodyReader::Chunked(Chunked::default())),
            Framing::Length(len) if len > limits.max_body_bytes => {
                Err(HttpError::PayloadTooLarge {
                    limit: limits.max_body_bytes,
                })
            }
            Framing::Length(len) => Ok(BodyReader::Length(len)),
            Framing::None if matches!(method, "POST" | "PUT" | "PATCH") => {
                Err(HttpError::LengthRequired)
            }
            Framing::None => Ok(BodyReader::Length(0)),
        }
    }

    /// Reads what `rest` (the bytes after the head) adds; true once the body
    /// is whole. Each call costs only the bytes it has not seen.
    pub fn advance(&mut self, rest: &[u8], max: usize) -> Result<bool, HttpError> {
        match self {
            BodyReader::Length(len) => Ok(rest.len() >= *len),
            BodyReader::Chunked(c) => c.advance(rest, max),
        }
    }

    /// The body and the bytes of `rest` it used; once `advance` said whole.
    pub fn take(self, rest: &[u8]) -> (Cow<'_, [u8]>, usize) {
        match self {
            BodyReader::Length(len) => (Cow::Borrowed(&rest[..len.min(rest.len())]), len),
            BodyReader::Chunked(c) => {
                let (body, used) = c.finish();
                (Cow::Owned(body), used)
            }
        }
    }
}

/// `http://host:port/p?q` → `/p?q`; any other target is returned as is.
fn strip_authority(target: &str) -> &str {
    let lower = target.get(..8).unwrap_or("").to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        Some(_) | None => "/",
    }
}

fn parse_content_length(v: &[u8]) -> Result<usize, HttpError> {
    let s = std::str::from_utf8(v).unwrap_or("").trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadRequest(format!(
            "invalid Content-Length {s:?}"
        )));
    }
    // Values too large for usize are over any limit anyway.
    Ok(s.parse::<usize>().unwrap_or(usize::MAX))
}

/// Decodes a whole chunked body from the front of `buf` (see [`Chunked`]).
/// `Ok(None)`: more bytes needed. Trailers are read and dropped.
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut c = Chunked::default();
    Ok(c.advance(buf, max)?.then(|| c.finish()))
}

/// Percent-decodes a path segment or query value (`+` stays `+`).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_header_bytes: 8192,
        max_body_bytes: 1024,
    };

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf, &L) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("expected complete, got {other:?}"),
        }
    }

    #[test]
    fn get_with_query() {
        let (r, n) = complete(b"GET /ws?token=a%2Eb HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/ws");
        assert_eq!(r.query_param("token").as_deref(), Some("a.b"));
        assert!(r.keep_alive);
        assert_eq!(n, 41);
    }

    #[test]
    fn partial_then_pipelined() {
        let one = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        assert!(matches!(parse_request(&one[..10], &L), Ok(Parsed::Partial)));
        assert!(matches!(
            parse_request(&one[..one.len() - 1], &L),
            Ok(Parsed::NeedBody {
                expect_continue: false
            })
        ));
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\n\r\n");
        let (r, n) = complete(&two);
        assert_eq!(&*r.body, b"{}");
        let (r2, _) = complete(&two[n..]);
        assert_eq!(r2.path, "/b");
    }

    #[test]
    fn errors_map_to_statuses() {
        let st = |b: &[u8]| parse_request(b, &L).err().map(|e| e.status());
        assert_eq!(st(b"POST /a HTTP/1.1\r\n\r\n"), Some(411));
        assert_eq!(
            st(b"POST /a HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            st(b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(st(b"GARBAGE\r\n\r\n"), Some(400));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(9000, b'a');
        assert_eq!(st(&big), Some(431));
    }

    #[test]
    fn chunked_body() {
        let (r, _) = complete(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1;x=y\r\n \r\n0\r\n\r\n",
        );
        assert_eq!(&*r.body, b"{} ");
        assert!(matches!(
            parse_request(
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{",
                &L
            ),
            Ok(Parsed::NeedBody { .. })
        ));
        for bad in ["+2", "-2", "0x2", "", " ", "2 2", "g"] {
            let req = format!(
                "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{bad}\r\n{{}}\r\n0\r\n\r\n"
            );
            assert!(
                matches!(
                    parse_request(req.as_bytes(), &L),
                    Err(HttpError::BadRequest(_))
                ),
                "chunk size {bad:?} accepted"
            );
        }
    }

    #[test]
    fn expect_continue_and_absolute_form() {
        let req = b"POST http://h:1/v1/x?a=1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse_request(req, &L),
            Ok(Parsed::NeedBody {
                expect_continue: true
            })
        ));
        let mut full = req.to_vec();
        full.extend_from_slice(b"{}");
        let (r, _) = complete(&full);
        assert_eq!((r.path, r.query), ("/v1/x", Some("a=1")));
        assert_eq!(strip_authority("http://h"), "/");
        assert_eq!(strip_authority("/p"), "/p");
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
    }
}
