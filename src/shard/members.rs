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
    /// Its slab key (a shard's slab never reaches 2^32 connections).
    pub key: u32,
    /// It asked for `join`/`leave` events.
    pub presence: bool,
    /// The channel's offset when it subscribed: a message at or below it
    /// was replayed or predates the subscription, and is not delivered.
    pub floor: u64,
}

/// This shard's subscribers, per channel.
#[derive(Debug, Default)]
pub(crate) struct Members {
    map: HashMap<Arc<str>, Vec<Member>>,
}

impl Members {
    fn add(&mut self, channel: &Arc<str>, member: Member) {
        let list = self.map.entry(channel.clone()).or_default();
        if list.len() == list.capacity() {
            // Grow by a quarter, not double: idle subscriptions are paid for
            // in memory, and a quarter keeps appends amortized O(1).
            list.reserve_exact((list.len() / 4).max(4));
        }
        list.push(member);
    }

    fn remove(&mut self, channel: &str, key: usize) {
        if let Some(list) = self.map.get_mut(channel) {
            list.retain(|m| m.key as usize != key);
            if list.is_empty() {
                self.map.remove(channel);
            }
        }
    }

    /// The shard's own copy of the name `channel`, when it has
    /// subscribers here: every subscription holds that one, not a copy per
    /// connection (a name costs its length plus 16 bytes).
    fn intern(&self, channel: &Arc<str>) -> Arc<str> {
        self.map
            .get_key_value(&**channel)
            .map_or_else(|| channel.clone(), |(k, _)| k.clone())
    }

    /// Every subscription starts again at offset 0 (another epoch).
    pub fn reset_floors(&mut self) {
        for m in self.map.values_mut().flatten() {
            m.floor = 0;
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
            ChannelOp::Subscribe {
                channel,
                presence,
                recover,
            } => {
                let ask = recover.as_ref().map(|r| (r.epoch.as_str(), r.since));
                self.join(key, &channel, presence, ask);
            }
            ChannelOp::Unsubscribe { channel } => {
                self.part(key, &channel);
            }
        }
    }

    /// Subscribes connection `key` to `channel` and answers `subscribed`
    /// with the channel's offset (or an `error` over the per-connection
    /// limit), followed by what it missed when it asks to recover
    /// (`ask`: the epoch it saw and its last offset). True when it was not
    /// subscribed before.
    pub(super) fn join(
        &mut self,
        key: usize,
        channel: &Arc<str>,
        presence: bool,
        ask: Option<(&str, u64)>,
    ) -> bool {
        let max = self.ctx.config.max_channels_per_connection;
        let cap = self.ctx.config.outbound_buffer_bytes;
        let channel = &self.members.intern(channel);
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Some(user) = conn.user().cloned() else {
            return false;
        };
        let added = conn.add_subscription(channel, max);
        // Subscribing twice is not an error: `subscribed` again.
        if !added && !conn.is_subscribed(channel) {
            let message =
                format!("too many channels on this connection (at most {max}): {channel}");
            conn.send_text(frame::channel_error(&message, channel));
            Self::mark_dirty(&mut self.dirty, key, conn);
            return false;
        }
        // Into the directory first, then the offset: a publish routed
        // without this subscription is at or below it.
        let first = added && self.ctx.channels.join(channel, &user, self.id);
        let now = Instant::now();
        let history = &self.ctx.history;
        let start = history.start_subscription(channel, &user, ask, now);
        let ack = frame::subscribed(channel, start.offset, &start.epoch, start.recovered);
        conn.send_text(ack);
        for f in &start.replay {
            conn.push_frame(f, cap, now);
        }
        Self::mark_dirty(&mut self.dirty, key, conn);
        if !added {
            return false;
        }
        let member = Member {
            key: key as u32,
            presence,
            floor: start.offset,
        };
        self.members.add(channel, member);
        if first {
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
        offset: Option<u64>,
        presence_only: bool,
        now: Instant,
    ) -> (u64, u64) {
        let cap = self.ctx.config.outbound_buffer_bytes;
        let (mut sent, mut dropped) = (0, 0);
        for m in self.members.of(channel) {
            let before = offset.is_some_and(|o| o <= m.floor);
            if (presence_only && !m.presence) || (!presence_only && before) {
                continue;
            }
            let key = m.key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
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
            Self::mark_dirty(&mut self.dirty, key, conn);
        }
        (sent, dropped)
    }
}
