//! One client connection: its socket, its outbound queue, and the state
//! machine `Http → Ws → Flushing → (Lingering →) Closed`.
//!
//! Each state holds the buffers it needs and nothing else: an HTTP
//! connection its request buffer and deadlines (`http`), a WebSocket its
//! tungstenite context and session data (`ws`, messages in `session`). The
//! shard calls three entry points, [`Conn::on_readable`], [`Conn::on_timer`]
//! and [`Conn::write_turn`], and each dispatches on the state here, so the
//! shard never matches on a connection's internals nor sets its fields.
//!
//! A connection is transport: it frames HTTP requests and WebSocket
//! messages, and hands complete requests to a [`Dispatcher`] above it (the
//! router) to be answered or upgraded. It never blocks, and never reaches
//! into other connections or shared tables (the shard's registry does).

mod http;
mod outbound;
mod session;
mod sock;
mod tls;
mod ws;

pub(crate) use http::{Dispatch, Dispatcher};
pub use outbound::{Flushed, Outbound};
pub use session::feed;
pub(crate) use sock::{Sink, Sock};
pub(crate) use tls::TlsSock;
pub(crate) use ws::Own;
use ws::Subscriptions;
pub use ws::{ChannelOp, WsEnv, WsRead, WsState};

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::Response;
use crate::upgrade::Upgrade;
use http::HttpState;

/// How long a connection may take to write its last answer before it is cut.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection ended because of its peer reads and discards what
/// the peer still sends after the last answer (nginx's `lingering_time`).
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Bytes a lingering connection discards per loop turn before others are served.
const LINGER_BUDGET: usize = 64 * 1024;

/// Where a connection is in its life.
pub(crate) enum State {
    /// Reading HTTP requests: REST (keep-alive, pipelined) or the upgrade request.
    Http(HttpState),
    /// An upgraded WebSocket.
    Ws(Box<WsState>),
    /// Writing what is queued, then closing; nothing more is read. With
    /// `linger`, the close is a lingering one.
    Flushing { deadline: Instant, linger: bool },
    /// Our side is shut down after the last answer; what the peer still
    /// sends is read and discarded until it closes or `deadline`. Closing
    /// with unread bytes would make the kernel send a reset, which can
    /// destroy that answer (an error status, a close frame) before the peer
    /// reads it.
    Lingering { deadline: Instant },
    /// Done: the shard removes it.
    Closed,
}

/// One connection.
pub(crate) struct Conn {
    pub sock: Sock,
    /// Generation of the slab slot when this connection took it.
    pub gen: u32,
    out: Outbound,
    state: State,
    /// The earliest deadline already in the shard's timer heap.
    timer_at: Option<Instant>,
    /// Already on the shard's list of connections to write this turn.
    dirty: bool,
    /// The user this connection was registered under; the shard's registry
    /// unregisters it exactly when the connection is removed.
    user: Option<Arc<str>>,
    /// What the token allows and what the connection subscribed to; boxed
    /// and absent until used (an idle connection pays 8 bytes), and kept
    /// until the connection is removed, whatever its state by then.
    channels: Option<Box<Subscriptions>>,
}

/// What a connection may use of its shard and the server while it handles
/// one event.
pub(crate) struct Env<'a> {
    pub config: &'a Config,
    pub dispatcher: &'a dyn Dispatcher,
    pub ws: WsEnv<'a>,
    /// The server is shutting down: HTTP connections stop reading.
    pub draining: bool,
}

/// What the shard must do after a readable event.
pub(crate) enum Readable {
    /// Nothing more this turn.
    Done,
    /// The read stopped early with bytes possibly left in the socket:
    /// read again next turn (edge-triggered readiness will not say so).
    ReadAgain,
    /// A valid upgrade request: register it, then [`Conn::open_ws`].
    Upgrade(Upgrade),
}

/// What one write turn did.
pub(crate) struct Written {
    pub bytes: u64,
    /// Reading was resumed with requests possibly waiting: read again.
    pub read_again: bool,
    /// A deadline earlier than any already armed: the shard must arm it.
    pub arm: Option<Instant>,
}

impl Conn {
    pub fn new(sock: Sock, gen: u32, now: Instant, cfg: &Config) -> Conn {
        Conn {
            sock,
            gen,
            out: Outbound::default(),
            state: State::Http(HttpState::new(now, cfg)),
            timer_at: None,
            dirty: false,
            user: None,
            channels: None,
        }
    }

    pub fn is_open_ws(&self) -> bool {
        matches!(&self.state, State::Ws(ws) if ws.is_open())
    }

    pub fn is_http(&self) -> bool {
        matches!(self.state, State::Http(_))
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The user this connection is registered under, taken once on removal.
    pub fn take_user(&mut self) -> Option<Arc<str>> {
        self.user.take()
    }

    /// The user of an open or closing WebSocket.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// Marks the connection to be written this turn; true the first time.
    pub fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Queues an answer and, when it says so, stops reading.
    pub fn respond(&mut self, resp: &Response, now: Instant) {
        let mut bytes = Vec::with_capacity(160 + resp.body.len());
        resp.write_to(&mut bytes);
        self.out.push_owned(bytes);
        if resp.close {
            // The peer may still be sending: the body of a refused request,
            // requests pipelined past a keep-alive limit.
            self.finish(now, true);
        }
    }

    /// Queues bytes already encoded (the `101` of an accepted upgrade).
    pub fn queue(&mut self, bytes: Vec<u8>) {
        self.out.push_owned(bytes);
    }

    /// Stops reading; closes once the queue is written, lingering when the
    /// connection ends because of its peer.
    fn finish(&mut self, now: Instant, linger: bool) {
        if self.sock.is_handshaking() {
            // Nothing is read once flushing, so a TLS handshake under way
            // can never finish, and nothing queued could reach the peer
            // (a `408` at the handshake timeout, a `503` while draining).
            self.abort();
            return;
        }
        self.state = State::Flushing {
            deadline: now + FLUSH_TIMEOUT,
            linger: linger && self.sock.can_linger(),
        };
    }

    /// Drops what is queued and closes at once.
    fn abort(&mut self) {
        self.out.clear();
        self.state = State::Closed;
    }

    /// Readiness to read: reads what the socket has and acts on it.
    pub fn on_readable(&mut self, env: &Env<'_>, to_end: bool) -> Readable {
        match &self.state {
            State::Http(_) if env.draining => {
                // Shutting down: the requests already sent get their
                // answers (an upgrade a 503), then the connection closes.
                if let Readable::Upgrade(_) = self.on_http_readable(env, true) {
                    let refusal = Response::error(&crate::error::HttpError::ShuttingDown);
                    self.respond(&refusal.with_close(true), env.ws.now);
                }
                if let State::Http(_) = self.state {
                    self.finish(env.ws.now, false);
                }
                Readable::Done
            }
            State::Http(_) => self.on_http_readable(env, to_end),
            State::Ws(_) => self.on_ws_readable(env),
            State::Lingering { .. } => self.discard(),
            // Nothing more is read once flushing: the answer is all that is left.
            State::Flushing { .. } | State::Closed => Readable::Done,
        }
    }

    /// The timer armed for `at` fired.
    pub fn on_timer(&mut self, at: Instant, env: &Env<'_>) {
        if self.timer_at == Some(at) {
            self.timer_at = None;
        }
        let now = env.ws.now;
        match &self.state {
            State::Http(_) => self.http_timer(env),
            State::Ws(_) => self.ws_timer(env.config, now),
            State::Flushing { deadline, .. } if now >= *deadline => self.abort(),
            State::Lingering { deadline } if now >= *deadline => self.state = State::Closed,
            State::Flushing { .. } | State::Lingering { .. } | State::Closed => {}
        }
    }

    /// Reads and drops what a lingering connection's peer sends; closes on
    /// its EOF or an error.
    fn discard(&mut self) -> Readable {
        let mut scratch = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BUDGET {
            match std::io::Read::read(&mut self.sock, &mut scratch) {
                Ok(0) => {
                    self.state = State::Closed;
                    return Readable::Done;
                }
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Readable::Done,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.state = State::Closed;
                    return Readable::Done;
                }
            }
        }
        Readable::ReadAgain
    }

    /// Closes the connection for shutdown or a management call: a WebSocket
    /// with `code`, an HTTP connection after its queued answers.
    pub fn close_for(&mut self, code: crate::error::CloseCode, now: Instant) {
        match &self.state {
            State::Ws(_) => self.close_ws(code, now),
            State::Http(_) => self.finish(now, false),
            State::Flushing { .. } | State::Lingering { .. } | State::Closed => {}
        }
    }

    /// Writes what is queued, then settles what the write changed: an HTTP
    /// connection paused for unread answers may resume, and the next
    /// deadline is reported when it is earlier than the armed one.
    pub fn write_turn(&mut self, cfg: &Config, now: Instant) -> Written {
        self.dirty = false;
        let mut bytes = 0;
        if !self.out.is_empty()
            || self.sock.has_pending()
            || matches!(self.state, State::Flushing { .. })
        {
            bytes = self.flush(now);
        }
        let read_again = self.http_flushed(bytes > 0, cfg, now);
        let arm = self
            .next_deadline(cfg)
            .filter(|d| self.timer_at.is_none_or(|t| *d < t));
        if arm.is_some() {
            self.timer_at = arm;
        }
        Written {
            bytes,
            read_again,
            arm,
        }
    }

    /// The next instant this connection needs its timer.
    fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        match &self.state {
            State::Http(h) => Some(h.deadline()),
            State::Ws(ws) => Some(ws.next_deadline(cfg)),
            State::Flushing { deadline, .. } | State::Lingering { deadline } => Some(*deadline),
            State::Closed => None,
        }
    }

    /// Writes the queue. Returns the bytes written; a write error closes.
    fn flush(&mut self, now: Instant) -> u64 {
        let mut written = 0;
        // What the queue handed a TLS session must reach the socket too
        // before the connection counts as written (and may close).
        let flushed = self
            .out
            .flush_to(&mut self.sock, &mut written)
            .and_then(|f| match f {
                Flushed::All => match self.sock.send_pending() {
                    Ok(()) => Ok(Flushed::All),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Flushed::Partial),
                    Err(e) => Err(e),
                },
                partial => Ok(partial),
            });
        match flushed {
            Ok(Flushed::All) => match self.state {
                State::Flushing { linger: true, .. } => {
                    let _ = self.sock.shutdown(std::net::Shutdown::Write);
                    self.state = State::Lingering {
                        deadline: now + LINGER_TIME,
                    };
                }
                State::Flushing { linger: false, .. } => {
                    let _ = self.sock.shutdown(std::net::Shutdown::Both);
                    self.state = State::Closed;
                }
                _ => {}
            },
            Ok(Flushed::Partial) => {}
            Err(e) => {
                log::debug!("write error: {e}");
                self.abort();
            }
        }
        written
    }
}
