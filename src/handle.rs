//! The operations a backend can ask for (broadcast, send, disconnect, status,
//! stats), shared by the REST routes and the Rust library handle so both
//! take one code path.
//!
//! An operation encodes its frame once, counts its targets from the
//! presence table, and hands commands to the owning shards through the bus.
//! It never waits for a shard: the count it returns is the number of
//! connections addressed when the call was accepted.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::auth::Verifier;
use crate::bus::{Bus, Command};
use crate::cluster::wire::Body;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::CloseCode;
use crate::frame;
use crate::metrics::Metrics;
use crate::presence::Presence;

/// What an embedding application does with a client's message. The default,
/// [`EchoHandler`], answers with `{"type":"echo",...}`.
pub trait MessageHandler: Send + Sync + 'static {
    /// Called for every client message that is a JSON object with a string
    /// `type` other than `refresh`. The returned value, if any, is sent back
    /// to that connection.
    fn on_message(&self, user_id: &str, connection_id: &str, message: &Value) -> Option<Value>;

    /// Called first for every data message, before any JSON parsing. The
    /// default, [`RawVerdict::Json`], goes on with the JSON handling above
    /// (and `refresh`); a handler that speaks another protocol answers here.
    fn on_raw(&self, _user_id: &str, _connection_id: &str, _data: Data<'_>) -> RawVerdict {
        RawVerdict::Json
    }

    /// Whether a new connection is greeted with `{"type":"connected",...}`
    /// (the default). A handler that speaks another protocol turns it off.
    fn sends_connected(&self) -> bool {
        true
    }
}

/// A data message as received.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// What [`MessageHandler::on_raw`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawVerdict {
    /// Handle the message as JSON (the default).
    Json,
    /// Answer with this text message.
    Text(String),
    /// Answer with this binary message.
    Binary(Vec<u8>),
    /// Neither handle nor answer it.
    Ignore,
}

/// Echoes every data message back unchanged, text as text and binary as
/// binary. Used for RFC 6455 conformance runs (`examples/echo_server.rs`).
#[derive(Debug, Default)]
pub struct RawEchoHandler;

impl MessageHandler for RawEchoHandler {
    fn on_message(&self, _user: &str, _conn: &str, _message: &Value) -> Option<Value> {
        None
    }
    fn on_raw(&self, _user: &str, _conn: &str, data: Data<'_>) -> RawVerdict {
        match data {
            Data::Text(t) => RawVerdict::Text(t.to_string()),
            Data::Binary(b) => RawVerdict::Binary(b.to_vec()),
        }
    }
    /// An echo peer gets back exactly what it sent, nothing unasked.
    fn sends_connected(&self) -> bool {
        false
    }
}

/// The default handler: echoes the message back (SPEC §3).
#[derive(Debug, Default)]
pub struct EchoHandler;

impl MessageHandler for EchoHandler {
    fn on_message(&self, _user: &str, _conn: &str, message: &Value) -> Option<Value> {
        Some(frame::echo(message))
    }
}

/// State shared by every shard, the REST routes and the handle.
pub(crate) struct Core {
    pub config: Config,
    pub verifier: Verifier,
    pub presence: Presence,
    pub metrics: Metrics,
    pub bus: Bus,
    pub started: Instant,
    pub handler: Arc<dyn MessageHandler>,
    /// A user token pre-filled in the test page (dev mode only).
    pub dev_user_token: Option<String>,
    /// WebSocket connections open or being opened, checked against `--max-connections`.
    pub ws_slots: std::sync::atomic::AtomicUsize,
    /// The link to the other nodes, in cluster mode (`--redis-url`).
    pub cluster: Option<Cluster>,
}

/// A handle on a running server: `Clone + Send + Sync`, cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) core: Arc<Core>,
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
    /// nobody). Returns the number of connections addressed.
    pub fn broadcast(&self, kind: &str, payload: Value, user_ids: Option<&[&str]>) -> usize {
        let raw = frame::raw_payload(&payload);
        let ids: Option<Vec<String>> =
            user_ids.map(|ids| ids.iter().map(|s| s.to_string()).collect());
        self.broadcast_raw(kind, raw.as_deref(), ids.as_deref(), &[])
    }

    /// The broadcast every caller ends in: `payload` is already JSON (`None`
    /// sends `null`). Exclusion wins over inclusion. In cluster mode the
    /// other nodes get it too, and the count includes their connections.
    pub fn broadcast_raw(
        &self,
        kind: &str,
        payload: Option<&RawValue>,
        user_ids: Option<&[String]>,
        exclude: &[String],
    ) -> usize {
        let envelope = frame::envelope(kind, payload);
        let local = self.deliver_local(&envelope, user_ids, exclude);
        let Some(cluster) = &self.core.cluster else {
            return local;
        };
        let remote = match user_ids {
            Some(ids) => distinct_targets(ids, exclude)
                .map(|u| cluster.remote_user_count(u))
                .sum::<usize>(),
            None => {
                let all: u64 = cluster
                    .remote_nodes()
                    .iter()
                    .map(|(_, c)| c.connections)
                    .sum();
                let excluded: usize = distinct_targets(exclude, &[])
                    .map(|u| cluster.remote_user_count(u))
                    .sum();
                (all as usize).saturating_sub(excluded)
            }
        };
        // The envelope is JSON we just wrote.
        if let Ok(message) = serde_json::from_slice::<&RawValue>(&envelope) {
            cluster.publish(Body::Broadcast {
                message,
                users: user_ids.map(<[String]>::to_vec),
                exclude: exclude.to_vec(),
            });
        }
        local + remote
    }

    /// Fans an encoded envelope out to this node's connections only (the
    /// single-node path, also taken by broadcasts from other nodes).
    /// Returns the connections addressed here.
    pub(crate) fn deliver_local(
        &self,
        envelope: &[u8],
        user_ids: Option<&[String]>,
        exclude: &[String],
    ) -> usize {
        let core = &self.core;
        let frame: frame::SharedFrame = Arc::from(frame::text_frame(envelope));
        core.metrics.broadcasts.fetch_add(1, Relaxed);
        match user_ids {
            Some(ids) => {
                let targets: Vec<&String> = distinct_targets(ids, exclude).collect();
                self.send_to_users(&frame, &targets)
            }
            None => {
                let exclude: HashSet<String> = exclude.iter().cloned().collect();
                let excluded: usize = exclude.iter().map(|u| core.presence.count(u)).sum();
                let total = core.metrics.connections().saturating_sub(excluded);
                let exclude = (!exclude.is_empty()).then(|| Arc::new(exclude));
                core.bus.send_all(|| Command::BroadcastAll {
                    frame: frame.clone(),
                    exclude: exclude.clone(),
                });
                total
            }
        }
    }

    /// Routes `frame` to the shards holding each user; returns the
    /// connections addressed.
    fn send_to_users(&self, frame: &frame::SharedFrame, users: &[&String]) -> usize {
        let shards = self.core.bus.shard_count();
        let mut per_shard: Vec<Vec<String>> = vec![Vec::new(); shards];
        let mut total = 0usize;
        for user in users {
            for (shard, n) in self.core.presence.shards_of(user) {
                total += n as usize;
                if let Some(list) = per_shard.get_mut(shard) {
                    list.push((*user).clone());
                }
            }
        }
        for (shard, users) in per_shard.into_iter().enumerate() {
            if !users.is_empty() {
                self.core.bus.send(
                    shard,
                    Command::SendUsers {
                        frame: frame.clone(),
                        users,
                    },
                );
            }
        }
        total
    }

    /// Sends to every connection of one user; returns the connections addressed
    /// (0 when the user is not connected).
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
        self.core.presence.count(user_id) + self.remote_user_count(user_id)
    }

    /// Connections of `user_id` on other live nodes (0 on a single node).
    pub(crate) fn remote_user_count(&self, user_id: &str) -> usize {
        self.core
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_user_count(user_id))
    }

    /// `Some(reason)` while cluster mode cannot reach Redis (`/healthz`).
    pub fn degraded(&self) -> Option<String> {
        self.core.cluster.as_ref().and_then(Cluster::degraded)
    }

    /// Closes every connection of a user, on every node in cluster mode:
    /// `4000` when it may reconnect, `4500` when not. Returns how many
    /// connections were asked to close.
    pub fn disconnect_user(&self, user_id: &str, reconnect: bool) -> usize {
        let code = if reconnect {
            CloseCode::Disconnected
        } else {
            CloseCode::DisconnectedNoReconnect
        };
        let local = self.disconnect_local(user_id, code);
        let Some(cluster) = &self.core.cluster else {
            return local;
        };
        let remote = cluster.remote_user_count(user_id);
        cluster.publish(Body::Disconnect {
            user: user_id.to_string(),
            code: code.code(),
        });
        local + remote
    }

    /// Closes the connections of `user_id` on this node only.
    pub(crate) fn disconnect_local(&self, user_id: &str, code: CloseCode) -> usize {
        let mut total = 0;
        for (shard, n) in self.core.presence.shards_of(user_id) {
            total += n as usize;
            self.core.bus.send(
                shard,
                Command::DisconnectUsers {
                    users: vec![user_id.to_string()],
                    code,
                },
            );
        }
        total
    }

    /// Closes one connection by its `connectionId`; false when the id is not
    /// well formed. A stale id (connection gone, slot reused) is ignored by
    /// the shard. Connection ids are per node: in cluster mode this closes
    /// a connection of this node only.
    pub fn disconnect_connection(&self, connection_id: &str, reconnect: bool) -> bool {
        let Some(conn) = crate::bus::ConnRef::parse(connection_id) else {
            return false;
        };
        let code = if reconnect {
            CloseCode::Disconnected
        } else {
            CloseCode::DisconnectedNoReconnect
        };
        self.core
            .bus
            .send(conn.shard as usize, Command::Close { conn, code })
    }

    /// Counters and up to 1000 connected user ids.
    pub fn stats(&self) -> Stats {
        self.stats_limited(1000)
    }

    pub fn stats_limited(&self, limit: usize) -> Stats {
        let m = &self.core.metrics;
        let Some(cluster) = &self.core.cluster else {
            let (users, users_truncated) = self.core.presence.users(limit);
            return Stats {
                total_connections: m.connections(),
                total_users: self.core.presence.user_count(),
                users,
                users_truncated,
                ..self.node_stats()
            };
        };
        let mut all: HashSet<String> = self.core.presence.all_users().into_iter().collect();
        cluster.remote_users(&mut all);
        let total_users = all.len();
        let mut users: Vec<String> = all.into_iter().collect();
        users.sort_unstable();
        let users_truncated = users.len() > limit;
        users.truncate(limit);
        let mut stats = self.node_stats();
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
        Stats {
            total_users,
            users,
            users_truncated,
            nodes: Some(nodes),
            ..stats
        }
    }

    /// This node's own counters, users left empty.
    fn node_stats(&self) -> Stats {
        let m = &self.core.metrics;
        Stats {
            total_connections: m.connections(),
            total_users: 0,
            users: Vec::new(),
            users_truncated: false,
            shards: m
                .shards
                .iter()
                .enumerate()
                .map(|(id, s)| ShardStats {
                    id,
                    connections: s.connections.load(Relaxed),
                })
                .collect(),
            messages_in: m.sum(|s| &s.messages_in),
            messages_out: m.sum(|s| &s.messages_out),
            bytes_out: m.sum(|s| &s.bytes_out),
            uptime_seconds: self.core.started.elapsed().as_secs(),
            nodes: None,
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut text = self.core.metrics.render(
            self.core.presence.user_count(),
            self.core.started.elapsed().as_secs(),
        );
        if let Some(c) = &self.core.cluster {
            c.render_metrics(&mut text);
        }
        text
    }
}

/// `ids` once each, without those in `exclude` (exclusion wins).
fn distinct_targets<'a>(
    ids: &'a [String],
    exclude: &'a [String],
) -> impl Iterator<Item = &'a String> + 'a {
    let exclude: HashSet<&String> = exclude.iter().collect();
    let mut seen = HashSet::new();
    ids.iter()
        .filter(move |u| !exclude.contains(u) && seen.insert(*u))
}
