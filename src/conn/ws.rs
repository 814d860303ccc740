//! The WebSocket state of a connection: tungstenite's protocol machine fed
//! from the socket, writing into the connection's outbound queue, plus what
//! the session knows (user, token expiry, ping bookkeeping) and its close
//! handshake. What a message means is `session`'s business.
//!
//! tungstenite's `WebSocketContext` reads frames and writes its automatic
//! answers (pongs, close replies) through `Io`, whose writer appends to the
//! outbound queue and never blocks, so control frames keep their order with
//! data and nothing waits on the socket here. Broadcast frames bypass the
//! context: they are already encoded and are queued by reference.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::{session, Conn, Env, Outbound, Readable, Sock, State};
use crate::auth::Verifier;
use crate::channels::Grants;
use crate::config::Config;
use crate::deflate::{self, Agreement};
use crate::error::CloseCode;
use crate::frame::{self, SharedFrame};
use crate::handler::MessageHandler;
use crate::metrics::ShardMetrics;

/// How long the server waits for the peer's reply to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Read buffer tungstenite keeps per connection (and reads per syscall).
/// Clients send little; an idle connection's memory is what counts, and a
/// larger frame makes tungstenite reserve room for it anyway.
const READ_BUFFER: usize = 512;

/// Where the WebSocket is in its close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsPhase {
    Open,
    /// We sent a close frame and wait for the reply until `deadline`.
    CloseSent {
        deadline: Instant,
    },
}

/// An open WebSocket session.
pub struct WsState {
    pub(super) ctx: WebSocketContext,
    pub user: Arc<str>,
    /// The public `connectionId`.
    pub id: String,
    pub(super) phase: WsPhase,
    /// When the token (plus leeway) runs out.
    pub(super) expires_at: Instant,
    last_ping: Instant,
    /// Set when a ping is out and nothing has been heard since.
    pub(super) awaiting_pong: Option<Instant>,
    /// The last offsets of `@all` and `@user` when it opened (told in
    /// `connected`): a message queued to its shard before that, at or
    /// below them, is not delivered live (it was replayed, or predates
    /// the connection).
    pub(super) floors: Floors,
    /// The permessage-deflate filter in front of tungstenite, only when
    /// negotiated (a connection without it pays one pointer).
    pub(super) inbound: Option<Box<deflate::Inbound>>,
    /// With permessage-deflate negotiated: how the server's messages to it
    /// are compressed (from `--compression-min-bytes`, with the window it
    /// allows). `None` also when no window zlib can use fits (8 bits).
    pub(super) deflating: Option<frame::Deflating>,
}

/// Offsets at or below which a connection takes no live message.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Floors {
    pub all: u64,
    pub user: u64,
}

/// Which of a connection's own streams a live message is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Own {
    All,
    User,
}

/// A connection's channels.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    pub grants: Grants,
    pub subscribed: Vec<Arc<str>>,
}

/// The socket as tungstenite sees it: reads from the socket, writes into the
/// outbound queue. Generic over the reader only so that [`session::feed`]
/// can drive the same read path from memory.
pub(super) struct Io<'a, R = Sock> {
    pub sock: &'a mut R,
    pub out: &'a mut Outbound,
    /// Bytes read through it so far.
    pub read: u64,
    /// Compress the data frames written through it (the connection
    /// negotiated permessage-deflate).
    deflate: Option<frame::Deflating>,
}

/// Socket bytes one connection may read per loop turn. Counted in bytes,
/// not messages, so a flood of tiny continuation frames (which complete no
/// message) cannot hold a shard either; past it the read reports
/// `WouldBlock` and the shard comes back next turn (tungstenite keeps a
/// partial frame).
pub(super) const READ_BYTES_BUDGET: u64 = 64 * 1024;

impl<'a, R> Io<'a, R> {
    pub fn new(sock: &'a mut R, out: &'a mut Outbound) -> Io<'a, R> {
        Io {
            sock,
            out,
            read: 0,
            deflate: None,
        }
    }

    /// Writes through it compress as `ws` negotiated.
    pub fn deflating(mut self, ws: &WsState) -> Io<'a, R> {
        self.deflate = ws.deflating;
        self
    }

    /// The turn's byte budget is spent.
    pub fn spent(&self) -> bool {
        self.read >= READ_BYTES_BUDGET
    }
}

impl<R: Read> Read for Io<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = READ_BYTES_BUDGET.saturating_sub(self.read) as usize;
        if left == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let take = buf.len().min(left);
        let n = self.sock.read(&mut buf[..take])?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R> Write for Io<'_, R> {
    /// Takes whole frames: tungstenite hands over its whole output buffer
    /// at once, and this never takes less.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.deflate {
            Some(d) => self.out.push_owned(frame::deflate_frames(buf, d)),
            None => self.out.push_owned(buf.to_vec()),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a session may use of the server while it handles a read: the token
/// verifier (for `refresh`), the message handler and its shard's counters.
pub struct WsEnv<'a> {
    pub verifier: &'a Verifier,
    pub handler: &'a dyn MessageHandler,
    pub metrics: &'a ShardMetrics,
    /// `--outbound-buffer-bytes`: a read stops as soon as the answers
    /// queued for a client that does not read pass it.
    pub outbound_cap: usize,
    /// `--max-channels-per-connection`.
    pub max_channels: usize,
    /// Subscriptions the session accepted, for the shard to apply (its
    /// channel tables are the shard's): a read stops after each one.
    pub ops: RefCell<Vec<ChannelOp>>,
    pub now: Instant,
}

/// A change of a connection's channels, applied by its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelOp {
    Subscribe {
        channel: Arc<str>,
        presence: bool,
        recover: Option<Recover>,
    },
    Unsubscribe {
        channel: Arc<str>,
    },
}

/// What a client asks to recover on a stream: the epoch it saw and the
/// last offset it got (docs/PROTOCOL.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover {
    pub epoch: String,
    pub since: u64,
}

/// tungstenite settings: bounded read buffer and message size; writes go
/// straight through to the outbound queue, which enforces the cap.
fn ws_config(cfg: &Config) -> WebSocketConfig {
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
pub(super) fn expiry_instant(exp: u64, leeway: u64, now: Instant) -> Instant {
    let left = match UNIX_EPOCH.checked_add(Duration::from_secs(exp.saturating_add(leeway))) {
        Some(end) => end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => MAX_SESSION,
    };
    now + left.min(MAX_SESSION)
}

impl WsState {
    /// A session of `user` whose token expires at `exp` (unix seconds).
    /// With `deflate`, the bytes that came with the upgrade request
    /// (`leftover`) go through the inflating filter like later reads.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        user: Arc<str>,
        exp: u64,
        id: String,
        leftover: Vec<u8>,
        deflate: Option<Agreement>,
        cfg: &Config,
        leeway: u64,
        now: Instant,
    ) -> WsState {
        let deflating = deflate.and_then(|a| a.outbound(cfg.compression_min_bytes));
        let (leftover, inbound) = match deflate {
            Some(a) => (
                Vec::new(),
                Some(Box::new(deflate::Inbound::new(
                    a,
                    cfg.max_message_bytes,
                    leftover,
                ))),
            ),
            None => (leftover, None),
        };
        WsState {
            inbound,
            ctx: WebSocketContext::from_partially_read(
                leftover,
                Role::Server,
                Some(ws_config(cfg)),
            ),
            user,
            id,
            phase: WsPhase::Open,
            expires_at: expiry_instant(exp, leeway, now),
            last_ping: now,
            awaiting_pong: None,
            floors: Floors::default(),
            deflating,
        }
    }

    pub fn is_open(&self) -> bool {
        self.phase == WsPhase::Open
    }

    /// The permessage-deflate agreement, when the connection negotiated it.
    pub fn deflate(&self) -> Option<&Agreement> {
        self.inbound.as_deref().map(deflate::Inbound::agreement)
    }

    /// Reads one message through tungstenite, behind the inflating filter
    /// when the connection negotiated permessage-deflate.
    pub(super) fn read_message<S: Read + Write>(
        &mut self,
        stream: &mut S,
    ) -> tungstenite::Result<Message> {
        match self.inbound.as_deref_mut() {
            Some(filter) => self.ctx.read(&mut deflate::Filtered { filter, stream }),
            None => self.ctx.read(stream),
        }
    }

    pub fn next_deadline(&self, cfg: &Config) -> Instant {
        if let WsPhase::CloseSent { deadline } = self.phase {
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
    /// The socket has nothing more for now (`WouldBlock`).
    Empty,
    /// The message budget ran out with bytes possibly left: read again soon.
    More,
}

impl Conn {
    /// Turns this HTTP connection, whose upgrade was accepted, answered
    /// and registered under `user`, into a WebSocket session with id `id`
    /// and a token that expires at `exp`; when `greet`, queues the
    /// `connected` message. Returns true when frames may already wait (with
    /// the request, or in the socket) that no readiness event will
    /// announce: the caller reads then.
    /// Turns the connection into a WebSocket starting on its streams at
    /// `start`, greeted with `connected` (when `greet`) followed by the
    /// messages it recovers (`replay`).
    #[allow(clippy::too_many_arguments)]
    pub fn open_ws(
        &mut self,
        exp: u64,
        user: Arc<str>,
        id: String,
        grants: Grants,
        greet: bool,
        deflate: Option<Agreement>,
        start: &frame::Start<'_>,
        replay: Vec<SharedFrame>,
        env: &Env<'_>,
    ) -> bool {
        let pending = self.http_socket_pending();
        let leftover = self.take_http_leftover();
        let pending = pending || !leftover.is_empty();
        if greet {
            // Queued as a ready frame, like broadcasts: tungstenite has
            // nothing buffered for a connection that just opened.
            self.out.push_owned(frame::connected(&user, &id, start));
            env.ws.metrics.messages_out.fetch_add(1, Relaxed);
        }
        let leeway = env.ws.verifier.leeway();
        let mut ws = WsState::new(
            user.clone(),
            exp,
            id,
            leftover,
            deflate,
            env.config,
            leeway,
            env.ws.now,
        );
        ws.floors = Floors {
            all: start.all,
            user: start.user,
        };
        // What it recovers goes out as live messages do: compressed once
        // and shared when it negotiated compression.
        let replayed = replay.len() as u64;
        for f in replay {
            self.out.push_frame(f, ws.deflating);
        }
        env.ws.metrics.messages_out.fetch_add(replayed, Relaxed);
        if grants != Grants::default() {
            self.channels = Some(Box::new(Subscriptions {
                grants,
                subscribed: Vec::new(),
            }));
        }
        self.user = Some(user);
        self.state = State::Ws(Box::new(ws));
        pending
    }

    /// Queues a text message built by this server (an answer to a channel
    /// operation applied by the shard); no-op unless open.
    pub fn send_text(&mut self, text: String) -> bool {
        let State::Ws(ws) = &mut self.state else {
            return false;
        };
        if ws.phase != WsPhase::Open {
            return false;
        }
        let mut io = Io::new(&mut self.sock, &mut self.out).deflating(ws);
        ws.ctx.write(&mut io, Message::text(text)).is_ok()
    }

    fn subscriptions(&mut self) -> Option<&mut Subscriptions> {
        match &self.state {
            State::Ws(_) => Some(self.channels.get_or_insert_with(Default::default)),
            _ => None,
        }
    }

    /// Records a subscription; false when already subscribed, over
    /// `max`, or not a WebSocket.
    pub fn add_subscription(&mut self, channel: &Arc<str>, max: usize) -> bool {
        let Some(subs) = self.subscriptions() else {
            return false;
        };
        if subs.subscribed.len() >= max || subs.subscribed.contains(channel) {
            return false;
        }
        // Exact size: an idle subscription is paid for in memory for as
        // long as it lasts, a reallocation (of at most
        // --max-channels-per-connection names) once.
        subs.subscribed.reserve_exact(1);
        subs.subscribed.push(channel.clone());
        true
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_some_and(|s| s.subscribed.iter().any(|c| &**c == channel))
    }

    /// Forgets a subscription; false when there was none.
    pub fn remove_subscription(&mut self, channel: &str) -> bool {
        let Some(subs) = self.subscriptions() else {
            return false;
        };
        let before = subs.subscribed.len();
        subs.subscribed.retain(|c| &**c != channel);
        subs.subscribed.len() < before
    }

    /// Every subscription, taken (the connection is going, whatever its
    /// state now).
    pub fn take_subscriptions(&mut self) -> Vec<Arc<str>> {
        self.channels
            .take()
            .map(|s| s.subscribed)
            .unwrap_or_default()
    }

    /// Queues a shared broadcast frame. Returns false when the connection
    /// went over its outbound cap and was closed as a slow consumer.
    pub fn push_frame(&mut self, frame: &SharedFrame, cap: usize, now: Instant) -> bool {
        if !self.is_open_ws() {
            return true;
        }
        self.push_open(frame, cap, now)
    }

    /// Queues a live message on one of the connection's own streams,
    /// unless its offset is at or below where the connection started on
    /// that stream (an unnumbered one always goes). Returns false as
    /// [`Conn::push_frame`] does.
    pub fn push_own(
        &mut self,
        own: Own,
        offset: Option<u64>,
        frame: &SharedFrame,
        cap: usize,
        now: Instant,
    ) -> bool {
        let State::Ws(ws) = &self.state else {
            return true;
        };
        let floor = match own {
            Own::All => ws.floors.all,
            Own::User => ws.floors.user,
        };
        if !ws.is_open() || offset.is_some_and(|o| o <= floor) {
            return true;
        }
        self.push_open(frame, cap, now)
    }

    /// Starts the connection's streams again at offset 0 (the history took
    /// another epoch).
    pub fn reset_floors(&mut self) {
        if let State::Ws(ws) = &mut self.state {
            ws.floors = Floors::default();
        }
    }

    fn push_open(&mut self, frame: &SharedFrame, cap: usize, now: Instant) -> bool {
        match &self.state {
            State::Ws(ws) => self.out.push_frame(frame.clone(), ws.deflating),
            _ => self.out.push_shared(frame.clone()),
        }
        if self.out.len() > cap {
            self.slow_consumer(now);
            return false;
        }
        true
    }

    /// Frees the queue at once, queues `1008 slow consumer` and closes: the
    /// peer is not reading, so its reply is not awaited.
    fn slow_consumer(&mut self, now: Instant) {
        self.out.drop_unsent();
        self.close_ws(CloseCode::Policy, now);
        self.finish(now, true);
    }

    /// Starts the close handshake with `code` (no-op unless open).
    pub(super) fn close_ws(&mut self, code: CloseCode, now: Instant) {
        let State::Ws(ws) = &mut self.state else {
            return;
        };
        if ws.phase != WsPhase::Open {
            return;
        }
        let mut io = Io::new(&mut self.sock, &mut self.out);
        let frame = CloseFrame {
            code: code.code().into(),
            reason: code.reason().into(),
        };
        match ws.ctx.close(&mut io, Some(frame)) {
            Ok(()) => {
                ws.phase = WsPhase::CloseSent {
                    deadline: now + CLOSE_TIMEOUT,
                }
            }
            Err(e) => {
                log::debug!("close: {e}");
                self.finish(now, false);
            }
        }
    }

    /// Reads and handles messages until the socket is drained or the budget
    /// runs out; a client that sends without reading its answers is closed
    /// as a slow consumer.
    pub(super) fn on_ws_readable(&mut self, env: &Env<'_>) -> Readable {
        let State::Ws(ws) = &mut self.state else {
            return Readable::Done;
        };
        let mut io = Io::new(&mut self.sock, &mut self.out).deflating(ws);
        let (outcome, end) = session::read_messages(ws, &mut io, &self.channels, &env.ws);
        let m = env.ws.metrics;
        m.bytes_in.fetch_add(io.read, Relaxed);
        let now = env.ws.now;
        match end {
            None => {}
            // The protocol machine says this connection is finished: answer
            // a broken peer with the matching close code, then close.
            Some(Some(code)) => {
                self.close_ws(code, now);
                self.finish(now, true);
            }
            Some(None) => self.finish(now, false),
        }
        if self.out.len() > env.config.outbound_buffer_bytes && self.is_open_ws() {
            self.slow_consumer(now);
            m.slow_consumer_drops.fetch_add(1, Relaxed);
        }
        match outcome {
            WsRead::More => Readable::ReadAgain,
            WsRead::Empty => Readable::Done,
        }
    }

    /// A WebSocket deadline may have passed: close handshake timeout, token
    /// expiry, ping to send, pong overdue.
    pub(super) fn ws_timer(&mut self, cfg: &Config, now: Instant) {
        let State::Ws(ws) = &mut self.state else {
            return;
        };
        if let WsPhase::CloseSent { deadline } = ws.phase {
            if now >= deadline {
                log::debug!("websocket {}: close handshake timed out", ws.id);
                self.abort();
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
                self.abort();
            }
            Some(_) => {}
            None if now >= ws.last_ping + Duration::from_secs(cfg.ping_interval_secs) => {
                let mut io = Io::new(&mut self.sock, &mut self.out);
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
}
