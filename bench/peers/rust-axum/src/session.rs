//! One WebSocket from upgrade to close: a writer task drains the
//! connection's outbox into the socket; this task reads what the client
//! sends and answers it through the same outbox.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::timestamp;
use crate::hub::Hub;

pub async fn run(socket: WebSocket, hub: Arc<Hub>, user: String) {
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut queue) = mpsc::unbounded_channel::<Message>();
    let id = hub.join(&user, outbox.clone());

    let hello = json!({
        "type": "connected",
        "payload": {
            "userId": user,
            "connectionId": format!("conn-{id}"),
            "message": "Successfully connected to WebSocket",
            "timestamp": timestamp(),
        }
    });
    let _ = outbox.send(Message::Text(hello.to_string().into()));

    let writer = tokio::spawn(async move {
        while let Some(msg) = queue.recv().await {
            let last = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || last {
                break;
            }
        }
    });

    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(text) => {
                let answer = answer(text.as_str());
                if outbox.send(Message::Text(answer.into())).is_err() {
                    break;
                }
            }
            Message::Close(_) => break,
            // tungstenite answers pings by itself; binary frames are ignored.
            _ => {}
        }
    }

    hub.leave(id);
    // With the hub's sender and this one gone, the writer sees the end of
    // its queue, flushes what is left and drops the socket.
    drop(outbox);
    let _ = writer.await;
}

/// The answer to a client's text message: `pong` for `{"type":"ping"}`,
/// an `echo` of anything else that is JSON, an `error` otherwise.
fn answer(text: &str) -> String {
    let reply = match serde_json::from_str::<Value>(text) {
        Ok(v) if v.get("type").and_then(Value::as_str) == Some("ping") => {
            json!({"type": "pong", "payload": {"timestamp": timestamp()}})
        }
        Ok(v) => json!({
            "type": "echo",
            "payload": {"originalMessage": v, "timestamp": timestamp()}
        }),
        Err(_) => json!({
            "type": "error",
            "payload": {"message": "Invalid message format", "timestamp": timestamp()}
        }),
    };
    reply.to_string()
}
