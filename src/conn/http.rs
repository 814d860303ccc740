//! The HTTP state of a connection: reading requests into a bounded buffer,
//! framing every complete one (keep-alive, pipelining) for the
//! [`Dispatcher`] above, queuing its answers, and the request, idle and
//! stalled deadlines.
//!
//! What a request means is not decided here: the dispatcher (the router)
//! answers it or accepts it as an upgrade. A client that pipelines without
//! reading its answers is paused (its requests stay in the socket, held
//! back by TCP flow control) instead of growing a queue without bound.

use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{Conn, Env, Readable, State};
use crate::config::Config;
use crate::error::HttpError;
use crate::http::{parse_request, Limits, Parsed, Request, Response};
use crate::upgrade::Upgrade;

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

/// What the dispatcher made of one complete request.
pub(crate) enum Dispatch {
    /// Queue this answer and go on with the next request.
    Answer(Response),
    /// A valid upgrade: the rest of the buffer belongs to the WebSocket.
    Upgrade(Upgrade),
}

/// Whoever decides what a connection's requests mean (the router).
pub(crate) trait Dispatcher {
    /// A complete request: answer it, or accept it as an upgrade.
    fn dispatch(&self, req: &Request<'_>) -> Dispatch;
    /// A request refused before it could be routed (malformed, too large,
    /// timed out): it gets `err`'s answer and the connection closes.
    fn refused(&self, err: &HttpError);
}

/// The HTTP state's buffer and deadline.
pub(crate) struct HttpState {
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
    /// client reached [`http_out_high`]; resumed once they are written.
    paused: bool,
}

impl HttpState {
    pub fn new(now: Instant, cfg: &Config) -> HttpState {
        HttpState {
            buf: Vec::new(),
            deadline: now + cfg.handshake_timeout(),
            idle: false,
            full: false,
            continue_sent: false,
            paused: false,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Stops reading until the queued answers are written; the client has the
    /// idle timeout to read some of them.
    fn pause(&mut self, cfg: &Config, now: Instant) {
        self.paused = true;
        self.deadline = now + Duration::from_secs(cfg.idle_timeout_secs);
    }
}

impl Conn {
    pub(super) fn on_http_readable(&mut self, env: &Env<'_>, to_end: bool) -> Readable {
        let (bytes, eof) = self.read_http(env.config, to_end, env.ws.now);
        let (upgrade, requests) = self.process_http(env);
        let m = env.ws.metrics;
        m.bytes_in.fetch_add(bytes, Relaxed);
        m.http_requests.fetch_add(requests, Relaxed);
        if let Some(up) = upgrade {
            return Readable::Upgrade(up);
        }
        let State::Http(http) = &self.state else {
            return Readable::Done;
        };
        if eof && !http.paused {
            // The peer finished sending: what it asked is answered, then close.
            self.finish(env.ws.now);
        } else if requests > 0 && http.full && !http.paused {
            // Pipelined requests filled the buffer and answering them made
            // room: read the rest next turn.
            return Readable::ReadAgain;
        }
        Readable::Done
    }

    /// Reads what the socket has into the HTTP buffer. Returns the bytes read
    /// and whether the peer finished sending (EOF): the requests already in
    /// the buffer are still answered, then the connection closes.
    ///
    /// Unless `to_end`, a read that returns less than it asked for ends the
    /// loop: the socket was drained at that moment, and with edge-triggered
    /// readiness anything arriving later (more bytes, the FIN) raises a new
    /// event. That saves the `recv` returning `WouldBlock` on every upgrade.
    /// The shard asks for `to_end` when the event also reported the peer's
    /// FIN or an error (which may wait behind the bytes) and when it reads
    /// again without an event.
    fn read_http(&mut self, cfg: &Config, to_end: bool, now: Instant) -> (u64, bool) {
        let State::Http(http) = &mut self.state else {
            return (0, false);
        };
        if self.out.len() >= http_out_high(cfg) {
            // The client is not reading its answers: leave its requests in
            // the socket, where TCP flow control holds them back.
            if !http.paused {
                http.pause(cfg, now);
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

    /// Frames every complete request in the buffer (pipelining) and queues
    /// the dispatcher's answers, until one is an upgrade or more bytes are
    /// needed. Returns the accepted upgrade, if any, and the count of requests.
    fn process_http(&mut self, env: &Env<'_>) -> (Option<Upgrade>, u64) {
        let cfg = env.config;
        let now = env.ws.now;
        let limits = Limits {
            max_header_bytes: cfg.max_header_bytes,
            max_body_bytes: cfg.max_body_bytes,
        };
        let mut requests = 0;
        loop {
            let State::Http(http) = &mut self.state else {
                return (None, requests);
            };
            if self.out.len() >= http_out_high(cfg) {
                http.pause(cfg, now);
                return (None, requests);
            }
            let (resp, used, keep_alive) = match parse_request(&http.buf, &limits) {
                Ok(Parsed::Partial) => return (None, requests),
                Ok(Parsed::NeedBody { expect_continue }) => {
                    if expect_continue && !http.continue_sent {
                        http.continue_sent = true;
                        self.out
                            .push_owned(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
                    }
                    return (None, requests);
                }
                Err(e) => {
                    env.dispatcher.refused(&e);
                    (Response::error(&e).with_close(true), http.buf.len(), false)
                }
                Ok(Parsed::Complete(req, used)) => {
                    requests += 1;
                    match env.dispatcher.dispatch(&req) {
                        Dispatch::Upgrade(up) => {
                            http.buf.drain(..used);
                            return (Some(up), requests);
                        }
                        Dispatch::Answer(resp) => (resp, used, req.keep_alive),
                    }
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

    /// Whether bytes may wait in the socket or the buffer that no readiness
    /// event will announce once this connection is a WebSocket: the last
    /// read stopped at the buffer cap or was paused.
    pub(super) fn http_socket_pending(&self) -> bool {
        matches!(&self.state, State::Http(http) if http.full || http.paused)
    }

    /// After a write on a paused HTTP connection: unpauses it once its queue
    /// drained below half the mark, and returns true; the shard must then
    /// read and answer again itself, as no readiness event announces bytes
    /// that already wait. While it stays paused, every write that made
    /// progress gives the client the idle timeout again.
    pub(super) fn http_flushed(&mut self, wrote: bool, cfg: &Config, now: Instant) -> bool {
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
    pub(super) fn take_http_leftover(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Http(http) => {
                let leftover = http.buf.as_slice().to_vec();
                http.buf = Vec::new();
                leftover
            }
            _ => Vec::new(),
        }
    }

    /// An HTTP deadline may have passed: `408` for a request still
    /// arriving, a plain close for an idle keep-alive connection or for one
    /// paused because its client stopped reading the answers.
    pub(super) fn http_timer(&mut self, env: &Env<'_>) {
        let now = env.ws.now;
        let State::Http(http) = &self.state else {
            return;
        };
        if now < http.deadline {
            return;
        }
        if http.paused {
            log::debug!("HTTP connection stalled: its answers are not read");
            self.abort();
        } else if http.idle {
            log::debug!("idle HTTP connection closed");
            self.state = State::Closed;
        } else {
            let e = HttpError::RequestTimeout;
            env.dispatcher.refused(&e);
            self.respond(&Response::error(&e), now);
        }
    }
}
