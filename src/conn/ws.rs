//! The WebSocket state of a connection: tungstenite's protocol machine fed
//! from the socket, writing into the connection's outbound queue, plus what
//! the session knows (user, token expiry, ping bookkeeping).
//!
//! tungstenite's `WebSocketContext` reads frames and writes its automatic
//! answers (pongs, close replies) through `Io`, whose writer appends to the
//! outbound queue and never blocks, so control frames keep their order with
//! data and nothing waits on the socket here. Broadcast frames bypass the
//! context: they are already encoded and are queued by reference.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::{Conn, Outbound, Sock, State};
use crate::auth::UserClaims;
use crate::config::Config;
use crate::error::CloseCode;
use crate::frame::{self, SharedFrame};
use crate::handle::{Data, Handle, RawVerdict};
use crate::metrics::ShardMetrics;

/// How long the server waits for the peer's reply to its close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages handled per readable event before the shard serves others.
const READ_BUDGET: usize = 64;

/// Read buffer tungstenite keeps per connection (and reads per syscall).
/// Clients send little; an idle connection's memory is what counts, and a
/// larger frame makes tungstenite reserve room for it anyway.
const READ_BUFFER: usize = 512;

/// Where the WebSocket is in its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsPhase {
    Open,
    /// We sent a close frame and wait for the reply until `deadline`.
    Closing {
        deadline: Instant,
    },
}

/// An open WebSocket session.
pub struct WsState {
    ctx: WebSocketContext,
    pub user: Arc<str>,
    /// The public `connectionId`.
    pub id: String,
    pub phase: WsPhase,
    /// When the token (plus leeway) runs out.
    expires_at: Instant,
    last_ping: Instant,
    /// Set when a ping is out and nothing has been heard since.
    awaiting_pong: Option<Instant>,
}

/// The socket as tungstenite sees it: reads from the socket, writes into the
/// outbound queue. Generic over the reader only so that [`feed`] can drive the
/// same read path from memory.
struct Io<'a, R = Sock> {
    sock: &'a mut R,
    out: &'a mut Outbound,
    read: u64,
}

impl<R: Read> Read for Io<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R> Write for Io<'_, R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push_owned(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The session's view of the server while it handles a read or a timer.
pub struct WsEnv<'a> {
    pub handle: &'a Handle,
    pub metrics: &'a ShardMetrics,
    pub now: Instant,
}

/// tungstenite settings: bounded read buffer and message size; writes go
/// straight through to the outbound queue, which enforces the cap.
pub fn ws_config(cfg: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes))
}

/// The longest a token keeps a session open: a later `exp` (any u64 is a
/// valid one) counts as this, so the clock arithmetic cannot overflow.
const MAX_SESSION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The instant a token of expiry `exp` (unix seconds) stops being valid,
/// leeway included.
fn expiry_instant(exp: u64, leeway: u64, now: Instant) -> Instant {
    let left = match UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(leeway))) {
        Some(end) => end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => MAX_SESSION,
    };
    now + left.min(MAX_SESSION)
}

impl WsState {
    pub fn new(
        claims: &UserClaims,
        id: String,
        leftover: Vec<u8>,
        cfg: &Config,
        leeway: u64,
        now: Instant,
    ) -> WsState {
        WsState {
            ctx: WebSocketContext::from_partially_read(
                leftover,
                Role::Server,
                Some(ws_config(cfg)),
            ),
            user: Arc::from(claims.user_id.as_str()),
            id,
            phase: WsPhase::Open,
            expires_at: expiry_instant(claims.exp, leeway, now),
            last_ping: now,
            awaiting_pong: None,
        }
    }

    pub fn next_deadline(&self, cfg: &Config) -> Instant {
        if let WsPhase::Closing { deadline } = self.phase {
            return deadline;
        }
        let mut d = self.expires_at;
        if cfg.ping_interval_secs > 0 {
            let ping = match self.awaiting_pong {
                Some(sent) => sent + Duration::from_secs(cfg.pong_timeout_secs),
                None => self.last_ping + Duration::from_secs(cfg.ping_interval_secs),
            };
            d = d.min(ping);
        }
        d
    }
}

/// What a read of a WebSocket left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRead {
    /// The socket is drained (`WouldBlock`).
    Drained,
    /// The message budget ran out with bytes possibly left: read again soon.
    More,
}

impl Conn {
    /// Turns this HTTP connection into a WebSocket session.
    pub fn become_ws(&mut self, ws: WsState) {
        self.user = Some(ws.user.clone());
        self.state = State::Ws(Box::new(ws));
    }

    /// Queues a text message built by this server (connected, echo, error…).
    pub fn send_text(&mut self, text: String) {
        let State::Ws(ws) = &mut self.state else {
            return;
        };
        let mut io = Io {
            sock: &mut self.sock,
            out: &mut self.out,
            read: 0,
        };
        if let Err(e) = ws.ctx.write(&mut io, Message::text(text)) {
            log::debug!("cannot queue message: {e}");
        }
    }

    /// Queues a shared broadcast frame. Returns false when the connection
    /// went over its outbound cap and was closed as a slow consumer.
    pub fn push_frame(&mut self, frame: &SharedFrame, cap: usize, now: Instant) -> bool {
        if !self.is_open_ws() {
            return true;
        }
        self.out.push_shared(frame.clone());
        if self.out.len() > cap {
            self.slow_consumer(now);
            return false;
        }
        true
    }

    /// Frees the queue at once, queues `1008 slow consumer` and drains: the
    /// peer is not reading, so its reply is not awaited.
    pub fn slow_consumer(&mut self, now: Instant) {
        self.out.drop_unsent();
        self.close_ws(CloseCode::Policy, now);
        self.drain(now);
    }

    /// Starts the close handshake with `code` (no-op unless open).
    pub fn close_ws(&mut self, code: CloseCode, now: Instant) {
        let State::Ws(ws) = &mut self.state else {
            return;
        };
        if ws.phase != WsPhase::Open {
            return;
        }
        let mut io = Io {
            sock: &mut self.sock,
            out: &mut self.out,
            read: 0,
        };
        let frame = CloseFrame {
            code: code.code().into(),
            reason: code.reason().into(),
        };
        match ws.ctx.close(&mut io, Some(frame)) {
            Ok(()) => {
                ws.phase = WsPhase::Closing {
                    deadline: now + CLOSE_TIMEOUT,
                }
            }
            Err(e) => {
                log::debug!("close: {e}");
                self.drain(now);
            }
        }
    }

    /// Reads and handles messages until the socket is drained or the budget
    /// runs out. Returns the bytes read.
    pub fn read_ws(&mut self, env: &WsEnv<'_>) -> (WsRead, u64) {
        let State::Ws(ws) = &mut self.state else {
            return (WsRead::Drained, 0);
        };
        let mut io = Io {
            sock: &mut self.sock,
            out: &mut self.out,
            read: 0,
        };
        let (outcome, end) = read_messages(ws, &mut io, env);
        let read = io.read;
        match end {
            None => {}
            // The protocol machine says this connection is finished: answer
            // a broken peer with the matching close code, then drain.
            Some(Some(code)) => {
                self.close_ws(code, env.now);
                self.drain(env.now);
            }
            Some(None) => self.drain(env.now),
        }
        (outcome, read)
    }

    /// A WebSocket deadline may have passed: close handshake timeout, token
    /// expiry, ping to send, pong overdue.
    pub fn ws_timer(&mut self, cfg: &Config, now: Instant) {
        let State::Ws(ws) = &mut self.state else {
            return;
        };
        if let WsPhase::Closing { deadline } = ws.phase {
            if now >= deadline {
                log::debug!("websocket {}: close handshake timed out", ws.id);
                self.out.clear();
                self.state = State::Closed;
            }
            return;
        }
        if now >= ws.expires_at {
            log::info!("websocket {} of user {}: token expired", ws.id, ws.user);
            self.close_ws(CloseCode::TokenExpired, now);
            return;
        }
        if cfg.ping_interval_secs == 0 {
            return;
        }
        match ws.awaiting_pong {
            Some(sent) if now >= sent + Duration::from_secs(cfg.pong_timeout_secs) => {
                log::info!("websocket {} of user {}: no pong, dropping", ws.id, ws.user);
                self.out.clear();
                self.state = State::Closed;
            }
            Some(_) => {}
            None if now >= ws.last_ping + Duration::from_secs(cfg.ping_interval_secs) => {
                let mut io = Io {
                    sock: &mut self.sock,
                    out: &mut self.out,
                    read: 0,
                };
                if ws
                    .ctx
                    .write(&mut io, Message::Ping(Default::default()))
                    .is_ok()
                {
                    ws.last_ping = now;
                    ws.awaiting_pong = Some(now);
                }
            }
            None => {}
        }
    }

    /// Closes the session for shutdown or a management call; an HTTP
    /// connection just drains.
    pub fn close_for(&mut self, code: CloseCode, now: Instant) {
        match &self.state {
            State::Ws(_) => self.close_ws(code, now),
            State::Http(_) => self.drain(now),
            State::Draining { .. } | State::Closed => {}
        }
    }
}

/// How the protocol machine ended a session: `Some(code)` to answer a broken
/// peer with that close code, `None` when the peer is simply gone.
type WsEnd = Option<CloseCode>;

/// Reads and handles messages until the reader would block, the budget runs
/// out, or the protocol machine ends the session.
fn read_messages<R: Read>(
    ws: &mut WsState,
    io: &mut Io<'_, R>,
    env: &WsEnv<'_>,
) -> (WsRead, Option<WsEnd>) {
    let mut outcome = WsRead::More;
    let mut end = None;
    for _ in 0..READ_BUDGET {
        match ws.ctx.read(io) {
            Ok(msg) => {
                ws.awaiting_pong = None;
                match msg {
                    Message::Text(t) => {
                        env.metrics.messages_in.fetch_add(1, Relaxed);
                        if ws.phase == WsPhase::Open {
                            on_data(ws, io, Data::Text(t.as_str()), env);
                        }
                    }
                    Message::Binary(b) => {
                        env.metrics.messages_in.fetch_add(1, Relaxed);
                        if ws.phase == WsPhase::Open {
                            on_data(ws, io, Data::Binary(&b), env);
                        }
                    }
                    // tungstenite queued the pong / close reply already.
                    Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                    }
                }
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                outcome = WsRead::Drained;
                break;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("websocket {} ended: {e}", ws.id);
                end = Some(CloseCode::for_ws_error(&e));
                outcome = WsRead::Drained;
                break;
            }
        }
    }
    (outcome, end)
}

/// The inbound path of [`Conn::read_ws`] without a socket, for the fuzz
/// targets and tests: reads frames from `input` (which should return
/// `WouldBlock` when it has nothing more, like a drained socket) and handles
/// them exactly as the shard does; replies are queued on `out`. Returns how
/// the read stopped and, when the protocol machine ended the session, the
/// close code the peer would get (`Some(None)`: none, the peer is gone); the
/// shard then sends that close frame and drains.
#[doc(hidden)]
pub fn feed<R: Read>(
    ws: &mut WsState,
    input: &mut R,
    out: &mut Outbound,
    env: &WsEnv<'_>,
) -> (WsRead, Option<WsEnd>) {
    let mut io = Io {
        sock: input,
        out,
        read: 0,
    };
    read_messages(ws, &mut io, env)
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
fn on_data<R: Read>(ws: &mut WsState, io: &mut Io<'_, R>, data: Data<'_>, env: &WsEnv<'_>) {
    let handler = env.handle.core.handler.clone();
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.on_raw(&ws.user, &ws.id, data)
    }))
    .unwrap_or_else(|_| {
        log::error!("message handler panicked on a message of {}", ws.id);
        RawVerdict::Ignore
    });
    let answer = match verdict {
        RawVerdict::Json => match data {
            Data::Text(t) => return on_text(ws, io, t, env),
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

/// A text message from the client: `refresh`, or the handler (echo by default).
fn on_text<R: Read>(ws: &mut WsState, io: &mut Io<'_, R>, text: &str, env: &WsEnv<'_>) {
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
    if kind == "refresh" {
        let token = msg
            .get("payload")
            .and_then(|p| p.get("token"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let verifier = &env.handle.core.verifier;
        match verifier.verify_user(token) {
            Ok(claims) if *claims.user_id == *ws.user => {
                ws.expires_at = expiry_instant(claims.exp, verifier.leeway(), env.now);
                reply(ws, io, frame::refreshed(claims.exp), env.metrics);
            }
            Ok(_) => {
                log::info!("refresh on {} refused: token for another user", ws.id);
                reply(ws, io, frame::error("Token refresh failed"), env.metrics);
            }
            Err(e) => {
                log::info!("refresh on {} refused: {e}", ws.id);
                reply(ws, io, frame::error("Token refresh failed"), env.metrics);
            }
        }
        return;
    }
    let handler = env.handle.core.handler.clone();
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
