//! Hostile clients and overload, over real sockets: slow consumers, slowloris,
//! dead peers, connection limits, origins, idle keep-alive sockets, close
//! handshakes the peer never finishes, connect/disconnect storms, descriptor
//! exhaustion, and REST clients that pipeline without reading.
//!
//! Size limits live with their protocols and are not repeated here: headers
//! over the limit → `431` and bodies over the limit → `413` in
//! `tests/rest.rs` (`headers_over_limit_are_431`, `body_over_limit_is_413`);
//! a WebSocket message over `max_message_bytes` → close `1009` in
//! `tests/websocket.rs` (`message_over_the_limit_closes_with_1009`,
//! `fragmented_message_over_the_limit_closes_with_1009`); a request that is
//! only half sent → `408` or a close in `tests/rest.rs`
//! (`requests_that_do_not_arrive_in_time_get_408_or_a_close`).
//!
//! Tests that measure the whole process (RSS, open descriptors) hold the
//! [`PROCESS`] lock exclusively, so no other test of this file runs while
//! they measure; every other test holds it shared. Every wait is bounded.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;
use wsedge::Handle;

// ---------------------------------------------------------------------------
// Process-wide measurements

/// Shared by ordinary tests, exclusive for tests that measure the process.
static PROCESS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    PROCESS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    PROCESS.write().unwrap_or_else(|e| e.into_inner())
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A series of the server's Prometheus text, e.g. `wsedge_users` or
/// `wsedge_handshakes_rejected_total{reason="origin"}`; a name without labels
/// sums its per-shard series. 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series
                || (!series.contains('{')
                    && name
                        .strip_prefix(series)
                        .is_some_and(|r| r.starts_with('{')))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

fn handle_metric(h: &Handle, series: &str) -> f64 {
    metric(&h.metrics_text(), series)
}

/// Polls `f` every 10 ms until true, for at most `within`.
fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// A raw WebSocket client that answers nothing

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// How a raw connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// `read` returned 0.
    Eof,
    /// Connection reset (the server closed with unread data, or aborted).
    Reset,
}

/// A WebSocket client on a bare socket: it reads server frames and never
/// writes anything after the upgrade (no pongs, no close reply).
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades and reads the `connected` message.
    fn open(addr: SocketAddr, token: &str) -> RawWs {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write upgrade");
        let mut raw = RawWs { s, buf: Vec::new() };
        let head_end = loop {
            if let Some(p) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(raw.fill().expect("read 101") > 0, "closed before 101");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        raw.buf.drain(..head_end);
        let (op, payload) = raw.frame().expect("read").expect("connected frame");
        assert_eq!(op, 1, "text frame");
        let hello: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(hello["type"], "connected", "{hello}");
        raw
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.s.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next server frame `(opcode, payload)`; `None` at a clean EOF
    /// between frames. Panics when the read timeout runs out.
    fn frame(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some((op, header, len)) = self.parse_header() {
                if self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok(Some((op, payload)));
                }
            }
            match self.fill() {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "EOF inside a frame");
                    return Ok(None);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("nothing from the server within {WAIT:?}")
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `(opcode, header length, payload length)` of the buffered frame.
    fn parse_header(&self) -> Option<(u8, usize, usize)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (header, len) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 if b.len() >= 10 => (
                10,
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
            ),
            126 | 127 => return None,
            n => (2, n as usize),
        };
        Some((b[0] & 0x0f, header, len))
    }

    /// Reads frames until the connection ends; returns the frames read.
    fn read_to_end(&mut self) -> (Vec<(u8, Vec<u8>)>, Ended) {
        let mut frames = Vec::new();
        loop {
            match self.frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, Ended::Eof),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return (frames, Ended::Reset)
                }
                Err(e) => panic!("read error: {e}"),
            }
        }
    }
}

fn close_code(payload: &[u8]) -> u16 {
    assert!(payload.len() >= 2, "close frame without a code");
    u16::from_be_bytes([payload[0], payload[1]])
}

// ---------------------------------------------------------------------------
// Slow consumers

/// Reads `total` `load` messages, checking `seq` goes 0, 1, 2… in order, and
/// publishes its progress.
fn read_in_order(ws: &mut Ws, total: u64, progress: &AtomicU64) -> Result<(), String> {
    let mut next = 0u64;
    while next < total {
        let msg = ws
            .read()
            .map_err(|e| format!("after {next} messages: {e}"))?;
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
        if v["type"] != "load" {
            continue;
        }
        let seq = v["payload"]["seq"].as_u64().ok_or("no seq")?;
        if seq != next {
            return Err(format!("expected seq {next}, got {seq}"));
        }
        next += 1;
        progress.store(next, Ordering::Release);
    }
    Ok(())
}

/// What the slow consumer could read once it started reading.
#[derive(Debug)]
struct SlowOutcome {
    messages: u64,
    end: String,
    close: Option<(u16, String)>,
    took: Duration,
}

/// Reads everything the slow client still gets: data in order, then the
/// close frame (or the end of the connection).
fn read_slow(mut ws: Ws) -> Result<SlowOutcome, String> {
    let started = Instant::now();
    let mut next = 0u64;
    let mut close = None;
    let end = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] != "load" {
                    continue;
                }
                let seq = v["payload"]["seq"].as_u64().ok_or("no seq")?;
                if seq != next {
                    return Err(format!("slow client: expected seq {next}, got {seq}"));
                }
                next += 1;
            }
            Ok(Message::Close(Some(f))) => close = Some((u16::from(f.code), f.reason.to_string())),
            Ok(Message::Close(None)) => close = Some((1005, String::new())),
            Ok(_) => {}
            Err(e @ (tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                break e.to_string()
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                break e.to_string()
            }
            Err(
                e @ tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => break e.to_string(),
            Err(e) => return Err(format!("slow client after {next} messages: {e}")),
        }
    };
    Ok(SlowOutcome {
        messages: next,
        end,
        close,
        took: started.elapsed(),
    })
}

#[test]
fn slow_consumer_is_closed_with_1008_while_fast_clients_lose_nothing() {
    const TOTAL: u64 = 2_000;
    const BATCH: u64 = 20;
    const FAST: usize = 5;
    let _g = exclusive();
    let srv = start(|_| {}); // the default 1 MiB outbound cap
    let h = srv.handle();
    let drops = "wsedge_slow_consumer_drops_total";
    assert_eq!(handle_metric(&h, drops), 0.0);

    // The slow client: a small receive buffer, and it reads nothing until told.
    let stream = slow_reader(srv.addr);
    let req = format!("ws://{}/ws?token={}", srv.addr, token("slow", 600))
        .into_client_request()
        .expect("request");
    let (mut slow, _) = tungstenite::client(req, stream).expect("slow client upgrades");
    assert_eq!(next_json(&mut slow)["type"], "connected");

    let progress: Vec<Arc<AtomicU64>> = (0..FAST).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let fast: Vec<_> = (0..FAST)
        .map(|i| {
            let (mut ws, _) = connect(srv.addr, &token(&format!("fast{i}"), 600));
            let p = progress[i].clone();
            thread::spawn(move || read_in_order(&mut ws, TOTAL, &p).map(|()| ws))
        })
        .collect();

    let rss0 = rss_kib();
    let mut rss_max = rss0;
    let pad = "x".repeat(10 * 1024);
    let mut slow = Some(slow);
    let mut slow_reader = None;
    for batch in 0..TOTAL / BATCH {
        for seq in batch * BATCH..(batch + 1) * BATCH {
            h.broadcast("load", json!({"seq": seq, "pad": pad}), None);
        }
        // Pace by the fast readers, so their queues stay far under the cap:
        // only the client that does not read may go over it.
        let sent = (batch + 1) * BATCH;
        wait_until(WAIT, "fast clients keep up", || {
            progress.iter().all(|p| p.load(Ordering::Acquire) >= sent)
                || fast.iter().any(|t| t.is_finished())
        });
        if slow_reader.is_none() && handle_metric(&h, drops) >= 1.0 {
            // Read what is left right away, well within the drain timeout.
            let ws = slow.take().expect("slow client");
            slow_reader = Some(thread::spawn(move || read_slow(ws)));
        }
        rss_max = rss_max.max(rss_kib());
    }
    let _fast: Vec<Ws> = fast
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.join()
                .expect("reader thread")
                .unwrap_or_else(|e| panic!("fast client {i}: {e}"))
        })
        .collect();
    assert_eq!(
        handle_metric(&h, drops),
        1.0,
        "exactly the slow client was dropped"
    );
    let outcome = slow_reader
        .expect("the slow client was dropped during the run")
        .join()
        .expect("slow reader")
        .expect("slow client reads an in-order prefix");
    assert!(outcome.messages < TOTAL, "{outcome:?}");
    match &outcome.close {
        Some((code, reason)) => {
            assert_eq!(
                (*code, reason.as_str()),
                (1008, "slow consumer"),
                "{outcome:?}"
            )
        }
        // Only a reader that needed longer than the drain window may miss it.
        None => assert!(
            outcome.took > Duration::from_secs(4),
            "no close frame, {}: {outcome:?}",
            outcome.end
        ),
    }
    assert_eq!(h.connection_count("slow"), 0);
    for i in 0..FAST {
        assert_eq!(
            h.connection_count(&format!("fast{i}")),
            1,
            "fast{i} still connected"
        );
    }
    let growth_mib = (rss_max.saturating_sub(rss0)) / 1024;
    assert!(
        growth_mib < 64,
        "RSS grew by {growth_mib} MiB while 20 MB of broadcasts flowed"
    );
}

// ---------------------------------------------------------------------------
// Timeouts

#[test]
fn slowloris_trickling_one_byte_at_a_time_is_cut_at_the_handshake_timeout() {
    let _g = shared();
    let srv = start(|cfg| cfg.handshake_timeout_secs = 1);
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("loris", 600)
    );
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    // The read timeout paces the trickle: one byte per 100 ms, unless the
    // server says something (or closes) first.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut sent = 0usize;
    let mut chunk = [0u8; 1024];
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "still open after {sent} trickled bytes"
        );
        match s.read(&mut chunk) {
            Ok(0) => break started.elapsed(),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if answer.is_empty() && sent < request.len() {
                    if s.write_all(&request.as_bytes()[sent..sent + 1]).is_err() {
                        break started.elapsed();
                    }
                    sent += 1;
                }
            }
            Err(_) => break started.elapsed(),
        }
    };
    assert!(
        sent < request.len(),
        "the whole request got through the trickle"
    );
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(5),
        "cut after {ended:?} (handshake timeout 1 s)"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "answer: {text}"
    );
    assert_eq!(srv.handle().connection_count("loris"), 0);
    let (status, _, body) = http_raw(
        srv.addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

#[test]
fn dead_peer_that_never_answers_pings_is_dropped() {
    let _g = shared();
    let srv = start(|cfg| {
        cfg.ping_interval_secs = 1;
        cfg.pong_timeout_secs = 1;
    });
    let h = srv.handle();
    // A live client answers pings (tungstenite does, while it reads).
    let (mut alive, _) = connect(srv.addr, &token("alive", 600));
    let alive_thread = thread::spawn(move || {
        let mut pings = 0;
        loop {
            match alive.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Text(t)) if t.as_str().contains("\"stop\"") => {
                    return Ok((pings, alive))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("live client lost after {pings} pings: {e}")),
            }
        }
    });

    let started = Instant::now();
    let mut dead = RawWs::open(srv.addr, &token("dead", 600));
    assert_eq!(h.connection_count("dead"), 1);
    let (frames, _) = dead.read_to_end();
    let took = started.elapsed();
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    assert!(pings >= 1, "the server pinged: {frames:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "dropped after {took:?} (ping every 1 s, pong timeout 1 s)"
    );
    wait_until(WAIT, "dead peer leaves presence", || {
        h.connection_count("dead") == 0
    });

    // Meanwhile the live client was pinged too, answered, and is still here.
    assert_eq!(h.send_to_user("alive", "stop", json!(null)), 1);
    let (pings, _alive) = alive_thread
        .join()
        .expect("thread")
        .expect("live client kept");
    assert!(pings >= 1, "the live client was pinged as well");
    assert_eq!(h.connection_count("alive"), 1);
}

#[test]
fn idle_keep_alive_rest_connection_is_closed_after_the_idle_timeout() {
    let _g = shared();
    let srv = start(|cfg| cfg.idle_timeout_secs = 1);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("write");
        let (status, head, body) = read_response(&mut s);
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
    }
    let idle_since = Instant::now();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the idle connection to be closed, got {other:?}"),
    }
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(500) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle (idle timeout 1 s)"
    );
    let text = metric(&srv.handle().metrics_text(), "wsedge_http_connections");
    assert!(text <= 1.0, "HTTP connections left: {text}");
}

#[test]
fn close_handshake_the_peer_never_finishes_is_cut() {
    let _g = shared();
    let srv = start(|_| {});
    let h = srv.handle();
    let mut peer = RawWs::open(srv.addr, &token("mute", 600));
    assert_eq!(h.disconnect_user("mute", true), 1);
    let (op, payload) = peer.frame().expect("read").expect("close frame");
    assert_eq!(op, 0x8, "a close frame");
    assert_eq!(close_code(&payload), 4000);
    let sent = Instant::now();
    // The peer never replies; the server must give up on it.
    let (frames, _) = peer.read_to_end();
    let took = sent.elapsed();
    assert!(
        frames.is_empty(),
        "nothing after the close frame: {frames:?}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "TCP closed {took:?} after the close frame"
    );
    wait_until(WAIT, "muted peer leaves presence", || {
        h.connection_count("mute") == 0
    });
    assert_eq!(h.stats().total_connections, 0);
}

// ---------------------------------------------------------------------------
// Limits and origins

/// Tries upgrades until one is accepted (slots are freed asynchronously).
fn connect_eventually(addr: SocketAddr, user: &str) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_connect(addr, &format!("/ws?token={}", token(user, 600)), &[]) {
            Ok(mut ws) => {
                assert_eq!(next_json(&mut ws)["type"], "connected");
                return ws;
            }
            Err(status) => {
                assert!(Instant::now() < deadline, "{user}: still {status}");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn upgrade_status(addr: SocketAddr, user: &str) -> Result<Ws, u16> {
    try_connect(addr, &format!("/ws?token={}", token(user, 600)), &[])
}

/// Closes from the client side (unless already begun) and waits for the
/// server's reply and the end of the connection.
fn close_cleanly(mut ws: Ws) {
    let _ = ws.close(None);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "close not finished");
        match ws.read() {
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn connection_limits_answer_429_and_503_before_upgrade_and_free_on_close() {
    let _g = shared();
    let srv = start(|cfg| {
        cfg.max_connections = 3;
        cfg.max_connections_per_user = 2;
    });
    let h = srv.handle();
    let (a1, _) = connect(srv.addr, &token("a", 600));
    let (_a2, _) = connect(srv.addr, &token("a", 600));
    assert_eq!(
        upgrade_status(srv.addr, "a").err(),
        Some(429),
        "third for a"
    );
    let (b1, _) = connect(srv.addr, &token("b", 600));
    assert_eq!(
        upgrade_status(srv.addr, "c").err(),
        Some(503),
        "fourth in total"
    );
    // Over both limits: the total is checked first.
    assert_eq!(
        upgrade_status(srv.addr, "a").err(),
        Some(503),
        "a over both"
    );
    assert_eq!(h.stats().total_connections, 3);
    assert_eq!(h.connection_count("c"), 0);
    let m = h.metrics_text();
    assert_eq!(
        metric(
            &m,
            "wsedge_handshakes_rejected_total{reason=\"per_user_limit\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "wsedge_handshakes_rejected_total{reason=\"connection_limit\"}"
        ),
        2.0
    );

    // A clean close frees a total slot; an abrupt drop frees a user slot.
    close_cleanly(b1);
    let _c1 = connect_eventually(srv.addr, "c");
    assert_eq!(upgrade_status(srv.addr, "b").err(), Some(503));
    drop(a1);
    let _a3 = connect_eventually(srv.addr, "a");
    assert_eq!(h.connection_count("a"), 2);
    assert_eq!(h.stats().total_connections, 3);
}

#[test]
fn foreign_origin_is_refused_with_403_before_upgrade() {
    let _g = shared();
    let srv = start(|cfg| cfg.allowed_origins = vec!["https://app.example".into()]);
    let path = format!("/ws?token={}", token("o", 600));
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "null",
    ] {
        assert_eq!(
            try_connect(srv.addr, &path, &[("Origin", origin)]).err(),
            Some(403),
            "Origin {origin}"
        );
    }
    let h = srv.handle();
    assert_eq!(h.connection_count("o"), 0);
    let m = h.metrics_text();
    assert_eq!(
        metric(&m, "wsedge_handshakes_rejected_total{reason=\"origin\"}"),
        4.0
    );

    let mut allowed = try_connect(srv.addr, &path, &[("Origin", "https://app.example")])
        .expect("allowed origin upgrades");
    assert_eq!(next_json(&mut allowed)["type"], "connected");
    let mut no_origin = try_connect(srv.addr, &path, &[]).expect("no Origin upgrades");
    assert_eq!(next_json(&mut no_origin)["type"], "connected");
    assert_eq!(h.connection_count("o"), 2);
}

// ---------------------------------------------------------------------------
// Storms and exhaustion

#[test]
fn connect_storm_leaves_no_connections_presence_or_descriptors_behind() {
    const TOTAL: usize = 5_000;
    const WAVE: usize = 250;
    const USERS: usize = 50;
    let _g = exclusive();
    // A total limit of one wave: a slot leaked by any close would turn the
    // next wave's upgrades into 503s.
    let srv = start(|cfg| cfg.max_connections = WAVE);
    let h = srv.handle();
    let fds0 = open_fds();
    let started = Instant::now();
    for wave in 0..TOTAL / WAVE {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "storm still running at wave {wave}"
        );
        let mut clean = Vec::new();
        for i in 0..WAVE {
            let n = wave * WAVE + i;
            let user = format!("storm{}", n % USERS);
            let ws = match upgrade_status(srv.addr, &user) {
                Ok(ws) => ws,
                Err(status) => panic!("wave {wave}, connection {i}: {status}"),
            };
            match n % 3 {
                // A clean close handshake, finished below.
                0 => clean.push(ws),
                // Gone without a close frame: FIN.
                1 => drop(ws),
                // Gone with a reset.
                _ => {
                    socket2::SockRef::from(ws.get_ref())
                        .set_linger(Some(Duration::ZERO))
                        .expect("linger");
                    drop(ws);
                }
            }
        }
        for ws in &mut clean {
            ws.close(None).expect("close");
        }
        for ws in clean {
            close_cleanly(ws);
        }
        wait_until(WAIT, "a wave's connections are released", || {
            h.stats().total_connections == 0
        });
    }
    let took = started.elapsed();
    let stats = h.stats();
    assert_eq!(stats.total_connections, 0, "{stats:?}");
    assert_eq!(stats.total_users, 0, "{stats:?}");
    for u in 0..USERS {
        assert!(!h.is_user_connected(&format!("storm{u}")));
    }
    wait_until(WAIT, "HTTP connections are released", || {
        handle_metric(&h, "wsedge_http_connections") == 0.0
    });
    wait_until(WAIT, "descriptors return to where they were", || {
        open_fds() <= fds0
    });
    let accepted = handle_metric(&h, "wsedge_handshakes_accepted_total");
    assert_eq!(accepted, TOTAL as f64);
    // And the server is as good as new.
    let (mut ws, _) = connect(srv.addr, &token("after", 600));
    send_json(&mut ws, &json!({"type": "ping-me", "payload": 1}));
    assert_eq!(next_json(&mut ws)["type"], "echo");
    eprintln!("storm of {TOTAL} connections took {took:?}");
}

/// A `wsedge` child process; killed on drop.
struct Child64 {
    child: Child,
    stderr: Receiver<String>,
}

impl Drop for Child64 {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn healthz(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf).get(9..12)?.parse().ok()
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_server() {
    const CLIENTS: usize = 120;
    let _g = shared();
    let bin = env!("CARGO_BIN_EXE_wsedge");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", bin])
        .args(["--bind", "127.0.0.1:0", "--shards", "2"])
        .env("JWT_SECRET", SECRET)
        .env("WSEDGE_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("WSEDGE_") && k != "WSEDGE_ADMIN_KEY" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsedge under ulimit -n 64");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in io::BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut proc = Child64 { child, stderr: rx };
    let mut log = Vec::new();
    let line = process::wait_line(&proc.stderr, "wsedge listening on ", &mut log);
    let addr: SocketAddr = line
        .split_once("wsedge listening on ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("address in the listening line");
    assert_eq!(healthz(addr), Some(200));

    // More connections than the server has descriptors: the kernel's backlog
    // completes them all, the acceptor runs out.
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    process::wait_line(&proc.stderr, "pausing accepts", &mut log);
    assert!(
        proc.child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    drop(clients);

    // Once the clients are gone the server accepts and answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(addr) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no /healthz after the clients left"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(metric(&text, "wsedge_accept_errors_total") >= 1.0, "{text}");
    let (mut ws, _) = connect(addr, &token("after-emfile", 600));
    send_json(&mut ws, &json!({"type": "still", "payload": true}));
    assert_eq!(next_json(&mut ws)["type"], "echo");
    assert!(
        proc.child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
}

// ---------------------------------------------------------------------------
// REST backpressure

/// Reads pipelined HTTP responses (Content-Length framed) off one stream.
struct Responses {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Responses {
    fn next(&mut self) -> (u16, Vec<u8>) {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let avail = &self.buf[self.start..];
            if let Some(p) = avail.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&avail[..p]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if avail.len() >= p + 4 + len {
                    let status = head[9..12].parse().expect("status");
                    let body = avail[p + 4..p + 4 + len].to_vec();
                    self.start += p + 4 + len;
                    if self.start > 1 << 20 {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    return (status, body);
                }
            }
            let n = self.s.read(&mut chunk).expect("read responses");
            assert!(n > 0, "closed before every answer arrived");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn pipelining_without_reading_keeps_server_memory_bounded() {
    // One under the 1,000 requests a keep-alive connection may make: the
    // request after them (below) is the connection's last.
    const REQUESTS: usize = 999;
    const MARK_EVERY: usize = 100;
    let _g = exclusive();
    let srv = start(|_| {});
    let h = srv.handle();
    // ~14 KB answers: unbounded, 999 of them would queue ~14 MB; paused,
    // the server holds ~256 KB of them.
    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        if i % MARK_EVERY == 0 {
            requests.extend_from_slice(
                format!(
                    "GET /v1/websocket/user/mark{i}/status HTTP/1.1\r\nHost: t\r\n\
                     Authorization: Bearer {ADMIN_KEY}\r\n\r\n"
                )
                .as_bytes(),
            );
        } else {
            requests.extend_from_slice(b"GET /realtime.js HTTP/1.1\r\nHost: t\r\n\r\n");
        }
    }
    let s = slow_reader(srv.addr);
    let rss0 = rss_kib();
    let served = || handle_metric(&h, "wsedge_http_requests_total") as usize;
    let served0 = served();

    let mut writer = s.try_clone().expect("clone");
    // The writer may block once the server stops reading: that is the point.
    let writing = thread::spawn(move || writer.write_all(&requests));
    wait_until(WAIT, "the server answers the first requests", || {
        served() > served0
    });
    // Then wait for it to stop answering (or to have answered everything).
    let mut last = served();
    let mut still_since = Instant::now();
    let deadline = Instant::now() + WAIT;
    while still_since.elapsed() < Duration::from_millis(500) && last - served0 < REQUESTS {
        assert!(Instant::now() < deadline, "the server never settled");
        thread::sleep(Duration::from_millis(20));
        let now = served();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
    let answered_unread = last - served0;
    let growth_mib = rss_kib().saturating_sub(rss0) / 1024;
    eprintln!("{answered_unread} of {REQUESTS} answered unread; RSS +{growth_mib} MiB");
    assert!(
        growth_mib < 24,
        "RSS grew by {growth_mib} MiB with {answered_unread} answers queued for a client that does not read"
    );
    assert!(
        answered_unread < REQUESTS,
        "the server answered all {REQUESTS} requests of a client that reads nothing"
    );

    // Now the client reads: every answer arrives, in order.
    let mut r = Responses {
        s,
        buf: Vec::new(),
        start: 0,
    };
    let started = Instant::now();
    for i in 0..REQUESTS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reading took too long"
        );
        let (status, body) = r.next();
        assert_eq!(status, 200, "answer #{i}");
        if i % MARK_EVERY == 0 {
            let v: Value = serde_json::from_slice(&body).expect("status JSON");
            assert_eq!(v["userId"], format!("mark{i}"), "answer #{i} out of order");
        } else {
            assert!(body.len() > 1000, "answer #{i} is the script");
        }
    }
    assert_eq!(served() - served0, REQUESTS);
    writing
        .join()
        .expect("writer")
        .expect("every request written");
    // The connection is still usable, for its 1,000th and last request.
    r.s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(r.next(), (200, b"ok".to_vec()));
    let mut rest = Vec::new();
    let eof = r.s.read_to_end(&mut rest);
    assert!(
        matches!(eof, Ok(0)),
        "the 1,000th answer ends the connection: {eof:?} {rest:?}"
    );
}

#[test]
fn pipelining_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    const REQUESTS: usize = 4_000;
    let _g = shared();
    let srv = start(|cfg| cfg.idle_timeout_secs = 1);
    let h = srv.handle();
    let requests = b"GET /realtime.js HTTP/1.1\r\nHost: t\r\n\r\n".repeat(REQUESTS);
    let mut s = slow_reader(srv.addr);
    let mut writer = s.try_clone().expect("clone");
    let started = Instant::now();
    let writing = thread::spawn(move || {
        let _ = writer.write_all(&requests);
    });
    wait_until(WAIT, "the server answers the first requests", || {
        handle_metric(&h, "wsedge_http_requests_total") > 0.0
    });
    // The client reads nothing: once its answers stop draining, the server
    // gives it the idle timeout and then lets go of it.
    wait_until(WAIT, "the stalled connection is closed", || {
        handle_metric(&h, "wsedge_http_connections") == 0.0
    });
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    let served = handle_metric(&h, "wsedge_http_requests_total") as usize;
    assert!(served < REQUESTS, "answered all {served} requests");
    // What the client can still read is answers to its requests, never a 408.
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let read_started = Instant::now();
    loop {
        assert!(read_started.elapsed() < WAIT, "the connection did not end");
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection is still open")
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("HTTP/1.1 408"), "a 408 in the answers");
    writing.join().expect("writer");
}
