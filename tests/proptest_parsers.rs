//! Property tests of the parsers a peer reaches: HTTP requests (single,
//! pipelined, split anywhere), chunked bodies, percent-decoding, connection
//! ids and token extraction. They run in `cargo test` (256 cases each); the
//! coverage-guided fuzz targets under fuzz/ go further.

use proptest::collection::vec;
use proptest::prelude::*;
use wsedge::testbed::ConnRef;
use wsedge::testbed::{bearer_token, extract_token};
use wsedge::testbed::{check_channel_name, Grants};
use wsedge::testbed::{decode_chunked, parse_request, percent_decode, Limits, Parsed, Request};

const BIG: Limits = Limits {
    max_header_bytes: 64 * 1024,
    max_body_bytes: 64 * 1024,
};

/// A request as generated, and the bytes it is sent as.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Option<String>,
    /// Headers as sent, framing headers included, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    wire: Vec<u8>,
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
    ])
}

fn path() -> impl Strategy<Value = String> {
    vec("([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2}){0,8}", 0..4)
        .prop_map(|segs| format!("/{}", segs.join("/")))
}

fn query() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[A-Za-z0-9=&%._~/?-]{0,24}")
}

/// Headers other than the ones that frame the body or change keep-alive.
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = "[A-Za-z][A-Za-z0-9-]{0,15}".prop_filter("not a framing header", |n| {
        ![
            "content-length",
            "transfer-encoding",
            "connection",
            "expect",
        ]
        .contains(&n.to_ascii_lowercase().as_str())
    });
    // No leading or trailing whitespace: the parser trims it.
    let value = "([!-~]([ -~]{0,30}[!-~])?)?";
    vec((name, value), 0..6)
}

/// Chunk sizes splitting `len` bytes (every chunk non-empty).
fn split_sizes(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (len + 1))
        .filter(|&c| c > 0 && c < len)
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut sizes = Vec::new();
    let mut at = 0;
    for p in points.into_iter().chain(std::iter::once(len)) {
        if p > at {
            sizes.push(p - at);
            at = p;
        }
    }
    sizes
}

/// `body` in chunked encoding: hex sizes in either case, some with an
/// extension, and optional trailers.
fn chunk_encode(body: &[u8], cuts: &[usize], upper: bool, ext: bool, trailers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for (i, size) in split_sizes(body.len(), cuts).into_iter().enumerate() {
        let hex = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        out.extend_from_slice(hex.as_bytes());
        if ext && i % 2 == 0 {
            out.extend_from_slice(b";name=value");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[at..at + size]);
        out.extend_from_slice(b"\r\n");
        at += size;
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"X-Trailer: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn request() -> impl Strategy<Value = Req> {
    (
        method(),
        path(),
        query(),
        headers(),
        vec(any::<u8>(), 0..200),
        prop::sample::select(vec!["none", "length", "chunked"]),
        vec(any::<usize>(), 0..5),
        any::<(bool, bool, bool)>(),
    )
        .prop_map(
            |(
                method,
                path,
                query,
                mut headers,
                mut body,
                framing,
                cuts,
                (upper, ext, trailers),
            )| {
                let mut framed = Vec::new();
                match framing {
                    "chunked" => {
                        headers.push(("Transfer-Encoding".into(), "chunked".into()));
                        framed = chunk_encode(&body, &cuts, upper, ext, trailers);
                    }
                    "length" => {
                        headers.push(("Content-Length".into(), body.len().to_string()));
                        framed = body.clone();
                    }
                    _ if matches!(method, "POST" | "PUT" | "PATCH") => {
                        headers.push(("content-length".into(), "0".into()));
                        body.clear();
                    }
                    _ => body.clear(),
                }
                let mut wire = format!("{method} {path}").into_bytes();
                if let Some(q) = &query {
                    wire.push(b'?');
                    wire.extend_from_slice(q.as_bytes());
                }
                wire.extend_from_slice(b" HTTP/1.1\r\n");
                for (n, v) in &headers {
                    wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&framed);
                Req {
                    method,
                    path,
                    query,
                    headers,
                    body,
                    wire,
                }
            },
        )
}

fn assert_same(got: &Request<'_>, want: &Req) {
    assert_eq!(got.method, want.method);
    assert_eq!(got.path, want.path);
    assert_eq!(got.query, want.query.as_deref());
    let headers: Vec<(String, Vec<u8>)> = got
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    let want_headers: Vec<(String, Vec<u8>)> = want
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    assert_eq!(headers, want_headers);
    assert_eq!(&*got.body, &want.body[..]);
    assert!(got.keep_alive);
}

/// Parses every request in `buf`; returns them and what stopped the walk.
fn walk(buf: &[u8]) -> (Vec<Request<'_>>, Result<&'static str, String>) {
    let mut out = Vec::new();
    let mut rest = buf;
    loop {
        match parse_request(rest, &BIG) {
            Ok(Parsed::Complete(req, used)) => {
                out.push(req);
                rest = &rest[used..];
            }
            Ok(Parsed::Partial) => return (out, Ok("partial")),
            Ok(Parsed::NeedBody { .. }) => return (out, Ok("need body")),
            Err(e) => return (out, Err(e.to_string())),
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_never_panic(buf in vec(any::<u8>(), 0..512), h in 0usize..600, b in 0usize..300) {
        let limits = Limits { max_header_bytes: h, max_body_bytes: b };
        if let Ok(Parsed::Complete(req, used)) = parse_request(&buf, &limits) {
            prop_assert!(used <= buf.len());
            let _ = req.query_param("token");
            let _ = wsedge::testbed::route(&req);
        }
    }

    #[test]
    fn any_request_like_bytes_never_panic(head in "[A-Z]{1,7} [ -~]{0,40} HTTP/1\\.[01]\r\n([!-~]{1,12}: [ -~]{0,20}\r\n){0,4}\r\n", tail in vec(any::<u8>(), 0..64)) {
        let mut buf = head.into_bytes();
        buf.extend_from_slice(&tail);
        let _ = walk(&buf);
    }

    #[test]
    fn valid_request_parses_back(req in request(), extra in vec(any::<u8>(), 0..16)) {
        let mut buf = req.wire.clone();
        buf.extend_from_slice(&extra);
        match parse_request(&buf, &BIG) {
            Ok(Parsed::Complete(got, used)) => {
                prop_assert_eq!(used, req.wire.len());
                assert_same(&got, &req);
            }
            other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&req.wire)),
        }
    }

    #[test]
    fn pipelined_stream_split_anywhere(reqs in vec(request(), 1..4), cut in any::<prop::sample::Index>()) {
        let stream: Vec<u8> = reqs.iter().flat_map(|r| r.wire.iter().copied()).collect();
        let (all, end) = walk(&stream);
        prop_assert_eq!(end, Ok("partial"));
        prop_assert_eq!(all.len(), reqs.len());
        for (got, want) in all.iter().zip(&reqs) {
            assert_same(got, want);
        }
        // A prefix: the requests wholly in it, then the rest is incomplete.
        let cut = cut.index(stream.len());
        let (some, end) = walk(&stream[..cut]);
        prop_assert!(end.is_ok(), "prefix of {} bytes: {:?}", cut, end);
        prop_assert!(some.len() < reqs.len());
        for (got, want) in some.iter().zip(&reqs) {
            assert_same(got, want);
        }
        let whole: usize = reqs[..some.len()].iter().map(|r| r.wire.len()).sum();
        prop_assert!(whole <= cut);
    }

    #[test]
    fn chunked_round_trip(
        body in vec(any::<u8>(), 0..300),
        cuts in vec(any::<usize>(), 0..6),
        flags in any::<(bool, bool, bool)>(),
        extra in vec(any::<u8>(), 0..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let enc = chunk_encode(&body, &cuts, flags.0, flags.1, flags.2);
        let mut buf = enc.clone();
        buf.extend_from_slice(&extra);
        prop_assert_eq!(decode_chunked(&buf, body.len()), Ok(Some((body.clone(), enc.len()))));
        // Every strict prefix needs more bytes.
        let cut = cut.index(enc.len());
        prop_assert_eq!(decode_chunked(&enc[..cut], body.len()), Ok(None));
        if !body.is_empty() {
            prop_assert!(decode_chunked(&buf, body.len() - 1).is_err());
        }
    }

    /// A chunk size line near the length limit: a prefix of a body that
    /// decodes whole is never refused. (It was, once more than 1024 bytes of
    /// a long line had arrived without their CRLF.)
    #[test]
    fn chunk_line_limit_does_not_depend_on_split(ext in 1000usize..1040, cut in any::<prop::sample::Index>()) {
        let mut enc = format!("5;{}", "x".repeat(ext)).into_bytes();
        enc.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        // Cuts from the thousandth byte on: around the limit.
        let cut = 1000 + cut.index(enc.len() - 1000);
        match decode_chunked(&enc, 100) {
            Ok(Some((body, used))) => {
                prop_assert_eq!((&body[..], used), (&b"hello"[..], enc.len()));
                prop_assert_eq!(decode_chunked(&enc[..cut], 100), Ok(None));
            }
            Ok(None) => prop_assert!(false, "a whole body needs nothing more"),
            Err(_) => prop_assert!(ext + 2 > 1024, "line of {} bytes refused", ext + 2),
        }
    }

    #[test]
    fn percent_decode_inverts_encode(s in any::<String>()) {
        let enc = percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string();
        prop_assert_eq!(percent_decode(&enc), s);
    }

    #[test]
    fn conn_ref_round_trips(shard in any::<u16>(), slot in any::<u32>(), gen in any::<u32>()) {
        let r = ConnRef { shard, slot, gen };
        prop_assert_eq!(ConnRef::parse(&r.to_id()), Some(r));
    }

    #[test]
    fn conn_ref_parse_any_string(s in "[0-9+-]{0,24}|\\PC{0,24}") {
        if let Some(r) = ConnRef::parse(&s) {
            prop_assert_eq!(ConnRef::parse(&r.to_id()), Some(r));
        }
    }

    #[test]
    fn header_wins_over_query(
        header in prop::option::of(vec(any::<u8>(), 0..40)),
        token in "[A-Za-z0-9._~+/=-]{0,40}",
        other in "\\PC{0,12}",
        before in vec("[a-su-z][a-z0-9]{0,5}=[a-z0-9]{0,5}", 0..3),
    ) {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        // Other parameters, then the token, then a second token that loses.
        let mut pairs = before.clone();
        pairs.push(format!("token={}", enc(&token)));
        pairs.push(format!("token={}", enc(&other)));
        let q = pairs.join("&");
        let got = extract_token(header.as_deref(), Some(&q));
        match &header {
            Some(h) => prop_assert_eq!(got.as_deref(), Some(bearer_token(h).unwrap_or_default())),
            None => prop_assert_eq!(got, Some(token.clone())),
        }
        prop_assert_eq!(extract_token(None, Some(&before.join("&"))), None);
        let bearer = format!("BeArEr {token}");
        let want = if token.is_empty() { None } else { Some(token.as_str()) };
        // "Bearer" with no token is no scheme at all ("Bearer" alone), so None.
        prop_assert_eq!(bearer_token(bearer.as_bytes()).filter(|t| !t.is_empty()), want);
    }
}

/// The exact inputs of the chunk size line limit: 1024 bytes is accepted
/// however it arrives, 1025 is refused once it is known to be that long.
#[test]
fn chunk_line_limit_edges() {
    let line = |n: usize| {
        let mut enc = format!("5;{}", "x".repeat(n - 2)).into_bytes();
        enc.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        enc
    };
    let ok = line(1024);
    assert_eq!(
        decode_chunked(&ok, 100),
        Ok(Some((b"hello".to_vec(), ok.len())))
    );
    for cut in [1024, 1025, 1026] {
        assert_eq!(decode_chunked(&ok[..cut], 100), Ok(None), "cut {cut}");
    }
    let long = line(1025);
    assert!(decode_chunked(&long, 100).is_err());
    assert_eq!(decode_chunked(&long[..1025], 100), Ok(None));
    assert!(decode_chunked(&long[..1026], 100).is_err());
}

proptest! {
    /// A channel name is accepted exactly when it is 1–128 bytes of the
    /// allowed characters and does not start with `@`; nothing panics.
    #[test]
    fn channel_names_follow_the_rules(name in "\\PC{0,140}") {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-:.@/".contains(&b);
        let want = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('@')
            && name.bytes().all(allowed);
        prop_assert_eq!(check_channel_name(&name).is_ok(), want);
    }

    /// `prefix*` allows exactly the names starting with the prefix, and an
    /// exact pattern only itself.
    #[test]
    fn claim_patterns_are_exact_names_or_prefixes(
        prefix in "[a-z:]{0,6}",
        name in "[a-z:]{0,8}",
    ) {
        let star = Grants::new(vec![format!("{prefix}*")]);
        prop_assert_eq!(star.allows(&name), name.starts_with(&prefix));
        let exact = Grants::new(vec![prefix.clone()]);
        prop_assert_eq!(exact.allows(&name), name == prefix);
    }
}
