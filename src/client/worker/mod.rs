//! The client's I/O thread: one per [`Client`](super::Client), alive from
//! `Client::new` until the client is dropped.
//!
//! It owns the socket (a blocking tungstenite `WebSocket<Transport>`, plain
//! TCP or TLS over it, with a short read timeout on the TCP socket, so that
//! reads interleave with the command queue) and
//! runs the connection state machine:
//!
//! ```text
//!            connect()                 upgrade ok
//!   Idle ─────────────► Connecting ─────────────────► Open
//!    ▲ ▲                 │    ▲                        │
//!    │ │   failed,       │    │ delay over             │ closed / lost
//!    │ │   attempts left ▼    │                        ▼
//!    │ └──────────────── Backoff ◄──── attempts left, not 4500–4999,
//!    │  disconnect()                   no disconnect() queued
//!    └──── given up / 4500–4999 close / disconnect() ──┘
//! ```
//!
//! Every callback runs here, one at a time, in the order of the events.
//! It also owns what the client remembers across connections to recover
//! what a reconnect missed (`Streams`, see `streams.rs`); the messages from
//! the server are handled in `inbound.rs`.

mod inbound;

use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{HandshakeError, Message, WebSocket};

use super::config::{ClientConfig, Endpoint, TokenSource};
use super::error::ClientError;
use super::events::Event;
use super::refresh::{jwt_exp, Refresh};
use super::shared::Shared;
use super::streams::Streams;
use super::tls::Transport;
use super::State;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the [`Client`](super::Client) asks of its thread.
pub(crate) enum Command {
    Connect,
    Disconnect,
    /// An encoded `{"type","payload"}` text frame.
    Send(String),
    /// Subscribe to a channel (already in the shared channel list), with
    /// `presence`; sent with `since` and `epoch` when the client knows them.
    Subscribe(String, bool),
    /// Report an error found on the caller's side (e.g. `send` while
    /// disconnected) as an `error` event, on this thread.
    Error(ClientError),
    Shutdown,
}

enum Phase {
    Idle,
    Connecting,
    Open(Box<Session>),
    Backoff(Instant),
    Exit,
}

struct Session {
    ws: WebSocket<Transport>,
    /// Set until the `connected` event has fired for this connection.
    hello_due: Option<Instant>,
    last_rx: Instant,
    pinged: bool,
    refresh: Refresh,
    /// Not the client's first connection: a `recovered` event follows
    /// `connected`.
    reconnect: bool,
}

enum Next {
    Cmd(Command),
    Timeout,
    Gone,
}

pub(crate) struct Worker {
    cfg: ClientConfig,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    /// Commands taken off the channel early (see `retry`), handled first.
    pending: VecDeque<Command>,
    /// Reconnect attempts since the last successful connect.
    attempt: u32,
    /// The token of the current connection (replaced by each accepted refresh).
    token: Option<String>,
    /// Epoch and offsets of every stream, kept across connections.
    streams: Streams,
}

impl Worker {
    pub fn new(
        cfg: ClientConfig,
        endpoint: Endpoint,
        shared: Arc<Shared>,
        rx: Receiver<Command>,
    ) -> Worker {
        Worker {
            cfg,
            endpoint,
            shared,
            rx,
            pending: VecDeque::new(),
            attempt: 0,
            token: None,
            streams: Streams::default(),
        }
    }

    pub fn run(mut self) {
        let mut phase = Phase::Idle;
        loop {
            phase = match phase {
                Phase::Idle => self.idle(),
                Phase::Connecting => self.connecting(),
                Phase::Open(s) => self.session(s),
                Phase::Backoff(until) => self.backoff(until),
                Phase::Exit => break,
            };
        }
        self.set_state(State::Disconnected);
    }

    // ----------------------------------------------------------- phases

    fn idle(&mut self) -> Phase {
        self.set_state(State::Disconnected);
        loop {
            match self.next(None) {
                Next::Cmd(Command::Connect) => {
                    self.set_attempt(0);
                    return Phase::Connecting;
                }
                // Subscribes wait in the channel list for the next connection.
                Next::Cmd(Command::Disconnect | Command::Subscribe(..)) | Next::Timeout => {}
                Next::Cmd(Command::Send(_)) => self.error(ClientError::NotConnected),
                Next::Cmd(Command::Error(e)) => self.error(e),
                Next::Cmd(Command::Shutdown) | Next::Gone => return Phase::Exit,
            }
        }
    }

    fn backoff(&mut self, until: Instant) -> Phase {
        loop {
            match self.next(Some(until)) {
                Next::Timeout => return Phase::Connecting,
                // A user's connect() skips the rest of the delay and starts afresh.
                Next::Cmd(Command::Connect) => {
                    self.set_attempt(0);
                    return Phase::Connecting;
                }
                Next::Cmd(Command::Disconnect) => {
                    self.set_attempt(0);
                    return Phase::Idle;
                }
                Next::Cmd(Command::Send(_)) => self.error(ClientError::NotConnected),
                Next::Cmd(Command::Subscribe(..)) => {}
                Next::Cmd(Command::Error(e)) => self.error(e),
                Next::Cmd(Command::Shutdown) | Next::Gone => return Phase::Exit,
            }
        }
    }

    fn connecting(&mut self) -> Phase {
        self.set_state(State::Connecting);
        match self.open() {
            Ok(ws) => {
                self.attempt = 0;
                let mut reconnect = false;
                self.shared.update(|s| {
                    s.state = State::Connected;
                    reconnect = s.connects > 0;
                    s.connects += 1;
                    s.reconnect_attempt = 0;
                    s.last_error = None;
                });
                let now = Instant::now();
                let mut refresh = Refresh::default();
                if let Some(margin) = self.refresh_margin() {
                    refresh.plan(self.token.as_deref().and_then(jwt_exp), margin);
                }
                Phase::Open(Box::new(Session {
                    ws,
                    hello_due: Some(now + self.cfg.hello_timeout),
                    last_rx: now,
                    pinged: false,
                    refresh,
                    reconnect,
                }))
            }
            Err(e) => {
                self.set_state(State::Disconnected);
                self.error(e);
                self.retry()
            }
        }
    }

    fn session(&mut self, mut s: Box<Session>) -> Phase {
        loop {
            // 1. Commands queued by the client (send, disconnect, ...).
            if let Some(end) = self.take_commands(&mut s) {
                return end;
            }
            // 2. Whatever is buffered goes out (sends, pongs).
            match s.ws.flush() {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(e) => return self.lost(e.into()),
            }
            // 3. Timers: the connected event without a server hello; keepalive.
            if let Some(end) = self.session_timers(&mut s) {
                return end;
            }
            // 4. Read, blocking at most `poll_interval`.
            if let Some(end) = self.read_one(&mut s) {
                return end;
            }
        }
    }

    /// Handles the client's queued commands; `Some` when one ends the session.
    fn take_commands(&mut self, s: &mut Session) -> Option<Phase> {
        loop {
            let cmd = match self.pending.pop_front() {
                Some(c) => c,
                None => match self.rx.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => Command::Shutdown,
                },
            };
            match cmd {
                Command::Connect => {}
                Command::Send(text) => match s.ws.write(Message::text(text)) {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {}
                    Err(tungstenite::Error::WriteBufferFull(_)) => {
                        self.error(ClientError::SendBufferFull)
                    }
                    Err(e) => return Some(self.lost(e.into())),
                },
                // Before the hello, `hello()` subscribes to the whole list.
                Command::Subscribe(channel, presence) => {
                    if s.hello_due.is_none() {
                        if let Err(e) = self.write_subscribe(s, &channel, presence) {
                            return Some(self.lost(e.into()));
                        }
                    }
                }
                Command::Error(e) => self.error(e),
                Command::Disconnect => {
                    self.close_by_us(s);
                    self.set_attempt(0);
                    return Some(Phase::Idle);
                }
                Command::Shutdown => {
                    self.close_by_us(s);
                    return Some(Phase::Exit);
                }
            }
        }
    }

    /// The synthetic `connected` event when the server sent no hello, the
    /// token refresh, and the keepalive ping; `Some` when the server has
    /// gone quiet too long or the socket broke.
    fn session_timers(&mut self, s: &mut Session) -> Option<Phase> {
        let now = Instant::now();
        if s.hello_due.is_some_and(|due| now >= due) {
            self.hello(s, None);
        }
        if s.refresh.take_due(now) {
            if let Some(end) = self.send_refresh(s) {
                return Some(end);
            }
        }
        let k = self.cfg.keepalive?;
        let quiet = now.saturating_duration_since(s.last_rx);
        if quiet >= k * 2 {
            return Some(self.lost(ClientError::KeepaliveTimeout(quiet)));
        }
        if quiet >= k && !s.pinged {
            s.pinged = true;
            match s.ws.write(Message::Ping(Default::default())) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(e) => return Some(self.lost(e.into())),
            }
        }
        None
    }

    /// Reads one message, blocking at most `poll_interval`; `Some` when the
    /// session ended (closed by the server or lost).
    fn read_one(&mut self, s: &mut Session) -> Option<Phase> {
        match s.ws.read() {
            Ok(msg) => {
                s.last_rx = Instant::now();
                s.pinged = false;
                match msg {
                    Message::Text(t) => self.on_data(s, t.as_bytes()),
                    Message::Binary(b) => self.on_data(s, &b),
                    Message::Close(frame) => {
                        let (code, reason) = match frame {
                            Some(f) => (u16::from(f.code), f.reason.to_string()),
                            None => (1005, String::new()),
                        };
                        finish_close(&mut s.ws);
                        return Some(self.closed(code, reason));
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
                None
            }
            Err(e) if would_block(&e) => None,
            Err(e) => Some(self.lost(e.into())),
        }
    }

    // ----------------------------------------------------------- steps

    /// The token source's answer; a panicking provider is an error.
    fn fetch_token(&self) -> Result<Option<String>, ClientError> {
        let provider = AssertUnwindSafe(&self.cfg.token);
        catch_unwind(|| provider.fetch())
            .unwrap_or_else(|_| Err(ClientError::Token("the token provider panicked".into())))
    }

    /// The refresh margin, when the client refreshes: a token provider and
    /// [`ClientConfig::refresh_before`] set.
    fn refresh_margin(&self) -> Option<Duration> {
        match self.cfg.token {
            TokenSource::Provider(_) => self.cfg.refresh_before,
            _ => None,
        }
    }

    /// Asks the provider for a token and sends it in a `refresh` message. A
    /// provider error is an `error` event and no retry: the server then
    /// closes with `4001` at the old `exp`, and the reconnect asks again.
    fn send_refresh(&mut self, s: &mut Session) -> Option<Phase> {
        let token = match self.fetch_token() {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => {
                self.error(e);
                return None;
            }
        };
        let text = json!({"type": "refresh", "payload": {"token": token}}).to_string();
        match s.ws.write(Message::text(text)) {
            Ok(()) => {}
            Err(e) if would_block(&e) => {}
            Err(e) => return Some(self.lost(e.into())),
        }
        s.refresh.sent(token);
        None
    }

    /// Token, TCP connect, TLS handshake (`wss://`), upgrade.
    fn open(&mut self) -> Result<WebSocket<Transport>, ClientError> {
        let token = self.fetch_token()?;
        self.token.clone_from(&token);
        // After a first connection: where to resume (docs/PROTOCOL.md §11.3).
        let resume = self.streams.resume_query();
        let params: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("token", t))
            .into_iter()
            .chain(resume.iter().map(|(k, v)| (*k, v.as_str())))
            .collect();
        let url = self.endpoint.url_with_query(&params);
        let stream = self.tcp_connect()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.cfg.handshake_timeout))?;
        stream.set_write_timeout(Some(self.cfg.handshake_timeout))?;
        // The TLS handshake is run to its end here, before tungstenite's,
        // so that its failure is told apart (`Tls`, or a timeout) instead of
        // surfacing as an I/O error of the upgrade. The handshake timeout
        // bounds each read and write of it, as it does the upgrade's.
        let stream = match &self.endpoint.tls {
            None => Transport::Plain(stream),
            Some(t) => Transport::tls(t.config.clone(), t.name.clone(), stream).map_err(|e| {
                if is_timeout(&e) {
                    ClientError::HandshakeTimeout(self.cfg.handshake_timeout)
                } else {
                    ClientError::from(e)
                }
            })?,
        };
        let mut ws_cfg = WebSocketConfig::default();
        ws_cfg.read_buffer_size = 8 * 1024;
        ws_cfg.write_buffer_size = 0;
        ws_cfg.max_write_buffer_size = self.cfg.max_send_buffer_bytes;
        ws_cfg.max_message_size = Some(self.cfg.max_message_bytes);
        ws_cfg.max_frame_size = Some(self.cfg.max_message_bytes);
        match tungstenite::client::client_with_config(url.as_str(), stream, Some(ws_cfg)) {
            Ok((ws, _response)) => {
                let tcp = ws.get_ref().tcp();
                let poll = self.cfg.poll_interval.max(Duration::from_millis(1));
                tcp.set_read_timeout(Some(poll))?;
                tcp.set_write_timeout(Some(poll))?;
                Ok(ws)
            }
            Err(HandshakeError::Failure(e)) => Err(match e {
                tungstenite::Error::Io(io) if is_timeout(&io) => {
                    ClientError::HandshakeTimeout(self.cfg.handshake_timeout)
                }
                other => other.into(),
            }),
            // Only a read or write timeout interrupts a blocking handshake.
            Err(HandshakeError::Interrupted(_)) => {
                Err(ClientError::HandshakeTimeout(self.cfg.handshake_timeout))
            }
        }
    }

    fn tcp_connect(&self) -> Result<TcpStream, ClientError> {
        let addrs = (self.endpoint.host.as_str(), self.endpoint.port).to_socket_addrs()?;
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} resolves to no address", self.endpoint.host),
        );
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.cfg.connect_timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last.into())
    }

    /// Our close handshake (code 1000), bounded, then the `disconnected` event.
    fn close_by_us(&mut self, s: &mut Session) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "Client disconnect".into(),
        };
        match s.ws.close(Some(frame)) {
            Ok(()) => finish_close(&mut s.ws),
            Err(e) if would_block(&e) => finish_close(&mut s.ws),
            Err(_) => {}
        }
        self.set_state(State::Disconnected);
        self.emit(
            "disconnected",
            json!({"code": 1000, "reason": "Client disconnect"}),
            true,
        );
    }

    /// The connection broke without a close handshake.
    fn lost(&mut self, err: ClientError) -> Phase {
        let reason = err.to_string();
        self.error(err);
        self.closed(1006, reason)
    }

    /// The connection is gone: event, then reconnect or not.
    fn closed(&mut self, code: u16, reason: String) -> Phase {
        self.set_state(State::Disconnected);
        self.emit(
            "disconnected",
            json!({"code": code, "reason": reason.clone()}),
            true,
        );
        if (4500..=4999).contains(&code) {
            self.error(ClientError::Terminal { code, reason });
            return Phase::Idle;
        }
        self.retry()
    }

    /// Schedules the next attempt, unless `disconnect()` (or a drop) is
    /// already queued, or the attempts are used up.
    fn retry(&mut self) -> Phase {
        while let Ok(c) = self.rx.try_recv() {
            self.pending.push_back(c);
        }
        if self
            .pending
            .iter()
            .any(|c| matches!(c, Command::Disconnect | Command::Shutdown))
        {
            self.set_attempt(0);
            return Phase::Idle;
        }
        if self.attempt >= self.cfg.max_attempts {
            self.error(ClientError::GaveUp(self.cfg.max_attempts));
            return Phase::Idle;
        }
        let delay = self.cfg.backoff(self.attempt);
        self.set_attempt(self.attempt + 1);
        self.emit(
            "reconnecting",
            json!({
                "attempt": self.attempt,
                "maxAttempts": self.cfg.max_attempts,
                "delayMs": delay.as_micros() as f64 / 1000.0,
            }),
            true,
        );
        Phase::Backoff(Instant::now() + delay)
    }

    // ----------------------------------------------------------- helpers

    fn next(&mut self, deadline: Option<Instant>) -> Next {
        if let Some(c) = self.pending.pop_front() {
            return Next::Cmd(c);
        }
        match deadline {
            None => match self.rx.recv() {
                Ok(c) => Next::Cmd(c),
                Err(_) => Next::Gone,
            },
            Some(d) => match self.rx.recv_deadline(d) {
                Ok(c) => Next::Cmd(c),
                Err(RecvTimeoutError::Timeout) => Next::Timeout,
                Err(RecvTimeoutError::Disconnected) => Next::Gone,
            },
        }
    }

    fn emit(&self, kind: &str, payload: Value, synthetic: bool) {
        self.shared.registry.dispatch(&Event {
            kind: kind.to_string(),
            payload,
            synthetic,
            channel: None,
            offset: None,
        });
    }

    fn error(&self, err: ClientError) {
        let payload = json!({"kind": err.kind(), "message": err.to_string()});
        self.shared.update(|s| s.last_error = Some(err));
        self.emit("error", payload, true);
    }

    fn set_state(&self, state: State) {
        self.shared.update(|s| s.state = state);
    }

    fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
        self.shared.update(|s| s.reconnect_attempt = attempt);
    }
}

/// Reads until the peer closes the TCP connection (or `CLOSE_TIMEOUT`),
/// which also sends tungstenite's queued close reply; over TLS, then sends
/// a `close_notify` if the server has not ended the TLS stream already.
fn finish_close(ws: &mut WebSocket<Transport>) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => break,
        }
    }
    ws.get_mut().close_notify();
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if is_timeout(io))
}
