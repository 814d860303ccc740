//! One client connection: its socket, its outbound queue, and the state
//! machine `Http → WebSocket → Draining → Closed`.
//!
//! Each state holds the buffers it needs and nothing else: an HTTP
//! connection its request buffer and deadline, a WebSocket its tungstenite
//! context and session data. The shard drives a connection through these
//! methods on readiness and timers; a connection never blocks and never
//! reaches into other connections or shared tables (the shard does that).

mod outbound;
mod sock;
pub mod ws;

pub use outbound::{Flushed, Outbound};
pub use sock::{Sink, Sock};
pub use ws::{WsPhase, WsState};

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::HttpError;
use crate::handle::Handle;
use crate::http::{parse_request, Limits, Parsed, Response};
use crate::rest::{self, Route};
use crate::upgrade::{self, Upgrade};

/// How long a connection may take to drain its last answer before it is cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a socket per `read` call in the HTTP state.
const HTTP_READ_CHUNK: usize = 4096;

/// Most answers an HTTP connection queues before it stops reading and
/// answering requests (the outbound cap, when that is smaller): a client
/// that pipelines without reading costs this plus one answer, not a queue
/// without bound. Reading resumes when the queue is below half of it.
const HTTP_OUT_HIGH: usize = 256 * 1024;

fn http_out_high(cfg: &Config) -> usize {
    cfg.outbound_buffer_bytes.min(HTTP_OUT_HIGH)
}

/// Where a connection is in its life.
pub enum State {
    /// Reading HTTP requests: REST (keep-alive, pipelined) or the upgrade request.
    Http(HttpState),
    /// An upgraded WebSocket.
    Ws(Box<WsState>),
    /// Writing what is queued, then closing; nothing more is read.
    Draining { deadline: Instant },
    /// Done: the shard removes it.
    Closed,
}

/// The HTTP state's buffer and deadline.
pub struct HttpState {
    buf: Vec<u8>,
    /// When the request being read (or the idle wait) times out.
    deadline: Instant,
    /// Whether `deadline` is the idle keep-alive timeout (nothing pending).
    idle: bool,
    /// The last read stopped because `buf` was full, not because the socket
    /// was drained: bytes may still wait in the socket.
    full: bool,
    /// `100 Continue` was sent for the request being read.
    continue_sent: bool,
    /// Reading and answering stopped because the answers queued for the
    /// client reached [`http_out_high`]; the shard resumes it once they drain.
    paused: bool,
}

/// One connection.
pub struct Conn {
    pub sock: Sock,
    /// Generation of the slab slot when this connection took it.
    pub gen: u32,
    pub out: Outbound,
    pub state: State,
    /// The earliest deadline already in the shard's timer heap.
    pub timer_at: Option<Instant>,
    /// Already on the shard's list of connections to flush.
    pub dirty: bool,
    /// The user this connection was registered under in presence; the shard
    /// removes it from presence exactly when this is taken.
    pub user: Option<Arc<str>>,
}

/// Which HTTP deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTimeout {
    /// Paused for unread answers and no progress: closed.
    Stalled,
    /// An idle keep-alive connection: closed.
    Idle,
    /// A request did not arrive in time: `408`, then closed.
    Request,
}

/// What the HTTP state produced from the bytes it has.
pub enum HttpStep {
    /// Nothing more to do until more bytes arrive.
    Wait,
    /// A valid upgrade request; the rest of the buffer belongs to the WebSocket.
    Upgrade(Upgrade),
}

impl Conn {
    pub fn new(sock: Sock, gen: u32, now: Instant, cfg: &Config) -> Conn {
        Conn {
            sock,
            gen,
            out: Outbound::default(),
            state: State::Http(HttpState {
                buf: Vec::new(),
                deadline: now + cfg.handshake_timeout(),
                idle: false,
                full: false,
                continue_sent: false,
                paused: false,
            }),
            timer_at: None,
            dirty: false,
            user: None,
        }
    }

    pub fn is_open_ws(&self) -> bool {
        matches!(&self.state, State::Ws(ws) if ws.phase == WsPhase::Open)
    }

    /// Queues an answer and, when it says so, stops reading.
    pub fn respond(&mut self, resp: &Response, now: Instant) {
        let mut bytes = Vec::with_capacity(160 + resp.body.len());
        resp.write_to(&mut bytes);
        self.out.push_owned(bytes);
        if resp.close {
            self.drain(now);
        }
    }

    /// Stop reading; close once the queue is written.
    pub fn drain(&mut self, now: Instant) {
        self.state = State::Draining {
            deadline: now + DRAIN_TIMEOUT,
        };
    }

    /// Reads what the socket has into the HTTP buffer. Returns the bytes read
    /// and whether the peer finished sending (EOF): the requests already in
    /// the buffer are still answered, then the connection drains.
    ///
    /// Unless `to_end`, a read that returns less than it asked for ends the
    /// loop: the socket was drained at that moment, and with edge-triggered
    /// readiness anything arriving later (more bytes, the FIN) raises a new
    /// event. That saves the `recv` returning `WouldBlock` on every upgrade.
    /// The shard asks for `to_end` when the event also reported the peer's
    /// FIN or an error (which may wait behind the bytes) and when it reads
    /// again without an event.
    pub fn read_http(&mut self, cfg: &Config, to_end: bool, now: Instant) -> (u64, bool) {
        let State::Http(http) = &mut self.state else {
            return (0, false);
        };
        if self.out.len() >= http_out_high(cfg) {
            // The client is not reading its answers: leave its requests in
            // the socket, where TCP flow control holds them back.
            if !http.paused {
                http.paused = true;
                http.deadline = now + Duration::from_secs(cfg.idle_timeout_secs);
            }
            return (0, false);
        }
        let cap = cfg.max_header_bytes + cfg.max_body_bytes + HTTP_READ_CHUNK;
        let mut total = 0u64;
        http.full = false;
        loop {
            if http.buf.len() >= cap {
                // The parser refuses anything this large; stop reading.
                http.full = true;
                return (total, false);
            }
            let old = http.buf.len();
            http.buf.resize(old + HTTP_READ_CHUNK, 0);
            match self.sock.read(&mut http.buf[old..]) {
                Ok(0) => {
                    http.buf.truncate(old);
                    return (total, true);
                }
                Ok(n) => {
                    http.buf.truncate(old + n);
                    total += n as u64;
                    if old == 0 && http.idle {
                        http.idle = false;
                        http.deadline = now + cfg.handshake_timeout();
                    }
                    if n < HTTP_READ_CHUNK && !to_end {
                        return (total, false);
                    }
                }
                Err(e) => {
                    http.buf.truncate(old);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return (total, false),
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            log::debug!("read error: {e}");
                            self.state = State::Closed;
                            return (total, false);
                        }
                    }
                }
            }
        }
    }

    /// Answers every complete request in the buffer (pipelining), until one
    /// is an upgrade or more bytes are needed. Returns the count of requests.
    pub fn process_http(&mut self, h: &Handle, now: Instant) -> (HttpStep, u64) {
        let cfg = &h.core.config;
        let limits = Limits {
            max_header_bytes: cfg.max_header_bytes,
            max_body_bytes: cfg.max_body_bytes,
        };
        let mut requests = 0;
        loop {
            let State::Http(http) = &mut self.state else {
                return (HttpStep::Wait, requests);
            };
            if self.out.len() >= http_out_high(cfg) {
                // The rest of the buffer waits until the answers drain; the
                // client has the idle timeout to read some of them.
                http.paused = true;
                http.deadline = now + Duration::from_secs(cfg.idle_timeout_secs);
                return (HttpStep::Wait, requests);
            }
            let (resp, used, keep_alive) = match parse_request(&http.buf, &limits) {
                Ok(Parsed::Partial) => return (HttpStep::Wait, requests),
                Ok(Parsed::NeedBody { expect_continue }) => {
                    if expect_continue && !http.continue_sent {
                        http.continue_sent = true;
                        self.out
                            .push_owned(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
                    }
                    return (HttpStep::Wait, requests);
                }
                Err(e) => {
                    log::debug!("bad HTTP request: {e}");
                    if matches!(e, HttpError::HeadersTooLarge { .. }) {
                        h.core.metrics.reject(e.metric_label());
                    }
                    (Response::error(&e).with_close(true), http.buf.len(), false)
                }
                Ok(Parsed::Complete(req, used)) => {
                    requests += 1;
                    let resp = match rest::route(&req) {
                        Ok(Route::WebSocket) => match upgrade::check(&req, cfg, &h.core.verifier) {
                            Ok(up) => {
                                http.buf.drain(..used);
                                return (HttpStep::Upgrade(up), requests);
                            }
                            Err(e) => {
                                h.core.metrics.reject(e.metric_label());
                                // A refused upgrade ends the exchange: the
                                // client may have sent frames after it.
                                Response::error(&e).with_close(true)
                            }
                        },
                        Ok(route) => rest::handle(h, &route, &req),
                        Err(e) => Response::error(&e),
                    };
                    (resp, used, req.keep_alive)
                }
            };
            http.buf.drain(..used);
            http.continue_sent = false;
            if http.buf.is_empty() {
                http.buf = Vec::new();
                http.idle = true;
                http.deadline = now + Duration::from_secs(cfg.idle_timeout_secs);
            } else {
                http.deadline = now + cfg.handshake_timeout();
            }
            self.respond(&resp.with_close(!keep_alive), now);
        }
    }

    /// True when the last read stopped at the buffer cap with the socket
    /// possibly not drained. With edge-triggered readiness no new event
    /// announces those bytes, so the shard reads again once requests were
    /// answered and made room (many pipelined requests in one write).
    pub fn http_read_pending(&self) -> bool {
        matches!(&self.state, State::Http(http) if http.full && !http.paused)
    }

    /// True while reading is paused by a full outbound queue (see
    /// `http_out_high`); requests may wait in the buffer and the socket.
    pub fn http_paused(&self) -> bool {
        matches!(&self.state, State::Http(http) if http.paused)
    }

    /// After a write on a paused HTTP connection: unpauses it once its queue
    /// drained below half the mark, and returns true; the shard must then
    /// read and answer again itself, as no readiness event announces bytes
    /// that already wait. While it stays paused, every write that made
    /// progress gives the client the idle timeout again.
    pub fn http_flushed(&mut self, wrote: bool, cfg: &Config, now: Instant) -> bool {
        let State::Http(http) = &mut self.state else {
            return false;
        };
        if !http.paused {
            return false;
        }
        if self.out.len() >= http_out_high(cfg) / 2 {
            if wrote {
                http.deadline = now + Duration::from_secs(cfg.idle_timeout_secs);
            }
            return false;
        }
        http.paused = false;
        http.deadline = if http.buf.is_empty() {
            now + Duration::from_secs(cfg.idle_timeout_secs)
        } else {
            now + cfg.handshake_timeout()
        };
        true
    }

    /// Takes the bytes that followed the upgrade request.
    ///
    /// A copy of just those bytes, not the read buffer itself: tungstenite
    /// keeps the Vec it is given as its read buffer for the connection's
    /// whole life, and the HTTP buffer's capacity would be held (and its
    /// pages resident) by every idle WebSocket.
    pub fn take_http_leftover(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Http(http) => {
                let leftover = http.buf.as_slice().to_vec();
                http.buf = Vec::new();
                leftover
            }
            _ => Vec::new(),
        }
    }

    /// The next instant this connection needs its timer.
    pub fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        match &self.state {
            State::Http(h) => Some(h.deadline),
            State::Ws(ws) => Some(ws.next_deadline(cfg)),
            State::Draining { deadline } => Some(*deadline),
            State::Closed => None,
        }
    }

    /// An HTTP deadline passed: `408` for a request still arriving, a plain
    /// close for an idle keep-alive connection or for one paused because its
    /// client stopped reading the answers.
    pub fn http_timeout(&mut self, now: Instant) -> Option<HttpTimeout> {
        let State::Http(http) = &self.state else {
            return None;
        };
        if now < http.deadline {
            return None;
        }
        if http.paused {
            self.out.clear();
            self.state = State::Closed;
            Some(HttpTimeout::Stalled)
        } else if http.idle {
            self.state = State::Closed;
            Some(HttpTimeout::Idle)
        } else {
            self.respond(&Response::error(&HttpError::RequestTimeout), now);
            Some(HttpTimeout::Request)
        }
    }

    /// Writes the queue. Returns the bytes written; a write error closes.
    pub fn flush(&mut self) -> u64 {
        let mut written = 0;
        match self.out.flush_to(&mut self.sock, &mut written) {
            Ok(Flushed::All) => {
                if let State::Draining { .. } = self.state {
                    let _ = self.sock.shutdown(std::net::Shutdown::Both);
                    self.state = State::Closed;
                }
            }
            Ok(Flushed::Partial) => {}
            Err(e) => {
                log::debug!("write error: {e}");
                self.out.clear();
                self.state = State::Closed;
            }
        }
        written
    }
}
