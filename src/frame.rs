//! Outbound messages as bytes: the JSON envelope `{"type","payload"}` and the
//! WebSocket frame around it, plain and compressed (permessage-deflate).
//!
//! A broadcast is encoded here exactly once into a [`SharedFrame`] that every
//! target connection's outbound queue holds by reference count; nothing here
//! is per connection. Its compressed form is made at most once too, the
//! first time a connection that negotiated compression needs it, and then
//! shared the same way: with no context takeover each message compresses on
//! its own, so one compressed frame is valid on every such connection.
//! Frame headers are written by tungstenite's `FrameHeader`, so the wire
//! format is tungstenite's.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use flate2::{Compress, Compression, FlushCompress, Status};

use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::http::timestamp;

/// An encoded, unmasked server frame shared by all the connections it goes to.
pub type SharedFrame = Arc<Frame>;

/// One final server frame: its bytes, and its compressed twin once made.
pub struct Frame {
    bytes: Box<[u8]>,
    /// Made by the first connection that wants it; `None` when the frame
    /// does not shrink (or is not a whole data frame).
    deflated: OnceLock<Option<Box<[u8]>>>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.bytes.len())
            .field(
                "deflated",
                &self.deflated.get().map(|d| d.as_ref().map(|b| b.len())),
            )
            .finish()
    }
}

/// The plain frame's bytes.
impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Frame {
    /// Shares an encoded frame.
    pub fn shared(bytes: Vec<u8>) -> SharedFrame {
        Arc::new(Frame {
            bytes: bytes.into_boxed_slice(),
            deflated: OnceLock::new(),
        })
    }

    /// The frame compressed, with RSV1 set, when its payload has at least
    /// `min` bytes and compression makes the frame smaller (with `min` 0:
    /// always, as [`Deflating::min`] says). Compressed once:
    /// a shard that asks while another compresses waits the few
    /// microseconds it takes rather than doing it twice.
    pub fn deflated(&self, min: usize) -> Option<&[u8]> {
        if let Some(d) = self.deflated.get() {
            return d.as_deref();
        }
        let (head, payload) = split_frame(&self.bytes)?;
        if payload.len() < min {
            return None;
        }
        self.deflated
            .get_or_init(|| {
                deflate_frame(head, payload, Level::Shared, min == 0).map(Vec::into_boxed_slice)
            })
            .as_deref()
    }

    /// The compressed twin if it was made: what a queue that took it holds.
    pub fn deflated_bytes(&self) -> Option<&[u8]> {
        self.deflated.get().and_then(|d| d.as_deref())
    }
}

/// The first header byte and the payload of one whole unmasked frame;
/// `None` for anything else (masked, cut short, trailing bytes).
fn split_frame(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match b1 & 0x7f {
        126 => {
            let (l, r) = rest.split_at_checked(2)?;
            (u64::from(u16::from_be_bytes([l[0], l[1]])), r)
        }
        127 => {
            let (l, r) = rest.split_at_checked(8)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(l);
            (u64::from_be_bytes(b), r)
        }
        n => (u64::from(n), rest),
    };
    (len == rest.len() as u64).then_some((b0, rest))
}

/// How a connection that negotiated permessage-deflate takes the server's
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflating {
    /// Payload bytes from which a message goes compressed
    /// (`--compression-min-bytes`). From 1 on, a message that would not
    /// shrink goes plain; 0 compresses every data message, shrinking or not
    /// (for a peer that wants every message compressed).
    pub min: usize,
    /// The LZ77 window it allows the server, in bits (9..=15).
    pub window: u8,
}

impl Deflating {
    /// The window a shared frame's compressed twin is made with: a
    /// connection that allows less gets the plain frame.
    pub const SHARED_WINDOW: u8 = 15;
}

/// How hard to compress.
#[derive(Clone, Copy)]
enum Level {
    /// A frame compressed once for many connections, with the full window.
    Shared,
    /// One connection's own reply, fast, with the window it allows.
    Own(u8),
}

thread_local! {
    /// Raw deflate state, reset for every message: a compressor costs
    /// hundreds of KiB, so there is one per thread and kind (shared frames
    /// compressed once and well; a connection's own replies fast, one per
    /// window size in use), never one per connection.
    static SHARED: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static OWN: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
}

/// Runs `f` on this thread's compressor for `level`, reset.
fn with_compressor<T>(level: Level, f: impl FnOnce(&mut Compress) -> T) -> T {
    match level {
        Level::Shared => SHARED.with(|c| {
            let mut c = c.borrow_mut();
            c.reset();
            f(&mut c)
        }),
        Level::Own(window) => OWN.with(|all| {
            let window = window.clamp(9, 15);
            let mut all = all.borrow_mut();
            let c = all[usize::from(window - 9)].get_or_insert_with(|| {
                Compress::new_with_window_bits(Compression::fast(), false, window)
            });
            c.reset();
            f(c)
        }),
    }
}

/// Compresses one final data frame (first header byte `b0`, `payload`) as a
/// permessage-deflate message: RSV1 set, the `00 00 ff ff` tail left off.
/// `None` when it is not a final text or binary frame, or (unless
/// `always`) does not shrink.
fn deflate_frame(b0: u8, payload: &[u8], level: Level, always: bool) -> Option<Vec<u8>> {
    let opcode = b0 & 0x0f;
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 || !(opcode == 1 || opcode == 2) {
        return None;
    }
    let body = with_compressor(level, |c| {
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let before = c.total_in() as usize;
            let status = c.compress_vec(&payload[before..], &mut out, FlushCompress::Sync);
            let done = c.total_in() as usize == payload.len();
            match status {
                Ok(Status::Ok | Status::BufError) if done && out.ends_with(&[0, 0, 0xff, 0xff]) => {
                    out.truncate(out.len() - 4);
                    return Some(out);
                }
                Ok(_) if !always && out.len() > payload.len() + 64 => return None,
                Ok(_) => out.reserve(out.capacity().max(256)),
                Err(_) => return None,
            }
        }
    })?;
    if !always && body.len() + 4 >= payload.len() {
        return None;
    }
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        opcode: if opcode == 1 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Binary)
        },
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(header.len(body.len() as u64) + body.len());
    let _ = header.format(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    Some(out)
}

/// Compresses the final data frames of `frames` (whole unmasked frames back
/// to back, as tungstenite writes them for one connection) as `how` says,
/// fast, and leaves the others as they are: the replies of a connection
/// that negotiated compression.
pub fn deflate_frames(frames: &[u8], how: Deflating) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len());
    let mut rest = frames;
    while !rest.is_empty() {
        let Some(len) = frame_len(rest) else {
            out.extend_from_slice(rest);
            break;
        };
        let (one, tail) = rest.split_at(len);
        match split_frame(one) {
            Some((b0, payload)) if payload.len() >= how.min => {
                match deflate_frame(b0, payload, Level::Own(how.window), how.min == 0) {
                    Some(d) => out.extend_from_slice(&d),
                    None => out.extend_from_slice(one),
                }
            }
            _ => out.extend_from_slice(one),
        }
        rest = tail;
    }
    out
}

/// The length of the unmasked frame at the start of `bytes`, if it is all there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let b1 = *bytes.get(1)?;
    let (head, len) = match b1 & 0x7f {
        126 => (
            4,
            u64::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
        ),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes.get(2..10)?);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let total = (head + mask) as u64 + len;
    (total <= bytes.len() as u64).then_some(total as usize)
}

/// Encodes one final text frame around `payload` (already valid UTF-8 JSON).
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Writing a header into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// One client frame as a client writes it: `b0` (FIN, RSV and opcode),
/// then the payload masked with `mask`. The server never writes one; the
/// fuzz targets and tests build what a peer sends with it.
pub fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(b0);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The JSON envelope around an already-serialized payload.
pub fn envelope(kind: &str, payload: Option<&RawValue>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        payload: Option<&'a RawValue>,
    }
    serde_json::to_vec(&Envelope { kind, payload }).unwrap_or_default()
}

/// A `{"type","payload"}` envelope read back (from another node).
#[derive(Debug, serde::Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
}

/// Reads an envelope [`envelope`] wrote; `None` when it is not one.
pub fn parse_envelope(bytes: &[u8]) -> Option<Envelope<'_>> {
    serde_json::from_slice(bytes).ok()
}

/// Envelope + frame, once, for a broadcast or a send.
pub fn shared_message(kind: &str, payload: Option<&RawValue>) -> SharedFrame {
    Frame::shared(text_frame(&envelope(kind, payload)))
}

/// Serializes a library caller's payload (a `Value` always serializes).
pub fn raw_payload(payload: &serde_json::Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(payload).ok()
}

/// Where a new connection starts on its streams (docs/PROTOCOL.md §11).
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub epoch: &'a str,
    /// The last offsets of `@all` and of the user's `@user` stream.
    pub all: u64,
    pub user: u64,
    /// Whether what it asked to recover follows (`None`: it asked nothing).
    pub recovered: Option<bool>,
}

/// `{"type":"connected",...}` sent when a connection opens, as a whole
/// text frame. Written straight into one buffer (no `serde_json::Value`
/// tree): it is built once per connect, on the connect-rate hot path.
pub fn connected(user_id: &str, connection_id: &str, start: &Start<'_>) -> Vec<u8> {
    let mut json = Vec::with_capacity(220 + user_id.len() + connection_id.len());
    json.extend_from_slice(br#"{"type":"connected","payload":{"userId":"#);
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut json, user_id);
    json.extend_from_slice(br#","connectionId":"#);
    let _ = serde_json::to_writer(&mut json, connection_id);
    json.extend_from_slice(br#","message":"Successfully connected to WebSocket","timestamp":""#);
    json.extend_from_slice(timestamp().as_bytes());
    json.extend_from_slice(br#"","epoch":"#);
    let _ = serde_json::to_writer(&mut json, start.epoch);
    let offsets = format!(
        r#","offsets":{{"@all":{},"@user":{}}}"#,
        start.all, start.user
    );
    json.extend_from_slice(offsets.as_bytes());
    if let Some(r) = start.recovered {
        json.extend_from_slice(if r {
            br#","recovered":true"#.as_slice()
        } else {
            br#","recovered":false"#.as_slice()
        });
    }
    json.extend_from_slice(b"}}");
    text_frame(&json)
}

/// `{"type":"echo",...}`: the default answer to a well-formed message.
pub fn echo(original: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "echo",
        "payload": { "originalMessage": original, "timestamp": timestamp() }
    })
}

/// `{"type":"error",...}`: the answer to anything the server cannot take.
pub fn error(message: &str) -> String {
    serde_json::json!({
        "type": "error",
        "payload": { "message": message, "timestamp": timestamp() }
    })
    .to_string()
}

/// `{"type":"error",...}` about a channel: the message and the channel named.
pub fn channel_error(message: &str, channel: &str) -> String {
    serde_json::json!({
        "type": "error",
        "payload": { "message": message, "channel": channel, "timestamp": timestamp() }
    })
    .to_string()
}

/// `{"type":"subscribed"|"unsubscribed","payload":{"channel","timestamp"}}`.
pub fn channel_ack(kind: &str, channel: &str) -> String {
    serde_json::json!({
        "type": kind,
        "payload": { "channel": channel, "timestamp": timestamp() }
    })
    .to_string()
}

/// `{"type":"subscribed","payload":{"channel","timestamp","offset","epoch"}}`,
/// with `"recovered"` when the subscribe asked to recover.
pub fn subscribed(channel: &str, offset: u64, epoch: &str, recovered: Option<bool>) -> String {
    let mut payload = serde_json::json!({
        "channel": channel,
        "timestamp": timestamp(),
        "offset": offset,
        "epoch": epoch,
    });
    if let Some(r) = recovered {
        payload["recovered"] = r.into();
    }
    serde_json::json!({ "type": "subscribed", "payload": payload }).to_string()
}

/// A message on a stream, `{"type","channel","offset","payload"}`
/// (`channel` is `@all`, `@user` or a channel's name), as one text frame
/// shared by every connection it goes to and by the history. Without an
/// offset (a cluster node cut off from Redis) the field is left out.
pub fn stream_message(
    kind: &str,
    stream: &str,
    offset: Option<u64>,
    payload: Option<&RawValue>,
) -> SharedFrame {
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        payload: Option<&'a RawValue>,
    }
    let json = serde_json::to_vec(&Envelope {
        kind,
        channel: stream,
        offset,
        payload,
    })
    .unwrap_or_default();
    Frame::shared(text_frame(&json))
}

/// `{"type":"join"|"leave","channel","payload":{"userId"}}`: a presence event.
pub fn presence_event(kind: &str, channel: &str, user: &str) -> SharedFrame {
    let json = serde_json::json!({
        "type": kind,
        "channel": channel,
        "payload": { "userId": user }
    })
    .to_string();
    Frame::shared(text_frame(json.as_bytes()))
}

/// `{"type":"pong",...}`: the answer to a client's `{"type":"ping"}`, with
/// which the original service's clients keep their connection alive.
pub fn pong() -> String {
    serde_json::json!({ "type": "pong", "payload": { "timestamp": timestamp() } }).to_string()
}

/// `{"type":"refreshed",...}`: a token refresh was accepted.
pub fn refreshed(expires_at: u64) -> String {
    serde_json::json!({ "type": "refreshed", "payload": { "expiresAt": expires_at } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_medium_frames() {
        let f = text_frame(b"hi");
        assert_eq!(f, vec![0x81, 2, b'h', b'i']);
        let p = vec![b'a'; 300];
        let f = text_frame(&p);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
    }

    #[test]
    fn connected_is_one_text_frame_of_valid_json() {
        let start = Start {
            epoch: "e\"1",
            all: 7,
            user: 0,
            recovered: Some(true),
        };
        let f = connected("u\"1", "0-1-2", &start);
        assert_eq!(f[0], 0x81);
        let (len, body) = match f[1] {
            126 => (usize::from(u16::from_be_bytes([f[2], f[3]])), &f[4..]),
            n => (usize::from(n), &f[2..]),
        };
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(v["type"], "connected");
        assert_eq!(v["payload"]["userId"], "u\"1");
        assert_eq!(v["payload"]["connectionId"], "0-1-2");
        assert_eq!(
            v["payload"]["message"],
            "Successfully connected to WebSocket"
        );
        assert!(v["payload"]["timestamp"].is_string());
        assert_eq!(v["payload"]["epoch"], "e\"1");
        assert_eq!(
            v["payload"]["offsets"],
            serde_json::json!({"@all": 7, "@user": 0})
        );
        assert_eq!(v["payload"]["recovered"], true);
        let fresh = Start {
            recovered: None,
            ..start
        };
        let f = connected("u", "0-1-2", &fresh);
        let v: serde_json::Value = serde_json::from_slice(&f[4..]).expect("json");
        assert!(v["payload"].get("recovered").is_none(), "{v}");
    }

    #[test]
    fn stream_messages_carry_their_stream_and_offset() {
        let raw = RawValue::from_string(r#"{"a":1}"#.into()).expect("raw");
        let f = stream_message("t", "@all", Some(42), Some(&raw));
        assert_eq!(
            &f[2..],
            br#"{"type":"t","channel":"@all","offset":42,"payload":{"a":1}}"#
        );
        let bytes = envelope("t\"x", Some(&raw));
        let back = parse_envelope(&bytes).expect("envelope");
        assert_eq!(
            (&*back.kind, back.payload.map(RawValue::get)),
            ("t\"x", Some(r#"{"a":1}"#))
        );
        assert!(parse_envelope(b"[1]").is_none());
        let f = stream_message("t", "@user", None, None);
        assert_eq!(&f[2..], br#"{"type":"t","channel":"@user","payload":null}"#);
    }

    #[test]
    fn envelope_keeps_payload_verbatim() {
        let raw = RawValue::from_string(r#"{"a": [1, 2]}"#.into()).expect("raw");
        assert_eq!(
            envelope("t", Some(&raw)),
            br#"{"type":"t","payload":{"a": [1, 2]}}"#.to_vec()
        );
        assert_eq!(
            envelope("t", None),
            br#"{"type":"t","payload":null}"#.to_vec()
        );
    }

    /// Inflates a permessage-deflate frame's payload (RSV1 set) back.
    fn inflate_frame(f: &[u8]) -> (u8, Vec<u8>) {
        let (b0, body) = split_frame(f).expect("one whole frame");
        let mut input = body.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
            .expect("inflates");
        (b0, out)
    }

    fn json_of(n: usize) -> Vec<u8> {
        let items: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"id": i, "title": "hello", "read": false}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"type": "t", "payload": items})).expect("json")
    }

    #[test]
    fn a_shared_frame_is_compressed_once_with_rsv1_and_inflates_back() {
        let json = json_of(60);
        let f = Frame::shared(text_frame(&json));
        let d = f.deflated(256).expect("compresses").to_vec();
        assert_eq!(d[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        assert!(d.len() * 3 < f.len(), "{} vs {}", d.len(), f.len());
        let (_, back) = inflate_frame(&d);
        assert_eq!(back, json);
        // Made once: the same bytes, at the same address, every time.
        let again = f.deflated(256).expect("kept");
        assert_eq!(again.as_ptr(), f.deflated_bytes().expect("made").as_ptr());
        // Below the threshold, or not shrinking: the plain frame is used.
        let small = Frame::shared(text_frame(br#"{"type":"t","payload":1}"#));
        assert!(small.deflated(256).is_none());
        assert!(small.deflated(1).is_none(), "a tiny frame does not shrink");
        assert!(small.deflated_bytes().is_none());
        // With 0, every data frame goes compressed, shrinking or not.
        let tiny = Frame::shared(text_frame(b"{}"));
        let d = tiny.deflated(0).expect("always").to_vec();
        assert_eq!(inflate_frame(&d), (0xc1, b"{}".to_vec()));
    }

    #[test]
    fn replies_are_compressed_frame_by_frame_and_control_frames_pass() {
        let json = json_of(40);
        let mut frames = vec![0x8a, 0]; // an empty pong
        frames.extend_from_slice(&text_frame(&json));
        frames.extend_from_slice(&text_frame(b"{}"));
        let out = deflate_frames(
            &frames,
            Deflating {
                min: 256,
                window: 15,
            },
        );
        assert_eq!(&out[..2], &[0x8a, 0]);
        let first = frame_len(&out[2..]).expect("a frame") + 2;
        let (b0, back) = inflate_frame(&out[2..first]);
        assert_eq!((b0, &back), (0xc1, &json));
        assert_eq!(&out[first..], &text_frame(b"{}")[..]);
        // A cut-off tail is left as it was.
        let always = Deflating { min: 0, window: 9 };
        assert_eq!(
            deflate_frames(&[0x81, 5, b'a'], always),
            vec![0x81, 5, b'a']
        );
        // With min 0 even a frame that grows goes compressed, and a small
        // window still inflates back.
        let tiny = deflate_frames(&text_frame(b"{}"), always);
        assert_eq!(inflate_frame(&tiny), (0xc1, b"{}".to_vec()));
        let (_, back) = inflate_frame(&deflate_frames(&text_frame(&json), always));
        assert_eq!(back, json);
    }
}
