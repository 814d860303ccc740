//! A reactor thread: one `mio::Poll`, a `Slab` of the connections it owns,
//! its command inbox, and a timer heap.
//!
//! The loop is thin: wait for readiness, dispatch each event to its
//! connection, drain the inbox (at most `INBOX_BUDGET` commands a turn so a
//! busy channel cannot starve socket I/O), fire due timers, then write every
//! connection that got bytes queued. A shard never blocks on a client, never
//! waits on another shard, and owns each of its connections for their whole
//! life; the only shared state it writes is presence and its own counters.
//!
//! [`SinkShard`] lets the fan-out bench and tests drive the same shard one
//! turn at a time over in-memory sinks; the server never builds one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::acceptor::Acceptor;
use crate::bus::{Command, ConnRef};
use crate::conn::ws::{WsEnv, WsRead};
use crate::conn::{Conn, HttpStep, HttpTimeout, Sink, Sock, State, WsState};
use crate::error::{CloseCode, HttpError};
use crate::frame::{self, SharedFrame};
use crate::handle::Handle;
use crate::http::{switching_protocols, Response};
use crate::metrics::ShardMetrics;

/// The token of the shard's waker.
pub const WAKER: Token = Token(usize::MAX);

/// The token of the shard's listening socket.
pub const LISTENER: Token = Token(usize::MAX - 1);

/// Commands handled per loop turn.
const INBOX_BUDGET: usize = 1024;

/// Longest poll wait, so a shard notices a lost wakeup within this.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);

/// How a connection's readiness asks it to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Writable only.
    No,
    /// New bytes arrived (edge-triggered): a short read means the socket is
    /// drained, and bytes arriving after it raise a new event.
    Fresh,
    /// Read until `WouldBlock` or EOF: the peer's FIN (or an error) may wait
    /// behind the bytes, or an earlier read stopped before the end.
    ToEnd,
}

/// One reactor.
pub struct Shard {
    id: usize,
    poll: Poll,
    inbox: Receiver<Command>,
    /// This shard's listener (see [`crate::acceptor`]); `None` for a shard
    /// that only adopts sockets handed to it.
    acceptor: Option<Acceptor>,
    conns: Slab<Conn>,
    next_gen: u32,
    /// This shard's open WebSocket connections by user.
    users: HashMap<Arc<str>, Vec<usize>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Connections with bytes to write or a state to settle this turn.
    dirty: Vec<usize>,
    /// Connections whose read stopped early (a WebSocket's message budget,
    /// an HTTP buffer full of pipelined requests): read again next turn.
    more_read: Vec<(usize, u32)>,
    handle: Handle,
    /// Set by `Shutdown`: when the drain gives up.
    drain_deadline: Option<Instant>,
}

impl Shard {
    pub fn new(
        id: usize,
        poll: Poll,
        inbox: Receiver<Command>,
        acceptor: Option<Acceptor>,
        handle: Handle,
    ) -> Shard {
        Shard {
            id,
            poll,
            inbox,
            acceptor,
            conns: Slab::new(),
            next_gen: 0,
            users: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            more_read: Vec::new(),
            handle,
            drain_deadline: None,
        }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.handle.core.metrics.shards[self.id]
    }

    /// Runs until shutdown has drained (or its timeout passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut inbox_pending = false;
        loop {
            let now = Instant::now();
            let timeout = if inbox_pending || !self.more_read.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = self
                    .timers
                    .peek()
                    .map(|Reverse((at, _, _))| at.saturating_duration_since(now));
                let accept = self.acceptor.as_ref().and_then(|a| a.timeout(now));
                let next = match (next, accept) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Some(next.map_or(MAX_POLL_WAIT, |d| d.min(MAX_POLL_WAIT)))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {e}", self.id);
                    return;
                }
            }
            let now = Instant::now();
            let mut accept = self.acceptor.as_ref().is_some_and(|a| a.due(now));
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    continue;
                }
                if token == LISTENER {
                    accept = true;
                    continue;
                }
                let hup = ev.is_read_closed() || ev.is_error();
                let read = if hup {
                    Read::ToEnd
                } else if ev.is_readable() {
                    Read::Fresh
                } else {
                    Read::No
                };
                self.on_ready(token.0, read, now);
            }
            for (key, gen) in std::mem::take(&mut self.more_read) {
                if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                    self.on_ready(key, Read::ToEnd, now);
                }
            }
            if accept {
                self.accept(now);
            }
            inbox_pending = self.drain_inbox(now);
            self.fire_timers(now);
            self.flush_dirty(now);
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() {
                    break;
                }
                if now >= deadline {
                    log::warn!(
                        "shard {}: drain timeout, dropping {} connections",
                        self.id,
                        self.conns.len()
                    );
                    break;
                }
            }
        }
        if let Some(a) = &mut self.acceptor {
            a.close(self.poll.registry());
        }
        for (_, conn) in self.conns.iter_mut() {
            let _ = self.poll.registry().deregister(&mut conn.sock);
        }
        log::debug!("shard {} stopped", self.id);
    }

    fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(key);
        }
    }

    /// Readiness on a connection: read what it has and act on it.
    fn on_ready(&mut self, key: usize, read: Read, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // an event for a connection already gone
        };
        Self::mark_dirty(&mut self.dirty, key, conn);
        if read == Read::No {
            return;
        }
        match &conn.state {
            State::Http(_) => self.on_http_readable(key, read == Read::ToEnd, now),
            State::Ws(_) => self.on_ws_readable(key, now),
            // Nothing more is read once draining: the answer is all that is left.
            State::Draining { .. } | State::Closed => {}
        }
    }

    fn on_http_readable(&mut self, key: usize, to_end: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if self.drain_deadline.is_some() {
            conn.drain(now);
            return;
        }
        let cfg = &self.handle.core.config;
        let (bytes, eof) = conn.read_http(cfg, to_end, now);
        let (step, requests) = conn.process_http(&self.handle, now);
        let m = &self.handle.core.metrics.shards[self.id];
        m.bytes_in.fetch_add(bytes, Relaxed);
        m.http_requests.fetch_add(requests, Relaxed);
        match step {
            HttpStep::Upgrade(up) => self.open_websocket(key, up, now),
            HttpStep::Wait => {
                // A paused connection answers what it already read before
                // it drains; it reads (and sees the EOF) again on resume.
                if eof && !conn.http_paused() {
                    if let State::Http(_) = conn.state {
                        conn.drain(now);
                    }
                } else if requests > 0 && conn.http_read_pending() {
                    // Pipelined requests filled the buffer and answering
                    // them made room: read the rest next turn.
                    self.more_read.push((key, conn.gen));
                }
            }
        }
    }

    /// Checks the connection limits, answers `101`, and turns the connection
    /// into a WebSocket registered in presence.
    fn open_websocket(&mut self, key: usize, up: crate::upgrade::Upgrade, now: Instant) {
        let core = self.handle.core.clone();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let user = up.claims.user_id.as_str();
        let refuse = if core.ws_slots.fetch_add(1, Relaxed) >= core.config.max_connections {
            core.ws_slots.fetch_sub(1, Relaxed);
            Some(HttpError::ServiceUnavailable)
        } else if !core.presence.try_add(
            user,
            self.id,
            // Cluster-wide, best effort: other nodes' counts are as of their
            // last presence change heard here.
            core.config
                .max_connections_per_user
                .saturating_sub(self.handle.remote_user_count(user)),
        ) {
            core.ws_slots.fetch_sub(1, Relaxed);
            Some(HttpError::TooManyRequests)
        } else {
            None
        };
        if let Some(e) = refuse {
            log::info!("upgrade for user {user} refused: {e}");
            core.metrics.reject(e.metric_label());
            conn.respond(&Response::error(&e).with_close(true), now);
            return;
        }
        let id = ConnRef {
            shard: self.id as u16,
            slot: key as u32,
            gen: conn.gen,
        }
        .to_id();
        // The last HTTP read ran until WouldBlock unless it stopped at the
        // buffer cap or was paused: only then can bytes wait in the socket.
        let socket_drained = !conn.http_read_pending() && !conn.http_paused();
        let leftover = conn.take_http_leftover();
        let frames_pending = !leftover.is_empty() || !socket_drained;
        conn.out.push_owned(switching_protocols(&up.accept_key));
        let ws = WsState::new(
            &up.claims,
            id.clone(),
            leftover,
            &core.config,
            core.verifier.leeway(),
            now,
        );
        let user: Arc<str> = ws.user.clone();
        conn.become_ws(ws);
        let greet = core.handler.sends_connected();
        if greet {
            // Queued as a ready frame, like broadcasts: tungstenite has
            // nothing buffered for a connection that just opened.
            conn.out.push_owned(frame::connected(&user, &id));
        }
        self.users.entry(user.clone()).or_default().push(key);
        let m = &core.metrics.shards[self.id];
        m.http_connections.fetch_sub(1, Relaxed);
        m.connections.fetch_add(1, Relaxed);
        if greet {
            m.messages_out.fetch_add(1, Relaxed);
        }
        core.metrics.handshakes_accepted.fetch_add(1, Relaxed);
        log::debug!("shard {}: websocket {id} open for user {user}", self.id);
        // Frames may have arrived with the request: with edge-triggered
        // readiness no new event will announce them. Otherwise a read here
        // would only return WouldBlock (one syscall per connect saved).
        if frames_pending {
            self.on_ws_readable(key, now);
        }
    }

    fn on_ws_readable(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let env = WsEnv {
            handle: &self.handle,
            metrics: &self.handle.core.metrics.shards[self.id],
            now,
        };
        let (outcome, bytes) = conn.read_ws(&env);
        env.metrics.bytes_in.fetch_add(bytes, Relaxed);
        if outcome == WsRead::More {
            self.more_read.push((key, conn.gen));
        }
        let cap = self.handle.core.config.outbound_buffer_bytes;
        if conn.out.len() > cap && conn.is_open_ws() {
            // A client that sends without reading its answers is a slow consumer too.
            conn.slow_consumer(now);
            self.metrics().slow_consumer_drops.fetch_add(1, Relaxed);
        }
    }

    /// Handles queued commands; true when the budget ran out first.
    fn drain_inbox(&mut self, now: Instant) -> bool {
        for _ in 0..INBOX_BUDGET {
            match self.inbox.try_recv() {
                Ok(cmd) => {
                    self.metrics().commands.fetch_add(1, Relaxed);
                    self.on_command(cmd, now);
                }
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => {
                    if self.drain_deadline.is_none() {
                        self.on_command(Command::Shutdown, now);
                    }
                    return false;
                }
            }
        }
        true
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Adopt(sock) => self.adopt(sock, now),
            Command::BroadcastAll { frame, exclude } => {
                let mut d = Delivery::new(frame, &self.handle.core.config, now);
                for (key, conn) in self.conns.iter_mut() {
                    let excluded = match (&exclude, &conn.user) {
                        (Some(ex), Some(user)) => ex.contains(&**user),
                        _ => false,
                    };
                    if !excluded {
                        d.to(&mut self.dirty, key, conn);
                    }
                }
                d.count(self.metrics());
            }
            Command::SendUsers { frame, users } => {
                let mut d = Delivery::new(frame, &self.handle.core.config, now);
                for user in &users {
                    for &key in self.users.get(user.as_str()).into_iter().flatten() {
                        if let Some(conn) = self.conns.get_mut(key) {
                            d.to(&mut self.dirty, key, conn);
                        }
                    }
                }
                d.count(self.metrics());
            }
            Command::DisconnectUsers { users, code } => {
                for user in &users {
                    let Some(keys) = self.users.get(user.as_str()) else {
                        continue;
                    };
                    for &key in keys {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.close_for(code, now);
                            Self::mark_dirty(&mut self.dirty, key, conn);
                        }
                    }
                }
            }
            Command::Close { conn: r, code } => {
                if let Some(conn) = self.conns.get_mut(r.slot as usize) {
                    // A reused slot has another generation: the command is stale.
                    if conn.gen == r.gen {
                        conn.close_for(code, now);
                        Self::mark_dirty(&mut self.dirty, r.slot as usize, conn);
                    }
                }
            }
            Command::Shutdown => {
                // No new connections from here on.
                if let Some(a) = &mut self.acceptor {
                    a.close(self.poll.registry());
                }
                let drain = Duration::from_secs(self.handle.core.config.drain_timeout_secs);
                self.drain_deadline = Some(now + drain);
                for (key, conn) in self.conns.iter_mut() {
                    conn.close_for(CloseCode::GoingAway, now);
                    Self::mark_dirty(&mut self.dirty, key, conn);
                }
            }
        }
    }

    /// Accepts what this shard's listener has queued (up to its budget).
    fn accept(&mut self, now: Instant) {
        let Some(mut acceptor) = self.acceptor.take() else {
            return;
        };
        let core = self.handle.core.clone();
        acceptor.accept(now, &core.metrics, |sock| self.adopt(sock, now));
        self.acceptor = Some(acceptor);
    }

    /// Takes a socket accepted here or handed over through the bus.
    fn adopt(&mut self, mut sock: mio::net::TcpStream, now: Instant) {
        if self.drain_deadline.is_some() {
            return; // shutting down: dropping the socket closes it
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= LISTENER.0 {
            return;
        }
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("shard {}: cannot register socket: {e}", self.id);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let conn = entry.insert(Conn::new(
            Sock::Tcp(sock),
            self.next_gen,
            now,
            &self.handle.core.config,
        ));
        Self::mark_dirty(&mut self.dirty, key, conn);
        self.metrics().http_connections.fetch_add(1, Relaxed);
    }

    fn fire_timers(&mut self, now: Instant) {
        let cfg = &self.handle.core.config;
        while let Some(&Reverse((at, key, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.gen != gen {
                continue;
            }
            if conn.timer_at == Some(at) {
                conn.timer_at = None;
            }
            match &conn.state {
                State::Http(_) => {
                    if let Some(why) = conn.http_timeout(now) {
                        if why == HttpTimeout::Request {
                            let label = HttpError::RequestTimeout.metric_label();
                            self.handle.core.metrics.reject(label);
                        }
                        log::debug!("shard {}: HTTP connection timed out: {why:?}", self.id);
                    }
                }
                State::Ws(_) => conn.ws_timer(cfg, now),
                State::Draining { deadline } => {
                    if now >= *deadline {
                        conn.out.clear();
                        conn.state = State::Closed;
                    }
                }
                State::Closed => {}
            }
            Self::mark_dirty(&mut self.dirty, key, conn);
        }
    }

    /// Writes every connection touched this turn, removes the closed ones,
    /// and keeps each one's timer armed. Returns the bytes written.
    fn flush_dirty(&mut self, now: Instant) -> u64 {
        let core = self.handle.core.clone();
        let cfg = &core.config;
        let mut written = 0u64;
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let mut wrote = 0;
            if !conn.out.is_empty() || matches!(conn.state, State::Draining { .. }) {
                wrote = conn.flush();
                written += wrote;
            }
            if let State::Closed = conn.state {
                self.remove(key);
                continue;
            }
            if conn.http_flushed(wrote > 0, cfg, now) {
                self.more_read.push((key, conn.gen));
            }
            if let Some(d) = conn.next_deadline(cfg) {
                if conn.timer_at.is_none_or(|t| d < t) {
                    conn.timer_at = Some(d);
                    self.timers.push(Reverse((d, key, conn.gen)));
                }
            }
        }
        self.metrics().bytes_out.fetch_add(written, Relaxed);
        written
    }

    /// Forgets a closed connection: socket, slab slot, presence, counters.
    fn remove(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        let core = &self.handle.core;
        let m = &core.metrics.shards[self.id];
        match conn.user.take() {
            Some(user) => {
                core.presence.remove(&user, self.id);
                core.ws_slots.fetch_sub(1, Relaxed);
                m.connections.fetch_sub(1, Relaxed);
                if let Some(keys) = self.users.get_mut(&user) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        self.users.remove(&user);
                    }
                }
                log::debug!("shard {}: websocket of user {user} closed", self.id);
            }
            None => {
                m.http_connections.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// One frame on its way to this shard's target connections, with the
/// counts of deliveries and slow-consumer drops it caused.
struct Delivery {
    frame: SharedFrame,
    cap: usize,
    now: Instant,
    sent: u64,
    dropped: u64,
}

impl Delivery {
    fn new(frame: SharedFrame, cfg: &crate::config::Config, now: Instant) -> Delivery {
        Delivery {
            frame,
            cap: cfg.outbound_buffer_bytes,
            now,
            sent: 0,
            dropped: 0,
        }
    }

    /// Queues the frame to one open WebSocket (others are skipped).
    fn to(&mut self, dirty: &mut Vec<usize>, key: usize, conn: &mut Conn) {
        if !conn.is_open_ws() {
            return;
        }
        if conn.push_frame(&self.frame, self.cap, self.now) {
            self.sent += 1;
        } else {
            self.dropped += 1;
        }
        Shard::mark_dirty(dirty, key, conn);
    }

    fn count(&self, m: &ShardMetrics) {
        m.messages_out.fetch_add(self.sent, Relaxed);
        if self.dropped > 0 {
            m.slow_consumer_drops.fetch_add(self.dropped, Relaxed);
        }
    }
}

/// A shard of the test bed ([`crate::server::sink_shards`]): the real
/// [`Shard`], holding open WebSocket connections whose sockets are in-memory
/// sinks, driven by its caller one step at a time instead of by [`Shard::run`].
///
/// It exists so the fan-out bench and tests measure the code a broadcast
/// really takes (`on_command` → `Delivery` → `Conn::push_frame` →
/// `flush_dirty` → `Conn::flush`) with only the kernel's socket writes left
/// out. The server never builds one. Timers never fire here: a sink never
/// answers a ping, so the first pong timeout would close every connection
/// in the middle of a measurement.
#[doc(hidden)]
pub struct SinkShard {
    shard: Shard,
    events: Events,
}

impl SinkShard {
    /// Wraps a shard with no listener and opens `conns` sink connections on it.
    pub(crate) fn new(shard: Shard, conns: usize) -> SinkShard {
        let mut s = SinkShard {
            shard,
            events: Events::with_capacity(8),
        };
        let now = Instant::now();
        let shards = s.shard.handle.core.config.shards;
        for i in 0..conns {
            // Numbered across shards as an accept loop would spread them,
            // ten connections per user as in the load test.
            let user = format!("user-{}", (i * shards + s.shard.id) / 10);
            s.open_sink(&user, now);
        }
        s
    }

    /// Opens one WebSocket of `user` on a sink and registers it as
    /// [`Shard::open_websocket`] does (presence, the shard's users, the
    /// counters), without the limits and without queuing the `101` or the
    /// greeting: a sink's count is then exactly what was sent to it later.
    fn open_sink(&mut self, user: &str, now: Instant) {
        let sh = &mut self.shard;
        let core = sh.handle.core.clone();
        let entry = sh.conns.vacant_entry();
        let key = entry.key();
        sh.next_gen = sh.next_gen.wrapping_add(1);
        let gen = sh.next_gen;
        let conn = entry.insert(Conn::new(
            Sock::Sink(Sink::default()),
            gen,
            now,
            &core.config,
        ));
        let id = ConnRef {
            shard: sh.id as u16,
            slot: key as u32,
            gen,
        }
        .to_id();
        let claims = crate::auth::UserClaims {
            user_id: user.to_string(),
            exp: u64::MAX,
        };
        let ws = WsState::new(
            &claims,
            id,
            Vec::new(),
            &core.config,
            core.verifier.leeway(),
            now,
        );
        let user: Arc<str> = ws.user.clone();
        conn.become_ws(ws);
        core.presence.try_add(&user, sh.id, usize::MAX);
        core.ws_slots.fetch_add(1, Relaxed);
        sh.users.entry(user).or_default().push(key);
        core.metrics.shards[sh.id].connections.fetch_add(1, Relaxed);
    }

    /// One broadcast to every connection straight through the shard, with
    /// no channel: `on_command(BroadcastAll)` then `flush_dirty`. Returns
    /// the bytes written.
    pub fn broadcast(&mut self, frame: SharedFrame) -> u64 {
        let now = Instant::now();
        self.shard.on_command(
            Command::BroadcastAll {
                frame,
                exclude: None,
            },
            now,
        );
        self.shard.flush_dirty(now)
    }

    /// One turn of the loop as [`Shard::run`] takes it, minus sockets and
    /// timers: waits on the shard's poll until the bus wakes it, drains the
    /// inbox, and writes what was queued. Returns the commands handled and
    /// the bytes written; `None` once every sender of the bus is gone (the
    /// shard has then started its shutdown, as a running one would).
    pub fn turn(&mut self) -> io::Result<Option<(u64, u64)>> {
        match self.shard.poll.poll(&mut self.events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some((0, 0))),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let before = self.shard.metrics().commands.load(Relaxed);
        // `run` polls again without waiting when the budget runs out; here
        // the waker will not fire again for commands already queued, so
        // this turn takes them all.
        while self.shard.drain_inbox(now) {}
        let commands = self.shard.metrics().commands.load(Relaxed) - before;
        let written = self.shard.flush_dirty(now);
        if self.shard.drain_deadline.is_some() {
            return Ok(None);
        }
        Ok(Some((commands, written)))
    }

    /// The shard's connections (open WebSockets and those closing).
    pub fn connections(&self) -> usize {
        self.shard.conns.len()
    }

    /// What each connection's sink took so far, modulo 2³².
    pub fn sink_bytes(&self) -> Vec<u32> {
        self.shard
            .conns
            .iter()
            .filter_map(|(_, c)| c.sock.sink().map(Sink::written))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::sink_shards;

    const PER_SHARD: usize = 50;

    fn config(outbound_buffer_bytes: usize) -> Config {
        Config {
            shards: 2,
            jwt_secret: Some("sink-test-secret".into()),
            outbound_buffer_bytes,
            ..Config::default()
        }
    }

    fn message(n: u64) -> SharedFrame {
        let json = format!(r#"{{"s":{n},"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#);
        let payload = serde_json::value::RawValue::from_string(json).expect("valid JSON");
        frame::shared_message("notification", Some(&payload))
    }

    #[test]
    fn broadcast_writes_each_frame_once_to_every_sink() {
        let (handle, mut shards) = sink_shards(config(1 << 20), PER_SHARD).expect("test bed");
        assert_eq!(handle.stats().total_connections, 2 * PER_SHARD);
        assert_eq!(handle.stats().total_users, 2 * PER_SHARD / 10);

        // Straight through the shard.
        let frame = message(1);
        let len = frame.len() as u64;
        for s in &mut shards {
            assert_eq!(s.broadcast(frame.clone()), PER_SHARD as u64 * len);
            assert_eq!(s.sink_bytes(), vec![len as u32; PER_SHARD]);
        }

        // Through the handle, the bus and each shard's waker and inbox.
        let kind = "notification";
        let payload = serde_json::json!({"s": 2});
        assert_eq!(handle.broadcast(kind, payload.clone(), None), 2 * PER_SHARD);
        let raw = frame::raw_payload(&payload);
        let len2 = frame::shared_message(kind, raw.as_deref()).len() as u64;
        for s in &mut shards {
            let turn = s.turn().expect("poll").expect("bus open");
            assert_eq!(turn, (1, PER_SHARD as u64 * len2));
            assert_eq!(s.sink_bytes(), vec![(len + len2) as u32; PER_SHARD]);
        }
        let stats = handle.stats();
        assert_eq!(stats.messages_out, 4 * PER_SHARD as u64);
        assert_eq!(stats.bytes_out, 2 * PER_SHARD as u64 * (len + len2));
    }

    #[test]
    fn sink_over_its_outbound_cap_is_dropped_as_a_slow_consumer() {
        let frame = message(1);
        let len = frame.len() as u64;
        // Room for exactly one frame.
        let (handle, mut shards) = sink_shards(config(frame.len()), PER_SHARD).expect("test bed");
        let bus = &handle.core.bus;
        for shard in 0..2 {
            // Two frames in one turn: a sink never blocks, so only a burst
            // between two flushes can overrun its queue.
            for _ in 0..2 {
                bus.send(
                    shard,
                    Command::BroadcastAll {
                        frame: frame.clone(),
                        exclude: None,
                    },
                );
            }
        }
        // 1008 "slow consumer", unmasked: 2 header bytes, 2 code bytes, reason.
        let close_len = 4 + CloseCode::Policy.reason().len() as u64;
        for s in &mut shards {
            let turn = s.turn().expect("poll").expect("bus open");
            // The first frame was dropped unsent along with the second:
            // only the close frame went out, and the connection is gone.
            assert_eq!(turn, (2, PER_SHARD as u64 * close_len));
            assert!(close_len < len);
            assert_eq!(s.connections(), 0);
        }
        let stats = handle.stats();
        assert_eq!(stats.total_connections, 0);
        assert_eq!(stats.total_users, 0);
        let drops: u64 = (0..2)
            .map(|i| {
                handle.core.metrics.shards[i]
                    .slow_consumer_drops
                    .load(Relaxed)
            })
            .sum();
        assert_eq!(drops, 2 * PER_SHARD as u64);
        assert_eq!(handle.core.ws_slots.load(Relaxed), 0);
    }
}
