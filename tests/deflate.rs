//! permessage-deflate (RFC 7692, docs/PROTOCOL.md §3.12) over real sockets:
//! what the 101 answers to each offer, compressed client messages echoed,
//! and the refusals (RSV1 misuse, data that does not inflate, a zip bomb).
//!
//! tungstenite has no compression, so the client here is raw TCP with a
//! small frame writer (masked, RSV1 when asked) and reader (inflating the
//! server's compressed frames, if it sends any).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

/// A raw WebSocket client connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A whole message (or control frame) from the server.
#[derive(Debug)]
struct Msg {
    opcode: u8,
    payload: Vec<u8>,
}

/// Sends the upgrade with `extensions` (one header per value) and returns
/// the 101's head and the connection.
fn upgrade(addr: SocketAddr, extensions: &[&str]) -> (String, Raw) {
    upgrade_with(
        addr,
        extensions,
        &format!("token={}", token("deflate-user", 600)),
    )
}

/// [`upgrade`] with the query string given (`token=…&…`).
fn upgrade_with(addr: SocketAddr, extensions: &[&str], query: &str) -> (String, Raw) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    let ext: String = extensions
        .iter()
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .collect();
    let req = format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let raw = Raw {
        s,
        buf: buf[end..].to_vec(),
    };
    (head, raw)
}

/// The `Sec-WebSocket-Extensions` value of a 101, if any.
fn extensions_of(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim().to_string())
    })
}

/// Raw deflate, sync-flushed, the `00 00 ff ff` tail stripped.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let at = c.total_in() as usize;
        c.compress_vec(&data[at..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(4096);
    loop {
        let at = d.total_in() as usize;
        d.decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
            .expect("server data inflates");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// A masked client frame; `b0` is FIN/RSV/opcode.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    wsedge::testbed::client_frame(b0, payload, [0x37, 0xfa, 0x21, 0x3d])
}

impl Raw {
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn fill(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            match self.s.read(&mut chunk) {
                Ok(0) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("read: {e}"),
            }
        }
        true
    }

    /// One frame: (b0, payload); `None` at EOF.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2) {
            return None;
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, at) = match b1 & 0x7f {
            126 => {
                self.fill(4);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10);
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert!(self.fill(at + len), "EOF inside a frame");
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((b0, payload))
    }

    /// The next message or control frame, compressed ones inflated.
    fn next(&mut self) -> Option<Msg> {
        let (b0, mut payload) = self.frame()?;
        let opcode = b0 & 0x0f;
        let compressed = b0 & 0x40 != 0;
        if opcode < 8 {
            let mut fin = b0 & 0x80 != 0;
            while !fin {
                let (b, more) = self.frame()?;
                assert_eq!(b & 0x0f, 0, "continuation expected");
                payload.extend(more);
                fin = b & 0x80 != 0;
            }
            if compressed {
                payload = inflate(&payload);
            }
        }
        Some(Msg { opcode, payload })
    }

    /// The next text message as JSON, skipping control frames.
    fn json(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline);
            let m = self.next().expect("a message");
            match m.opcode {
                1 => return serde_json::from_slice(&m.payload).expect("json"),
                8 => panic!("closed: {:?}", close_code(&m)),
                _ => continue,
            }
        }
    }

    /// Reads until the close frame; its code.
    fn close_code(&mut self) -> u16 {
        loop {
            let m = self.next().expect("a close frame before EOF");
            if m.opcode == 8 {
                return close_code(&m).expect("a code");
            }
        }
    }
}

fn close_code(m: &Msg) -> Option<u16> {
    (m.payload.len() >= 2).then(|| u16::from_be_bytes([m.payload[0], m.payload[1]]))
}

const PLAIN: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn negotiation_answers() {
    let srv = start(|_| {});
    let cases: &[(&[&str], Option<&str>)] = &[
        (&[], None),
        (&["permessage-deflate"], Some(PLAIN)),
        (&["permessage-deflate; client_max_window_bits"], Some(PLAIN)),
        (
            &["permessage-deflate; server_max_window_bits=10; client_no_context_takeover"],
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"),
        ),
        (&["x-webkit-deflate-frame"], None),
        // Declined: unknown parameter, duplicate, out of range, value on a
        // parameter that takes none, missing value.
        (&["permessage-deflate; foo"], None),
        (
            &["permessage-deflate; client_no_context_takeover; client_no_context_takeover"],
            None,
        ),
        (&["permessage-deflate; server_max_window_bits=16"], None),
        (&["permessage-deflate; client_max_window_bits=7"], None),
        (&["permessage-deflate; server_no_context_takeover=1"], None),
        (&["permessage-deflate; server_max_window_bits"], None),
        // A bad offer declined, a later one in the list taken; over headers.
        (
            &["permessage-deflate; foo, permessage-deflate; server_max_window_bits=12"],
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"),
        ),
        (
            &["permessage-deflate; server_max_window_bits=99", "permessage-deflate"],
            Some(PLAIN),
        ),
    ];
    for (offer, want) in cases {
        let (head, mut raw) = upgrade(srv.addr, offer);
        assert_eq!(extensions_of(&head).as_deref(), *want, "offer {offer:?}");
        // Every connection works, whatever was agreed.
        assert_eq!(raw.json()["type"], "connected");
    }
}

#[test]
fn no_compression_never_negotiates() {
    let srv = start(|c| c.compression = false);
    let (head, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
    assert_eq!(extensions_of(&head), None);
    assert_eq!(raw.json()["type"], "connected");
    // And RSV1 is then a protocol error.
    raw.send(&frame(0xc1, &deflate(b"{\"type\":\"x\"}")));
    assert_eq!(raw.close_code(), 1002);
}

#[test]
fn compressed_messages_echoed() {
    let srv = start(|_| {});
    let (_, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
    assert_eq!(raw.json()["type"], "connected");
    for size in [0usize, 10, 300, 5000, 60_000] {
        let msg = json!({"type": "note", "payload": {"text": "é".repeat(size / 2)}});
        raw.send(&frame(0xc1, &deflate(msg.to_string().as_bytes())));
        let echo = raw.json();
        assert_eq!(echo["type"], "echo", "{echo}");
        assert_eq!(echo["payload"]["originalMessage"], msg);
    }
    // Plain messages still work on the same connection.
    raw.send(&frame(0x81, json!({"type": "ping"}).to_string().as_bytes()));
    assert_eq!(raw.json()["type"], "pong");
}

#[test]
fn fragmented_compressed_with_ping_between() {
    let srv = start(|_| {});
    let (_, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
    assert_eq!(raw.json()["type"], "connected");
    let msg = json!({"type": "note", "payload": "abc".repeat(2000)});
    let z = deflate(msg.to_string().as_bytes());
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut wire = frame(0x41, a); // RSV1 text, not FIN
    wire.extend(frame(0x89, b"are you there")); // ping between fragments
    wire.extend(frame(0x00, b));
    wire.extend(frame(0x80, c));
    // Byte by byte, as slowly as a client may.
    for byte in wire.chunks(997) {
        raw.send(byte);
        std::thread::sleep(Duration::from_millis(2));
    }
    let pong = raw.next().expect("pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (10, &b"are you there"[..])
    );
    let echo = raw.json();
    assert_eq!(echo["payload"]["originalMessage"], msg);
}

#[test]
fn binary_compressed_message_raw_echo() {
    let srv = wsedge::Server::builder()
        .config(config(|_| {}))
        .handler(wsedge::RawEchoHandler)
        .start()
        .expect("start");
    let (_, mut raw) = upgrade(srv.local_addr(), &["permessage-deflate"]);
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
    raw.send(&frame(0xc2, &deflate(&data)));
    let m = raw.next().expect("echo");
    assert_eq!(m.opcode, 2);
    assert_eq!(m.payload, data);
    srv.shutdown();
}

#[test]
fn rsv1_misuse_closes_1002() {
    let srv = start(|_| {});
    // Without negotiation.
    let (_, mut raw) = upgrade(srv.addr, &[]);
    assert_eq!(raw.json()["type"], "connected");
    raw.send(&frame(0xc1, &deflate(b"{}")));
    assert_eq!(raw.close_code(), 1002);
    // On a control frame, and on a continuation, with negotiation.
    for wire in [
        frame(0xc9, b""),
        [frame(0x01, b"{"), frame(0xc0, b"}")].concat(),
    ] {
        let (_, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
        assert_eq!(raw.json()["type"], "connected");
        raw.send(&wire);
        assert_eq!(raw.close_code(), 1002);
    }
}

#[test]
fn garbage_compressed_data_closes_1002() {
    let srv = start(|_| {});
    let (_, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
    assert_eq!(raw.json()["type"], "connected");
    raw.send(&frame(0xc1, &[0xff; 64]));
    assert_eq!(raw.close_code(), 1002);
}

#[test]
fn compressed_invalid_utf8_closes_1007() {
    let srv = start(|_| {});
    let (_, mut raw) = upgrade(srv.addr, &["permessage-deflate"]);
    assert_eq!(raw.json()["type"], "connected");
    raw.send(&frame(0xc1, &deflate(&[0xff, 0xfe, 0xfd])));
    assert_eq!(raw.close_code(), 1007);
}

#[test]
fn zip_bomb_closes_1009_without_memory_growth() {
    // A child process, so that its RSS is the server's alone.
    let secret = [("JWT_SECRET", common::SECRET)];
    let proc = process::spawn(&["--max-message-bytes", "65536"], &secret);
    let addr = proc.addr;
    let bomb = deflate(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
    let pid = proc.child.id();
    let (_, mut bystander) = upgrade(addr, &["permessage-deflate"]);
    assert_eq!(bystander.json()["type"], "connected");
    let before = rss_kib_of(pid);
    for _ in 0..20 {
        let (_, mut raw) = upgrade(addr, &["permessage-deflate"]);
        assert_eq!(raw.json()["type"], "connected");
        raw.send(&frame(0xc1, &bomb));
        assert_eq!(raw.close_code(), 1009);
    }
    // Compressed data over the limit is refused before any inflating.
    let (_, mut raw) = upgrade(addr, &["permessage-deflate"]);
    assert_eq!(raw.json()["type"], "connected");
    raw.send(&frame(0xc2, &vec![0u8; 70_000])[..32]);
    assert_eq!(raw.close_code(), 1009);
    let after = rss_kib_of(pid);
    eprintln!("server RSS around 20 zip bombs: {before} KiB -> {after} KiB");
    // 20 bombs of 10 MiB each inflated whole would be 200 MiB; bounded
    // inflating stays within a few times --max-message-bytes.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The other connection is still served.
    let msg = json!({"type": "still-here"});
    bystander.send(&frame(0xc1, &deflate(msg.to_string().as_bytes())));
    assert_eq!(bystander.json()["payload"]["originalMessage"], msg);
}

#[test]
fn message_at_the_limit_passes() {
    let srv = wsedge::Server::builder()
        .config(config(|c| c.max_message_bytes = 4096))
        .handler(wsedge::RawEchoHandler)
        .start()
        .expect("start");
    let (_, mut raw) = upgrade(srv.local_addr(), &["permessage-deflate"]);
    raw.send(&frame(0xc2, &deflate(&[b'x'; 4096])));
    assert_eq!(raw.next().expect("echo").payload, vec![b'x'; 4096]);
    raw.send(&frame(0xc2, &deflate(&[b'x'; 4097])));
    assert_eq!(raw.close_code(), 1009);
    srv.shutdown();
}

/// A child server's RSS per idle connection, with and without compression
/// negotiated, after each connection sent one 2 KB message (compressed or
/// plain) and got its echo: compression must not grow what a connection
/// keeps. Per connection is the slope between N and 2N connections, so
/// that what a shard holds once (its inflater, its compressors) does not
/// count.
#[test]
fn idle_memory_per_connection_with_and_without_compression() {
    const N: usize = 500;
    let secret = [("JWT_SECRET", common::SECRET)];
    let mut slopes = Vec::new();
    // (offer, send compressed): plain; negotiated but plain messages;
    // negotiated and compressed messages.
    for (offer, compressed) in [
        (&[][..], false),
        (&["permessage-deflate"][..], false),
        (&["permessage-deflate"][..], true),
    ] {
        let proc = process::spawn(&["--max-connections-per-user", "100000"], &secret);
        let pid = proc.child.id();
        let msg = json!({"type": "note", "payload": "x".repeat(2000)}).to_string();
        let mut conns = Vec::with_capacity(2 * N);
        let mut rss = Vec::new();
        for _ in 0..2 {
            for _ in 0..N {
                let (_, mut raw) = upgrade(proc.addr, offer);
                assert_eq!(raw.json()["type"], "connected");
                if compressed {
                    raw.send(&frame(0xc1, &deflate(msg.as_bytes())));
                } else {
                    raw.send(&frame(0x81, msg.as_bytes()));
                }
                assert_eq!(raw.json()["type"], "echo");
                conns.push(raw);
            }
            rss.push(rss_kib_of(pid));
        }
        let per = rss[1].saturating_sub(rss[0]) as f64 * 1024.0 / N as f64;
        eprintln!(
            "offer {offer:?}, compressed {compressed}: RSS {} KiB at {N}, {} KiB at {}: {per:.0} B per connection",
            rss[0],
            rss[1],
            2 * N,
        );
        slopes.push(per);
    }
    // Plain, negotiated, negotiated and compressed: within the allocator's
    // noise of each other (no compressor, inflater or buffer per connection
    // would be several KiB each).
    for (i, s) in slopes.iter().enumerate().skip(1) {
        assert!(
            *s <= slopes[0] * 1.25 + 1024.0,
            "case {i}: {s:.0} B per connection against {:.0} B without compression",
            slopes[0]
        );
    }
}

/// The next data frame as the server sent it, (b0, payload), control frames
/// skipped: to see whether it came compressed.
fn data_frame(raw: &mut Raw) -> (u8, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no data frame within {WAIT:?}");
        let (b0, payload) = raw.frame().expect("a frame");
        if b0 & 0x08 == 0 {
            return (b0, payload);
        }
    }
}

/// A list of notifications, ~2 KB of JSON.
fn notifications() -> Value {
    let items: Vec<Value> = (0..30)
        .map(|i| json!({"id": 500 + i, "title": "new reply", "from": format!("user-{}", i % 7), "read": i % 3 == 0}))
        .collect();
    json!(items)
}

#[test]
fn a_broadcast_is_compressed_once_for_every_connection_that_negotiated() {
    let srv = start(|_| {});
    let (_, mut a) = upgrade(srv.addr, &["permessage-deflate"]);
    let (_, mut b) = upgrade(srv.addr, &["permessage-deflate; client_max_window_bits"]);
    let (_, mut plain) = upgrade(srv.addr, &[]);
    for r in [&mut a, &mut b, &mut plain] {
        assert_eq!(r.json()["type"], "connected");
    }
    assert_eq!(srv.handle().broadcast("news", notifications(), None), 3);
    let (a0, a_bytes) = data_frame(&mut a);
    let (b0, b_bytes) = data_frame(&mut b);
    let (p0, p_bytes) = data_frame(&mut plain);
    assert_eq!(
        (a0, b0, p0),
        (0xc1, 0xc1, 0x81),
        "RSV1 only where negotiated"
    );
    assert_eq!(
        a_bytes, b_bytes,
        "one compressed frame for every connection"
    );
    assert!(
        a_bytes.len() * 3 < p_bytes.len(),
        "{} vs {}",
        a_bytes.len(),
        p_bytes.len()
    );
    assert_eq!(inflate(&a_bytes), p_bytes, "the same message");

    // Under --compression-min-bytes it goes plain to everyone.
    srv.handle().broadcast("tiny", json!(1), None);
    for r in [&mut a, &mut b, &mut plain] {
        let (b0, payload) = data_frame(r);
        assert_eq!(b0, 0x81);
        let v: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(v["type"], "tiny");
    }

    // A send to a user and an echo over the threshold come compressed too.
    assert_eq!(
        srv.handle()
            .send_to_user("deflate-user", "direct", notifications()),
        3
    );
    let (a0, a_bytes) = data_frame(&mut a);
    let (_, p_bytes) = data_frame(&mut plain);
    let _ = data_frame(&mut b);
    assert_eq!(a0, 0xc1);
    assert_eq!(inflate(&a_bytes), p_bytes);
    let msg = json!({"type": "note", "payload": notifications()});
    a.send(&frame(0x81, msg.to_string().as_bytes()));
    let (e0, echo) = data_frame(&mut a);
    assert_eq!(e0, 0xc1, "the echo of a large message is compressed");
    let v: Value = serde_json::from_slice(&inflate(&echo)).expect("json");
    assert_eq!(v["payload"]["originalMessage"], msg);
}

#[test]
fn a_small_window_gets_compressed_replies_and_plain_broadcasts() {
    let srv = start(|_| {});
    let (head, mut w9) = upgrade(srv.addr, &["permessage-deflate; server_max_window_bits=9"]);
    assert!(
        extensions_of(&head).is_some_and(|e| e.contains("server_max_window_bits=9")),
        "{head}"
    );
    let (head, mut w8) = upgrade(srv.addr, &["permessage-deflate; server_max_window_bits=8"]);
    assert!(extensions_of(&head).is_some(), "{head}");
    for r in [&mut w9, &mut w8] {
        assert_eq!(r.json()["type"], "connected");
    }
    let msg = json!({"type": "note", "payload": notifications()});
    w9.send(&frame(0x81, msg.to_string().as_bytes()));
    let (b0, echo) = data_frame(&mut w9);
    assert_eq!(b0, 0xc1, "compressed with a 512-byte window");
    let v: Value = serde_json::from_slice(&inflate(&echo)).expect("json");
    assert_eq!(v["payload"]["originalMessage"], msg);
    // zlib cannot compress with 256 bytes: plain.
    w8.send(&frame(0x81, msg.to_string().as_bytes()));
    assert_eq!(data_frame(&mut w8).0, 0x81);
    // A broadcast's shared twin uses the full window: plain for both.
    srv.handle().broadcast("news", notifications(), None);
    assert_eq!(data_frame(&mut w9).0, 0x81);
    assert_eq!(data_frame(&mut w8).0, 0x81);
}

#[test]
fn recovered_messages_come_compressed_and_no_compression_turns_it_all_off() {
    let srv = start(|_| {});
    let (_, mut first) = upgrade(srv.addr, &["permessage-deflate"]);
    let hello = first.json();
    let epoch = hello["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for _ in 0..2 {
        srv.handle().broadcast("news", notifications(), None);
    }
    let query = format!(
        "token={}&epoch={epoch}&since_all=0&since_user=0",
        token("deflate-user", 600)
    );
    let (_, mut again) = upgrade_with(srv.addr, &["permessage-deflate"], &query);
    assert_eq!(again.json()["payload"]["recovered"], true);
    for _ in 0..2 {
        let (b0, bytes) = data_frame(&mut again);
        assert_eq!(b0, 0xc1, "a replayed message is compressed like a live one");
        let v: Value = serde_json::from_slice(&inflate(&bytes)).expect("json");
        assert_eq!(v["type"], "news");
    }

    let off = start(|c| c.compression = false);
    let (head, mut raw) = upgrade(off.addr, &["permessage-deflate"]);
    assert_eq!(extensions_of(&head), None, "{head}");
    assert_eq!(raw.json()["type"], "connected");
    off.handle().broadcast("news", notifications(), None);
    assert_eq!(data_frame(&mut raw).0, 0x81);
}
