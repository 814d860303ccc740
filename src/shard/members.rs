//! Channel membership of one shard's connections, and what changes it: a
//! client's `subscribe`/`unsubscribe` (handed over by its session as a
//! [`ChannelOp`]), the management API's subscribe/unsubscribe, and a
//! connection going away. Every change goes through [`Shard::join`] and
//! [`Shard::part`], which keep this shard's table, the connection's own list
//! and the node's [`crate::channels::Directory`] in step, and send the
//! `join`/`leave` presence events the directory calls for.
//!
//! A channel message reaches the connections listed here for its channel,
//! never by scanning the slab.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::Shard;
use crate::conn::ChannelOp;
use crate::frame;

/// One subscribed connection of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its slab key.
    pub key: usize,
    /// It asked for `join`/`leave` events.
    pub presence: bool,
}

/// This shard's subscribers, per channel.
#[derive(Debug, Default)]
pub(crate) struct Members {
    map: HashMap<Arc<str>, Vec<Member>>,
}

impl Members {
    fn add(&mut self, channel: &Arc<str>, member: Member) {
        self.map.entry(channel.clone()).or_default().push(member);
    }

    fn remove(&mut self, channel: &str, key: usize) {
        if let Some(list) = self.map.get_mut(channel) {
            list.retain(|m| m.key != key);
            if list.is_empty() {
                self.map.remove(channel);
            }
        }
    }

    /// The subscribers of `channel` on this shard.
    pub fn of(&self, channel: &str) -> &[Member] {
        self.map.get(channel).map_or(&[], Vec::as_slice)
    }
}

impl Shard {
    /// Applies what a session accepted.
    pub(super) fn apply_channel_op(&mut self, key: usize, op: ChannelOp) {
        match op {
            ChannelOp::Subscribe { channel, presence } => {
                self.join(key, &channel, presence);
            }
            ChannelOp::Unsubscribe { channel } => {
                self.part(key, &channel);
            }
        }
    }

    /// Subscribes connection `key` to `channel` and answers `subscribed`
    /// (or an `error` over the per-connection limit). True when it was
    /// not subscribed before.
    pub(super) fn join(&mut self, key: usize, channel: &Arc<str>, presence: bool) -> bool {
        let max = self.ctx.config.max_channels_per_connection;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(user) = conn.user().cloned() else {
            return false;
        };
        let added = conn.add_subscription(channel, max);
        // Subscribing twice is not an error: `subscribed` again.
        let answer = if added || conn.is_subscribed(channel) {
            frame::channel_ack("subscribed", channel)
        } else {
            let message =
                format!("too many channels on this connection (at most {max}): {channel}");
            frame::channel_error(&message, channel)
        };
        conn.send_text(answer);
        Self::mark_dirty(&mut self.dirty, key, conn);
        if !added {
            return false;
        }
        self.members.add(channel, Member { key, presence });
        if self.ctx.channels.join(channel, &user, self.id) {
            self.presence_event("join", channel, &user);
        }
        true
    }

    /// Unsubscribes connection `key` from `channel` and answers
    /// `unsubscribed`. True when it was subscribed.
    pub(super) fn part(&mut self, key: usize, channel: &str) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let removed = conn.remove_subscription(channel);
        conn.send_text(frame::channel_ack("unsubscribed", channel));
        Self::mark_dirty(&mut self.dirty, key, conn);
        let Some(user) = conn.user().cloned() else {
            return false;
        };
        if removed {
            self.leave(key, channel, &user);
        }
        removed
    }

    /// Takes connection `key` out of every channel it is in (it is going).
    pub(super) fn part_all(&mut self, key: usize, user: &Arc<str>, channels: Vec<Arc<str>>) {
        for channel in channels {
            self.leave(key, &channel, user);
        }
    }

    fn leave(&mut self, key: usize, channel: &str, user: &Arc<str>) {
        self.members.remove(channel, key);
        if self.ctx.channels.leave(channel, user, self.id) {
            self.presence_event("leave", channel, user);
        }
    }

    /// Sends a `join`/`leave` of `user` to the presence subscribers of
    /// `channel` here (this shard too, through its own inbox); dropped, and
    /// counted, when an inbox is full.
    fn presence_event(&self, kind: &str, channel: &str, user: &str) {
        let ctx = &self.ctx;
        if ctx
            .bus
            .presence_event(&ctx.channels, kind, channel, user)
            .is_err()
        {
            ctx.metrics
                .commands_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Queues a channel's message to its subscribers here (with
    /// `presence_only`, to those that asked for presence events).
    pub(super) fn publish_here(
        &mut self,
        channel: &str,
        frame: &frame::SharedFrame,
        presence_only: bool,
        now: Instant,
    ) -> (u64, u64) {
        let cap = self.ctx.config.outbound_buffer_bytes;
        let (mut sent, mut dropped) = (0, 0);
        for m in self.members.of(channel) {
            if presence_only && !m.presence {
                continue;
            }
            let Some(conn) = self.conns.get_mut(m.key) else {
                continue;
            };
            if !conn.is_open_ws() {
                continue;
            }
            if conn.push_frame(frame, cap, now) {
                sent += 1;
            } else {
                dropped += 1;
            }
            Self::mark_dirty(&mut self.dirty, m.key, conn);
        }
        (sent, dropped)
    }
}
