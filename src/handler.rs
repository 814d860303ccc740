//! What an embedding application plugs in: the [`MessageHandler`] that
//! answers client messages, and the two handlers that ship with wsedge
//! ([`EchoHandler`], the default, and [`RawEchoHandler`] for conformance
//! runs).
//!
//! A handler runs on a shard thread, inside the read of the connection that
//! sent the message: it must not block. A panic in it is caught by the
//! session (`conn::session`) and never takes the shard down.

use serde_json::Value;

use crate::frame;

/// What an embedding application does with a client's message. The default,
/// [`EchoHandler`], answers with `{"type":"echo",...}`.
pub trait MessageHandler: Send + Sync + 'static {
    /// Called for every client message that is a JSON object with a string
    /// `type` other than `refresh`. The returned value, if any, is sent back
    /// to that connection.
    fn on_message(&self, user_id: &str, connection_id: &str, message: &Value) -> Option<Value>;

    /// Called first for every data message, before any JSON parsing. The
    /// default, [`RawVerdict::Json`], goes on with the JSON handling above
    /// (and `refresh`); a handler that speaks another protocol answers here.
    fn on_raw(&self, _user_id: &str, _connection_id: &str, _data: Data<'_>) -> RawVerdict {
        RawVerdict::Json
    }

    /// Whether a new connection is greeted with `{"type":"connected",...}`
    /// (the default). A handler that speaks another protocol turns it off.
    fn sends_connected(&self) -> bool {
        true
    }
}

/// A data message as received.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What [`MessageHandler::on_raw`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawVerdict {
    /// Handle the message as JSON (the default).
    Json,
    /// Answer with this text message.
    Text(String),
    /// Answer with this binary message.
    Binary(Vec<u8>),
    /// Neither handle nor answer it.
    Ignore,
}

/// Echoes every data message back unchanged, text as text and binary as
/// binary. Used for RFC 6455 conformance runs (`examples/echo_server.rs`).
#[derive(Debug, Default)]
pub struct RawEchoHandler;

impl MessageHandler for RawEchoHandler {
    fn on_message(&self, _user: &str, _conn: &str, _message: &Value) -> Option<Value> {
        None
    }
    fn on_raw(&self, _user: &str, _conn: &str, data: Data<'_>) -> RawVerdict {
        match data {
            Data::Text(t) => RawVerdict::Text(t.to_string()),
            Data::Binary(b) => RawVerdict::Binary(b.to_vec()),
        }
    }
    /// An echo peer gets back exactly what it sent, nothing unasked.
    fn sends_connected(&self) -> bool {
        false
    }
}

/// The default handler: echoes the message back (docs/PROTOCOL.md §3).
#[derive(Debug, Default)]
pub struct EchoHandler;

impl MessageHandler for EchoHandler {
    fn on_message(&self, _user: &str, _conn: &str, message: &Value) -> Option<Value> {
        Some(frame::echo(message))
    }
}
