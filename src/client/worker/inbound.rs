//! What the server sends, on the client thread: parsing, the token refresh
//! answers, the start of a connection (the `connected` event, the
//! resubscribes, the `recovered` event), the offsets of each stream with
//! their duplicate guard (`streams.rs`), and the dispatch to the callbacks.

use serde_json::{json, Value};
use tungstenite::Message;

use super::super::error::ClientError;
use super::super::events::Event;
use super::super::refresh::Answer;
use super::super::subscribe_message;
use super::{would_block, Session, Worker};

impl Worker {
    /// A text or binary message from the server.
    pub(super) fn on_data(&mut self, s: &mut Session, data: &[u8]) {
        let parsed = serde_json::from_slice::<Value>(data);
        let Ok(Value::Object(mut obj)) = parsed else {
            return self.error(ClientError::InvalidMessage(preview(data)));
        };
        let Some(Value::String(kind)) = obj.remove("type") else {
            return self.error(ClientError::InvalidMessage(preview(data)));
        };
        let payload = obj.remove("payload").unwrap_or(Value::Null);
        let channel = match obj.remove("channel") {
            Some(Value::String(c)) => Some(c),
            _ => None,
        };
        let offset = obj.get("offset").and_then(Value::as_u64);
        let margin = self.refresh_margin().unwrap_or_default();
        match s.refresh.on_message(&kind, &payload, margin) {
            Answer::Accepted(token) => self.token = Some(token),
            Answer::Refused => self.shared.update(|st| {
                st.last_error = Some(ClientError::Token(
                    "the server refused the refreshed token".into(),
                ))
            }),
            Answer::None => {}
        }
        if s.hello_due.is_some() {
            if kind == "connected" {
                // The server's hello *is* the connected event.
                return self.hello(s, Some(payload));
            }
            self.hello(s, None);
        } else if kind == "connected" {
            // A hello later than `hello_timeout`: its offsets still count.
            self.streams.on_connected(&payload);
        }
        match kind.as_str() {
            "subscribed" => self.streams.on_subscribed(&payload),
            "unsubscribed" => self.streams.on_unsubscribed(&payload),
            _ => {}
        }
        if let (Some(stream), Some(offset)) = (channel.as_deref(), offset) {
            if !self.streams.accept(stream, offset) {
                let n = self.streams.duplicates();
                self.shared.update(|st| st.duplicates_dropped = n);
                return;
            }
        }
        self.shared.registry.dispatch(&Event {
            kind,
            payload,
            synthetic: false,
            channel,
            offset,
        });
    }

    /// The start of a connection, once: the server's hello (`Some`), or
    /// `None` when it did not come within `hello_timeout` or something else
    /// came first. Takes its epoch and offsets, restores the channels, fires
    /// `connected` and, on a reconnect, `recovered`.
    pub(super) fn hello(&mut self, s: &mut Session, server_hello: Option<Value>) {
        s.hello_due = None;
        let recovered = server_hello
            .as_ref()
            .is_some_and(|p| self.streams.on_connected(p));
        self.resubscribe(s);
        match server_hello {
            Some(payload) => self.emit("connected", payload, false),
            None => self.emit("connected", Value::Null, true),
        }
        if s.reconnect {
            self.emit("recovered", json!({ "recovered": recovered }), true);
        }
    }

    /// Subscribes the new connection to every channel the application
    /// asked for, from where it left off: a reconnect restores them (and
    /// what they missed) without the application's help.
    fn resubscribe(&mut self, s: &mut Session) {
        let channels = self.shared.channel_list();
        self.streams
            .retain_channels(channels.iter().map(|(c, _)| c.as_str()));
        for (channel, presence) in &channels {
            if let Err(e) = self.write_subscribe(s, channel, *presence) {
                return self.error(ClientError::from(e));
            }
        }
    }

    /// Sends a `subscribe` for `channel`, with `since` and `epoch` when the
    /// client has been on it before.
    pub(super) fn write_subscribe(
        &mut self,
        s: &mut Session,
        channel: &str,
        presence: bool,
    ) -> Result<(), tungstenite::Error> {
        let resume = self.streams.resume_channel(channel);
        let text = subscribe_message(channel, presence, resume);
        match s.ws.write(Message::text(text)) {
            Err(e) if !would_block(&e) => Err(e),
            _ => Ok(()),
        }
    }
}

/// The start of an unexpected message, for the error event.
fn preview(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(200)]);
    format!("not {{\"type\": string, \"payload\": any}}: {text}")
}
