//! The channel operations behind [`Handle`] (docs/PROTOCOL.md §10): publish,
//! members, the channel list, and subscribing users from the backend. Like
//! every operation, a publish is encoded once, counted from the directory,
//! sent only to the shards that hold subscribers, and never waits for them.
//!
//! In cluster mode a publish and a subscribe of users also go to the other
//! nodes through the cluster link, in the same queue as broadcasts (so one
//! node's operations keep their order everywhere), and each node delivers
//! to its own subscribers. Every node gets every publish and drops it at
//! once when it holds no subscriber: a publish is never routed by another
//! node's possibly stale subscriber list, so a connection gets every
//! message published after its `subscribed`, wherever it was published.
//! Counts and member lists include the other nodes' subscribers, which
//! the link keeps in the directory.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::deliver::number;
use super::{Handle, Numbering};
use crate::bus::{Busy, Command};
use crate::channels::split_sub_key;
use crate::cluster::subs::SubDelta;
use crate::cluster::wire::Body;
use crate::frame;
use crate::history::{targets, Stream};

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
        let Some(cluster) = &self.shared.cluster else {
            let n = self.publish_local(channel, kind, payload, Numbering::Here)?;
            self.shared.metrics.channel_publishes.fetch_add(1, Relaxed);
            return Ok(n);
        };
        let envelope = frame::envelope(kind, payload);
        // The envelope is JSON we just wrote.
        let queued = cluster.degraded().is_none()
            && serde_json::from_slice::<&RawValue>(&envelope).is_ok_and(|message| {
                cluster.publish_numbered(Body::Publish {
                    channel: channel.to_string(),
                    message,
                })
            });
        let n = if queued {
            // Numbered by Redis, then delivered by every node, this one too.
            let here: u32 = self
                .shared
                .channels
                .shards_of(channel)
                .iter()
                .map(|(_, n)| *n)
                .sum();
            here as usize + self.shared.channels.remote_connections(channel)
        } else {
            self.publish_local(channel, kind, payload, Numbering::Unnumbered)?
        };
        self.shared.metrics.channel_publishes.fetch_add(1, Relaxed);
        Ok(n)
    }

    /// Numbers a message on `channel`'s stream and queues it to this node's
    /// subscribers only; returns how many were addressed.
    pub(crate) fn publish_local(
        &self,
        channel: &str,
        kind: &str,
        payload: Option<&RawValue>,
        numbering: Numbering<'_>,
    ) -> Result<usize, Busy> {
        let shared = &self.shared;
        // Routing and numbering under one lock, as for sends: a
        // subscription made meanwhile is routed to or starts after it.
        let mut history = shared.history.lock();
        if let Numbering::Cluster(seq) = numbering {
            self.follow_epoch(&mut history, &seq.epoch);
        }
        let shards = shared.channels.shards_of(channel);
        let room = self.room(shards.iter().map(|(s, _)| *s), numbering)?;
        let now = Instant::now();
        let numbered = number(
            &mut history,
            Stream::Channel(channel),
            0,
            numbering,
            now,
            None,
            |offset| frame::stream_message(kind, channel, offset, payload),
        );
        let (Some((offset, frame)), Ok(room)) = (numbered, room) else {
            return Err(Busy);
        };
        let name: Arc<str> = Arc::from(channel);
        room.send_all(|| Command::Publish {
            channel: name.clone(),
            frame: frame.clone(),
            offset,
            presence_only: false,
        });
        Ok(shards.iter().map(|(_, n)| *n as usize).sum())
    }

    /// Subscribes (or unsubscribes) every connection of `users` to
    /// `channel`, on every node in cluster mode, whatever their tokens
    /// allow; each gets `subscribed` (or `unsubscribed`). Returns the
    /// connections addressed.
    pub(crate) fn try_subscribe_users(
        &self,
        channel: &str,
        users: &[String],
        subscribe: bool,
    ) -> Result<usize, Busy> {
        let local = self.subscribe_local(channel, users, subscribe)?;
        let Some(cluster) = &self.shared.cluster else {
            return Ok(local);
        };
        let remote: usize = targets(users, &[])
            .map(|u| cluster.remote_user_count(u))
            .sum();
        let published = cluster.publish(Body::Subscribe {
            channel: channel.to_string(),
            users: users.to_vec(),
            subscribe,
        });
        Ok(if published { local + remote } else { local })
    }

    /// [`Handle::try_subscribe_users`] on this node only.
    pub(crate) fn subscribe_local(
        &self,
        channel: &str,
        users: &[String],
        subscribe: bool,
    ) -> Result<usize, Busy> {
        let name: Arc<str> = Arc::from(channel);
        self.to_shards_of(targets(users, &[]), |users| Command::SubscribeUsers {
            channel: name.clone(),
            users,
            subscribe,
        })
    }

    /// Counts the other nodes' subscription changes in the directory and
    /// sends this node's presence subscribers the `join`s and `leave`s
    /// they make (a user's first subscribed connection in the cluster, or
    /// its last).
    pub(crate) fn apply_remote_subs(&self, deltas: Vec<SubDelta>) {
        let (channels, bus) = (&self.shared.channels, &self.shared.bus);
        for d in deltas {
            let Some((channel, user)) = split_sub_key(&d.key) else {
                continue;
            };
            let Some(joined) = channels.remote_change(channel, user, d.delta) else {
                continue;
            };
            let kind = if joined { "join" } else { "leave" };
            if bus.presence_event(channels, kind, channel, user).is_err() {
                self.shared.metrics.commands_refused.fetch_add(1, Relaxed);
            }
        }
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
