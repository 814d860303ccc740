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

/// Envelope + frame, once, for a broadcast or a send.
pub fn shared_message(kind: &str, payload: Option<&RawValue>) -> SharedFrame {
    Arc::from(text_frame(&envelope(kind, payload)))
}

/// Serializes a library caller's payload (a `Value` always serializes).
pub fn raw_payload(payload: &serde_json::Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(payload).ok()
}

/// `{"type":"connected",...}` sent when a connection opens, as a whole
/// text frame. Written straight into one buffer (no `serde_json::Value`
/// tree): it is built once per connect, on the connect-rate hot path.
pub fn connected(user_id: &str, connection_id: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(160 + user_id.len() + connection_id.len());
    json.extend_from_slice(br#"{"type":"connected","payload":{"userId":"#);
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut json, user_id);
    json.extend_from_slice(br#","connectionId":"#);
    let _ = serde_json::to_writer(&mut json, connection_id);
    json.extend_from_slice(br#","message":"Successfully connected to WebSocket","timestamp":""#);
    json.extend_from_slice(timestamp().as_bytes());
    json.extend_from_slice(br#""}}"#);
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

/// A message on a channel, `{"type","channel","payload"}`, as JSON: encoded
/// once, framed once per node for every subscriber there.
pub fn channel_envelope(kind: &str, channel: &str, payload: Option<&RawValue>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        channel: &'a str,
        payload: Option<&'a RawValue>,
    }
    serde_json::to_vec(&Envelope {
        kind,
        channel,
        payload,
    })
    .unwrap_or_default()
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
        let f = connected("u\"1", "0-1-2");
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
