//! The management REST API and the HTTP layer (docs/PROTOCOL.md §4) over real sockets:
//! admin auth on every route, each route's answer and its effect on
//! connected WebSocket clients, `/healthz` and `/metrics`, and HTTP framing
//! (keep-alive, pipelining, chunked bodies, limits, timeouts).
//!
//! "Nobody received it" is proven without sleeping: a marker broadcast to
//! everyone is sent afterwards, and it must be the next message each client
//! reads (a shard handles its commands in order).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wsedge::{mint_hs256, now_secs};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One HTTP answer; `json` is the parsed body when it is `application/json`
/// (and then its `timestamp` has already been checked), else `Null`.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    json: Value,
}

impl Resp {
    fn from_parts((status, head, body): (u16, String, Vec<u8>)) -> Resp {
        let mut r = Resp {
            status,
            head,
            body,
            json: Value::Null,
        };
        if r.header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
        {
            r.json = serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("JSON answer does not parse ({e}): {:?}", r.text()));
            assert_timestamp(&r.json);
        }
        r
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` field of a JSON error answer.
    fn error(&self) -> &str {
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `error` in {} {}", self.status, self.text()))
    }
}

/// Every JSON answer carries an RFC 3339 `timestamp` close to now.
fn assert_timestamp(v: &Value) {
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `timestamp` in {v}"));
    let b = ts.as_bytes();
    assert!(b.len() >= 20, "timestamp too short: {ts:?}");
    for (i, c) in b[..19].iter().enumerate() {
        let ok = match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T' || *c == b't',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        };
        assert!(ok, "not RFC 3339 at byte {i}: {ts:?}");
    }
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        assert!(n > 0, "empty fraction in {ts:?}");
        rest = &frac[n..];
    }
    let rb = rest.as_bytes();
    let offset_ok = rest == "Z"
        || rest == "z"
        || (rb.len() == 6
            && (rb[0] == b'+' || rb[0] == b'-')
            && rb[1..3].iter().all(u8::is_ascii_digit)
            && rb[3] == b':'
            && rb[4..].iter().all(u8::is_ascii_digit));
    assert!(offset_ok, "bad RFC 3339 offset in {ts:?}");
    if rest == "Z" {
        let t = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts:?}: {e}"));
        let now = SystemTime::now();
        let skew = now
            .duration_since(t)
            .or_else(|_| t.duration_since(now))
            .unwrap_or_default();
        assert!(skew < Duration::from_secs(120), "timestamp {ts} is not now");
    }
}

/// One request on a fresh connection. `auth` is the whole `Authorization`
/// value; a POST without a body still says `Content-Length: 0`.
fn call_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&[u8]>,
) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(a) = auth {
        raw.push_str(&format!("Authorization: {a}\r\n"));
    }
    match body {
        Some(b) => raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )),
        None if method == "POST" => raw.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    Resp::from_parts(http_raw(addr, &bytes))
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Resp {
    call_bytes(addr, method, path, auth, body.map(str::as_bytes))
}

fn bearer(cred: &str) -> String {
    format!("Bearer {cred}")
}

/// A call with the static admin key.
fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let body = body.map(Value::to_string);
    call(
        addr,
        method,
        path,
        Some(&bearer(ADMIN_KEY)),
        body.as_deref(),
    )
}

fn broadcast(addr: SocketAddr, body: &Value) -> Resp {
    let r = admin(addr, "POST", "/v1/websocket/broadcast", Some(body));
    assert_eq!(r.status, 200, "broadcast {body}: {}", r.text());
    r
}

fn status_of(addr: SocketAddr, encoded_user: &str) -> Value {
    let r = admin(
        addr,
        "GET",
        &format!("/v1/websocket/user/{encoded_user}/status"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json
}

fn stats(addr: SocketAddr, query: &str) -> Value {
    let r = admin(addr, "GET", &format!("/v1/websocket/stats{query}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json
}

/// The next text message, as the raw text the server sent.
fn next_text(ws: &mut Ws) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no message within {WAIT:?}");
        match ws.read().expect("read message") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed while waiting for a message: {c:?}"),
            _ => continue,
        }
    }
}

/// Broadcasts a marker to everyone and checks that it is the very next
/// message of every client: nothing else reached them before it.
fn assert_next_is_marker(addr: SocketAddr, clients: &mut [&mut Ws], tag: &str) {
    let r = broadcast(addr, &json!({"type":"marker","payload":tag}));
    assert_eq!(r.json["targetUsers"], "all");
    let expected = json!({"type":"marker","payload":tag});
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(
            next_api(ws),
            expected,
            "client #{i} got something else first"
        );
    }
}

/// Reads until the peer has closed; panics when data or a timeout comes instead.
fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) => {}
        Err(e) => panic!("expected a close, got {e}"),
    }
}

/// A client connection that may carry many requests and answers.
struct HttpConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    fn open(addr: SocketAddr) -> HttpConn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        HttpConn { s, buf: Vec::new() }
    }

    fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).expect("write");
    }

    /// Reads more bytes; 0 when the server closed.
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        match self.s.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                0
            }
            Err(e) => panic!("reading an answer: {e} (have {:?})", self.pending()),
        }
    }

    fn pending(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next answer (Content-Length framed), or `None` when the server
    /// closed before sending any byte of it.
    fn try_response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.fill() == 0 {
                assert!(self.buf.is_empty(), "closed mid-head: {:?}", self.pending());
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 "), "not a response: {head:?}");
        let status: u16 = head[9..12].parse().expect("status");
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().expect("content-length"))
            })
            .expect("answers carry Content-Length");
        while self.buf.len() < head_end + len {
            assert!(self.fill() > 0, "closed mid-body");
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Some(Resp::from_parts((status, head, body)))
    }

    fn response(&mut self) -> Resp {
        self.try_response()
            .expect("an answer, but the server closed the connection")
    }

    fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            self.pending()
        );
        assert_eq!(self.fill(), 0, "expected a close, got {:?}", self.pending());
    }
}

/// `GET` request bytes with an optional admin key.
fn get_req(path: &str, with_admin: bool) -> String {
    let auth = if with_admin {
        format!("Authorization: Bearer {ADMIN_KEY}\r\n")
    } else {
        String::new()
    };
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n")
}

fn post_req(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn metrics_text(addr: SocketAddr) -> String {
    let r = call(addr, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    r.text()
}

/// Sum of the samples of `series`: a bare name sums every label set, a
/// name with labels is that one sample. Panics when there is none.
fn metric(text: &str, series: &str) -> f64 {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, val) = l.rsplit_once(' ')?;
            let name = key.split('{').next()?;
            let hit = if series.contains('{') {
                key == series
            } else {
                name == series
            };
            hit.then(|| val.trim().parse::<f64>().expect("sample value"))
        })
        .collect();
    assert!(!samples.is_empty(), "no sample of {series} in:\n{text}");
    samples.iter().sum()
}

fn user_token_with(claims: Value) -> String {
    let mut c = claims;
    c["exp"] = json!(now_secs() + 600);
    mint_hs256(SECRET, &c)
}

/// The six management routes, aimed at `user` (percent-encoded).
fn management_routes(user: &str) -> Vec<(&'static str, String, Option<String>)> {
    vec![
        (
            "POST",
            "/v1/websocket/broadcast".into(),
            Some(r#"{"type":"auth-probe","payload":1}"#.into()),
        ),
        (
            "POST",
            format!("/v1/websocket/send/{user}"),
            Some(r#"{"type":"auth-probe","payload":2}"#.into()),
        ),
        ("GET", "/v1/websocket/stats".into(), None),
        ("GET", format!("/v1/websocket/user/{user}/status"), None),
        (
            "DELETE",
            format!("/v1/websocket/user/{user}/disconnect"),
            None,
        ),
        ("POST", "/v1/websocket/test/notification".into(), None),
    ]
}

/// With `auth`, every management route succeeds, and its effect reaches a
/// fresh client of `user`.
fn assert_admin_on_all_routes(addr: SocketAddr, auth: &str, user: &str) {
    let (mut ws, _) = connect(addr, &token(user, 60));
    for (method, path, body) in management_routes(user) {
        let r = call(addr, method, &path, Some(auth), body.as_deref());
        assert_eq!(r.status, 200, "{method} {path} with {auth}: {}", r.text());
        match path.as_str() {
            "/v1/websocket/broadcast" => {
                assert_eq!(r.json["sentToConnections"], 1);
                assert_eq!(next_api(&mut ws), json!({"type":"auth-probe","payload":1}));
            }
            "/v1/websocket/stats" => assert_eq!(r.json["totalConnections"], 1),
            "/v1/websocket/test/notification" => {
                // The client was disconnected just before: nobody is addressed.
                assert!(r.json["sentToConnections"].is_u64(), "{}", r.json);
            }
            p if p.starts_with("/v1/websocket/send/") => {
                assert_eq!(r.json["sentToConnections"], 1);
                assert_eq!(next_api(&mut ws), json!({"type":"auth-probe","payload":2}));
            }
            p if p.ends_with("/status") => assert_eq!(r.json["connectionCount"], 1),
            _ => {
                assert_eq!(r.json["disconnectedConnections"], 1);
                assert_eq!(expect_close(&mut ws), 4000);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Admin auth
// ---------------------------------------------------------------------------

#[test]
fn management_routes_refuse_missing_and_bad_credentials() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("target", 60));
    let now = now_secs();
    let wrong_secret = mint_hs256(
        "not-the-secret",
        &json!({"sub":"a","role":"admin","exp":now+600}),
    );
    let expired = mint_hs256(SECRET, &json!({"sub":"a","role":"admin","exp":now-3600}));
    // alg "none", claims {"sub":"a","role":"admin","exp":9999999999}, no signature.
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwicm9sZSI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    let short_key = &ADMIN_KEY[..ADMIN_KEY.len() - 1];
    let bad: Vec<Option<String>> = vec![
        None,
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(bearer("wrong-key")),
        Some(bearer(short_key)),
        Some(bearer(&format!("{ADMIN_KEY}x"))),
        Some(bearer(&ADMIN_KEY.to_uppercase())),
        Some(format!("Basic {ADMIN_KEY}")),
        Some(ADMIN_KEY.into()),
        Some(bearer(&wrong_secret)),
        Some(bearer(&expired)),
        Some(bearer(unsigned)),
        Some(bearer("a.b.c")),
    ];
    for (method, path, body) in management_routes("target") {
        for auth in &bad {
            let r = call(srv.addr, method, &path, auth.as_deref(), body.as_deref());
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.error(), "unauthorized", "{method} {path} with {auth:?}");
        }
    }
    // None of those calls did anything: still connected, nothing delivered.
    assert_eq!(status_of(srv.addr, "target")["connectionCount"], 1);
    assert_next_is_marker(srv.addr, &mut [&mut ws], "after-401s");
}

#[test]
fn management_routes_forbid_valid_user_tokens_without_admin_role() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("target", 60));
    let not_admin = [
        token("bob", 60),
        user_token_with(json!({"sub":"bob","role":"user"})),
        user_token_with(json!({"sub":"bob","role":"ADMIN"})),
        user_token_with(json!({"sub":"bob","role":["user"]})),
        user_token_with(json!({"sub":"bob","role":true})),
        user_token_with(json!({"sub":"bob","admin":"role"})),
    ];
    for (method, path, body) in management_routes("target") {
        for t in &not_admin {
            let r = call(srv.addr, method, &path, Some(&bearer(t)), body.as_deref());
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            assert_eq!(r.error(), "forbidden", "{method} {path}");
        }
    }
    assert_eq!(status_of(srv.addr, "target")["connectionCount"], 1);
    assert_next_is_marker(srv.addr, &mut [&mut ws], "after-403s");
}

#[test]
fn management_routes_accept_admin_key_and_admin_role_jwt() {
    let srv = start(|_| {});
    assert_admin_on_all_routes(srv.addr, &bearer(ADMIN_KEY), "by-key");
    assert_admin_on_all_routes(srv.addr, &bearer(&admin_token()), "by-jwt");
    // The scheme name is case-insensitive (RFC 7235).
    let r = call(
        srv.addr,
        "GET",
        "/v1/websocket/stats",
        Some(&format!("bearer {ADMIN_KEY}")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn custom_admin_role_claim_and_value_are_honoured() {
    let srv = start(|cfg| {
        cfg.admin_role_claim = "perm".into();
        cfg.admin_role_value = "superuser".into();
    });
    let custom = user_token_with(json!({"sub":"ops","perm":"superuser"}));
    assert_admin_on_all_routes(srv.addr, &bearer(&custom), "custom-claim");
    // The default claim and value no longer make an admin...
    for t in [
        admin_token(),
        user_token_with(json!({"sub":"ops","perm":"admin"})),
        user_token_with(json!({"sub":"ops","role":"superuser"})),
    ] {
        for (method, path, body) in management_routes("nobody") {
            let r = call(srv.addr, method, &path, Some(&bearer(&t)), body.as_deref());
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            assert_eq!(r.error(), "forbidden");
        }
    }
    // ...while the static key still does.
    assert_admin_on_all_routes(srv.addr, &bearer(ADMIN_KEY), "custom-key");
}

// ---------------------------------------------------------------------------
// POST /v1/websocket/broadcast
// ---------------------------------------------------------------------------

#[test]
fn broadcast_to_all_reaches_every_connection_with_payload_verbatim() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let (mut b1, _) = connect(srv.addr, &token("bob", 60));
    let (mut b2, _) = connect(srv.addr, &token("bob", 60));
    // A big integer and `1.50` would not survive a trip through f64.
    let payload = r#"{"big":123456789012345678901234567890,"f":1.50,"s":"caf\u00e9 \"q\" ☃","n":null,"arr":[1, {"x":[]}]}"#;
    let body = format!(r#"{{"type":"news","payload":{payload}}}"#);
    let r = call(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(&bearer(ADMIN_KEY)),
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["message"], "Message broadcasted successfully");
    assert_eq!(r.json["sentToConnections"], 3);
    assert_eq!(r.json["targetUsers"], "all");
    for ws in [&mut a, &mut b1, &mut b2] {
        let text = next_text(ws);
        let v: Value = serde_json::from_str(&text).expect("json");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 4, "type, stream, offset, payload: {text}");
        assert_eq!((&v["channel"], &v["offset"]), (&json!("@all"), &json!(1)));
        assert_eq!(v["type"], "news");
        assert!(
            text.contains(payload),
            "payload not preserved verbatim:\n sent {payload}\n  got {text}"
        );
    }
}

#[test]
fn broadcast_payload_of_any_json_type_and_null_when_omitted() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let payloads = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-12.5),
        json!("text"),
        json!(""),
        json!([]),
        json!([1, "a", null, {"b": []}]),
        json!({}),
        json!({"nested": {"deep": [1, 2, 3]}}),
    ];
    for (i, p) in payloads.iter().enumerate() {
        let kind = format!("kind-{i}");
        let r = broadcast(srv.addr, &json!({"type": kind, "payload": p}));
        assert_eq!(r.json["sentToConnections"], 1);
        assert_eq!(next_api(&mut a), json!({"type": kind, "payload": p}));
    }
    let r = broadcast(srv.addr, &json!({"type": "bare"}));
    assert_eq!(r.json["sentToConnections"], 1);
    let text = next_text(&mut a);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        api_view(v.clone()),
        json!({"type":"bare","payload":null}),
        "{text}"
    );
    assert!(
        v.as_object().is_some_and(|o| o.contains_key("payload")),
        "payload must be present as null: {text}"
    );
    // The type is any non-empty string, carried as is.
    let odd = "ünïcode \"quoted\" type";
    broadcast(srv.addr, &json!({"type": odd, "payload": 1}));
    assert_eq!(next_api(&mut a), json!({"type": odd, "payload": 1}));
}

#[test]
fn broadcast_to_user_ids_reaches_only_them() {
    let srv = start(|_| {});
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (mut a2, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let (mut c, _) = connect(srv.addr, &token("carol", 60));
    let r = broadcast(
        srv.addr,
        &json!({"type":"dm","payload":{"k":1},"userIds":["alice","bob","ghost"]}),
    );
    assert_eq!(r.json["message"], "Message broadcasted successfully");
    assert_eq!(r.json["targetUsers"], 3);
    assert_eq!(r.json["sentToConnections"], 3);
    for ws in [&mut a1, &mut a2, &mut b] {
        assert_eq!(next_api(ws), json!({"type":"dm","payload":{"k":1}}));
    }
    // A repeated id counts as given but delivers once.
    let r = broadcast(
        srv.addr,
        &json!({"type":"twice","payload":2,"userIds":["bob","bob"]}),
    );
    assert_eq!(r.json["targetUsers"], 2);
    assert_eq!(r.json["sentToConnections"], 1);
    assert_eq!(next_api(&mut b), json!({"type":"twice","payload":2}));
    assert_next_is_marker(srv.addr, &mut [&mut a1, &mut a2, &mut b, &mut c], "m1");
}

#[test]
fn broadcast_with_empty_user_ids_reaches_nobody() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = broadcast(srv.addr, &json!({"type":"void","payload":1,"userIds":[]}));
    assert_eq!(r.json["message"], "Message broadcasted successfully");
    assert_eq!(r.json["sentToConnections"], 0);
    assert_eq!(r.json["targetUsers"], 0);
    let r = broadcast(
        srv.addr,
        &json!({"type":"void","payload":2,"userIds":[],"excludeUserIds":["alice"]}),
    );
    assert_eq!(r.json["sentToConnections"], 0);
    assert_next_is_marker(srv.addr, &mut [&mut a, &mut b], "after-empty");
}

#[test]
fn broadcast_exclusions_win() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let (mut b1, _) = connect(srv.addr, &token("bob", 60));
    let (mut b2, _) = connect(srv.addr, &token("bob", 60));
    let (mut c, _) = connect(srv.addr, &token("carol", 60));

    // To everyone but bob.
    let r = broadcast(
        srv.addr,
        &json!({"type":"ex","payload":1,"excludeUserIds":["bob","ghost"]}),
    );
    assert_eq!(r.json["targetUsers"], "all");
    assert_eq!(r.json["sentToConnections"], 2);
    for ws in [&mut a, &mut c] {
        assert_eq!(next_api(ws), json!({"type":"ex","payload":1}));
    }

    // bob is in both lists: excluded.
    let r = broadcast(
        srv.addr,
        &json!({"type":"both","payload":2,"userIds":["alice","bob"],"excludeUserIds":["bob"]}),
    );
    assert_eq!(r.json["targetUsers"], 2);
    assert_eq!(r.json["sentToConnections"], 1);
    assert_eq!(next_api(&mut a), json!({"type":"both","payload":2}));

    // Everyone excluded from a list: nobody.
    let r = broadcast(
        srv.addr,
        &json!({"type":"none","payload":3,"userIds":["carol"],"excludeUserIds":["carol"]}),
    );
    assert_eq!(r.json["sentToConnections"], 0);

    // bob never got any of them, carol only the first.
    assert_next_is_marker(srv.addr, &mut [&mut a, &mut b1, &mut b2, &mut c], "m");
}

#[test]
fn broadcast_rejects_bad_bodies_with_clear_errors() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    // (body, words of which the error must mention one)
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty"]),
        ("  \r\n ", &["empty", "json"]),
        ("{", &["json"]),
        ("not json", &["json"]),
        (r#"{"type":"x",}"#, &["json"]),
        (r#"{"type":"x"} trailing"#, &["json"]),
        ("[1,2]", &["object"]),
        (r#""str""#, &["object"]),
        ("null", &["object"]),
        ("42", &["object"]),
        (r#"{"payload":1}"#, &["type"]),
        (r#"{"type":""}"#, &["type"]),
        (r#"{"type":5}"#, &["type"]),
        (r#"{"type":null}"#, &["type"]),
        (r#"{"type":true}"#, &["type"]),
        (r#"{"type":["a"]}"#, &["type"]),
        (r#"{"type":{"a":1}}"#, &["type"]),
        (r#"{"type":"t","userIds":"alice"}"#, &["userIds"]),
        (r#"{"type":"t","userIds":[1]}"#, &["userIds"]),
        (r#"{"type":"t","userIds":["alice",2]}"#, &["userIds"]),
        (r#"{"type":"t","userIds":[null]}"#, &["userIds"]),
        (r#"{"type":"t","userIds":[["alice"]]}"#, &["userIds"]),
        (r#"{"type":"t","userIds":{}}"#, &["userIds"]),
        (r#"{"type":"t","userIds":true}"#, &["userIds"]),
        (
            r#"{"type":"t","excludeUserIds":"alice"}"#,
            &["excludeUserIds"],
        ),
        (r#"{"type":"t","excludeUserIds":[2]}"#, &["excludeUserIds"]),
        (
            r#"{"type":"t","excludeUserIds":{"a":1}}"#,
            &["excludeUserIds"],
        ),
        (
            r#"{"type":"t","excludeUserIds":false}"#,
            &["excludeUserIds"],
        ),
        (
            r#"{"type":"t","excludeUserIds":[null]}"#,
            &["excludeUserIds"],
        ),
    ];
    for (body, words) in cases {
        let r = call(
            srv.addr,
            "POST",
            "/v1/websocket/broadcast",
            Some(&bearer(ADMIN_KEY)),
            Some(body),
        );
        assert_eq!(r.status, 400, "body {body:?}: {}", r.text());
        let err = r.error().to_ascii_lowercase();
        assert!(
            words.iter().any(|w| err.contains(&w.to_ascii_lowercase())),
            "body {body:?}: error {err:?} should mention one of {words:?}"
        );
    }
    // Not UTF-8.
    let r = call_bytes(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(&bearer(ADMIN_KEY)),
        Some(b"{\"type\":\"\xff\xfe\"}"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.error().is_empty());
    assert_next_is_marker(srv.addr, &mut [&mut a], "after-400s");
}

// ---------------------------------------------------------------------------
// POST /v1/websocket/send/:userId
// ---------------------------------------------------------------------------

#[test]
fn send_reaches_every_connection_of_that_user_only() {
    let srv = start(|_| {});
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (mut a2, _) = connect(srv.addr, &token("alice", 60));
    let (mut a3, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/alice",
        Some(&json!({"type":"personal","payload":{"n":[1,2]}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["message"], "Message sent to user alice");
    assert_eq!(r.json["sentToConnections"], 3);
    for ws in [&mut a1, &mut a2, &mut a3] {
        assert_eq!(
            next_api(ws),
            json!({"type":"personal","payload":{"n":[1,2]}})
        );
    }
    // Omitted payload arrives as null.
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/bob",
        Some(&json!({"type":"ping-ish"})),
    );
    assert_eq!(r.json["sentToConnections"], 1);
    assert_eq!(next_api(&mut b), json!({"type":"ping-ish","payload":null}));
    assert_next_is_marker(srv.addr, &mut [&mut a1, &mut a2, &mut a3, &mut b], "m");
}

#[test]
fn send_to_unknown_user_is_404_and_bad_bodies_are_400() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/ghost",
        Some(&json!({"type":"x","payload":1})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error(), "User ghost is not connected");
    for body in [
        "",
        "{",
        "[]",
        r#"{"payload":1}"#,
        r#"{"type":""}"#,
        r#"{"type":7}"#,
    ] {
        let r = call(
            srv.addr,
            "POST",
            "/v1/websocket/send/alice",
            Some(&bearer(ADMIN_KEY)),
            Some(body),
        );
        assert_eq!(r.status, 400, "body {body:?}: {}", r.text());
        assert!(!r.error().is_empty());
    }
    assert_next_is_marker(srv.addr, &mut [&mut a], "m");
}

#[test]
fn user_ids_in_paths_are_percent_decoded() {
    let srv = start(|_| {});
    let user = "a b/é";
    let enc = "a%20b%2F%C3%A9";
    let (mut ws, hello) = connect(srv.addr, &token(user, 60));
    assert_eq!(hello["payload"]["userId"], user);
    let (mut plus, _) = connect(srv.addr, &token("x+y", 60));

    let r = admin(
        srv.addr,
        "POST",
        &format!("/v1/websocket/send/{enc}"),
        Some(&json!({"type":"enc","payload":1})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["message"], format!("Message sent to user {user}"));
    assert_eq!(r.json["sentToConnections"], 1);
    assert_eq!(next_api(&mut ws), json!({"type":"enc","payload":1}));

    // Lower-case hex works too.
    let st = status_of(srv.addr, "a%20b%2f%c3%a9");
    assert_eq!(
        st,
        json!({"userId":user,"isConnected":true,"connectionCount":1,"timestamp":st["timestamp"]})
    );
    // `+` is not a space in a path.
    assert_eq!(status_of(srv.addr, "x+y")["connectionCount"], 1);
    assert_eq!(status_of(srv.addr, "x%2By")["connectionCount"], 1);
    assert_eq!(status_of(srv.addr, "x%20y")["connectionCount"], 0);
    let users = stats(srv.addr, "")["users"].clone();
    assert!(
        users.as_array().is_some_and(|u| u.contains(&json!(user))),
        "{users}"
    );

    let r = admin(
        srv.addr,
        "DELETE",
        &format!("/v1/websocket/user/{enc}/disconnect"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json["message"],
        format!("All connections for user {user} have been disconnected")
    );
    assert_eq!(expect_close(&mut ws), 4000);
    assert_next_is_marker(srv.addr, &mut [&mut plus], "m");
}

// ---------------------------------------------------------------------------
// GET /v1/websocket/stats
// ---------------------------------------------------------------------------

#[test]
fn stats_report_connections_users_shards_and_counters() {
    let srv = start(|cfg| cfg.shards = 3);
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (mut a2, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));

    let s = stats(srv.addr, "");
    assert_eq!(s["totalConnections"], 3, "{s}");
    assert_eq!(s["totalUsers"], 2, "{s}");
    let mut users: Vec<&str> = s["users"]
        .as_array()
        .expect("users array")
        .iter()
        .map(|u| u.as_str().expect("user ids are strings"))
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(s["usersTruncated"], false);
    let shards = s["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 3, "{s}");
    let mut ids: Vec<u64> = shards
        .iter()
        .map(|x| x["id"].as_u64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "shard ids are distinct: {s}");
    let sum: u64 = shards
        .iter()
        .map(|x| x["connections"].as_u64().expect("connections"))
        .sum();
    assert_eq!(sum, 3, "shards add up to totalConnections: {s}");
    for k in ["messagesIn", "messagesOut", "bytesOut", "uptimeSeconds"] {
        assert!(s[k].is_u64(), "{k} is a non-negative integer: {s}");
    }
    assert!(s["uptimeSeconds"].as_u64() < Some(600));
    // Three `connected` messages went out already.
    assert!(s["messagesOut"].as_u64() >= Some(3), "{s}");

    // Counters move: a client message in, a broadcast out.
    let out0 = s["messagesOut"].as_u64().unwrap_or(0);
    let bytes0 = s["bytesOut"].as_u64().unwrap_or(0);
    send_json(&mut a1, &json!({"type":"hello","payload":1}));
    assert_eq!(next_json(&mut a1)["type"], "echo");
    broadcast(srv.addr, &json!({"type":"count-me","payload":1}));
    for ws in [&mut a1, &mut a2, &mut b] {
        assert_eq!(next_api(ws)["type"], "count-me");
    }
    eventually("counters move", || {
        let s = stats(srv.addr, "");
        s["messagesIn"].as_u64() >= Some(1)
            // The broadcast's three deliveries (echo replies are not
            // counted in messagesOut by this server).
            && s["messagesOut"].as_u64() >= Some(out0 + 3)
            && s["bytesOut"].as_u64() > Some(bytes0)
    });
}

#[test]
fn stats_limit_truncates_users_and_bad_limits_are_400() {
    let srv = start(|_| {});
    let _c: Vec<Ws> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| connect(srv.addr, &token(u, 60)).0)
        .collect();
    let s = stats(srv.addr, "?limit=1");
    assert_eq!(s["users"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["usersTruncated"], true);
    assert_eq!(s["totalUsers"], 3);
    assert_eq!(s["totalConnections"], 3);
    let s = stats(srv.addr, "?limit=3");
    assert_eq!(s["users"].as_array().map(Vec::len), Some(3), "{s}");
    assert_eq!(s["usersTruncated"], false);
    let s = stats(srv.addr, "?limit=0");
    assert_eq!(s["users"], json!([]));
    assert_eq!(s["usersTruncated"], true);
    for bad in ["abc", "-1", "1.5", "", "1e3", "99999999999999999999999"] {
        let r = admin(
            srv.addr,
            "GET",
            &format!("/v1/websocket/stats?limit={bad}"),
            None,
        );
        assert_eq!(r.status, 400, "limit={bad}: {}", r.text());
        assert!(r.error().contains("limit"), "{}", r.error());
    }
    // The maximum is 10,000.
    let s = stats(srv.addr, "?limit=10000");
    assert_eq!(s["users"].as_array().map(Vec::len), Some(3), "{s}");
    let r = admin(srv.addr, "GET", "/v1/websocket/stats?limit=10001", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error(), "limit must be at most 10000, got 10001");
}

// ---------------------------------------------------------------------------
// GET /v1/websocket/user/:userId/status
// ---------------------------------------------------------------------------

#[test]
fn status_follows_connects_and_disconnects() {
    let srv = start(|_| {});
    let st = status_of(srv.addr, "alice");
    assert_eq!(
        st,
        json!({"userId":"alice","isConnected":false,"connectionCount":0,"timestamp":st["timestamp"]})
    );
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (a2, _) = connect(srv.addr, &token("alice", 60));
    let st = status_of(srv.addr, "alice");
    assert_eq!(st["userId"], "alice");
    assert_eq!(st["isConnected"], true);
    assert_eq!(st["connectionCount"], 2);

    // A clean client close...
    a1.close(None).expect("close");
    loop {
        match a1.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    eventually("count drops to 1", || {
        status_of(srv.addr, "alice")["connectionCount"] == 1
    });
    // ...and an abrupt one.
    drop(a2);
    eventually("alice is gone", || {
        let st = status_of(srv.addr, "alice");
        st["isConnected"] == false && st["connectionCount"] == 0
    });
}

// ---------------------------------------------------------------------------
// DELETE /v1/websocket/user/:userId/disconnect
// ---------------------------------------------------------------------------

#[test]
fn disconnect_closes_every_connection_of_the_user_with_4000() {
    let srv = start(|_| {});
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (mut a2, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/alice/disconnect",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json["message"],
        "All connections for user alice have been disconnected"
    );
    assert_eq!(r.json["disconnectedConnections"], 2);
    assert_eq!(expect_close(&mut a1), 4000);
    assert_eq!(expect_close(&mut a2), 4000);
    eventually("alice is gone", || {
        status_of(srv.addr, "alice")["isConnected"] == false
    });
    // Now she is unknown to both routes that need her.
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/alice/disconnect",
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error(), "User alice has no active connections");
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/alice",
        Some(&json!({"type":"x"})),
    );
    assert_eq!(r.status, 404);
    // bob is untouched.
    assert_eq!(status_of(srv.addr, "bob")["connectionCount"], 1);
    assert_next_is_marker(srv.addr, &mut [&mut b], "m");
}

#[test]
fn disconnect_with_reconnect_false_closes_with_4500() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/alice/disconnect?reconnect=false",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["disconnectedConnections"], 1);
    assert_eq!(expect_close(&mut a), 4500);
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/bob/disconnect?reconnect=true",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(expect_close(&mut b), 4000);
}

#[test]
fn disconnect_unknown_user_is_404() {
    let srv = start(|_| {});
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/ghost/disconnect",
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error(), "User ghost has no active connections");
}

/// The next frame of `ws` is a close frame with `code` (nothing came before it).
fn next_is_close(ws: &mut Ws, code: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no frame within {WAIT:?}");
        match ws.read().expect("read") {
            Message::Close(Some(f)) => return assert_eq!(u16::from(f.code), code),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

#[test]
fn counts_drop_as_soon_as_a_disconnect_answers() {
    // The disconnected clients read nothing until the end: the server waits
    // for their close replies (up to 3 s) and holds their slots meanwhile,
    // which the 503 below proves. Everything before it happens while both
    // are still closing.
    let srv = start(|c| {
        c.max_connections_per_user = 2;
        c.max_connections = 5;
    });
    let (mut a1, _) = connect(srv.addr, &token("alice", 60));
    let (mut a2, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/alice/disconnect",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["disconnectedConnections"], 2);

    let s = status_of(srv.addr, "alice");
    assert_eq!(
        (s["isConnected"].clone(), s["connectionCount"].clone()),
        (json!(false), json!(0))
    );
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/alice",
        Some(&json!({"type":"x"})),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let st = stats(srv.addr, "");
    assert_eq!(
        (&st["totalConnections"], &st["totalUsers"], &st["users"]),
        (&json!(1), &json!(1), &json!(["bob"]))
    );
    let shards: u64 = st["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["connections"].as_u64())
        .sum();
    assert_eq!(shards, 1, "{st}");
    let text = metrics_text(srv.addr);
    assert_eq!(metric(&text, "wsedge_connections"), 1.0);
    assert_eq!(metric(&text, "wsedge_users"), 1.0);
    let r = admin(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/alice/disconnect",
        None,
    );
    assert_eq!(
        r.status,
        404,
        "a second disconnect finds nobody: {}",
        r.text()
    );

    // The per-user limit (2) admits two new connections of alice at once.
    let (mut a3, _) = connect(srv.addr, &token("alice", 60));
    let (mut a4, _) = connect(srv.addr, &token("alice", 60));
    assert_eq!(status_of(srv.addr, "alice")["connectionCount"], 2);
    // The two closing connections still hold their --max-connections
    // slots: they were not gone during any check above.
    assert_eq!(
        try_connect(srv.addr, &format!("/ws?token={}", token("carol", 60)), &[]).err(),
        Some(503)
    );

    // The new connections are served, the old ones only closed.
    let r = admin(
        srv.addr,
        "POST",
        "/v1/websocket/send/alice",
        Some(&json!({"type":"after"})),
    );
    assert_eq!(r.json["sentToConnections"], 2, "{}", r.text());
    for ws in [&mut a3, &mut a4] {
        assert_eq!(next_api(ws)["type"], "after");
    }
    next_is_close(&mut a1, 4000);
    next_is_close(&mut a2, 4000);
    eventually("the closed slots are free", || {
        try_connect(srv.addr, &format!("/ws?token={}", token("carol", 60)), &[]).is_ok()
    });
    assert_next_is_marker(srv.addr, &mut [&mut b, &mut a3, &mut a4], "m");
}

#[test]
fn a_full_shard_inbox_answers_503_and_sends_nothing() {
    // One shard whose inbox holds two commands. The REST connection is
    // served by that shard: it reads and answers every request of one
    // write in one turn, before it takes any command from its inbox.
    let srv = start(|c| {
        c.shards = 1;
        c.shard_inbox_capacity = 2;
    });
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    let mut all = String::new();
    for i in 0..6 {
        all.push_str(&post_req(
            "/v1/websocket/broadcast",
            &format!(r#"{{"type":"flood","payload":{i}}}"#),
        ));
    }
    all.push_str(&post_req("/v1/websocket/send/alice", r#"{"type":"one"}"#));
    all.push_str(&format!(
        "DELETE /v1/websocket/user/alice/disconnect HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n"
    ));
    all.push_str(&post_req("/v1/websocket/test/notification", ""));
    let mut c = HttpConn::open(srv.addr);
    c.send(all.as_bytes()); // one write
    for i in 0..2 {
        let r = c.response();
        assert_eq!(r.status, 200, "broadcast #{i}: {}", r.text());
        assert_eq!(r.json["sentToConnections"], 1);
    }
    for what in [
        "broadcast",
        "broadcast",
        "broadcast",
        "broadcast",
        "send",
        "disconnect",
        "test notification",
    ] {
        let r = c.response();
        assert_eq!(r.status, 503, "{what}: {}", r.text());
        assert_eq!(
            r.error(),
            "server busy: a shard's command queue is full; nothing was sent, retry later"
        );
    }
    let text = metrics_text(srv.addr);
    assert_eq!(metric(&text, "wsedge_commands_refused_total"), 7.0);
    // Exactly the two accepted broadcasts arrived; the refused disconnect
    // took nothing out.
    for i in 0..2 {
        assert_eq!(next_api(&mut ws), json!({"type":"flood","payload":i}));
    }
    assert_eq!(status_of(srv.addr, "alice")["connectionCount"], 1);
    assert_next_is_marker(srv.addr, &mut [&mut ws], "after");
}

// ---------------------------------------------------------------------------
// POST /v1/websocket/test/notification
// ---------------------------------------------------------------------------

#[test]
fn test_notification_reaches_every_client() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token("alice", 60));
    let (mut b, _) = connect(srv.addr, &token("bob", 60));
    let r = admin(srv.addr, "POST", "/v1/websocket/test/notification", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["sentToConnections"], 2);
    for ws in [&mut a, &mut b] {
        let m = next_api(ws);
        assert_eq!(m["type"], "notification", "{m}");
        assert_eq!(m["payload"]["title"], "Test Notification", "{m}");
        assert_eq!(m.as_object().map(|o| o.len()), Some(2), "{m}");
    }
}

// ---------------------------------------------------------------------------
// /healthz and /metrics
// ---------------------------------------------------------------------------

#[test]
fn healthz_answers_ok_without_credentials() {
    let srv = start(|_| {});
    let r = call(srv.addr, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
}

#[test]
fn metrics_are_prometheus_text_named_wsedge_and_move() {
    let srv = start(|_| {});
    let r = call(srv.addr, "GET", "/metrics", None, None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{}",
        r.head
    );
    let text = r.text();
    for needle in [
        "wsedge_connections",
        "wsedge_handshakes_accepted_total",
        "wsedge_handshakes_rejected_total{reason=",
        "wsedge_slow_consumer_drops_total",
        "wsedge_messages_out_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.split_whitespace();
            if let (Some("HELP" | "TYPE"), Some(name)) = (w.next(), w.next()) {
                assert!(name.starts_with("wsedge_"), "{line}");
            }
            continue;
        }
        assert!(
            line.starts_with("wsedge_"),
            "metric not named wsedge_: {line}"
        );
        let (_, value) = line.rsplit_once(' ').expect("name value");
        assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
    }

    let unauthorized = r#"wsedge_handshakes_rejected_total{reason="unauthorized"}"#;
    let rejected0 = metric(&text, unauthorized);
    let accepted0 = metric(&text, "wsedge_handshakes_accepted_total");
    assert_eq!(metric(&text, "wsedge_connections"), 0.0);
    assert_eq!(metric(&text, "wsedge_slow_consumer_drops_total"), 0.0);

    assert_eq!(
        try_connect(srv.addr, "/ws?token=not-a-jwt", &[]).err(),
        Some(401)
    );
    let expired = token("late", -3600);
    assert_eq!(
        try_connect(srv.addr, &format!("/ws?token={expired}"), &[]).err(),
        Some(401)
    );
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    let text = metrics_text(srv.addr);
    assert_eq!(metric(&text, unauthorized), rejected0 + 2.0);
    assert_eq!(
        metric(&text, "wsedge_handshakes_accepted_total"),
        accepted0 + 1.0
    );
    assert_eq!(metric(&text, "wsedge_connections"), 1.0);
    let out0 = metric(&text, "wsedge_messages_out_total");
    broadcast(srv.addr, &json!({"type":"m","payload":1}));
    assert_eq!(next_api(&mut ws)["type"], "m");
    eventually("messages_out moves", || {
        metric(&metrics_text(srv.addr), "wsedge_messages_out_total") > out0
    });
    drop(ws);
    eventually("connections gauge drops", || {
        metric(&metrics_text(srv.addr), "wsedge_connections") == 0.0
    });
}

// ---------------------------------------------------------------------------
// HTTP behaviour
// ---------------------------------------------------------------------------

#[test]
fn unknown_paths_are_404() {
    let srv = start(|_| {});
    for path in [
        "/nope",
        "/v1/websocket",
        "/v1/websocket/",
        "/v1/websocket/user/alice",
        "/v1/websocket/user/alice/status/extra",
        "/v1/websocket/user//status",
        "/v1/websocket/send/",
        "/v1/websocket/send/a/b",
        "/healthz/x",
    ] {
        let r = admin(srv.addr, "GET", path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(!r.error().is_empty());
    }
}

#[test]
fn wrong_method_is_405_with_allow() {
    let srv = start(|_| {});
    for (method, path, allow) in [
        ("GET", "/v1/websocket/broadcast", "POST"),
        ("PUT", "/v1/websocket/broadcast", "POST"),
        ("GET", "/v1/websocket/send/alice", "POST"),
        ("POST", "/v1/websocket/stats", "GET"),
        ("DELETE", "/v1/websocket/user/alice/status", "GET"),
        ("GET", "/v1/websocket/user/alice/disconnect", "DELETE"),
        ("POST", "/v1/websocket/user/alice/disconnect", "DELETE"),
        ("GET", "/v1/websocket/test/notification", "POST"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ] {
        let body = (method == "PUT").then_some("{}");
        let r = call(srv.addr, method, path, Some(&bearer(ADMIN_KEY)), body);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        let got: Vec<String> = r
            .header("allow")
            .unwrap_or_else(|| panic!("no Allow on {method} {path}: {}", r.head))
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        assert!(
            got.iter().any(|m| m == allow),
            "{method} {path}: Allow {got:?}"
        );
        assert!(
            !got.iter().any(|m| m == method),
            "{method} {path}: Allow {got:?}"
        );
    }
}

#[test]
fn post_without_length_is_411() {
    let srv = start(|_| {});
    for path in ["/v1/websocket/broadcast", "/v1/websocket/test/notification"] {
        let raw =
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n");
        let r = Resp::from_parts(http_raw(srv.addr, raw.as_bytes()));
        assert_eq!(r.status, 411, "{path}: {}", r.text());
    }
}

#[test]
fn body_over_limit_is_413() {
    let limit = 256;
    let srv = start(|cfg| cfg.max_body_bytes = limit);
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    let body_of = |n: usize| {
        let prefix = r#"{"type":"big","payload":""#;
        format!("{prefix}{}\"}}", "x".repeat(n - prefix.len() - 2))
    };
    let at_limit = body_of(limit);
    assert_eq!(at_limit.len(), limit);
    let r = call(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(&bearer(ADMIN_KEY)),
        Some(&at_limit),
    );
    assert_eq!(
        r.status,
        200,
        "a body of exactly the limit is fine: {}",
        r.text()
    );
    assert_eq!(next_api(&mut ws)["type"], "big");

    let over = body_of(limit + 1);
    let r = call(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(&bearer(ADMIN_KEY)),
        Some(&over),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(!r.error().is_empty());

    // The same over chunked encoding.
    let half = &over[..over.len() / 2];
    let rest = &over[over.len() / 2..];
    let raw = format!(
        "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{half}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        half.len(),
        rest.len()
    );
    let r = Resp::from_parts(http_raw(srv.addr, raw.as_bytes()));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_next_is_marker(srv.addr, &mut [&mut ws], "m");
}

#[test]
fn headers_over_limit_are_431() {
    let srv = start(|cfg| cfg.max_header_bytes = 1024);
    let small = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(500)
    );
    let r = Resp::from_parts(http_raw(srv.addr, small.as_bytes()));
    assert_eq!(r.status, 200);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let r = Resp::from_parts(http_raw(srv.addr, big.as_bytes()));
    assert_eq!(r.status, 431, "{}", r.text());
    // Too many small headers is too large as well.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..100 {
        many.push_str(&format!("X{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert!(many.len() < 1024);
    let r = Resp::from_parts(http_raw(srv.addr, many.as_bytes()));
    assert_eq!(r.status, 431, "{}", r.text());
    // An upgrade with a huge header is refused the same way.
    let t = token("alice", 60);
    let big_ws = format!(
        "GET /ws?token={t} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let r = Resp::from_parts(http_raw(srv.addr, big_ws.as_bytes()));
    assert_eq!(r.status, 431, "{}", r.text());
}

#[test]
fn malformed_requests_are_400() {
    let srv = start(|_| {});
    for raw in [
        "GARBAGE\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "GET relative HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST /v1/websocket/broadcast HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "POST /v1/websocket/broadcast HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "POST /v1/websocket/broadcast HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Admitted (credentials first), then its body cannot be decoded.
        "POST /v1/websocket/broadcast HTTP/1.1\r\nAuthorization: Bearer integration-admin-key\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ] {
        let r = Resp::from_parts(http_raw(srv.addr, raw.as_bytes()));
        assert_eq!(r.status, 400, "{raw:?}: {}", r.text());
        assert!(!r.error().is_empty(), "{raw:?}");
    }
}

#[test]
fn chunked_request_body_works() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    let mut c = HttpConn::open(srv.addr);
    c.send(
        format!(
            "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    // Chunks in separate writes, one with an extension, then a trailer.
    for (i, part) in [r#"{"type":"ch"#, r#"unked","payload":[1,2]"#, "}"]
        .iter()
        .enumerate()
    {
        let ext = if i == 1 { ";ext=1" } else { "" };
        c.send(format!("{:x}{ext}\r\n{part}\r\n", part.len()).as_bytes());
    }
    c.send(b"0\r\nX-Trailer: yes\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json["sentToConnections"], 1);
    assert_eq!(next_api(&mut ws), json!({"type":"chunked","payload":[1,2]}));
    // The connection is still usable afterwards.
    c.send(get_req("/healthz", false).as_bytes());
    assert_eq!(c.response().text(), "ok");
}

#[test]
fn keep_alive_serves_several_requests_and_connection_close_ends_it() {
    let srv = start(|_| {});
    let (_ws, _) = connect(srv.addr, &token("alice", 60));
    let mut c = HttpConn::open(srv.addr);
    c.send(get_req("/healthz", false).as_bytes());
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    c.send(get_req("/v1/websocket/user/alice/status", true).as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json["connectionCount"], 1);
    // An error answer that keeps the stream in sync keeps it open too.
    c.send(get_req("/nope", true).as_bytes());
    assert_eq!(c.response().status, 404);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    c.assert_closed();

    // HTTP/1.0 without keep-alive closes too.
    let mut c = HttpConn::open(srv.addr);
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().status, 200);
    c.assert_closed();

    // Common's one-shot helper sees a close right after its answer as well.
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let (st, _, body) = read_response(&mut s);
    assert_eq!((st, body.as_slice()), (200, &b"ok"[..]));
    assert_closed(&mut s);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    let mut c = HttpConn::open(srv.addr);
    let mut all = get_req("/healthz", false);
    all.push_str(&post_req(
        "/v1/websocket/broadcast",
        r#"{"type":"piped","payload":2}"#,
    ));
    all.push_str(&get_req("/v1/websocket/user/alice/status", true));
    c.send(all.as_bytes()); // one write
    let r1 = c.response();
    assert_eq!((r1.status, r1.text().as_str()), (200, "ok"));
    let r2 = c.response();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.json["message"], "Message broadcasted successfully");
    assert_eq!(r2.json["sentToConnections"], 1);
    let r3 = c.response();
    assert_eq!(r3.status, 200, "{}", r3.text());
    assert_eq!(r3.json["userId"], "alice");
    assert_eq!(next_api(&mut ws), json!({"type":"piped","payload":2}));
}

#[test]
fn many_pipelined_requests_in_one_write_are_all_answered() {
    // Small limits make the server's read buffer cap small, so one write
    // holds several buffers' worth of requests.
    let srv = start(|cfg| {
        cfg.max_header_bytes = 1024;
        cfg.max_body_bytes = 256;
    });
    let n = 400;
    let mut all = String::new();
    for i in 0..n {
        all.push_str(&get_req(&format!("/v1/websocket/user/u{i}/status"), true));
    }
    assert!(all.len() > 4 * (1024 + 256 + 4096), "{}", all.len());
    let mut c = HttpConn::open(srv.addr);
    c.send(all.as_bytes());
    for i in 0..n {
        let r = c.response();
        assert_eq!(r.status, 200, "answer #{i}: {}", r.text());
        assert_eq!(
            r.json["userId"],
            format!("u{i}"),
            "answer #{i} out of order"
        );
    }
}

#[test]
fn requests_that_do_not_arrive_in_time_get_408_or_a_close() {
    let srv = start(|cfg| cfg.handshake_timeout_secs = 1);
    let t = token("alice", 60);
    let partials: Vec<(&str, String)> = vec![
        ("nothing", String::new()),
        ("half a head", "GET /healthz HTTP/1.1\r\nHost: t\r\n".into()),
        (
            "half a body",
            format!(
                "{}{{\"ty",
                post_req("/v1/websocket/broadcast", "")
                    .replace("Content-Length: 0", "Content-Length: 30")
            ),
        ),
        (
            "half an upgrade",
            format!("GET /ws?token={t} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"),
        ),
    ];
    let started = Instant::now();
    let mut conns: Vec<(&str, HttpConn)> = partials
        .iter()
        .map(|(what, raw)| {
            let mut c = HttpConn::open(srv.addr);
            c.s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            if !raw.is_empty() {
                c.send(raw.as_bytes());
            }
            (*what, c)
        })
        .collect();
    for (what, c) in &mut conns {
        if let Some(r) = c.try_response() {
            assert_eq!(r.status, 408, "{what}: {}", r.text());
            c.assert_closed();
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "{what}: cut after {waited:?}, before the 1 s timeout"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server is fine afterwards, and no alice was ever registered.
    assert_eq!(status_of(srv.addr, "alice")["connectionCount"], 0);
}

#[test]
fn clients_vanishing_mid_request_do_not_disturb_websockets() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("alice", 60));
    // Half a head, then a clean close.
    {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(b"POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nContent-Le")
            .expect("write");
    }
    // Half a body, then a half-close: the server must not act on it.
    {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let raw = post_req("/v1/websocket/broadcast", r#"{"type":"never","payload":1}"#);
        s.write_all(&raw.as_bytes()[..raw.len() - 10])
            .expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert_closed(&mut s);
    }
    // Half a body, then a reset.
    {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        let raw = post_req("/v1/websocket/broadcast", r#"{"type":"never","payload":2}"#);
        s.write_all(&raw.as_bytes()[..raw.len() - 5])
            .expect("write");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    // A whole request, gone before reading its answer.
    {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(get_req("/v1/websocket/stats", true).as_bytes())
            .expect("write");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    // Half an upgrade, then a close.
    {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n")
            .expect("write");
    }
    // The WebSocket got nothing in between and still gets what follows.
    assert_next_is_marker(srv.addr, &mut [&mut ws], "still-here");
    assert_eq!(status_of(srv.addr, "alice")["connectionCount"], 1);
    // Every one of those HTTP connections is released: only the scrape's own remains.
    eventually("aborted HTTP connections are released", || {
        metric(&metrics_text(srv.addr), "wsedge_http_connections") == 1.0
    });
    send_json(&mut ws, &json!({"type":"still","payload":true}));
    assert_eq!(next_json(&mut ws)["type"], "echo");
}
