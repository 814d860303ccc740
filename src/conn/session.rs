//! What a WebSocket session does with the messages it reads: tungstenite's
//! read loop with a per-turn budget, then the handler's raw hook, JSON
//! parsing, `refresh`, and the handler's answer (echo by default).
//!
//! Plain functions over a session and an `Io`: [`feed`] drives the very
//! same path from memory for the fuzz targets. A panicking handler is
//! caught here and answered with an error message; it never takes the
//! shard down.

use crate::ratelog::refusal;
use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

use serde_json::Value;
use tungstenite::Message;

use std::sync::Arc;

use super::ws::{
    expiry_instant, ChannelOp, Io, Recover, Subscriptions, WsEnv, WsPhase, WsRead, WsState,
};
use super::Outbound;
use crate::channels;
use crate::error::CloseCode;
use crate::frame;
use crate::handler::{Data, RawVerdict};
use crate::metrics::ShardMetrics;

/// Messages handled per readable event before the shard serves others.
const READ_BUDGET: usize = 64;

/// How the protocol machine ended a session: `Some(code)` to answer a broken
/// peer with that close code, `None` when the peer is simply gone.
pub type WsEnd = Option<CloseCode>;

/// Reads and handles messages until the reader would block, a budget runs
/// out (messages, bytes), the answers queued pass the outbound cap (an echo
/// flood from a client that does not read holds at most the cap plus one
/// message), or the protocol machine ends the session.
pub(super) fn read_messages<R: Read>(
    ws: &mut WsState,
    io: &mut Io<'_, R>,
    subs: &Option<Box<Subscriptions>>,
    env: &WsEnv<'_>,
) -> (WsRead, Option<WsEnd>) {
    let mut outcome = WsRead::More;
    let mut end = None;
    for _ in 0..READ_BUDGET {
        match ws.read_message(io) {
            Ok(msg) => {
                ws.awaiting_pong = None;
                match msg {
                    Message::Text(t) => {
                        env.metrics.messages_in.fetch_add(1, Relaxed);
                        if ws.phase == WsPhase::Open {
                            on_data(ws, io, subs, Data::Text(t.as_str()), env);
                        }
                    }
                    Message::Binary(b) => {
                        env.metrics.messages_in.fetch_add(1, Relaxed);
                        if ws.phase == WsPhase::Open {
                            on_data(ws, io, subs, Data::Binary(&b), env);
                        }
                    }
                    // tungstenite queued the pong / close reply already.
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                    }
                }
                if io.out.len() > env.outbound_cap {
                    // The caller closes it as a slow consumer.
                    outcome = WsRead::Empty;
                    break;
                }
                if !env.ops.borrow().is_empty() {
                    // The shard applies the subscription before the next
                    // message, so answers keep the order of requests.
                    break;
                }
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                outcome = if io.spent() {
                    WsRead::More
                } else {
                    WsRead::Empty
                };
                break;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("websocket {} ended: {e}", ws.id);
                end = Some(CloseCode::for_ws_error(&e));
                outcome = WsRead::Empty;
                break;
            }
        }
    }
    (outcome, end)
}

/// The inbound path of a readable WebSocket without a socket, for the fuzz
/// targets and tests: reads frames from `input` (which should return
/// `WouldBlock` when it has nothing more, like a drained socket) and handles
/// them exactly as the shard does; replies are queued on `out`. Returns how
/// the read stopped and, when the protocol machine ended the session, the
/// close code the peer would get (`Some(None)`: none, the peer is gone); the
/// shard then sends that close frame and closes.
pub fn feed<R: Read>(
    ws: &mut WsState,
    input: &mut R,
    out: &mut Outbound,
    env: &WsEnv<'_>,
) -> (WsRead, Option<WsEnd>) {
    let mut io = Io::new(input, out).deflating(ws);
    read_messages(ws, &mut io, &None, env)
}

/// Queues a reply through the protocol machine.
fn reply<R: Read>(ws: &mut WsState, io: &mut Io<'_, R>, text: String, metrics: &ShardMetrics) {
    match ws.ctx.write(io, Message::text(text)) {
        Ok(()) => {
            metrics.messages_out.fetch_add(1, Relaxed);
        }
        Err(e) => log::debug!("reply to {}: {e}", ws.id),
    }
}

/// A data message from the client: the handler's raw hook first, then JSON.
fn on_data<R: Read>(
    ws: &mut WsState,
    io: &mut Io<'_, R>,
    subs: &Option<Box<Subscriptions>>,
    data: Data<'_>,
    env: &WsEnv<'_>,
) {
    let handler = env.handler;
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.on_raw(&ws.user, &ws.id, data)
    }))
    .unwrap_or_else(|_| {
        log::error!("message handler panicked on a message of {}", ws.id);
        RawVerdict::Ignore
    });
    let answer = match verdict {
        RawVerdict::Json => match data {
            Data::Text(t) => return on_text(ws, io, subs, t, env),
            Data::Binary(_) => Message::text(frame::error("Invalid JSON message format")),
        },
        RawVerdict::Text(t) => Message::text(t),
        RawVerdict::Binary(b) => Message::binary(b),
        RawVerdict::Ignore => return,
    };
    if let Err(e) = ws.ctx.write(io, answer) {
        log::debug!("reply to {}: {e}", ws.id);
    } else {
        env.metrics.messages_out.fetch_add(1, Relaxed);
    }
}

/// A `subscribe` or `unsubscribe` from the client: checked here (name,
/// permission, limit), then handed to the shard as a [`ChannelOp`], which
/// answers `subscribed`/`unsubscribed`. Returns the answer due now: an
/// `error` naming the channel, or the answer to a request that changes
/// nothing (subscribing twice, unsubscribing what is not subscribed).
fn channel_request(
    subs: &Option<Box<Subscriptions>>,
    subscribe: bool,
    msg: &Value,
    env: &WsEnv<'_>,
) -> Option<String> {
    let payload = msg.get("payload");
    let Some(name) = payload
        .and_then(|p| p.get("channel"))
        .and_then(Value::as_str)
    else {
        return Some(frame::error("channel must be a string"));
    };
    if let Err(why) = channels::check_name(name) {
        return Some(frame::channel_error(&format!("{why}: {name}"), name));
    }
    // Read only: the shard records the subscription (and allocates the
    // connection's list then).
    let subs = subs.as_deref();
    let already = subs.is_some_and(|s| s.subscribed.iter().any(|c| &**c == name));
    if !subscribe {
        if !already {
            return Some(frame::channel_ack("unsubscribed", name));
        }
        let channel = Arc::from(name);
        env.ops
            .borrow_mut()
            .push(ChannelOp::Unsubscribe { channel });
        return None;
    }
    let recover = match recover_request(payload) {
        Ok(r) => r,
        Err(why) => return Some(frame::channel_error(why, name)),
    };
    let channel = Arc::from(name);
    if already {
        // The shard answers, with the channel's offset (and what it
        // missed, if it asks again to recover).
        let op = ChannelOp::Subscribe {
            channel,
            presence: false,
            recover,
        };
        env.ops.borrow_mut().push(op);
        return None;
    }
    if !subs.is_some_and(|s| s.grants.allows(name)) {
        let message = format!("not allowed to subscribe to {name}");
        return Some(frame::channel_error(&message, name));
    }
    if subs.map_or(0, |s| s.subscribed.len()) >= env.max_channels {
        let message = format!(
            "too many channels on this connection (at most {}): {name}",
            env.max_channels
        );
        return Some(frame::channel_error(&message, name));
    }
    let presence = payload
        .and_then(|p| p.get("presence"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    env.ops.borrow_mut().push(ChannelOp::Subscribe {
        channel,
        presence,
        recover,
    });
    None
}

/// The recovery a subscribe asks for: `"since"` (the last offset the
/// client got) with the `"epoch"` it saw. No `since`: none.
fn recover_request(payload: Option<&Value>) -> Result<Option<Recover>, &'static str> {
    let Some(since) = payload.and_then(|p| p.get("since")) else {
        return Ok(None);
    };
    let since = since
        .as_u64()
        .ok_or("since must be a non-negative integer")?;
    let epoch = payload
        .and_then(|p| p.get("epoch"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok(Some(Recover { epoch, since }))
}

/// A text message from the client: `subscribe`, `unsubscribe`, `ping`,
/// `refresh`, or the handler (echo by default).
fn on_text<R: Read>(
    ws: &mut WsState,
    io: &mut Io<'_, R>,
    subs: &Option<Box<Subscriptions>>,
    text: &str,
    env: &WsEnv<'_>,
) {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("type"))
        .and_then(Value::as_str);
    let Some(kind) = kind else {
        reply(
            ws,
            io,
            frame::error("Invalid JSON message format"),
            env.metrics,
        );
        return;
    };
    let msg = parsed.as_ref().unwrap_or(&Value::Null);
    if kind == "subscribe" || kind == "unsubscribe" {
        let reply_text = channel_request(subs, kind == "subscribe", msg, env);
        if let Some(text) = reply_text {
            reply(ws, io, text, env.metrics);
        }
        return;
    }
    if kind == "ping" {
        reply(ws, io, frame::pong(), env.metrics);
        return;
    }
    if kind == "refresh" {
        let token = msg
            .get("payload")
            .and_then(|p| p.get("token"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let verifier = env.verifier;
        match verifier.verify_user(token) {
            Ok(claims) if *claims.user_id == *ws.user => {
                ws.expires_at = expiry_instant(claims.exp, verifier.leeway(), env.now);
                reply(ws, io, frame::refreshed(claims.exp), env.metrics);
            }
            Ok(_) => {
                refusal!("refresh on {} refused: token for another user", ws.id);
                reply(ws, io, frame::error("Token refresh failed"), env.metrics);
            }
            Err(e) => {
                refusal!("refresh on {} refused: {e}", ws.id);
                reply(ws, io, frame::error("Token refresh failed"), env.metrics);
            }
        }
        return;
    }
    let handler = env.handler;
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.on_message(&ws.user, &ws.id, msg)
    }));
    match answer {
        Ok(Some(v)) => reply(ws, io, v.to_string(), env.metrics),
        Ok(None) => {}
        Err(_) => {
            log::error!("message handler panicked on a message of {}", ws.id);
            reply(
                ws,
                io,
                frame::error("Internal error handling the message"),
                env.metrics,
            );
        }
    }
}
