//! Outbound messages as bytes: the JSON envelope `{"type","payload"}` and the
//! WebSocket frame around it.
//!
//! A broadcast is encoded here exactly once into a [`SharedFrame`] that every
//! target connection's outbound queue holds by reference count; nothing here
//! is per connection. Frame headers are written by tungstenite's
//! `FrameHeader`, so the wire format is tungstenite's.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::http::timestamp;

/// An encoded, unmasked server frame shared by all the connections it goes to.
pub type SharedFrame = Arc<[u8]>;

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
    Arc::from(text_frame(&envelope(kind, payload)))
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
    Arc::from(text_frame(&json))
}

/// `{"type":"join"|"leave","channel","payload":{"userId"}}`: a presence event.
pub fn presence_event(kind: &str, channel: &str, user: &str) -> SharedFrame {
    let json = serde_json::json!({
        "type": kind,
        "channel": channel,
        "payload": { "userId": user }
    })
    .to_string();
    Arc::from(text_frame(json.as_bytes()))
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
}
