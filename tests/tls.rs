//! TLS on the listening port (docs/PROTOCOL.md §12.1), through real rustls
//! clients and certificates made at test time: WSS and HTTPS on one port,
//! TLS 1.2 and 1.3, an untrusted CA, plaintext sent to the TLS port, large
//! and queued messages through records, and `SIGHUP` reloads.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::tls::{https_raw, read_to_close, tls_connect, wss_connect, TestPki, Wss};
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn start_tls(pki: &TestPki) -> TestServer {
    start(|c| {
        c.tls_cert = Some(pki.cert_path.clone());
        c.tls_key = Some(pki.key_path.clone());
    })
}

fn https_broadcast(
    addr: std::net::SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    payload: &Value,
) -> Value {
    let body = json!({"type": "news", "payload": payload}).to_string();
    let raw = format!(
        "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = https_raw(addr, cfg, raw.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json answer")
}

fn echo(ws: &mut Wss, tag: &str) {
    let msg = json!({"type": "probe", "payload": {"tag": tag}});
    ws.send(Message::text(msg.to_string())).expect("send");
    let answer = next_json(ws);
    assert_eq!(answer["type"], "echo", "{answer}");
    assert_eq!(answer["payload"]["originalMessage"], msg, "{answer}");
}

#[test]
fn wss_and_https_share_the_port() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let mut a = wss_connect(srv.addr, pki.client(), &token("tls-a", 60));
    let mut b = wss_connect(srv.addr, pki.client(), &token("tls-b", 60));
    echo(&mut a, "one");

    let answer = https_broadcast(srv.addr, pki.client(), &json!({"n": 1}));
    assert_eq!(answer["sentToConnections"], 2, "{answer}");
    for ws in [&mut a, &mut b] {
        let m = next_api(ws);
        assert_eq!(m["type"], "news", "{m}");
        assert_eq!(m["payload"]["n"], 1, "{m}");
    }

    // The routes answer over HTTPS as over plaintext.
    let (status, head, body) = https_raw(
        srv.addr,
        pki.client(),
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"ok");
}

#[test]
fn tls_1_2_and_1_3_both_negotiate_http_1_1() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut s = tls_connect(srv.addr, pki.client_config(&[version])).expect("handshake");
        assert_eq!(s.conn.protocol_version(), Some(want));
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write");
        let (status, _, body) = read_response(&mut s);
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{want:?}");
    }
}

#[test]
fn a_client_that_does_not_trust_the_ca_fails_and_the_server_serves_on() {
    let pki = TestPki::new();
    let stranger = TestPki::new();
    let srv = start_tls(&pki);
    let err = tls_connect(srv.addr, stranger.client()).expect_err("untrusted CA must fail");
    let text = format!("{err:?}");
    assert!(
        text.contains("UnknownIssuer") || text.contains("BadSignature"),
        "not a certificate error: {text}"
    );
    let mut ws = wss_connect(srv.addr, pki.client(), &token("after-stranger", 60));
    echo(&mut ws, "still served");
}

#[test]
fn plaintext_sent_to_the_tls_port_is_closed_without_an_answer() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let got = read_to_close(&mut s);
    assert!(
        got.is_empty(),
        "answered plaintext: {:?}",
        String::from_utf8_lossy(&got)
    );

    // A plaintext WebSocket client is refused the same way.
    let res = TcpStream::connect(srv.addr).and_then(|s| {
        s.set_read_timeout(Some(WAIT))?;
        Ok(s)
    });
    let req = format!("ws://{}/ws?token={}", srv.addr, token("plain", 60));
    let err = tungstenite::client(req, res.expect("connect")).err();
    assert!(err.is_some(), "a ws:// client got through to a TLS port");
}

#[test]
fn large_and_queued_messages_cross_in_order() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    // A message larger than a TLS record, both ways.
    let mut ws = wss_connect(srv.addr, pki.client(), &token("tls-big", 60));
    let big = "x".repeat(60_000);
    let msg = json!({"type": "probe", "payload": {"big": big}});
    ws.send(Message::text(msg.to_string())).expect("send");
    let answer = next_json(&mut ws);
    assert_eq!(answer["payload"]["originalMessage"], msg);

    // A reader that does not read while 25 messages of 30 KB are queued:
    // the socket fills, records wait, and everything arrives in order.
    let mut idle = wss_connect(srv.addr, pki.client(), &token("tls-idle", 60));
    let chunk = "y".repeat(30_000);
    let handle = srv.handle();
    for i in 0..25 {
        let sent = handle.send_to_user("tls-idle", "bulk", json!({"i": i, "s": chunk}));
        assert_eq!(sent, 1, "send {i}");
    }
    for i in 0..25 {
        let m = next_api(&mut idle);
        assert_eq!(m["payload"]["i"], i, "out of order");
        assert_eq!(m["payload"]["s"].as_str().map(str::len), Some(30_000));
    }
    echo(&mut idle, "after the burst");
}

#[test]
fn sighup_reloads_the_pair_and_a_bad_file_keeps_the_old_one() {
    let pki = TestPki::new();
    let args = pki.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = process::spawn(
        &args,
        &[("JWT_SECRET", SECRET), ("WSEDGE_ADMIN_KEY", ADMIN_KEY)],
    );
    let addr = proc.addr;
    let mut old = wss_connect(addr, pki.client(), &token("before-reload", 60));

    // A new pair from another CA replaces the files; SIGHUP.
    let next = TestPki::new();
    std::fs::copy(&next.cert_path, &pki.cert_path).expect("copy cert");
    std::fs::copy(&next.key_path, &pki.key_path).expect("copy key");
    process::signal(&proc.child, "HUP");
    process::wait_line(
        &proc.stderr,
        "TLS certificate and key reloaded",
        &mut Vec::new(),
    );

    // New handshakes present the new certificate...
    let mut fresh = wss_connect(addr, next.client(), &token("after-reload", 60));
    assert!(
        tls_connect(addr, pki.client()).is_err(),
        "the old certificate is still presented after the reload"
    );
    // ...and the connection opened before the reload is still served.
    echo(&mut old, "old session");
    let answer = https_broadcast(addr, next.client(), &json!({"reload": 1}));
    assert_eq!(answer["sentToConnections"], 2, "{answer}");
    for ws in [&mut old, &mut fresh] {
        assert_eq!(next_api(ws)["payload"]["reload"], 1);
    }

    // A broken file: logged, and the pair in use stays.
    std::fs::write(&pki.cert_path, "-----BEGIN CERTIFICATE-----\nnope\n").expect("write");
    process::signal(&proc.child, "HUP");
    process::wait_line(
        &proc.stderr,
        "keeping the previous certificate",
        &mut Vec::new(),
    );
    let mut again = wss_connect(addr, next.client(), &token("after-bad-reload", 60));
    echo(&mut again, "kept");
    echo(&mut old, "old session still");
    let mut buf = [0u8; 1];
    // The server is still up and answers plaintext-free.
    assert!(
        tls_connect(addr, next.client())
            .and_then(|mut s| {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
                s.read(&mut buf)
            })
            .is_ok(),
        "server stopped answering after a bad reload"
    );
}

#[test]
fn a_handshake_that_never_finishes_is_cut_at_the_handshake_timeout() {
    let pki = TestPki::new();
    let srv = start(|c| {
        c.tls_cert = Some(pki.cert_path.clone());
        c.tls_key = Some(pki.key_path.clone());
        c.handshake_timeout_secs = 1;
    });
    // The start of a ClientHello record, and then nothing.
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let started = Instant::now();
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "answered a half handshake: {got:?}");
    // At the timeout, not after the 5 s a connection gets to write a last
    // answer that no TLS peer could read before its handshake.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "closed only after {:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    let mut ws = wss_connect(srv.addr, pki.client(), &token("after-half", 60));
    echo(&mut ws, "served");
}
