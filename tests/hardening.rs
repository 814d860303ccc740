//! Hostile and careless peers (docs/PROTOCOL.md §4.11, §3.6, §7.5), over
//! real loopback sockets: credentials before bodies, the cap on HTTP-phase
//! connections, lingering close (a close frame or an error answer, never a
//! reset), `HEAD`, request framing, keep-alive limits, `ping` → `pong`,
//! CORS, and echo floods.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Tests that read this process's RSS run alone.
static RSS: Mutex<()> = Mutex::new(());

fn open(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_write_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Reads until EOF; `Err` when the connection was reset instead.
fn read_to_eof(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map(|_| rest)
}

const BIG_POST: &str = "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n";

#[test]
fn a_request_without_credentials_is_refused_on_its_head_and_its_body_never_buffered() {
    let srv = start(|_| {});
    // The answer comes before any of the megabyte is sent...
    let mut s = open(srv.addr);
    s.write_all(format!("{BIG_POST}\r\n").as_bytes())
        .expect("head");
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    // ...and what the client still sends is read and dropped until it
    // stops: then the server closes with a FIN, not a reset.
    s.write_all(&vec![b'x'; 256 * 1024]).expect("body");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert!(read_to_eof(&mut s).is_ok(), "reset instead of a close");

    // A user token is no admin credential: 403, the same way.
    let mut s = open(srv.addr);
    let head = format!("{BIG_POST}Authorization: Bearer {}\r\n\r\n", token("u", 60));
    s.write_all(head.as_bytes()).expect("head");
    assert_eq!(read_response(&mut s).0, 403);
}

#[test]
fn continue_goes_out_only_after_the_credentials_pass() {
    let srv = start(|_| {});
    let expect = "Expect: 100-continue\r\nContent-Length: 20\r\n";
    let mut bad = open(srv.addr);
    let raw = format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\n{expect}\r\n");
    bad.write_all(raw.as_bytes()).expect("head");
    assert_eq!(read_response(&mut bad).0, 401, "no 100 Continue first");

    let mut good = open(srv.addr);
    let raw = format!(
        "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\n{expect}\r\n"
    );
    good.write_all(raw.as_bytes()).expect("head");
    let mut first = [0u8; 25];
    good.read_exact(&mut first).expect("100 Continue");
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    good.write_all(br#"{"type":"t","x":"yz"}"#[..20].as_ref())
        .expect("body");
    // 20 bytes of a 21-byte object: the body is admitted, read, and refused
    // as JSON, which shows it reached the route.
    let (status, _, body) = read_response(&mut good);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn unauthenticated_bodies_do_not_grow_the_server() {
    const CONNS: usize = 200;
    let _g = RSS.lock().unwrap_or_else(|e| e.into_inner());
    let srv = start(|_| {});
    let before = rss_kib();
    let mut socks = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = open(srv.addr);
        // The head and most of the body, never finished. Without the check
        // on the head, each of these would hold ~1 MiB in the server.
        s.write_all(format!("{BIG_POST}\r\n").as_bytes())
            .expect("head");
        let _ = s.write_all(&vec![b'x'; 900 * 1024]);
        socks.push(s);
    }
    for s in &mut socks {
        assert_eq!(read_response(s).0, 401);
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("RSS grew {grown_mib} MiB for {CONNS} unauthenticated 1 MiB bodies");
    assert!(
        grown_mib < 32,
        "RSS grew {grown_mib} MiB for {CONNS} unauthenticated bodies"
    );
}

#[test]
fn http_phase_connections_are_capped() {
    let srv = start(|c| c.max_http_connections = 4);
    let idle: Vec<TcpStream> = (0..4).map(|_| open(srv.addr)).collect();
    // Each is accepted: it answers.
    for mut s in idle.iter().map(|s| s.try_clone().expect("clone")) {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut s).0, 200);
    }
    // The fifth is closed at once, without an answer.
    let mut fifth = open(srv.addr);
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = [0u8; 64];
    match fifth.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the fifth HTTP connection was served: {other:?}"),
    }
    let metrics = srv.handle().metrics_text();
    assert!(
        metrics.contains("wsedge_http_connections_refused_total 1\n"),
        "{metrics}"
    );
    drop(idle);
    eventually("a slot frees when a connection closes", || {
        let mut s = open(srv.addr);
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
    });
}

#[test]
fn an_oversized_message_gets_its_1009_close_frame_not_a_reset() {
    let srv = start(|_| {});
    for round in 0..10 {
        let (mut ws, _) = connect(srv.addr, &token(&format!("big{round}"), 60));
        let big = vec![b'a'; 8 * 1024 * 1024];
        // The server stops reading the message after 64 KiB; the rest is
        // read and dropped while the close frame waits for the client.
        let _ = ws.send(Message::binary(big));
        assert_eq!(expect_close(&mut ws), 1009, "round {round}");
    }
}

#[test]
fn an_error_answer_arrives_even_when_the_client_keeps_sending() {
    let srv = start(|c| c.max_body_bytes = 1024);
    for round in 0..10 {
        let mut s = open(srv.addr);
        let head = format!(
            "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 4000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("head");
        // 413 on the head; the body follows regardless.
        let _ = s.write_all(&vec![b'x'; 2 * 1024 * 1024]);
        let (status, head, _) = read_response(&mut s);
        assert_eq!(status, 413, "round {round}: {head}");
    }
}

#[test]
fn head_is_answered_without_a_body_on_every_get_route() {
    let srv = start(|_| {});
    let mut s = open(srv.addr);
    // HEAD then GET on one keep-alive connection: the second answer must
    // not be corrupted by a body after the first.
    s.write_all(
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("head of the HEAD answer");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Length: 2\r\n"), "{head}");
    let (status, _, body) = read_response(&mut s);
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));

    // An error answer to HEAD has no body either.
    let mut s = open(srv.addr);
    s.write_all(
        b"HEAD /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .expect("write");
    let mut all = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !all.ends_with(b"ok") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&all)
        );
        let mut b = [0u8; 256];
        let n = s.read(&mut b).expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(
        !text.contains("method not allowed"),
        "a body on HEAD: {text}"
    );
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
}

#[test]
fn ambiguous_framing_and_unmet_expectations_are_refused() {
    let srv = start(|_| {});
    let auth = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    for (raw, want) in [
        (
            format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\n{auth}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            format!("POST /v1/websocket/broadcast HTTP/1.0\r\nHost: t\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\n{auth}Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{{}}"),
            417,
        ),
    ] {
        let (status, head, body) = http_raw(srv.addr, raw.as_bytes());
        assert_eq!(status, want, "{raw:?}: {head}");
        let v: Value = serde_json::from_slice(&body).expect("JSON error");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
}

#[test]
fn a_keep_alive_connection_serves_a_thousand_requests_then_closes() {
    let srv = start(|_| {});
    let mut s = open(srv.addr);
    // One more than the connection may make: the last goes unanswered.
    let pipelined = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1001);
    s.write_all(&pipelined).expect("write");
    let all = read_to_eof(&mut s).expect("a close, not a reset");
    let text = String::from_utf8_lossy(&all);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().all(|a| a.starts_with("200 ")));
    let closing: Vec<usize> = (0..1000)
        .filter(|i| answers[*i].contains("Connection: close"))
        .collect();
    assert_eq!(closing, vec![999], "only the 1,000th answer closes");
}

#[test]
fn ping_messages_are_answered_with_pong() {
    let srv = start(|_| {});
    let (mut ws, _) = connect(srv.addr, &token("pinger", 60));
    send_json(&mut ws, &json!({"type": "ping"}));
    let pong = next_json(&mut ws);
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(pong["payload"]["timestamp"].is_string(), "{pong}");
    // Any payload: still a pong, not an echo.
    send_json(&mut ws, &json!({"type": "ping", "payload": {"n": 1}}));
    assert_eq!(next_json(&mut ws)["type"], "pong");
}

#[test]
fn cors_preflight_and_answers_for_allowed_origins_only() {
    let srv = start(|c| c.cors_origins = vec!["https://app.example".into()]);
    let preflight = |origin: &str| {
        http_raw(
            srv.addr,
            format!("OPTIONS /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n").as_bytes(),
        )
    };
    let (status, head, _) = preflight("https://app.example");
    assert_eq!(status, 204, "{head}");
    for h in [
        "Access-Control-Allow-Origin: https://app.example\r\n",
        "Vary: Origin\r\n",
        "Access-Control-Allow-Methods: POST\r\n",
        "Access-Control-Allow-Headers: Authorization, Content-Type\r\n",
        "Access-Control-Max-Age: ",
    ] {
        assert!(head.contains(h), "missing {h:?} in {head}");
    }
    let (status, head, _) = preflight("https://evil.example");
    assert_eq!(status, 405, "{head}");
    assert!(!head.contains("Access-Control"), "{head}");

    let get = |origin: &str| {
        http_raw(
            srv.addr,
            format!("GET /v1/websocket/stats HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n").as_bytes(),
        )
    };
    let (status, head, _) = get("https://app.example");
    assert_eq!(status, 200);
    assert!(
        head.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{head}"
    );
    let (_, head, _) = get("https://evil.example");
    assert!(!head.contains("Access-Control"), "{head}");
    // A refusal is readable by the allowed origin too.
    let (status, head, _) = http_raw(
        srv.addr,
        b"GET /v1/websocket/stats HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n\r\n",
    );
    assert_eq!(status, 401, "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{head}"
    );

    let plain = start(|_| {});
    let (status, head, _) = http_raw(
        plain.addr,
        b"OPTIONS /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n\r\n",
    );
    assert_eq!(status, 405, "no CORS unless configured: {head}");
}

#[test]
fn an_echo_flood_from_a_client_that_does_not_read_is_cut_at_the_outbound_cap() {
    let srv = start(|c| c.outbound_buffer_bytes = 64 * 1024);
    let stream = slow_reader(srv.addr);
    let url = format!("ws://{}/ws?token={}", srv.addr, token("flooder", 60));
    let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
    let msg = json!({"type": "flood", "payload": "p".repeat(1000)}).to_string();
    // Far more echoes than the cap holds, never read while sending.
    let mut sent = 0;
    for _ in 0..2000 {
        if ws.send(Message::text(msg.clone())).is_err() {
            break;
        }
        sent += 1;
    }
    let mut echoes = 0;
    let code = loop {
        match ws.read() {
            Ok(Message::Text(_)) => echoes += 1,
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("after {echoes} echoes: {e}"),
        }
    };
    assert_eq!(code, Some(1008), "sent {sent}, got {echoes} echoes");
    assert!(echoes < sent, "every echo of {sent} arrived");
}
