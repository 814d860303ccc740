//! The channel operations behind [`Handle`] (docs/PROTOCOL.md §10): publish,
//! members, the channel list, and subscribing users from the backend. Like
//! every operation, a publish is encoded once, counted from the directory,
//! sent only to the shards that hold subscribers, and never waits for them.
//!
//! Channels are node-local for now: in cluster mode a publish reaches this
//! node's subscribers only.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::Handle;
use crate::bus::{Busy, Command};
use crate::frame;

/// A channel's subscribers (`GET /v1/websocket/channels/:channel`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelInfo {
    pub channel: String,
    pub connections: usize,
    pub users: Vec<String>,
    pub users_truncated: bool,
}

/// The channels with a subscriber (`GET /v1/websocket/channels`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelList {
    pub channels: Vec<ChannelCount>,
    pub total_channels: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChannelCount {
    pub channel: String,
    pub connections: usize,
}

impl Handle {
    /// Sends `{"type":kind,"channel":channel,"payload":payload}` to every
    /// connection subscribed to `channel`; returns how many (0 also when
    /// refused because a shard's inbox is full).
    pub fn publish(&self, channel: &str, kind: &str, payload: Value) -> usize {
        let raw = frame::raw_payload(&payload);
        self.try_publish(channel, kind, raw.as_deref()).unwrap_or(0)
    }

    pub(crate) fn try_publish(
        &self,
        channel: &str,
        kind: &str,
        payload: Option<&RawValue>,
    ) -> Result<usize, Busy> {
        let shards = self.shared.channels.shards_of(channel);
        let frame = frame::channel_message(kind, channel, payload);
        let total = self
            .shared
            .bus
            .publish(&shards, channel, frame, false)
            .inspect_err(|_| {
                self.shared.metrics.commands_refused.fetch_add(1, Relaxed);
            })?;
        self.shared.metrics.channel_publishes.fetch_add(1, Relaxed);
        Ok(total)
    }

    /// Subscribes (or unsubscribes) every connection of `users` to
    /// `channel`, whatever their tokens allow; each gets `subscribed` (or
    /// `unsubscribed`). Returns the connections addressed.
    pub(crate) fn try_subscribe_users(
        &self,
        channel: &str,
        users: &[String],
        subscribe: bool,
    ) -> Result<usize, Busy> {
        let name: Arc<str> = Arc::from(channel);
        self.to_shards_of(users, |users| Command::SubscribeUsers {
            channel: name.clone(),
            users,
            subscribe,
        })
    }

    /// `channel`'s subscribed connections and up to `limit` of its users.
    pub fn channel(&self, channel: &str, limit: usize) -> ChannelInfo {
        let (connections, users, users_truncated) = self
            .shared
            .channels
            .members(channel, limit)
            .unwrap_or_default();
        ChannelInfo {
            channel: channel.to_string(),
            connections,
            users,
            users_truncated,
        }
    }

    /// Up to `limit` channels with a subscriber, and how many there are.
    pub fn channels(&self, limit: usize) -> ChannelList {
        let (list, total_channels) = self.shared.channels.list(limit);
        ChannelList {
            channels: list
                .into_iter()
                .map(|(channel, connections)| ChannelCount {
                    channel,
                    connections,
                })
                .collect(),
            total_channels,
        }
    }
}
