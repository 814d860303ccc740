//! HTTP/1.1 on bytes: request parsing (with `httparse`) and response writing.
//!
//! Everything here is a plain function of a byte slice, so it is unit tested
//! and fuzzed without sockets. It never allocates more than the configured
//! limits allow, never panics on what a peer sends, and never does I/O.

mod response;

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
/// buffer for the next call.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HttpError> {
    let Some(head) = parse_head(buf, limits)? else {
        return Ok(Parsed::Partial);
    };
    let framing = body_framing(&head.headers)?;
    let rest = &buf[head.len..];
    let Some((body, used)) = read_body(framing, rest, head.method, limits)? else {
        let expect_continue = find_header(&head.headers, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        return Ok(Parsed::NeedBody { expect_continue });
    };
    let conn_tokens = |tok: &str| {
        head.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(tok))
    };
    let keep_alive = if head.version == 1 {
        !conn_tokens("close")
    } else {
        conn_tokens("keep-alive")
    };
    Ok(Parsed::Complete(
        Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            keep_alive,
        },
        head.len + used,
    ))
}

/// A complete, valid request head.
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    version: u8,
    headers: Vec<(&'a str, &'a [u8])>,
    /// Bytes of the head, blank line included.
    len: usize,
}

/// The head at the front of `buf`; `None` while it is incomplete.
fn parse_head<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Head<'a>>, HttpError> {
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
    Ok(Some(Head {
        method,
        path,
        query,
        version: req.version.unwrap_or(1),
        headers: req.headers.iter().map(|h| (h.name, h.value)).collect(),
        len,
    }))
}

fn find_header<'a>(headers: &[(&'a str, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(usize),
    /// Neither header: no body (a `POST` then gets `411`).
    None,
}

/// Reads the body framing from the headers; conflicting or unsupported
/// framing is a `400` (request smuggling starts where two parsers disagree).
fn body_framing(headers: &[(&str, &[u8])]) -> Result<Framing, HttpError> {
    let chunked = match find_header(headers, "transfer-encoding") {
        Some(te) => {
            let te = std::str::from_utf8(te).unwrap_or("");
            if !te.trim().eq_ignore_ascii_case("chunked") {
                return Err(HttpError::BadRequest(format!(
                    "unsupported Transfer-Encoding {te:?}; only chunked is accepted"
                )));
            }
            true
        }
        None => false,
    };
    let framing = match find_header(headers, "content-length") {
        Some(_) if chunked => {
            return Err(HttpError::BadRequest(
                "both Content-Length and Transfer-Encoding given".into(),
            ))
        }
        Some(v) => Framing::Length(parse_content_length(v)?),
        None if chunked => Framing::Chunked,
        None => Framing::None,
    };
    let lengths = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .count();
    if lengths > 1 {
        return Err(HttpError::BadRequest("more than one Content-Length".into()));
    }
    Ok(framing)
}

/// A request body and the bytes of the buffer it used (with chunked
/// framing, more than its length).
type Body<'a> = (Cow<'a, [u8]>, usize);

/// The body at the front of `rest`; `None` while it is incomplete.
fn read_body<'a>(
    framing: Framing,
    rest: &'a [u8],
    method: &str,
    limits: &Limits,
) -> Result<Option<Body<'a>>, HttpError> {
    Ok(match framing {
        Framing::Chunked => {
            decode_chunked(rest, limits.max_body_bytes)?.map(|(b, n)| (Cow::Owned(b), n))
        }
        Framing::Length(len) if len > limits.max_body_bytes => {
            return Err(HttpError::PayloadTooLarge {
                limit: limits.max_body_bytes,
            })
        }
        Framing::Length(len) if rest.len() < len => None,
        Framing::Length(len) => Some((Cow::Borrowed(&rest[..len]), len)),
        Framing::None if matches!(method, "POST" | "PUT" | "PATCH") => {
            return Err(HttpError::LengthRequired)
        }
        Framing::None => Some((Cow::Borrowed(&[][..]), 0)),
    })
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

/// Longest chunk size line (size and extensions, without CRLF) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Decodes a chunked body. `Ok(None)`: more bytes needed. Trailers are read
/// and dropped.
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let too_long = || HttpError::BadRequest("chunk size line too long".into());
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        // The same limit whether the line's CRLF has arrived or not (a line
        // of the limit's length may be waiting for the LF after its CR), so
        // the answer does not depend on how the body was split into reads.
        let Some(line_end) = find_crlf(&buf[pos..]) else {
            if buf.len() - pos > MAX_CHUNK_LINE + 1 {
                return Err(too_long());
            }
            return Ok(None);
        };
        if line_end > MAX_CHUNK_LINE {
            return Err(too_long());
        }
        let line = &buf[pos..pos + line_end];
        let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let size_str = std::str::from_utf8(size_part).unwrap_or("").trim();
        // RFC 9112 chunk-size is 1*HEXDIG: no sign (from_str_radix would
        // take a leading "+"), no "0x".
        let size = size_str
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| usize::from_str_radix(size_str, 16).ok())
            .flatten()
            .ok_or_else(|| HttpError::BadRequest(format!("invalid chunk size {size_str:?}")))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers: lines until an empty one.
            loop {
                let Some(end) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if body.len().saturating_add(size) > max {
            return Err(HttpError::PayloadTooLarge { limit: max });
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk not followed by CRLF".into()));
        }
        pos += 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
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
