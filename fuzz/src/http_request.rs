//! Arbitrary bytes as the read buffer of an HTTP connection: parse every
//! pipelined request in it the way `Conn::process_http` does, route it, read
//! its token, query and headers, answer REST routes through a real `Handle`,
//! and check that the parser agrees with itself on prefixes.
//!
//! Input: byte 0 picks the limits (low nibble: header limit 64..=1024, high
//! nibble: body limit 0..=240 or, for 15, 1 MiB); byte 1 bit 0 turns the REST
//! answers off (parse and route only); the rest is the buffer. A `$A` in the
//! buffer becomes the admin key so the fuzzer gets past admin auth.

use wsedge::testbed::{self, Route};
use wsedge::testbed::{parse_request, Limits, Parsed, Request, Response};

fn limits(sel: u8) -> Limits {
    let body = match sel >> 4 {
        15 => 1 << 20,
        n => n as usize * 16,
    };
    Limits {
        max_header_bytes: 64 * (1 + (sel & 0x0f) as usize),
        max_body_bytes: body,
    }
}

fn exercise(req: &Request<'_>, answer: bool) {
    let _ = req.query_param("token");
    let _ = req.query_param("limit");
    let _ = req.query_param("");
    for name in ["host", "authorization", "connection", "upgrade", "origin"] {
        let _ = req.header(name);
    }
    let _ = req.header_has_token("connection", "upgrade");
    let _ = req.header_has_token("upgrade", "websocket");
    let _ = wsedge::testbed::extract_token(req.header("authorization"), req.query);
    let _ = Route::parse(req.path);
    let resp = match testbed::route(req) {
        Ok(Route::WebSocket) => return,
        Ok(route) => {
            // HEAD is answered wherever GET is (docs/PROTOCOL.md §4.11).
            let head_on_get = req.method == "HEAD" && route.method() == "GET";
            assert!(
                route.method() == req.method || head_on_get,
                "{}",
                req.method
            );
            if !answer {
                return;
            }
            testbed::answer(&super::handle(false), &route, req)
        }
        Err(e) => Response::error(&e),
    };
    let mut bytes = Vec::new();
    resp.write_to(&mut bytes);
    assert!(bytes.starts_with(b"HTTP/1.1 "));
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let (sel, flags, rest) = match data {
        [a, b, rest @ ..] => (*a, *b, rest),
        _ => return,
    };
    let limits = limits(sel);
    let buf = super::substitute_with(rest, b"$A", super::ADMIN_KEY);
    let mut at = 0;
    // Pipelined requests, as `process_http` walks them.
    while at < buf.len() {
        let cur = &buf[at..];
        match parse_request(cur, &limits) {
            Ok(Parsed::Complete(req, used)) => {
                assert!(
                    used > 0 && used <= cur.len(),
                    "used {used} of {}",
                    cur.len()
                );
                // The request alone parses to the same thing...
                match parse_request(&cur[..used], &limits) {
                    Ok(Parsed::Complete(again, n)) => {
                        assert_eq!(n, used);
                        assert_eq!(
                            (again.method, again.path, again.query),
                            (req.method, req.path, req.query)
                        );
                        assert_eq!(again.body, req.body);
                        assert_eq!(again.headers, req.headers);
                    }
                    other => panic!("request alone parsed differently: {other:?}"),
                }
                // ...and any shorter prefix of it is still incomplete.
                for cut in [used - 1, used / 2] {
                    match parse_request(&cur[..cut], &limits) {
                        Ok(Parsed::Partial | Parsed::NeedBody { .. }) => {}
                        other => panic!("prefix of {cut} bytes of a complete request: {other:?}"),
                    }
                }
                exercise(&req, flags & 1 == 0);
                at += used;
            }
            Ok(Parsed::Partial) => {
                assert!(cur.len() <= limits.max_header_bytes);
                break;
            }
            Ok(Parsed::NeedBody { .. }) => break,
            Err(e) => {
                let mut bytes = Vec::new();
                Response::error(&e).with_close(true).write_to(&mut bytes);
                break;
            }
        }
    }
}
