//! The inbound WebSocket path without a socket: arbitrary bytes from the
//! client through the same read loop and message handling the shard runs
//! (`wsedge::conn::ws::feed`: tungstenite's protocol machine, `on_raw`, JSON,
//! `refresh`, the handler, error replies), delivered in segments like
//! readable events, then EOF. Everything the server queued must decode as
//! valid server frames.
//!
//! Input: [`super::TokenSpec`] (9 bytes: a token for an injected
//! `refresh` message), then five bytes: flags (bit 0: `RawEchoHandler`;
//! bit 1: 128-byte message limit; bit 2: inject the refresh frame; bit 3:
//! skip the final EOF), segment size (0: all at once), how many bytes came
//! with the upgrade request (leftover), and the injection offset (u16 LE);
//! the rest is what the client sent.

use std::io::{self, Cursor, Read, Write};
use std::time::Instant;

use super::{Source, TokenSpec};
use serde_json::Value;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;
use wsedge::now_secs;
use wsedge::testbed;
use wsedge::testbed::{feed, Outbound, ShardMetrics, WsRead, WsState};

/// A masked client text frame.
fn client_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    wsedge::testbed::client_frame(0x81, payload, mask)
}

/// The client's side of the output: reads, and swallows its own replies.
struct Peer {
    input: Cursor<Vec<u8>>,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything the server queued must be well-formed server frames.
pub(crate) fn check_output(out: &mut Outbound, raw_echo: bool) {
    let mut bytes = Vec::new();
    let mut written = 0;
    out.flush_to(&mut bytes, &mut written)
        .expect("a Vec takes everything");
    // Compressed messages (on a session that negotiated permessage-deflate)
    // inflated first: tungstenite has no compression.
    let bytes = super::permessage_deflate::plain_server_frames(&bytes);
    let cfg = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let mut client = WebSocketContext::new(Role::Client, Some(cfg));
    let mut peer = Peer {
        input: Cursor::new(bytes),
    };
    loop {
        match client.read(&mut peer) {
            Ok(Message::Text(t)) if !raw_echo => {
                let v: Value = serde_json::from_str(&t).expect("server text is JSON");
                let kind = v.get("type").and_then(Value::as_str);
                assert!(
                    matches!(kind, Some("echo" | "error" | "refreshed")),
                    "unexpected reply {t}"
                );
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break,
            Err(e) => panic!("server output is not valid WebSocket: {e}"),
        }
    }
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let (spec, rest) = TokenSpec::split(data);
    let mut ctl = [0u8; 5];
    let n = rest.len().min(5);
    ctl[..n].copy_from_slice(&rest[..n]);
    let wire_in = &rest[n..];
    let [flags, seg, leftover, at_lo, at_hi] = ctl;
    let raw_echo = flags & 1 != 0;

    let mut wire = wire_in.to_vec();
    if flags & 4 != 0 {
        let msg = serde_json::json!({"type": "refresh", "payload": {"token": spec.mint()}});
        let frame = client_text(msg.to_string().as_bytes(), [at_lo, at_hi, 0x5a, 0xa5]);
        let at = (u16::from_le_bytes([at_lo, at_hi]) as usize).min(wire.len());
        wire.splice(at..at, frame);
    }
    let leftover = (leftover as usize).min(wire.len());

    let mut cfg = super::config();
    if flags & 2 != 0 {
        cfg.max_message_bytes = 128;
    }
    let handle = super::handle(raw_echo);
    let metrics = ShardMetrics::default();
    let now = Instant::now();
    let env = testbed::ws_env(&handle, &metrics, now);
    let mut ws = WsState::new(
        super::USER.into(),
        now_secs() + 3600,
        "0-1-1".into(),
        wire[..leftover].to_vec(),
        None,
        &cfg,
        super::LEEWAY,
        now,
    );
    let mut out = Outbound::default();

    let seg = if seg == 0 { usize::MAX } else { seg as usize };
    let mut ended = false;
    let mut chunks: Vec<&[u8]> = wire[leftover..]
        .chunks(seg.min(wire.len().max(1)))
        .collect();
    // The first event comes with the upgrade even when no byte follows it.
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    'events: for chunk in chunks {
        // One segment per readable event.
        let mut sock = Source {
            data: chunk,
            size: usize::MAX,
            eof: false,
        };
        loop {
            let (outcome, end) = feed(&mut ws, &mut sock, &mut out, &env);
            if end.is_some() {
                ended = true;
                break 'events;
            }
            if outcome == WsRead::Empty {
                break;
            }
        }
    }
    if !ended && flags & 8 == 0 {
        let mut sock = Source {
            data: &[],
            size: usize::MAX,
            eof: true,
        };
        let (_, end) = feed(&mut ws, &mut sock, &mut out, &env);
        assert!(end.is_some(), "EOF must end the session");
    }
    let _ = ws.next_deadline(&cfg);
    check_output(&mut out, raw_echo);
}
