//! permessage-deflate: `Sec-WebSocket-Extensions` parsing and negotiation,
//! then client bytes through the inbound inflating filter (the one that
//! sits in front of tungstenite), then the same bytes through the whole
//! session (`feed`) of a connection that negotiated. Must never panic,
//! never hold more than about twice `--max-message-bytes`, and everything
//! the session queued must decode as valid server frames.
//!
//! Input: five control bytes, then the rest.
//!
//! - byte 0, flags: bit 0 `RawEchoHandler`; bit 1 a 1024-byte message
//!   limit (else 64 KiB); bit 2 structured mode (below); bit 3 skip the
//!   final EOF.
//! - byte 1: read size (0: 4096); byte 2: how many bytes came with the
//!   upgrade request (leftover); byte 3: length of the extension header
//!   text that starts the rest; byte 4: the mask key's seed.
//!
//! After the header text, the client's bytes: as they are, or in
//! structured mode a list of `(kind, len, data)` entries that the harness
//! turns into frames (compressed with flate2 where the kind says), so that
//! valid compressed messages are common; then the filter's output is also
//! compared with the plain frames it must equal.

use std::time::Instant;

use super::Source;
use flate2::{Compress, Compression, FlushCompress};
use wsedge::now_secs;
use wsedge::testbed::{
    self, deflate_response, feed, negotiate_deflate, parse_extensions, Agreement, DeflateInbound,
    InboundError, Outbound, ShardMetrics, WsRead, WsState,
};

/// Raw deflate, sync-flushed, the tail stripped (RFC 7692 §7.2.1).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let at = c.total_in() as usize;
        if c.compress_vec(&data[at..], &mut out, FlushCompress::Sync)
            .is_err()
        {
            return Vec::new();
        }
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len().saturating_sub(4));
    out
}

pub use wsedge::testbed::client_frame as frame;

/// Server output with every compressed message (RSV1 on its first frame)
/// replaced by one plain frame of the inflated payload, the rest as is, so
/// that a client without compression can check it. Panics on a compressed
/// message that does not inflate: the server must never send one.
pub fn plain_server_frames(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut message: Option<(u8, Vec<u8>)> = None;
    while bytes.len() >= 2 {
        let (b0, b1) = (bytes[0], bytes[1]);
        let (len, at) = match b1 & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let at: usize = at + if b1 & 0x80 != 0 { 4 } else { 0 };
        let Some(end) = at.checked_add(len).filter(|e| *e <= bytes.len()) else {
            break;
        };
        let (frame, rest) = bytes.split_at(end);
        bytes = rest;
        let opcode = b0 & 0x0f;
        let compressed = match (&mut message, opcode) {
            (Some((_, data)), 0) => {
                data.extend_from_slice(&frame[at..]);
                true
            }
            (None, 1 | 2) if b0 & 0x40 != 0 => {
                message = Some((opcode, frame[at..].to_vec()));
                true
            }
            _ => false,
        };
        if !compressed {
            out.extend_from_slice(frame);
            continue;
        }
        if b0 & 0x80 != 0 {
            if let Some((op, data)) = message.take() {
                let mut d = flate2::Decompress::new(false);
                let mut input = data;
                input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut plain = Vec::with_capacity(input.len() * 4 + 64);
                loop {
                    let at = d.total_in() as usize;
                    d.decompress_vec(&input[at..], &mut plain, flate2::FlushDecompress::Sync)
                        .expect("the server's compressed message inflates");
                    if d.total_in() as usize == input.len() && plain.len() < plain.capacity() {
                        break;
                    }
                    plain.reserve(plain.capacity().max(64));
                }
                let mut f = vec![0x80 | op];
                match plain.len() {
                    n if n < 126 => f.push(n as u8),
                    n if n <= 0xffff => {
                        f.push(126);
                        f.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        f.push(127);
                        f.extend_from_slice(&(n as u64).to_be_bytes());
                    }
                }
                f.extend(plain);
                out.extend(f);
            }
        }
    }
    out.extend_from_slice(bytes);
    out
}

/// The wire of a structured input and the filter output it must give
/// (`None` when an entry makes the stream invalid on purpose).
fn structured(mut data: &[u8], seed: u8, max: usize) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut wire = Vec::new();
    let mut want = Some(Vec::new());
    let mut n = 0u8;
    while data.len() >= 2 {
        let (kind, len) = (data[0], data[1] as usize);
        let take = len.min(data.len() - 2);
        let payload = &data[2..2 + take];
        data = &data[2 + take..];
        n = n.wrapping_add(1);
        let mask = [seed, n, seed ^ n, kind];
        let ping = frame(0x89, &payload[..take.min(125)], mask);
        // Repeating the payload makes long, compressible messages too.
        let big: Vec<u8> = payload
            .iter()
            .cycle()
            .take(take * (kind as usize >> 4))
            .copied()
            .collect();
        let (wire_part, want_part): (Vec<u8>, Option<Vec<u8>>) = match kind & 0x0f {
            0 => (
                frame(0xc2, &deflate(payload), mask),
                Some(frame(0x82, payload, [0; 4])),
            ),
            1 => (frame(0x82, payload, mask), Some(frame(0x82, payload, mask))),
            2 => (ping.clone(), Some(ping.clone())),
            3 => {
                let z = deflate(&big);
                let (a, b) = z.split_at(z.len() / 2);
                let mut w = frame(0x42, a, mask);
                w.extend(&ping);
                w.extend(frame(0x80, b, mask));
                let mut o = ping.clone();
                o.extend(frame(0x82, &big, [0; 4]));
                (w, (big.len() <= max).then_some(o))
            }
            // Text: the filter does not check UTF-8 (tungstenite does).
            4 => (
                frame(0xc1, &deflate(payload), mask),
                Some(frame(0x81, payload, [0; 4])),
            ),
            // Broken on purpose: raw bytes as compressed data, RSV1 on a
            // control frame, the payload as a header.
            5 => (frame(0xc2, payload, mask), None),
            6 => (frame(0xc9, payload, mask), None),
            _ => (payload.to_vec(), None),
        };
        wire.extend(wire_part);
        want = match (want, want_part) {
            (Some(mut w), Some(p)) => {
                w.extend(p);
                Some(w)
            }
            _ => None,
        };
    }
    (wire, want)
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut ctl = [0u8; 5];
    let n = data.len().min(5);
    ctl[..n].copy_from_slice(&data[..n]);
    let rest = &data[n..];
    let [flags, size, leftover, header_len, seed] = ctl;

    // Negotiation on arbitrary header text: never panics; an agreement's
    // answer, read back as an offer, agrees to the same.
    let split = (header_len as usize).min(rest.len());
    let header = String::from_utf8_lossy(&rest[..split]);
    let _ = parse_extensions(header.split('\n'));
    if let Some(a) = negotiate_deflate(header.split('\n')) {
        let answer = deflate_response(&a);
        assert_eq!(negotiate_deflate([answer.as_str()]), Some(a), "{answer}");
    }
    let agreement = Agreement {
        server_max_window_bits: None,
    };

    let max = if flags & 2 != 0 { 1024 } else { 64 * 1024 };
    let (wire, want) = if flags & 4 != 0 {
        structured(&rest[split..], seed, max)
    } else {
        (rest[split..].to_vec(), None)
    };
    let size = if size == 0 { 4096 } else { size as usize };
    let leftover = (leftover as usize).min(wire.len());

    // 1. The filter alone, read in `size` pieces.
    let mut filter = DeflateInbound::new(agreement, max, wire[..leftover].to_vec());
    let mut src = Source {
        data: &wire[leftover..],
        size,
        eof: true,
    };
    let mut got = Vec::new();
    let mut buf = vec![0u8; size];
    let outcome = loop {
        let r = filter.read_from(&mut src, &mut buf);
        // Compressed payload (≤ max), one inflated frame (≤ max + header),
        // one read's worth of stashed input.
        assert!(
            filter.held_bytes() <= 2 * max + 64 + wire.len(),
            "holds {} bytes",
            filter.held_bytes()
        );
        match r {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(InboundError::from_io(&e).expect("a typed error")),
        }
    };
    if let Some(want) = want {
        assert_eq!(outcome, Ok(()));
        assert_eq!(got, want, "filter output differs");
    }
    if outcome.is_ok() {
        assert_eq!(filter.held_bytes(), 0, "a buffer kept after the stream");
    }

    // 2. The whole session of a connection that negotiated.
    let mut cfg = super::config();
    cfg.max_message_bytes = max;
    let raw_echo = flags & 1 != 0;
    let handle = super::handle(raw_echo);
    let metrics = ShardMetrics::default();
    let now = Instant::now();
    let env = testbed::ws_env(&handle, &metrics, now);
    let mut ws = WsState::new(
        super::USER.into(),
        now_secs() + 3600,
        "0-1-1".into(),
        wire[..leftover].to_vec(),
        Some(agreement),
        &cfg,
        super::LEEWAY,
        now,
    );
    assert_eq!(ws.deflate(), Some(&agreement));
    let mut out = Outbound::default();
    let mut ended = false;
    for chunk in wire[leftover..].chunks(size.max(1)) {
        let mut sock = Source {
            data: chunk,
            size,
            eof: false,
        };
        loop {
            let (read, end) = feed(&mut ws, &mut sock, &mut out, &env);
            if end.is_some() {
                ended = true;
                break;
            }
            if read == WsRead::Empty {
                break;
            }
        }
        if ended {
            break;
        }
    }
    if !ended && flags & 8 == 0 {
        let mut sock = Source {
            data: &[],
            size,
            eof: true,
        };
        let (_, end) = feed(&mut ws, &mut sock, &mut out, &env);
        assert!(end.is_some(), "EOF must end the session");
    }
    super::ws_inbound::check_output(&mut out, raw_echo);
}
