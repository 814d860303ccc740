//! A reactor thread: one `mio::Poll`, a `Slab` of the connections it owns,
//! its command inbox, and a timer heap.
//!
//! The loop is thin: wait for readiness, hand each event to its connection
//! (`Conn::on_readable`), take commands from the inbox (at most
//! `INBOX_BUDGET` a turn so a busy channel cannot starve socket I/O; see
//! `commands`), fire due timers, then write every connection that got bytes
//! queued. A shard never blocks on a client, never waits on another shard,
//! and owns each of its connections for their whole life. WebSockets enter
//! and leave the shared tables through its [`registry::Registry`] only.
//!
//! `sink` lets the fan-out bench and tests drive the same shard one turn at
//! a time over in-memory sinks; the server never builds one.

mod commands;
mod members;
mod registry;
mod sink;

pub(crate) use registry::Registry;
pub use sink::{sink_shards, SinkShard};

use crate::ratelog::refusal;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::acceptor::Acceptor;
use crate::auth::Verifier;
use crate::bus::Bus;
use crate::bus::{ConnRef, Inbox};
use crate::channels::{Directory, Grants};
use crate::config::Config;
use crate::conn::{Conn, Env, Readable, Sock, TlsSock, WsEnv};
use crate::deflate::Agreement;
use crate::frame;
use crate::handler::MessageHandler;
use crate::history::{History, Resume};
use crate::http::{switching_protocols, Response};
use crate::metrics::{Metrics, ShardMetrics};
use crate::ops::Handle;
use crate::router::Router;
use crate::upgrade::Upgrade;

/// The token of the shard's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// The token of the shard's listening socket.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);

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

/// What a shard uses of the rest of the server: the configuration, the
/// counters (its own are `metrics.shards[id]`), what WebSocket sessions
/// need (verifier, message handler), and the router its connections hand
/// their requests to.
/// What a connection becomes a WebSocket with.
pub(crate) struct Opening {
    /// When its token expires (unix seconds).
    pub exp: u64,
    pub user: Arc<str>,
    pub grants: Grants,
    /// Send `connected` (the handler's choice).
    pub greet: bool,
    /// What it asks to recover.
    pub resume: Option<Resume>,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<Agreement>,
}

pub(crate) struct ShardCtx {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub handler: Arc<dyn MessageHandler>,
    pub router: Router,
    /// The node's channel directory, and the bus that carries presence
    /// events to the shards holding a channel's subscribers.
    pub channels: Arc<Directory>,
    pub bus: Bus,
    /// Stream offsets and recent messages: read when a connection opens or
    /// subscribes, for its starting offsets and what it missed.
    pub history: Arc<History>,
    /// What every accepted connection starts its TLS handshake from, when
    /// the port speaks TLS (`--tls-cert`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ShardCtx {
    pub fn new(handle: &Handle) -> ShardCtx {
        let s = &handle.shared;
        ShardCtx {
            config: s.config.clone(),
            metrics: s.metrics.clone(),
            verifier: s.verifier.clone(),
            handler: s.handler.clone(),
            router: Router::new(handle.clone()),
            channels: s.channels.clone(),
            bus: s.bus.clone(),
            history: s.history.clone(),
            tls: s.tls.as_ref().map(|t| t.config().clone()),
        }
    }
}

/// One reactor.
pub(crate) struct Shard {
    id: usize,
    poll: Poll,
    inbox: Inbox,
    /// This shard's listener (see [`crate::acceptor`]); `None` in the test bed.
    acceptor: Option<Acceptor>,
    conns: Slab<Conn>,
    next_gen: u32,
    registry: Registry,
    /// Channel membership of this shard's connections.
    members: members::Members,
    ctx: ShardCtx,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Connections with bytes to write or a state to settle this turn.
    dirty: Vec<usize>,
    /// Connections whose read stopped early (a WebSocket's message budget,
    /// an HTTP buffer full of pipelined requests): read again next turn.
    more_read: Vec<(usize, u32)>,
    /// Set by `Shutdown`: when the drain gives up.
    drain_deadline: Option<Instant>,
}

impl Shard {
    pub fn new(
        id: usize,
        poll: Poll,
        inbox: Inbox,
        acceptor: Option<Acceptor>,
        registry: Registry,
        ctx: ShardCtx,
    ) -> Shard {
        Shard {
            id,
            poll,
            inbox,
            acceptor,
            conns: Slab::new(),
            next_gen: 0,
            registry,
            members: Default::default(),
            ctx,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            more_read: Vec::new(),
            drain_deadline: None,
        }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.ctx.metrics.shards[self.id]
    }

    /// Runs until shutdown has drained (or its timeout passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut inbox_pending = false;
        loop {
            let timeout = self.poll_timeout(inbox_pending, Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {e}", self.id);
                    return;
                }
            }
            let now = Instant::now();
            let mut accept = self.acceptor.as_ref().is_some_and(|a| a.due(now));
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => accept = true,
                    Token(key) => {
                        let read = if ev.is_read_closed() || ev.is_error() {
                            Read::ToEnd
                        } else if ev.is_readable() {
                            Read::Fresh
                        } else {
                            Read::No
                        };
                        self.on_ready(key, read, now);
                    }
                }
            }
            for (key, gen) in std::mem::take(&mut self.more_read) {
                if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                    self.on_ready(key, Read::ToEnd, now);
                }
            }
            if accept {
                self.accept(now);
            }
            inbox_pending = self.take_commands(now);
            self.fire_timers(now);
            self.write_dirty(now);
            if self.drained(now) {
                break;
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

    /// How long the next poll may wait: not at all with work left over,
    /// else until the next timer or accept retry, at most `MAX_POLL_WAIT`.
    fn poll_timeout(&self, inbox_pending: bool, now: Instant) -> Duration {
        if inbox_pending || !self.more_read.is_empty() {
            return Duration::ZERO;
        }
        let timer = self
            .timers
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now));
        let accept = self.acceptor.as_ref().and_then(|a| a.timeout(now));
        [timer, accept]
            .into_iter()
            .flatten()
            .fold(MAX_POLL_WAIT, Duration::min)
    }

    /// After a shutdown: true once every connection is gone or the drain
    /// timeout passed.
    fn drained(&self, now: Instant) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if now >= deadline {
            log::warn!(
                "shard {}: drain timeout, dropping {} connections",
                self.id,
                self.conns.len()
            );
            return true;
        }
        false
    }

    /// What a connection may use while it handles an event. Built from the
    /// fields it borrows, so the slab stays free to lend a connection.
    fn env(ctx: &ShardCtx, id: usize, draining: bool, now: Instant) -> Env<'_> {
        Env {
            config: &ctx.config,
            dispatcher: &ctx.router,
            ws: WsEnv {
                verifier: &ctx.verifier,
                handler: &*ctx.handler,
                metrics: &ctx.metrics.shards[id],
                outbound_cap: ctx.config.outbound_buffer_bytes,
                max_channels: ctx.config.max_channels_per_connection,
                ops: Default::default(),
                now,
            },
            draining,
        }
    }

    /// Queues `key` to be written this turn.
    fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Conn) {
        if conn.mark_dirty() {
            dirty.push(key);
        }
    }

    /// Readiness on a connection: read what it has and act on it.
    fn on_ready(&mut self, key: usize, read: Read, now: Instant) {
        let env = Self::env(&self.ctx, self.id, self.drain_deadline.is_some(), now);
        let Some(conn) = self.conns.get_mut(key) else {
            return; // an event for a connection already gone
        };
        Self::mark_dirty(&mut self.dirty, key, conn);
        if read == Read::No {
            return;
        }
        let readable = conn.on_readable(&env, read == Read::ToEnd);
        let ops = env.ws.ops.take();
        match readable {
            Readable::Done => {}
            Readable::ReadAgain => self.more_read.push((key, conn.gen)),
            Readable::Upgrade(up) => self.open_websocket(key, up, now),
        }
        for op in ops {
            self.apply_channel_op(key, op);
        }
    }

    /// Registers an accepted upgrade (the limits are checked there) and
    /// turns the connection into a WebSocket, or answers the refusal.
    fn open_websocket(&mut self, key: usize, mut up: Upgrade, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let user: Arc<str> = Arc::from(up.claims.user_id.as_str());
        if let Err(e) = self.registry.register(key, conn.gen, &user) {
            refusal!("upgrade for user {user} refused: {e}");
            conn.respond(&Response::error(&e).with_close(true), now);
            return;
        }
        conn.queue(switching_protocols(&up.accept_key, up.deflate.as_ref()));
        let greet = self.ctx.handler.sends_connected();
        // Frames may have arrived with the request: with edge-triggered
        // readiness no new event will announce them. Otherwise a read here
        // would only return WouldBlock (one syscall per connect saved).
        let opening = Opening {
            exp: up.claims.exp,
            user,
            grants: Grants::new(std::mem::take(&mut up.claims.channels)),
            greet,
            resume: up.resume.take(),
            deflate: up.deflate,
        };
        if self.become_ws(key, opening, now) {
            self.on_ready(key, Read::ToEnd, now);
        }
    }

    /// Turns the connection `key`, registered under `o.user`, into a
    /// WebSocket, starting on its streams where the history is now (and
    /// replaying what it missed when it asks to recover). True when frames
    /// may already wait that no readiness event will announce.
    fn become_ws(&mut self, key: usize, o: Opening, now: Instant) -> bool {
        let env = Self::env(&self.ctx, self.id, self.drain_deadline.is_some(), now);
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let id = ConnRef {
            shard: self.id as u16,
            slot: key as u32,
            gen: conn.gen,
        }
        .to_id();
        log::debug!("shard {}: websocket {id} open for user {}", self.id, o.user);
        // Registered (in presence) before its offsets are read: a send
        // routed without it is at or below them.
        let history = &self.ctx.history;
        let s = history.start_connection(&o.user, o.resume.as_ref(), now);
        let start = frame::Start {
            epoch: &s.epoch,
            all: s.all,
            user: s.user,
            recovered: s.recovered,
        };
        conn.open_ws(
            o.exp, o.user, id, o.grants, o.greet, o.deflate, &start, s.replay, &env,
        )
    }

    /// Accepts what this shard's listener has queued (up to its budget).
    fn accept(&mut self, now: Instant) {
        let Some(mut acceptor) = self.acceptor.take() else {
            return;
        };
        let metrics = self.ctx.metrics.clone();
        acceptor.accept(now, &metrics, |sock| {
            let sock = match &self.ctx.tls {
                None => Sock::Tcp(sock),
                Some(config) => match TlsSock::new(sock, config.clone()) {
                    Ok(tls) => Sock::Tls(Box::new(tls)),
                    Err(e) => {
                        log::warn!("shard {}: cannot start TLS: {e}", self.id);
                        return;
                    }
                },
            };
            self.adopt(sock, now);
        });
        self.acceptor = Some(acceptor);
    }

    /// Takes a socket accepted here (or a test bed's sink) into the slab.
    /// Returns its key.
    fn adopt(&mut self, mut sock: Sock, now: Instant) -> Option<usize> {
        if self.drain_deadline.is_some() {
            return None; // shutting down: dropping the socket closes it
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= LISTENER.0 || !self.registry.open_http() {
            return None; // dropping the socket closes it
        }
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("shard {}: cannot register socket: {e}", self.id);
            return None;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let conn = entry.insert(Conn::new(sock, self.next_gen, now, &self.ctx.config));
        Self::mark_dirty(&mut self.dirty, key, conn);
        Some(key)
    }

    fn fire_timers(&mut self, now: Instant) {
        let env = Self::env(&self.ctx, self.id, self.drain_deadline.is_some(), now);
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
            conn.on_timer(at, &env);
            Self::mark_dirty(&mut self.dirty, key, conn);
        }
    }

    /// Writes every connection touched this turn, removes the closed ones,
    /// and keeps each one's timer armed. Returns the bytes written.
    fn write_dirty(&mut self, now: Instant) -> u64 {
        let mut written = 0u64;
        for key in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let w = conn.write_turn(&self.ctx.config, now);
            written += w.bytes;
            if conn.is_closed() {
                self.remove(key);
                continue;
            }
            if w.read_again {
                self.more_read.push((key, conn.gen));
            }
            if let Some(d) = w.arm {
                self.timers.push(Reverse((d, key, conn.gen)));
            }
        }
        self.metrics().bytes_out.fetch_add(written, Relaxed);
        written
    }

    /// Forgets a closed connection: socket, slab slot, and its registration.
    fn remove(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        let channels = conn.take_subscriptions();
        if let Some(user) = conn.user().cloned() {
            self.part_all(key, &user, channels);
        }
        self.registry.unregister(key, conn.gen, conn.take_user());
    }
}
