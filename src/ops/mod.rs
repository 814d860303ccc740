//! The operations a backend can ask for (broadcast, send, disconnect,
//! status, stats), behind the public [`Handle`]: the REST routes and the
//! Rust library call the same functions, so both take one code path.
//!
//! An operation encodes its frame once, counts its targets from the
//! presence table, and hands commands to the owning shards through the bus.
//! It never waits for a shard: the count it returns is the number of
//! connections addressed when the call was accepted. When a target shard's
//! inbox is full it is refused whole before anything is queued ([`Busy`]),
//! and a disconnect takes its connections out of presence before their
//! shards close them, so no count includes what is going away. In cluster
//! mode it also queues the operation for the other nodes (counting their
//! connections only when the packet was queued); what they send back comes
//! in through [`LocalNode`], the narrow interface the cluster link sees.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::bus::{Busy, Command, ConnRef, Reserved};
use crate::cluster::wire::Body;
use crate::cluster::Cluster;
use crate::error::CloseCode;
use crate::frame;
use crate::history::targets;
use crate::metrics::Prom;
use crate::shared::Shared;

mod channels;
mod deliver;
mod node;
pub use channels::{ChannelCount, ChannelInfo, ChannelList};
pub(crate) use deliver::Numbering;

/// The most user ids a stats answer lists (`?limit=` above it is refused).
pub const MAX_STATS_USERS: usize = 10_000;

/// A handle on a running server: `Clone + Send + Sync`, cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

/// The answer of the stats route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total_connections: usize,
    pub total_users: usize,
    pub users: Vec<String>,
    pub users_truncated: bool,
    pub shards: Vec<ShardStats>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub uptime_seconds: u64,
    /// Channels with a subscriber (on every live node in cluster mode).
    pub total_channels: usize,
    /// Cluster mode only: every live node, this one included, sorted by id.
    /// The totals above are then cluster totals; `shards` stays this node's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeStats>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShardStats {
    pub id: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeStats {
    pub id: String,
    pub connections: usize,
}

impl Handle {
    /// Sends `{"type":kind,"payload":payload}` to every connection, or only
    /// to the connections of `user_ids` when given (an empty list addresses
    /// nobody). Returns the number of connections addressed; 0 also when it
    /// was refused because a shard's inbox is full (nothing was sent then;
    /// counted in `wsedge_commands_refused_total`).
    pub fn broadcast(&self, kind: &str, payload: Value, user_ids: Option<&[&str]>) -> usize {
        self.try_broadcast(kind, &payload, user_ids).unwrap_or(0)
    }

    pub(crate) fn try_broadcast(
        &self,
        kind: &str,
        payload: &Value,
        user_ids: Option<&[&str]>,
    ) -> Result<usize, Busy> {
        let raw = frame::raw_payload(payload);
        let ids: Option<Vec<String>> =
            user_ids.map(|ids| ids.iter().map(|s| s.to_string()).collect());
        self.try_broadcast_raw(kind, raw.as_deref(), ids.as_deref(), &[])
    }

    /// The broadcast every caller ends in: `payload` is already JSON (`None`
    /// sends `null`). Exclusion wins over inclusion. In cluster mode the
    /// other nodes get it too, and the count includes their connections.
    /// 0 when refused, as for [`Handle::broadcast`].
    pub fn broadcast_raw(
        &self,
        kind: &str,
        payload: Option<&RawValue>,
        user_ids: Option<&[String]>,
        exclude: &[String],
    ) -> usize {
        self.try_broadcast_raw(kind, payload, user_ids, exclude)
            .unwrap_or(0)
    }

    /// [`Handle::broadcast_raw`], telling a refusal apart: all of this
    /// node's target shards had room, or nothing was sent anywhere. In a
    /// cluster the message goes to Redis to be numbered and comes back to
    /// every node, this one included ([`Handle::deliver_local`]); while
    /// Redis is out of reach it goes to this node's connections only,
    /// unnumbered.
    pub(crate) fn try_broadcast_raw(
        &self,
        kind: &str,
        payload: Option<&RawValue>,
        user_ids: Option<&[String]>,
        exclude: &[String],
    ) -> Result<usize, Busy> {
        let Some(cluster) = &self.shared.cluster else {
            return self.deliver_local(kind, payload, user_ids, exclude, Numbering::Here);
        };
        let envelope = frame::envelope(kind, payload);
        // The envelope is JSON we just wrote.
        let queued = cluster.degraded().is_none()
            && serde_json::from_slice::<&RawValue>(&envelope).is_ok_and(|message| {
                cluster.publish_numbered(Body::Broadcast {
                    message,
                    users: user_ids.map(<[String]>::to_vec),
                    exclude: exclude.to_vec(),
                })
            });
        if !queued {
            // Redis is out of reach (or the queue to it full): this node's
            // connections only.
            return self.deliver_local(kind, payload, user_ids, exclude, Numbering::Unnumbered);
        }
        let presence = &self.shared.presence;
        Ok(match user_ids {
            Some(ids) => targets(ids, exclude)
                .map(|u| presence.count(u) + cluster.remote_user_count(u))
                .sum::<usize>(),
            None => {
                // Totals and exclusions from the same per-user counts.
                let set: HashSet<&str> = exclude.iter().map(String::as_str).collect();
                self.count_all_but(set.iter().copied()) + cluster.remote_count_except(&set)
            }
        })
    }

    /// Room in the inboxes of `shards`, or `Busy` (counted) when one is full.
    fn reserve(&self, shards: impl IntoIterator<Item = usize>) -> Result<Reserved<'_>, Busy> {
        self.shared.bus.reserve(shards).inspect_err(|_| {
            self.shared.metrics.commands_refused.fetch_add(1, Relaxed);
        })
    }

    /// Sends one command, built by `make` from that shard's share of
    /// `users`, to each shard holding any of them: to all such shards or,
    /// when one inbox is full, to none. Returns the connections addressed.
    fn to_shards_of<'u>(
        &self,
        users: impl IntoIterator<Item = &'u String>,
        mut make: impl FnMut(Vec<String>) -> Command,
    ) -> Result<usize, Busy> {
        let shards = self.shared.bus.shard_count();
        let mut per_shard: Vec<Vec<String>> = vec![Vec::new(); shards];
        let mut total = 0usize;
        for user in users {
            for (shard, n) in self.shared.presence.shards_of(user) {
                total += n as usize;
                if let Some(list) = per_shard.get_mut(shard) {
                    list.push(user.clone());
                }
            }
        }
        let targets = per_shard.iter().enumerate().filter(|(_, u)| !u.is_empty());
        let mut room = self.reserve(targets.map(|(i, _)| i))?;
        for (shard, users) in per_shard.into_iter().enumerate() {
            if !users.is_empty() {
                room.send(shard, make(users));
            }
        }
        Ok(total)
    }

    /// Sends to every connection of one user; returns the connections addressed
    /// (0 when the user is not connected, or when refused as for
    /// [`Handle::broadcast`]).
    pub fn send_to_user(&self, user_id: &str, kind: &str, payload: Value) -> usize {
        self.send_to_user_raw(user_id, kind, frame::raw_payload(&payload).as_deref())
    }

    pub fn send_to_user_raw(&self, user_id: &str, kind: &str, payload: Option<&RawValue>) -> usize {
        self.broadcast_raw(kind, payload, Some(&[user_id.to_string()]), &[])
    }

    pub fn is_user_connected(&self, user_id: &str) -> bool {
        self.connection_count(user_id) > 0
    }

    /// Connections of `user_id`, on every live node in cluster mode.
    pub fn connection_count(&self, user_id: &str) -> usize {
        self.shared.presence.count(user_id) + self.remote_user_count(user_id)
    }

    /// Connections of `user_id` on other live nodes (0 on a single node).
    pub(crate) fn remote_user_count(&self, user_id: &str) -> usize {
        self.shared
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_user_count(user_id))
    }

    /// `Some(reason)` while cluster mode cannot reach Redis, or no JWKS
    /// keys are loaded yet (`/healthz`).
    pub fn degraded(&self) -> Option<String> {
        let reasons: Vec<String> = [
            self.shared.cluster.as_deref().and_then(Cluster::degraded),
            self.shared.verifier.jwks().and_then(|j| j.degraded()),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Closes every connection of a user, on every node in cluster mode:
    /// `4000` when it may reconnect, `4500` when not. Returns how many
    /// connections were asked to close (0 also when refused because a
    /// shard's inbox is full: then none was). From the return on, they count
    /// nowhere (status, sends, stats, the per-user limit) although each
    /// may take its close handshake (up to 3 s) to go; a connection the
    /// user opens after the call stays open and counts.
    pub fn disconnect_user(&self, user_id: &str, reconnect: bool) -> usize {
        self.try_disconnect_user(user_id, reconnect).unwrap_or(0)
    }

    pub(crate) fn try_disconnect_user(
        &self,
        user_id: &str,
        reconnect: bool,
    ) -> Result<usize, Busy> {
        let code = CloseCode::disconnect(reconnect);
        let local = self.disconnect_local(user_id, code)?;
        let Some(cluster) = &self.shared.cluster else {
            return Ok(local);
        };
        let remote = cluster.remote_user_count(user_id);
        let published = cluster.publish(Body::Disconnect {
            user: user_id.to_string(),
            code: code.code(),
        });
        if !published {
            return Ok(local);
        }
        // The other nodes take the user out of their presence when the
        // packet arrives, and their change comes back within ~50 ms; until
        // then this node's copies must not count the connections either.
        cluster.forget_user(user_id);
        Ok(local + remote)
    }

    /// Closes the connections of `user_id` on this node only: takes them
    /// out of presence now, and asks their shards to close exactly those.
    /// Room is reserved in every shard first (disconnects are rare), so a
    /// connection registered meanwhile on any shard can be taken too.
    pub(crate) fn disconnect_local(&self, user_id: &str, code: CloseCode) -> Result<usize, Busy> {
        let mut room = self.reserve(0..self.shared.bus.shard_count())?;
        let conns = self.shared.presence.take_user(user_id);
        let total = conns.len();
        let mut per_shard: Vec<Vec<ConnRef>> = vec![Vec::new(); self.shared.bus.shard_count()];
        for c in conns {
            if let Some(list) = per_shard.get_mut(usize::from(c.shard)) {
                list.push(c);
            }
        }
        for (shard, conns) in per_shard.into_iter().enumerate() {
            if !conns.is_empty() {
                room.send(shard, Command::Close { conns, code });
            }
        }
        Ok(total)
    }

    /// Closes one connection by its `connectionId`, taking it out of
    /// presence at once as [`Handle::disconnect_user`] does. False when the
    /// id names no connection that counts on this node (malformed, stale,
    /// already closing) or its shard's inbox is full. Connection ids are
    /// per node: in cluster mode this closes a connection of this node only.
    pub fn disconnect_connection(&self, connection_id: &str, reconnect: bool) -> bool {
        let Some(conn) = ConnRef::parse(connection_id) else {
            return false;
        };
        let shard = usize::from(conn.shard);
        if shard >= self.shared.bus.shard_count() {
            return false;
        }
        let Ok(mut room) = self.reserve([shard]) else {
            return false;
        };
        if !self.shared.presence.take_conn(conn) {
            return false;
        }
        let code = CloseCode::disconnect(reconnect);
        room.send(
            shard,
            Command::Close {
                conns: vec![conn],
                code,
            },
        )
    }

    /// Counters and up to 1000 connected user ids.
    pub fn stats(&self) -> Stats {
        self.stats_limited(1000)
    }

    /// Counters and up to `limit` (at most 10,000) connected
    /// user ids, in no particular order. Only the ids returned are copied;
    /// `total_users` and `users_truncated` are exact.
    pub fn stats_limited(&self, limit: usize) -> Stats {
        let limit = limit.min(MAX_STATS_USERS);
        let presence = &*self.shared.presence;
        let (mut users, local_users) = presence.users(limit);
        let mut stats = Stats {
            total_users: local_users,
            ..self.node_stats()
        };
        if let Some(cluster) = &self.shared.cluster {
            let room = limit.saturating_sub(users.len());
            let (remote_only, page) = cluster.remote_users(presence, room);
            stats.total_users += remote_only;
            users.extend(page);
            let mut nodes = vec![NodeStats {
                id: cluster.node_id.clone(),
                connections: stats.total_connections,
            }];
            for (id, c) in cluster.remote_nodes() {
                stats.total_connections += c.connections as usize;
                stats.messages_in += c.messages_in;
                stats.messages_out += c.messages_out;
                stats.bytes_out += c.bytes_out;
                nodes.push(NodeStats {
                    id,
                    connections: c.connections as usize,
                });
            }
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            stats.nodes = Some(nodes);
        }
        stats.users_truncated = stats.total_users > users.len();
        stats.users = users;
        stats
    }

    /// This node's own counters, users left empty.
    fn node_stats(&self) -> Stats {
        let m = &self.shared.metrics;
        let per_shard = self.shared.presence.per_shard();
        Stats {
            total_connections: per_shard.iter().sum(),
            total_users: 0,
            users: Vec::new(),
            users_truncated: false,
            shards: per_shard
                .into_iter()
                .enumerate()
                .map(|(id, connections)| ShardStats { id, connections })
                .collect(),
            messages_in: m.sum(|s| &s.messages_in),
            messages_out: m.sum(|s| &s.messages_out),
            bytes_out: m.sum(|s| &s.bytes_out),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            total_channels: self.shared.channels.counts().all_channels,
            nodes: None,
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let presence = &self.shared.presence;
        let mut text = self.shared.metrics.render(
            &presence.per_shard(),
            presence.user_count(),
            self.shared.started.elapsed().as_secs(),
        );
        let counts = self.shared.channels.counts();
        let mut p = Prom::new(&mut text);
        p.single(
            "wsedge_channels",
            "Channels with a subscriber on this node.",
            "gauge",
            counts.channels as u64,
        );
        p.single(
            "wsedge_channel_subscriptions",
            "Channel subscriptions of this node's connections.",
            "gauge",
            counts.subscriptions as u64,
        );
        p.single(
            "wsedge_channel_publishes_total",
            "Channel publishes accepted.",
            "counter",
            self.shared.metrics.channel_publishes.load(Relaxed),
        );
        let (entries, bytes) = self.shared.history.usage();
        let mut p = Prom::new(&mut text);
        p.single(
            "wsedge_history_entries",
            "Messages kept for recovery, all streams.",
            "gauge",
            entries as u64,
        );
        p.single(
            "wsedge_history_bytes",
            "Bytes of the messages kept for recovery (frames plus bookkeeping), bounded by --history-max-bytes.",
            "gauge",
            bytes as u64,
        );
        if let Some(jwks) = self.shared.verifier.jwks() {
            jwks.render(&mut Prom::new(&mut text));
        }
        if let Some(c) = &self.shared.cluster {
            c.render_metrics(&mut text);
        }
        text
    }
}
