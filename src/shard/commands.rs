//! What a shard does with the commands in its inbox: queue a broadcast's
//! shared frame to every target connection, close the connections a
//! disconnect named, and start the drain on shutdown.
//!
//! This is where a broadcast fans out: one `SharedFrame` (encoded once by
//! `ops`) is pushed by reference onto each target's outbound queue; the
//! write happens after, in the shard's write turn. Targets are found
//! through the registry's users index, never by scanning for one user.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;

use super::Shard;
use crate::bus::Command;
use crate::conn::{Conn, Own};
use crate::error::CloseCode;
use crate::frame::SharedFrame;
use crate::metrics::ShardMetrics;

/// Commands handled per loop turn.
const INBOX_BUDGET: usize = 1024;

impl Shard {
    /// Handles queued commands; true when the budget ran out first.
    pub(super) fn take_commands(&mut self, now: Instant) -> bool {
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

    pub(super) fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::BroadcastAll {
                frame,
                offset,
                exclude,
            } => {
                let mut d = Delivery::new(self.ctx.config.outbound_buffer_bytes, now);
                for (key, conn) in self.conns.iter_mut() {
                    let excluded = match (&exclude, conn.user()) {
                        (Some(ex), Some(user)) => ex.contains(&**user),
                        _ => false,
                    };
                    if !excluded {
                        d.to(&mut self.dirty, key, conn, Own::All, offset, &frame);
                    }
                }
                d.count(&self.ctx.metrics.shards[self.id]);
            }
            Command::SendUsers { items } => {
                let mut d = Delivery::new(self.ctx.config.outbound_buffer_bytes, now);
                for m in &items {
                    for &key in self.registry.connections_of(&m.user) {
                        if let Some(conn) = self.conns.get_mut(key) {
                            d.to(&mut self.dirty, key, conn, Own::User, m.offset, &m.frame);
                        }
                    }
                }
                d.count(&self.ctx.metrics.shards[self.id]);
            }
            Command::Close { conns, code } => {
                for r in conns {
                    let key = r.slot as usize;
                    // A reused slot has another generation: that one is stale.
                    if let Some(conn) = self.conns.get_mut(key).filter(|c| c.gen == r.gen) {
                        conn.close_for(code, now);
                        Self::mark_dirty(&mut self.dirty, key, conn);
                    }
                }
            }
            Command::Publish {
                channel,
                frame,
                offset,
                presence_only,
            } => {
                let (sent, dropped) =
                    self.publish_here(&channel, &frame, offset, presence_only, now);
                let m = &self.ctx.metrics.shards[self.id];
                m.messages_out.fetch_add(sent, Relaxed);
                if dropped > 0 {
                    m.slow_consumer_drops.fetch_add(dropped, Relaxed);
                }
            }
            Command::ResetFloors => {
                for (_, conn) in self.conns.iter_mut() {
                    conn.reset_floors();
                }
                self.members.reset_floors();
            }
            Command::SubscribeUsers {
                channel,
                users,
                subscribe,
            } => {
                for user in &users {
                    for key in self.registry.connections_of(user).to_vec() {
                        if subscribe {
                            self.join(key, &channel, false, None);
                        } else {
                            self.part(key, &channel);
                        }
                    }
                }
            }
            Command::Shutdown => self.start_drain(now),
        }
    }

    /// No new connections from here on; every connection closes (`1001`
    /// for WebSockets) within the drain timeout.
    fn start_drain(&mut self, now: Instant) {
        if let Some(a) = &mut self.acceptor {
            a.close(self.poll.registry());
        }
        let drain = Duration::from_secs(self.ctx.config.drain_timeout_secs);
        self.drain_deadline = Some(now + drain);
        let env = Self::env(&self.ctx, self.id, true, now);
        for (key, conn) in self.conns.iter_mut() {
            if conn.is_http() {
                // Requests already in the socket are answered first.
                conn.on_readable(&env, true);
            }
            conn.close_for(CloseCode::GoingAway, now);
            Self::mark_dirty(&mut self.dirty, key, conn);
        }
    }
}

/// One frame on its way to this shard's target connections, with the
/// counts of deliveries and slow-consumer drops it caused.
struct Delivery {
    cap: usize,
    now: Instant,
    sent: u64,
    dropped: u64,
}

impl Delivery {
    fn new(cap: usize, now: Instant) -> Delivery {
        Delivery {
            cap,
            now,
            sent: 0,
            dropped: 0,
        }
    }

    /// Queues message `offset` of one of the connection's own streams to
    /// an open WebSocket that started before it (others are skipped).
    fn to(
        &mut self,
        dirty: &mut Vec<usize>,
        key: usize,
        conn: &mut Conn,
        own: Own,
        offset: Option<u64>,
        frame: &SharedFrame,
    ) {
        if !conn.is_open_ws() {
            return;
        }
        if conn.push_own(own, offset, frame, self.cap, self.now) {
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
