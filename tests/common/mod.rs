//! Helpers for the integration tests: a real server on an ephemeral
//! loopback port, real WebSocket clients (tungstenite), raw HTTP.
//!
//! Every wait is bounded: sockets get read timeouts, polls give up after
//! a deadline.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;
use wsedge::{mint_hs256, now_secs};
use wsedge::{Config, Server};

pub mod cluster;
pub mod process;
pub mod tls;

pub const SECRET: &str = "integration-test-secret";
pub const ADMIN_KEY: &str = "integration-admin-key";
/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocket<TcpStream>;

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn handle(&self) -> wsedge::Handle {
        self.server.as_ref().expect("running").handle()
    }
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The configuration of the test servers: 127.0.0.1:0, two shards, the
/// test secret and admin key; `f` adjusts it.
pub fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        shards: 2,
        jwt_secret: Some(SECRET.into()),
        admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    };
    f(&mut cfg);
    cfg
}

/// Resident set size of this process (in-process servers run in it), in KiB.
/// The value of a Prometheus metric without labels on `addr`'s `/metrics`.
pub fn metric_value(addr: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = http_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Resident memory of process `pid` in KiB (`u64::MAX` when unreadable).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u64::MAX)
}

pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A connection to `addr` with a 4 KiB receive buffer (a client that reads
/// slowly, or not at all, fills it at once), and the usual timeouts.
pub fn slow_reader(addr: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    sock.connect(&addr.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_write_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Starts a server with [`config`].
pub fn start(f: impl FnOnce(&mut Config)) -> TestServer {
    let cfg = config(f);
    let server = Server::start(cfg).expect("server starts");
    let addr = server.local_addr();
    TestServer {
        server: Some(server),
        addr,
    }
}

/// An HS256 user token for `sub`, valid `secs` more seconds.
pub fn token(sub: &str, secs: i64) -> String {
    let exp = (now_secs() as i64 + secs) as u64;
    mint_hs256(SECRET, &json!({"sub": sub, "exp": exp}))
}

pub fn admin_token() -> String {
    mint_hs256(
        SECRET,
        &json!({"sub": "admin", "role": "admin", "exp": now_secs() + 600}),
    )
}

/// Opens a WebSocket with `?token=` and returns it after the `connected` message.
pub fn connect(addr: SocketAddr, token: &str) -> (Ws, Value) {
    let mut ws = try_connect(addr, &format!("/ws?token={token}"), &[]).expect("upgrade accepted");
    let hello = next_json(&mut ws);
    assert_eq!(hello["type"], "connected", "first message: {hello}");
    (ws, hello)
}

/// Tries an upgrade; `Err(status)` when the server refuses with an HTTP status.
pub fn try_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake failed unexpectedly: {e}"),
    }
}

/// The next text message as JSON (pings are answered by tungstenite).
pub fn next_json<S: Read + Write>(ws: &mut WebSocket<S>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no message within {WAIT:?}");
        match ws.read().expect("read message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Close(c) => panic!("closed while waiting for a message: {c:?}"),
            _ => continue,
        }
    }
}

/// Reads until the server closes; returns the close code.
pub fn expect_close(ws: &mut Ws) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no close within {WAIT:?}");
        match ws.read() {
            Ok(Message::Close(Some(f))) => return f.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                panic!("connection ended without a close frame")
            }
            Err(e) => panic!("error while waiting for close: {e}"),
        }
    }
}

pub fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// One raw HTTP exchange on a fresh connection; returns (status, headers, body).
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(raw).expect("write");
    read_response(&mut s)
}

/// Reads one HTTP response (Content-Length framed) from a stream.
pub fn read_response(s: &mut impl Read) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().expect("status");
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    (status, head, body)
}

/// A REST call with a bearer credential; returns (status, JSON body).
pub fn rest(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_raw(addr, raw.as_bytes());
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The status route's answer for `user` (asserting 200).
pub fn user_status(addr: SocketAddr, user: &str) -> Value {
    let (status, body) = rest(
        addr,
        "GET",
        &format!("/v1/websocket/user/{user}/status"),
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `f` until it is true or the wait runs out.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

// Channels (docs/PROTOCOL.md §10).

/// A user token carrying a `channels` claim.
pub fn token_with(sub: &str, channels: &[&str]) -> String {
    mint_hs256(
        SECRET,
        &json!({"sub": sub, "exp": now_secs() + 600, "channels": channels}),
    )
}

pub fn subscribe(ws: &mut Ws, channel: &str, presence: bool) -> Value {
    let payload = json!({"channel": channel, "presence": presence});
    send_json(ws, &json!({"type": "subscribe", "payload": payload}));
    next_json(ws)
}

pub fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    rest(addr, method, path, Some(ADMIN_KEY), body)
}

pub fn publish(addr: SocketAddr, channel: &str, kind: &str, payload: Value) -> (u16, Value) {
    let path = format!("/v1/websocket/channels/{channel}/publish");
    admin(
        addr,
        "POST",
        &path,
        Some(&json!({"type": kind, "payload": payload})),
    )
}

// History (docs/PROTOCOL.md §11).

/// The next message, which must be one sent on behalf of the API: it
/// carries a stream (`channel`) and an offset of at least 1. Returned as
/// the original service sent it, without `offset` and without an `@all` or
/// `@user` channel (a channel's name stays).
pub fn next_api<S: Read + Write>(ws: &mut WebSocket<S>) -> Value {
    api_view(next_json(ws))
}

/// [`next_api`] on a message already read.
pub fn api_view(mut v: Value) -> Value {
    let offset = v.get("offset").and_then(Value::as_u64);
    assert!(offset.is_some_and(|o| o >= 1), "no stream offset: {v}");
    let stream = v.get("channel").and_then(Value::as_str).map(str::to_string);
    assert!(stream.is_some(), "no stream: {v}");
    if let Some(o) = v.as_object_mut() {
        o.remove("offset");
        if matches!(stream.as_deref(), Some("@all" | "@user")) {
            o.remove("channel");
        }
    }
    v
}
