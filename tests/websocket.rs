//! The WebSocket endpoint `GET /ws` (docs/PROTOCOL.md §3) driven over real loopback
//! sockets: JWT auth before the upgrade (every algorithm, every claim rule),
//! the message format, token refresh and expiry, close codes, ping/pong, the
//! close handshake, handshake header errors and frames pipelined with the
//! upgrade request.
//!
//! Clients are tungstenite where it is enough, and a tiny hand-written frame
//! codec ([`RawWs`]) where the exact bytes on the wire matter (invalid UTF-8,
//! unmasked frames, fragments, pipelining, the end of the TCP connection).
//! Every wait is bounded by the sockets' read timeouts.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;
use wsedge::{mint_hs256, now_secs};

// ---------------------------------------------------------------------------
// Helpers: tokens, keys, assertions
// ---------------------------------------------------------------------------

/// Claims for `sub` valid `secs` more seconds (negative: already expired).
fn claims(sub: &str, secs: i64) -> Value {
    json!({"sub": sub, "exp": now_secs() as i64 + secs})
}

/// An HS256 token with the test secret and arbitrary claims.
fn hs256(claims: &Value) -> String {
    mint_hs256(SECRET, claims)
}

/// Signs `claims` with `alg` and `key`.
fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign token")
}

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("keys")
        .join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).expect("read test key")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).expect("rsa key")
}

fn ec256_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("ec256_private.pem")).expect("ec256 key")
}

fn ec384_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("ec384_private.pem")).expect("ec384 key")
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&pem("ed25519_private.pem")).expect("ed25519 key")
}

/// A server that verifies `alg` with the public key file `public`. The test
/// secret stays configured too, so HMAC tokens with it must still be refused.
fn asym_server(alg: &str, public: &str) -> TestServer {
    start(|cfg| {
        cfg.jwt_algorithm = alg.into();
        cfg.jwt_public_key = Some(key_path(public));
    })
}

/// The upgrade with `?token=` succeeds and `connected` names `user`.
fn assert_accepted(addr: SocketAddr, token: &str, user: &str) {
    let (mut ws, hello) = connect(addr, token);
    assert_eq!(hello["payload"]["userId"], user, "{hello}");
    let _ = ws.close(None);
}

/// The upgrade with `?token=` is refused with `401`.
fn assert_refused(addr: SocketAddr, token: &str, what: &str) {
    match try_connect(addr, &format!("/ws?token={token}"), &[]) {
        Ok(_) => panic!("{what}: upgrade accepted, expected 401"),
        Err(status) => assert_eq!(status, 401, "{what}"),
    }
}

/// Replaces one character in the middle of the signature part.
fn tamper_signature(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').expect("three parts");
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

/// `v` is an RFC 3339 timestamp close to now.
fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp not a string: {v}"));
    let t = humantime::parse_rfc3339_weak(s)
        .unwrap_or_else(|e| panic!("timestamp {s:?} is not RFC 3339: {e}"));
    assert!(s.contains('T'), "timestamp {s:?} lacks the T separator");
    let skew = match t.duration_since(SystemTime::now()) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_secs(60), "timestamp {s:?} is not now");
}

/// The sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// An echo round-trip: proves the connection is open and served.
fn assert_echo(ws: &mut Ws, tag: &str) {
    let msg = json!({"type": "probe", "payload": {"tag": tag}});
    send_json(ws, &msg);
    let answer = next_json(ws);
    assert_eq!(answer["type"], "echo", "{answer}");
    assert_eq!(answer["payload"]["originalMessage"], msg, "{answer}");
}

/// `{"type":"error","payload":{"message":"Invalid JSON message format",...}}`.
fn assert_format_error(v: &Value, sent: &str) {
    assert_eq!(keys(v), ["payload", "type"], "after {sent:?}: {v}");
    assert_eq!(v["type"], "error", "after {sent:?}: {v}");
    assert_eq!(keys(&v["payload"]), ["message", "timestamp"], "{v}");
    assert_eq!(
        v["payload"]["message"], "Invalid JSON message format",
        "{v}"
    );
    assert_timestamp(&v["payload"]["timestamp"]);
}

/// Reads for as long as `until` has not come, failing on anything but
/// pings/pongs (a close frame above all). The read timeout makes this a
/// bounded wait for the absence of an event, not a sleep.
fn expect_silence_until(ws: &mut Ws, until: SystemTime) {
    loop {
        let left = match until.duration_since(SystemTime::now()) {
            Ok(d) if d > Duration::from_millis(1) => d,
            _ => break,
        };
        ws.get_mut()
            .set_read_timeout(Some(left))
            .expect("read timeout");
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
            Ok(m) => panic!("unexpected message before the deadline: {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection failed before the deadline: {e}"),
        }
    }
    ws.get_mut()
        .set_read_timeout(Some(WAIT))
        .expect("read timeout");
}

fn unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------
// A raw WebSocket client for byte-exact frames
// ---------------------------------------------------------------------------

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// An upgrade request head for `target`, with `extra` header lines.
fn upgrade_request(method: &str, target: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{extra}\r\n"
    )
}

/// One frame; `mask` is `None` for an (illegal from a client) unmasked frame.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(m | n as u8);
    } else if n <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some(MASK))
}

/// A WebSocket client over a plain `TcpStream` that reads and writes frame
/// bytes itself.
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects, writes the upgrade request for `token` followed by
    /// `pipelined` bytes in one write, and reads the `101`.
    fn open(addr: SocketAddr, token: &str, pipelined: &[u8]) -> RawWs {
        let s = TcpStream::connect(addr).expect("tcp connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        let mut req = upgrade_request("GET", &format!("/ws?token={token}"), "").into_bytes();
        req.extend_from_slice(pipelined);
        let mut ws = RawWs { s, buf: Vec::new() };
        ws.s.write_all(&req).expect("write upgrade");
        let head = ws.read_head();
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "expected 101, got {head:?}"
        );
        assert!(
            head.contains(&format!("Sec-WebSocket-Accept: {WS_ACCEPT}\r\n")),
            "{head:?}"
        );
        ws
    }

    /// Opens and reads the `connected` message.
    fn open_connected(addr: SocketAddr, token: &str) -> RawWs {
        let mut ws = RawWs::open(addr, token, &[]);
        let hello = ws.next_json();
        assert_eq!(hello["type"], "connected", "{hello}");
        ws
    }

    /// Reads more bytes; false on EOF. Errors (the read timeout included) fail.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).expect("read within the timeout");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(self.fill(), "connection ended inside a frame");
        }
    }

    fn read_head(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p + 4]).to_string();
                self.buf.drain(..p + 4);
                return head;
            }
            assert!(self.fill(), "connection ended before a response head");
        }
    }

    /// The next frame as (fin, opcode, payload); `None` on a clean EOF.
    fn read_frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        if self.buf.is_empty() && !self.fill() {
            return None;
        }
        self.need(2);
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
        let (len, hdr) = match b1 & 0x7f {
            126 => {
                self.need(4);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.need(10);
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.need(hdr + len);
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Some((b0 & 0x80 != 0, b0 & 0x0f, payload))
    }

    /// The next text message as JSON.
    fn next_json(&mut self) -> Value {
        loop {
            let (fin, op, payload) = self.read_frame().expect("a message, not EOF");
            match op {
                OP_TEXT => {
                    assert!(fin, "server messages are expected unfragmented");
                    return serde_json::from_slice(&payload).expect("json");
                }
                OP_CLOSE => panic!("closed while waiting for a message: {payload:?}"),
                _ => continue,
            }
        }
    }

    /// Reads up to the server's close frame; returns its code.
    fn expect_close(&mut self) -> u16 {
        loop {
            let (_, op, payload) = self
                .read_frame()
                .expect("a close frame before the connection ends");
            if op == OP_CLOSE {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// The server ends the TCP connection (clean EOF) with nothing more sent.
    fn expect_eof(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the close frame");
        let mut chunk = [0u8; 64];
        match self.s.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes after the close frame"),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }
}

// ---------------------------------------------------------------------------
// Where the token comes from
// ---------------------------------------------------------------------------

#[test]
fn token_from_authorization_header() {
    let srv = start(|_| {});
    let bearer = format!("Bearer {}", token("header-user", 60));
    let mut ws = try_connect(srv.addr, "/ws", &[("Authorization", &bearer)])
        .unwrap_or_else(|s| panic!("upgrade refused with {s}"));
    let hello = next_json(&mut ws);
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["payload"]["userId"], "header-user");
}

#[test]
fn token_from_query_plain_and_percent_encoded() {
    let srv = start(|_| {});
    assert_accepted(srv.addr, &token("query-user", 60), "query-user");
    // Every byte percent-encoded: only a server that decodes can read it.
    let encoded: String = token("encoded-user", 60)
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let mut ws = try_connect(srv.addr, &format!("/ws?a=1&token={encoded}&b=2"), &[])
        .unwrap_or_else(|s| panic!("percent-encoded token refused with {s}"));
    let hello = next_json(&mut ws);
    assert_eq!(hello["payload"]["userId"], "encoded-user", "{hello}");
}

#[test]
fn bad_header_token_wins_over_good_query_token() {
    let srv = start(|_| {});
    let good = token("u", 60);
    let bad = hs256(&json!({"sub": "u", "exp": 1}));
    for header in [
        format!("Bearer {bad}"),
        "Bearer ".to_string(),
        format!("Basic {good}"),
    ] {
        match try_connect(
            srv.addr,
            &format!("/ws?token={good}"),
            &[("Authorization", &header)],
        ) {
            Ok(_) => panic!("header {header:?} ignored: upgrade accepted"),
            Err(s) => assert_eq!(s, 401, "header {header:?}"),
        }
    }
    // The same good token in the header is accepted (the refusals above are
    // about the header, not the server).
    let bearer = format!("Bearer {good}");
    assert!(try_connect(srv.addr, "/ws?token=junk", &[("Authorization", &bearer)]).is_ok());
}

#[test]
fn missing_token_is_401() {
    let srv = start(|_| {});
    for path in ["/ws", "/ws?token=", "/ws?other=1"] {
        match try_connect(srv.addr, path, &[]) {
            Ok(_) => panic!("{path}: upgrade accepted without a token"),
            Err(s) => assert_eq!(s, 401, "{path}"),
        }
    }
}

#[test]
fn unauthorized_body_is_exact_and_leaks_no_reason() {
    let srv = start(|_| {});
    let expired = hs256(&claims("u", -3600));
    let wrong_sig = mint_hs256("another-secret", &claims("u", 60));
    let cases = [
        ("missing", "/ws".to_string()),
        ("expired", format!("/ws?token={expired}")),
        ("bad signature", format!("/ws?token={wrong_sig}")),
        ("garbage", "/ws?token=not.a.jwt".to_string()),
    ];
    for (what, target) in cases {
        let raw = upgrade_request("GET", &target, "");
        let (status, head, body) = http_raw(srv.addr, raw.as_bytes());
        assert_eq!(status, 401, "{what}: {head}");
        assert!(!head.contains("Sec-WebSocket-Accept"), "{what}: {head}");
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: body not JSON ({e}): {body:?}"));
        assert_eq!(keys(&v), ["error", "timestamp"], "{what}: {v}");
        assert_eq!(v["error"], "unauthorized", "{what}: {v}");
        assert_timestamp(&v["timestamp"]);
        let text = String::from_utf8_lossy(&body).to_lowercase();
        for leak in ["expire", "signature", "malformed", "missing", "token"] {
            assert!(!text.contains(leak), "{what}: body leaks {leak:?}: {text}");
        }
    }
}

// ---------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------

#[test]
fn invalid_claims_are_401() {
    let srv = start(|_| {});
    let now = now_secs() as i64;
    // The server does accept a good token: the refusals below are real.
    assert_accepted(srv.addr, &token("fine", 60), "fine");
    let none_alg = {
        use base64_like::encode_url;
        format!(
            "{}.{}.",
            encode_url(br#"{"alg":"none","typ":"JWT"}"#),
            encode_url(claims("u", 60).to_string().as_bytes())
        )
    };
    let cases = [
        ("expired", hs256(&json!({"sub": "u", "exp": now - 120}))),
        (
            "nbf in the future",
            hs256(&json!({"sub": "u", "exp": now + 600, "nbf": now + 300})),
        ),
        (
            "wrong signature",
            mint_hs256("another-secret", &claims("u", 60)),
        ),
        ("tampered signature", tamper_signature(&token("u", 60))),
        ("missing exp", hs256(&json!({"sub": "u"}))),
        (
            "exp not a number",
            hs256(&json!({"sub": "u", "exp": "soon"})),
        ),
        ("empty sub", hs256(&json!({"sub": "", "exp": now + 60}))),
        ("numeric sub", hs256(&json!({"sub": 42, "exp": now + 60}))),
        ("missing sub", hs256(&json!({"exp": now + 60}))),
        ("null sub", hs256(&json!({"sub": null, "exp": now + 60}))),
        ("alg none", none_alg),
        ("garbage", "abc.def.ghi".to_string()),
    ];
    for (what, t) in cases {
        assert_refused(srv.addr, &t, what);
    }
}

/// Base64url without padding, enough to build an unsigned token by hand.
/// Every shard accepts on its own `SO_REUSEPORT` listener: connections
/// land on all of them, and a second server cannot take the same address
/// (it would silently split the connections with the first).
#[test]
fn shards_accept_on_their_own_listeners_and_the_address_is_not_shared() {
    let srv = start(|_| {});
    let mut shards = std::collections::BTreeSet::new();
    let mut open = Vec::new();
    for i in 0..40 {
        let (ws, hello) = connect(srv.addr, &token(&format!("spread-{i}"), 600));
        let id = hello["payload"]["connectionId"].as_str().unwrap_or("");
        shards.insert(id.split('-').next().unwrap_or("").to_string());
        open.push(ws);
    }
    assert_eq!(shards.len(), 2, "connections on shards {shards:?}");

    let second = wsedge::Server::builder()
        .bind(&srv.addr.to_string())
        .jwt_secret("another")
        .start();
    assert!(
        matches!(second, Err(wsedge::StartError::Bind { .. })),
        "a second server on {} must be refused",
        srv.addr
    );
    // The first one still serves.
    let (_ws, hello) = connect(srv.addr, &token("after-second", 600));
    assert_eq!(hello["type"], "connected");
}

mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode_url(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn leeway_accepts_recently_expired_tokens_by_default_only() {
    let recently_expired = hs256(&claims("late", -10));
    let default = start(|_| {});
    assert_accepted(default.addr, &recently_expired, "late");
    let strict = start(|cfg| cfg.jwt_leeway_secs = 0);
    assert_refused(strict.addr, &recently_expired, "expired 10 s ago, leeway 0");
    assert_accepted(strict.addr, &token("punctual", 60), "punctual");
}

#[test]
fn issuer_and_audience_when_configured() {
    const ISS: &str = "https://issuer.example";
    const AUD: &str = "wsedge-clients";
    let srv = start(|cfg| {
        cfg.jwt_issuer = Some(ISS.into());
        cfg.jwt_audience = Some(AUD.into());
    });
    let exp = now_secs() + 60;
    assert_accepted(
        srv.addr,
        &hs256(&json!({"sub": "u1", "exp": exp, "iss": ISS, "aud": AUD})),
        "u1",
    );
    let refused = [
        (
            "wrong iss",
            json!({"sub": "u", "exp": exp, "iss": "https://evil.example", "aud": AUD}),
        ),
        (
            "wrong aud",
            json!({"sub": "u", "exp": exp, "iss": ISS, "aud": "someone-else"}),
        ),
        ("missing iss", json!({"sub": "u", "exp": exp, "aud": AUD})),
        ("missing aud", json!({"sub": "u", "exp": exp, "iss": ISS})),
        ("missing both", json!({"sub": "u", "exp": exp})),
    ];
    for (what, c) in refused {
        assert_refused(srv.addr, &hs256(&c), what);
    }
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

#[test]
fn hs384_with_the_secret() {
    let srv = start(|cfg| cfg.jwt_algorithm = "HS384".into());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    assert_accepted(
        srv.addr,
        &sign(Algorithm::HS384, &key, &claims("h384", 60)),
        "h384",
    );
    assert_refused(srv.addr, &token("u", 60), "HS256 token, HS384 configured");
    assert_refused(
        srv.addr,
        &sign(Algorithm::HS512, &key, &claims("u", 60)),
        "HS512 token, HS384 configured",
    );
}

#[test]
fn hs512_with_the_secret() {
    let srv = start(|cfg| cfg.jwt_algorithm = "HS512".into());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    assert_accepted(
        srv.addr,
        &sign(Algorithm::HS512, &key, &claims("h512", 60)),
        "h512",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::HS384, &key, &claims("u", 60)),
        "HS384 token, HS512 configured",
    );
    assert_refused(
        srv.addr,
        &sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(b"another-secret"),
            &claims("u", 60),
        ),
        "HS512 token with another secret",
    );
}

#[test]
fn rs256_with_a_public_key() {
    let srv = asym_server("RS256", "rsa_public.pem");
    let good = sign(Algorithm::RS256, &rsa_key(), &claims("rsa-user", 60));
    assert_accepted(srv.addr, &good, "rsa-user");
    assert_refused(srv.addr, &tamper_signature(&good), "tampered RS256");
    assert_refused(
        srv.addr,
        &sign(Algorithm::PS256, &rsa_key(), &claims("u", 60)),
        "PS256 token with the right key, RS256 configured",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::RS384, &rsa_key(), &claims("u", 60)),
        "RS384 token with the right key, RS256 configured",
    );
    assert_refused(srv.addr, &token("u", 60), "HS256 token, RS256 configured");
    // The classic algorithm confusion: HMAC keyed with the public key bytes.
    assert_refused(
        srv.addr,
        &sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem("rsa_public.pem")),
            &claims("u", 60),
        ),
        "HS256 keyed with the RSA public key",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::RS256, &rsa_key(), &claims("u", -3600)),
        "expired RS256",
    );
}

#[test]
fn ps256_with_a_public_key() {
    let srv = asym_server("PS256", "rsa_public.pem");
    assert_accepted(
        srv.addr,
        &sign(Algorithm::PS256, &rsa_key(), &claims("pss-user", 60)),
        "pss-user",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::RS256, &rsa_key(), &claims("u", 60)),
        "RS256 token with the right key, PS256 configured",
    );
    assert_refused(srv.addr, &token("u", 60), "HS256 token, PS256 configured");
}

#[test]
fn es256_with_a_public_key() {
    let srv = asym_server("ES256", "ec256_public.pem");
    let good = sign(Algorithm::ES256, &ec256_key(), &claims("ec-user", 60));
    assert_accepted(srv.addr, &good, "ec-user");
    assert_refused(srv.addr, &tamper_signature(&good), "tampered ES256");
    assert_refused(
        srv.addr,
        &sign(Algorithm::ES384, &ec384_key(), &claims("u", 60)),
        "ES384 token, ES256 configured",
    );
    assert_refused(srv.addr, &token("u", 60), "HS256 token, ES256 configured");
    assert_refused(
        srv.addr,
        &sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem("ec256_public.pem")),
            &claims("u", 60),
        ),
        "HS256 keyed with the EC public key",
    );
}

#[test]
fn es384_with_a_public_key() {
    let srv = asym_server("ES384", "ec384_public.pem");
    assert_accepted(
        srv.addr,
        &sign(Algorithm::ES384, &ec384_key(), &claims("ec384-user", 60)),
        "ec384-user",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::ES256, &ec256_key(), &claims("u", 60)),
        "ES256 token, ES384 configured",
    );
    assert_refused(srv.addr, &token("u", 60), "HS256 token, ES384 configured");
}

#[test]
fn eddsa_with_a_public_key() {
    let srv = asym_server("EdDSA", "ed25519_public.pem");
    let good = sign(Algorithm::EdDSA, &ed_key(), &claims("ed-user", 60));
    assert_accepted(srv.addr, &good, "ed-user");
    assert_refused(srv.addr, &tamper_signature(&good), "tampered EdDSA");
    assert_refused(srv.addr, &token("u", 60), "HS256 token, EdDSA configured");
    assert_refused(
        srv.addr,
        &sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&pem("ed25519_public.pem")),
            &claims("u", 60),
        ),
        "HS256 keyed with the Ed25519 public key",
    );
    assert_refused(
        srv.addr,
        &sign(Algorithm::ES256, &ec256_key(), &claims("u", 60)),
        "ES256 token, EdDSA configured",
    );
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

#[test]
fn connected_message_is_exact() {
    let srv = start(|_| {});
    let t = token("hello-user", 60);
    let (_ws1, hello) = connect(srv.addr, &t);
    assert_eq!(keys(&hello), ["payload", "type"], "{hello}");
    let p = &hello["payload"];
    assert_eq!(
        keys(p),
        [
            "connectionId",
            "epoch",
            "message",
            "offsets",
            "timestamp",
            "userId"
        ],
        "{hello}"
    );
    assert_eq!(p["offsets"], json!({"@all": 0, "@user": 0}), "{hello}");
    assert!(p["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(p["userId"], "hello-user");
    assert_eq!(p["message"], "Successfully connected to WebSocket");
    let id1 = p["connectionId"]
        .as_str()
        .expect("connectionId is a string");
    assert!(!id1.is_empty());
    assert_timestamp(&p["timestamp"]);
    // A user may hold several connections; each has its own id.
    let (_ws2, hello2) = connect(srv.addr, &t);
    assert_eq!(hello2["payload"]["userId"], "hello-user");
    let id2 = hello2["payload"]["connectionId"]
        .as_str()
        .expect("connectionId is a string");
    assert_ne!(id1, id2, "two connections share an id");
}

#[test]
fn object_with_string_type_is_echoed() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("echo-user", 60));
    for msg in [
        json!({"type": "chat", "payload": {"text": "hi", "n": [1, 2.5, null], "nested": {"ok": true}}}),
        json!({"type": "bare"}),
        json!({"type": "", "payload": "string", "extra": 1}),
    ] {
        send_json(&mut ws, &msg);
        let answer = next_json(&mut ws);
        assert_eq!(keys(&answer), ["payload", "type"], "{answer}");
        assert_eq!(answer["type"], "echo", "{answer}");
        assert_eq!(
            keys(&answer["payload"]),
            ["originalMessage", "timestamp"],
            "{answer}"
        );
        assert_eq!(answer["payload"]["originalMessage"], msg);
        assert_timestamp(&answer["payload"]["timestamp"]);
    }
}

#[test]
fn malformed_messages_get_an_error_and_the_connection_stays_open() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("sloppy", 60));
    for bad in [
        "not json",
        "{\"type\":",
        "[1,2,3]",
        "[{\"type\":\"x\"}]",
        "\"just a string\"",
        "null",
        "42",
        "{}",
        "{\"payload\":1}",
        "{\"type\":5,\"payload\":1}",
        "{\"type\":null}",
        "{\"type\":{\"a\":1}}",
    ] {
        ws.send(Message::text(bad)).expect("send");
        assert_format_error(&next_json(&mut ws), bad);
    }
    ws.send(Message::binary(br#"{"type":"chat","payload":1}"#.to_vec()))
        .expect("send binary");
    assert_format_error(&next_json(&mut ws), "a binary frame");
    assert_echo(&mut ws, "still open");
}

// ---------------------------------------------------------------------------
// Refresh and expiry
// ---------------------------------------------------------------------------

#[test]
fn refresh_with_a_valid_token_of_the_same_user() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("refresher", 60));
    let new_exp = now_secs() + 600;
    let new = hs256(&json!({"sub": "refresher", "exp": new_exp}));
    send_json(
        &mut ws,
        &json!({"type": "refresh", "payload": {"token": new}}),
    );
    let answer = next_json(&mut ws);
    assert_eq!(
        answer,
        json!({"type": "refreshed", "payload": {"expiresAt": new_exp}})
    );
    assert_echo(&mut ws, "after refresh");
}

#[test]
fn refused_refresh_answers_error_and_keeps_the_connection() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("keeper", 60));
    let refusals = [
        ("another user", json!({"token": token("someone-else", 600)})),
        ("expired", json!({"token": hs256(&claims("keeper", -3600))})),
        (
            "bad signature",
            json!({"token": mint_hs256("another-secret", &claims("keeper", 600))}),
        ),
        ("garbage", json!({"token": "nope"})),
        ("no token", json!({})),
        ("token not a string", json!({"token": 7})),
    ];
    for (what, payload) in refusals {
        send_json(&mut ws, &json!({"type": "refresh", "payload": payload}));
        let answer = next_json(&mut ws);
        assert_eq!(answer["type"], "error", "{what}: {answer}");
        assert!(answer["payload"]["message"].is_string(), "{what}: {answer}");
        assert_timestamp(&answer["payload"]["timestamp"]);
        assert_echo(&mut ws, what);
    }
}

#[test]
fn expired_token_closes_the_connection_with_4001() {
    let srv = start(|cfg| cfg.jwt_leeway_secs = 0);
    // exp is at most 2 s away; docs/PROTOCOL.md §3: closed within a second of exp + leeway.
    let exp = now_secs() + 2;
    let (mut ws, _) = connect(srv.addr, &hs256(&json!({"sub": "short", "exp": exp})));
    assert_echo(&mut ws, "before expiry");
    let code = expect_close(&mut ws);
    let at = SystemTime::now();
    assert_eq!(code, 4001);
    assert!(at >= unix(exp), "closed before exp: at {at:?}, exp {exp}");
    let late = at.duration_since(unix(exp)).unwrap_or_default();
    assert!(
        late < Duration::from_millis(1500),
        "closed {late:?} after exp, expected within about a second"
    );
}

#[test]
fn refresh_before_expiry_keeps_the_connection() {
    let srv = start(|cfg| cfg.jwt_leeway_secs = 0);
    let old_exp = now_secs() + 2;
    let (mut ws, _) = connect(srv.addr, &hs256(&json!({"sub": "renew", "exp": old_exp})));
    let new_exp = now_secs() + 60;
    let new = hs256(&json!({"sub": "renew", "exp": new_exp}));
    send_json(
        &mut ws,
        &json!({"type": "refresh", "payload": {"token": new}}),
    );
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "refreshed", "payload": {"expiresAt": new_exp}})
    );
    expect_silence_until(&mut ws, unix(old_exp) + Duration::from_millis(1500));
    assert_echo(&mut ws, "after the old expiry");
}

#[test]
fn refused_refresh_does_not_extend_the_old_expiry() {
    let srv = start(|cfg| cfg.jwt_leeway_secs = 0);
    let exp = now_secs() + 2;
    let (mut ws, _) = connect(srv.addr, &hs256(&json!({"sub": "owner", "exp": exp})));
    send_json(
        &mut ws,
        &json!({"type": "refresh", "payload": {"token": token("intruder", 60)}}),
    );
    assert_eq!(next_json(&mut ws)["type"], "error");
    assert_eq!(expect_close(&mut ws), 4001);
    assert!(now_secs() >= exp, "closed before the old expiry");
}

// ---------------------------------------------------------------------------
// Frames, close codes, ping
// ---------------------------------------------------------------------------

#[test]
fn message_over_the_limit_closes_with_1009() {
    let srv = start(|cfg| cfg.max_message_bytes = 1024);
    let (mut ws, _) = connect(srv.addr, &token("big", 60));
    // Just under the limit passes.
    let fits = json!({"type": "t", "payload": "x".repeat(900)});
    assert!(fits.to_string().len() <= 1024);
    send_json(&mut ws, &fits);
    assert_eq!(next_json(&mut ws)["type"], "echo");
    let too_big = json!({"type": "t", "payload": "x".repeat(1100)});
    send_json(&mut ws, &too_big);
    assert_eq!(expect_close(&mut ws), 1009);
}

#[test]
fn fragmented_message_over_the_limit_closes_with_1009() {
    let srv = start(|cfg| cfg.max_message_bytes = 1024);
    let mut ws = RawWs::open_connected(srv.addr, &token("big-frag", 60));
    // Each fragment is under the limit; the message is not.
    let mut bytes = client_frame(false, OP_TEXT, &[b'x'; 700]);
    bytes.extend(client_frame(true, OP_CONT, &[b'x'; 700]));
    ws.send(&bytes);
    assert_eq!(ws.expect_close(), 1009);
}

#[test]
fn fragmented_message_is_reassembled_with_pings_between() {
    let srv = start(|_| {});
    let mut ws = RawWs::open_connected(srv.addr, &token("frag", 60));
    let msg = r#"{"type":"frag","payload":"héllo wörld"}"#.as_bytes();
    // Split inside the two bytes of "é": UTF-8 is checked on the message.
    let cut = msg.iter().position(|&b| b == 0xc3).expect("é") + 1;
    ws.send(&client_frame(false, OP_TEXT, &msg[..cut]));
    ws.send(&client_frame(true, OP_PING, b"mid"));
    ws.send(&client_frame(false, OP_CONT, &msg[cut..cut + 5]));
    ws.send(&client_frame(true, OP_CONT, &msg[cut + 5..]));
    let (fin, op, payload) = ws.read_frame().expect("pong");
    assert_eq!((fin, op, payload.as_slice()), (true, OP_PONG, &b"mid"[..]));
    let echo = ws.next_json();
    assert_eq!(echo["type"], "echo", "{echo}");
    assert_eq!(
        echo["payload"]["originalMessage"],
        json!({"type": "frag", "payload": "héllo wörld"})
    );
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let srv = start(|_| {});
    let mut ws = RawWs::open_connected(srv.addr, &token("utf8", 60));
    ws.send(&client_frame(true, OP_TEXT, b"{\"type\":\"a\xff\xfe\"}"));
    assert_eq!(ws.expect_close(), 1007);
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let srv = start(|_| {});
    let mut ws = RawWs::open_connected(srv.addr, &token("nomask", 60));
    ws.send(&frame(true, OP_TEXT, br#"{"type":"t"}"#, None));
    assert_eq!(ws.expect_close(), 1002);
}

#[test]
fn client_close_gets_a_reply_and_the_tcp_connection_ends() {
    let srv = start(|_| {});
    let mut ws = RawWs::open_connected(srv.addr, &token("bye", 60));
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    ws.send(&client_frame(true, OP_CLOSE, &payload));
    assert_eq!(ws.expect_close(), 1000);
    ws.expect_eof();
}

#[test]
fn client_close_through_tungstenite_completes_the_handshake() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("bye2", 60));
    ws.close(None).expect("send close");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no close reply within {WAIT:?}");
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("pinger", 60));
    let data: &[u8] = b"ping-payload-\x00\xff-123";
    ws.send(Message::Ping(data.to_vec().into()))
        .expect("send ping");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no pong within {WAIT:?}");
        match ws.read().expect("read") {
            Message::Pong(p) => {
                assert_eq!(p.as_ref(), data);
                break;
            }
            Message::Close(c) => panic!("closed instead of pong: {c:?}"),
            _ => continue,
        }
    }
    // And through raw frames, empty payload included.
    let mut raw = RawWs::open_connected(srv.addr, &token("pinger", 60));
    for payload in [&b""[..], &b"x"[..], &[7u8; 125][..]] {
        raw.send(&client_frame(true, OP_PING, payload));
        let (fin, op, got) = raw.read_frame().expect("pong");
        assert_eq!((fin, op), (true, OP_PONG));
        assert_eq!(got, payload);
    }
}

// ---------------------------------------------------------------------------
// Handshake problems and pipelining
// ---------------------------------------------------------------------------

#[test]
fn missing_websocket_key_is_400() {
    let srv = start(|_| {});
    let raw = upgrade_request("GET", &format!("/ws?token={}", token("u", 60)), "")
        .replace(&format!("Sec-WebSocket-Key: {WS_KEY}\r\n"), "");
    assert!(!raw.contains("Sec-WebSocket-Key"));
    let (status, head, _) = http_raw(srv.addr, raw.as_bytes());
    assert_eq!(status, 400, "{head}");
}

#[test]
fn wrong_websocket_version_is_426() {
    let srv = start(|_| {});
    let raw = upgrade_request("GET", &format!("/ws?token={}", token("u", 60)), "")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, head, _) = http_raw(srv.addr, raw.as_bytes());
    assert_eq!(status, 426, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n"),
        "426 must name the supported version: {head}"
    );
}

#[test]
fn post_to_ws_is_405_with_allow_get() {
    let srv = start(|_| {});
    let raw = format!(
        "POST /ws?token={} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token("u", 60)
    );
    let (status, head, _) = http_raw(srv.addr, raw.as_bytes());
    assert_eq!(status, 405, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nallow: get, head\r\n"),
        "{head}"
    );
}

#[test]
fn frames_pipelined_with_the_upgrade_request_are_processed() {
    let srv = start(|_| {});
    let first = json!({"type": "early", "payload": 1});
    let second = json!({"type": "early", "payload": 2});
    let mut pipelined = client_frame(true, OP_TEXT, first.to_string().as_bytes());
    pipelined.extend(client_frame(true, OP_TEXT, second.to_string().as_bytes()));
    let mut ws = RawWs::open(srv.addr, &token("eager", 60), &pipelined);
    let hello = ws.next_json();
    assert_eq!(hello["type"], "connected", "connected comes first: {hello}");
    for expected in [first, second] {
        let echo = ws.next_json();
        assert_eq!(echo["type"], "echo", "{echo}");
        assert_eq!(echo["payload"]["originalMessage"], expected);
    }
}

/// The raw echo handler (the Autobahn peer, `examples/echo_server.rs`) sends
/// nothing unasked: no `connected` message, and every message comes back
/// unchanged, text as text and binary as binary.
#[test]
fn raw_echo_handler_sends_no_greeting_and_echoes_unchanged() {
    let server = wsedge::Server::builder()
        .bind("127.0.0.1:0")
        .jwt_secret(SECRET)
        .handler(wsedge::RawEchoHandler)
        .start()
        .expect("server starts");
    let path = format!("/ws?token={}", token("raw", 60));
    let mut ws = try_connect(server.local_addr(), &path, &[]).expect("upgrade accepted");
    ws.send(Message::text("not json")).expect("send text");
    assert_eq!(ws.read().expect("echo"), Message::text("not json"));
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .expect("send binary");
    assert_eq!(
        ws.read().expect("echo"),
        Message::binary(vec![0u8, 159, 146, 150])
    );
    ws.close(None).expect("close");
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
    server.shutdown();
}
