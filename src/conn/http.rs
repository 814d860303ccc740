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
use crate::http::{parse_head, BodyReader, Limits, Request, Response};
use crate::router::Admitted;
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

fn limits(cfg: &Config) -> Limits {
    Limits {
        max_header_bytes: cfg.max_header_bytes,
        max_body_bytes: cfg.max_body_bytes,
    }
}

/// What the dispatcher made of one complete request.
pub(crate) enum Dispatch {
    /// Queue this answer and go on with the next request.
    Answer(Response),
    /// A valid upgrade: the rest of the buffer belongs to the WebSocket.
    Upgrade(Upgrade),
}

/// Requests one keep-alive connection may make before it is closed, and
/// how long it may live (nginx's `keepalive_requests`, `keepalive_time`):
/// a client cannot hold one connection, and its state, forever.
const KEEPALIVE_REQUESTS: u32 = 1000;
const KEEPALIVE_TIME: Duration = Duration::from_secs(3600);

/// Whoever decides what a connection's requests mean (the router).
pub(crate) trait Dispatcher {
    /// A request whose head arrived, before any of its body is read: admit
    /// it (then its body may be buffered), or refuse it with this error.
    fn admit(&self, head: &Request<'_>, has_body: bool) -> Result<Admitted, HttpError>;
    /// A complete admitted request: answer it, or accept it as an upgrade.
    fn dispatch(&self, admitted: Admitted, req: &Request<'_>) -> Dispatch;
    /// The answer to a head that `admit` refused with `err`.
    fn refusal(&self, head: &Request<'_>, err: &HttpError) -> Response;
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
    /// The request whose head was admitted and whose body is arriving.
    pending: Option<Pending>,
    /// Requests answered on this connection so far.
    served: u32,
    /// When the connection was accepted (for [`KEEPALIVE_TIME`]).
    born: Instant,
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
            pending: None,
            served: 0,
            born: now,
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

    /// How many bytes the buffer may hold. Before a head is admitted, only
    /// a head's worth: an unauthenticated client never makes the server
    /// hold a body. Once admitted, the body's length (chunked: the body
    /// limit twice over, room for the chunk framing).
    fn read_cap(&self, limits: &Limits) -> usize {
        let body = match &self.pending {
            None => return limits.max_header_bytes + HTTP_READ_CHUNK,
            Some(p) => match &p.reader {
                BodyReader::Length(n) => *n,
                BodyReader::Chunked(_) => limits.max_body_bytes.saturating_mul(2),
            },
        };
        self.pending.as_ref().map_or(0, |p| p.head_len) + body + HTTP_READ_CHUNK
    }

    /// Frames the next request in the buffer: admits its head, then reads
    /// its body as it arrives, then hands it to the dispatcher. Consumes
    /// the bytes of every request it answers.
    fn next_request(&mut self, d: &dyn Dispatcher, limits: &Limits) -> Step {
        if self.pending.is_none() {
            match self.admit_head(d, limits) {
                Ok(true) => return Step::Continue,
                Ok(false) => {}
                Err(step) => return step,
            }
        }
        let Some(p) = self.pending.as_mut() else {
            return Step::Wait;
        };
        match p
            .reader
            .advance(&self.buf[p.head_len..], limits.max_body_bytes)
        {
            Ok(true) => {}
            Ok(false) if self.buf.len() >= self.read_cap(limits) => {
                // The encoded body outgrew its room (chunk framing beyond
                // the body limit) before it ended.
                let e = HttpError::PayloadTooLarge {
                    limit: limits.max_body_bytes,
                };
                return self.refuse(d, e);
            }
            Ok(false) => return Step::Wait,
            Err(e) => return self.refuse(d, e),
        }
        let Some(Pending {
            head_len,
            reader,
            admitted,
        }) = self.pending.take()
        else {
            return Step::Wait;
        };
        // The head parsed when it arrived; its borrowed form is rebuilt
        // once, now that the buffer holds the whole request.
        let Ok(Some(head)) = parse_head(&self.buf[..head_len], limits) else {
            let e = HttpError::BadRequest("request head changed".into());
            return self.refuse(d, e);
        };
        let (body, used) = reader.take(&self.buf[head_len..]);
        let req = head.with_body(body);
        let keep_alive = req.keep_alive;
        let is_head = req.method == "HEAD";
        let step = match d.dispatch(admitted, &req) {
            Dispatch::Upgrade(up) => Step::Upgrade(Box::new(up)),
            Dispatch::Answer(mut resp) => {
                resp.head |= is_head;
                Step::Answer { resp, keep_alive }
            }
        };
        drop(req);
        self.buf.drain(..head_len + used);
        step
    }

    /// Parses and admits the head at the front of the buffer. `Ok(true)`:
    /// admitted, and its client waits for `100 Continue`; `Ok(false)`:
    /// admitted, or not complete yet; `Err`: refused, with its answer.
    fn admit_head(&mut self, d: &dyn Dispatcher, limits: &Limits) -> Result<bool, Step> {
        let head = match parse_head(&self.buf, limits) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(false),
            Err(e) => return Err(self.refuse(d, e)),
        };
        let has_body = head.framing.has_body();
        let admitted = d
            .admit(&head.req, has_body)
            .and_then(|a| Ok((a, BodyReader::new(head.framing, head.req.method, limits)?)));
        let (admitted, reader) = match admitted {
            Ok(ok) => ok,
            Err(e) => {
                // Refused on its head: the body is never read. A request
                // without one leaves the connection usable, unless the
                // credentials were bad.
                let close = has_body || matches!(e, HttpError::Unauthorized | HttpError::Forbidden);
                let mut resp = d.refusal(&head.req, &e).with_close(close);
                resp.head = head.req.method == "HEAD";
                let keep_alive = head.req.keep_alive && !close;
                let len = head.len;
                self.buf.drain(..len);
                return Err(Step::Answer { resp, keep_alive });
            }
        };
        let expect_continue = head.expect_continue && has_body;
        self.pending = Some(Pending {
            head_len: head.len,
            reader,
            admitted,
        });
        Ok(expect_continue)
    }

    /// A request that cannot be framed: its answer, then close (the rest of
    /// the buffer cannot be trusted to start a request).
    fn refuse(&mut self, d: &dyn Dispatcher, e: HttpError) -> Step {
        d.refused(&e);
        self.pending = None;
        self.buf.clear();
        Step::Answer {
            resp: Response::error(&e).with_close(true),
            keep_alive: false,
        }
    }
}

/// A request whose head was admitted, while its body arrives.
struct Pending {
    head_len: usize,
    reader: BodyReader,
    admitted: Admitted,
}

/// What the buffer yielded.
enum Step {
    /// More bytes are needed.
    Wait,
    /// A head was admitted and its client waits for `100 Continue`.
    Continue,
    /// An answer to queue; without `keep_alive` the connection closes after it.
    Answer { resp: Response, keep_alive: bool },
    /// A valid upgrade; the rest of the buffer belongs to the WebSocket.
    /// Boxed: the other steps are small and this one is once per
    /// connection.
    Upgrade(Box<Upgrade>),
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
            self.finish(env.ws.now, false);
        } else if http.full && !http.paused && http.buf.len() < http.read_cap(&limits(env.config)) {
            // The read stopped at the cap and there is room now (requests
            // were answered, or an admitted head made room for its body):
            // read the rest next turn, as no new event will announce it.
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
        let cap = http.read_cap(&limits(cfg));
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
        let limits = limits(cfg);
        let mut requests = 0;
        loop {
            let State::Http(http) = &mut self.state else {
                return (None, requests);
            };
            if self.out.len() >= http_out_high(cfg) {
                http.pause(cfg, now);
                return (None, requests);
            }
            let (resp, keep_alive) = match http.next_request(env.dispatcher, &limits) {
                Step::Wait => return (None, requests),
                Step::Continue => {
                    self.out
                        .push_owned(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
                    continue;
                }
                Step::Upgrade(up) => return (Some(*up), requests + 1),
                Step::Answer { resp, keep_alive } => (resp, keep_alive),
            };
            requests += 1;
            http.served += 1;
            let keep_alive =
                keep_alive && http.served < KEEPALIVE_REQUESTS && now < http.born + KEEPALIVE_TIME;
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
