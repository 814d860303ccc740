//! Cluster mode: several nodes behave as one service through Redis pub/sub
//! (docs/PROTOCOL.md §9).
//!
//! Data flow: a REST or library call on this node fans out locally through
//! the bus as on a single node, and `Cluster::publish` queues the same
//! operation for the other nodes. The publisher thread (`link`) sends it on
//! the cluster channel; every other node's subscriber thread hands it to its
//! own shards with the single-node path, through [`LocalNode`]: the link
//! sees only that small interface of this node, never the whole handle.
//! Channel publishes and subscribes of users travel the same way (every
//! node gets every publish; one with no subscriber drops it). Presence is
//! cluster-wide through a [`view::View`] of the other nodes, fed by
//! presence changes and heartbeats on the same channel; the other nodes'
//! channel subscriptions come with the presence changes, and the
//! subscriber thread hands their changes ([`subs::SubDelta`]) to this
//! node's channel directory.
//!
//! What it must never do: make a shard (or any REST call) wait on Redis.
//! Publishing is a push into a queue bounded in packets and bytes
//! (`outbox`); when Redis is down or slow the queue overflows into a
//! counter, the caller learns its packet was dropped, and local delivery
//! goes on.

mod link;
mod outbox;
pub(crate) mod sequence;
pub(crate) mod subs;
mod subscriber;
pub(crate) mod view;
pub(crate) mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::CloseCode;
use crate::metrics::Prom;

pub(crate) use link::spawn;
use outbox::Outbox;
use outbox::Outgoing;
use sequence::Seq;
use view::View;
pub(crate) use view::{LocalUsers, NodeCounters};
use wire::{Body, Names, Packet};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent this long no longer counts (its connections leave presence
/// and stats). Three missed heartbeats.
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// How often presence changes are sent (they are batched in between).
pub const PRESENCE_FLUSH: Duration = Duration::from_millis(20);
/// Packets waiting for the publisher before new ones are dropped.
const OUTBOX: usize = 100_000;
/// Bytes of packets waiting for (or being written by) the publisher before
/// new ones are dropped. The packet bound alone let a Redis that stops
/// reading pin 100,000 broadcasts of up to `--max-body-bytes` each (100 GB
/// at the default 1 MiB). 64 MiB is twice what Redis itself buffers for a
/// pub/sub reader by default (`client-output-buffer-limit pubsub 32mb`):
/// more than a Redis that keeps up ever needs, yet small beside a node's
/// memory.
const OUTBOX_BYTES: usize = 64 << 20;

/// What the cluster link may ask of this node.
pub(crate) trait LocalNode: Send + Sync + 'static {
    /// Fans a message out to this node's connections (`envelope` is the
    /// encoded `{"type","payload"}`), under the numbers Redis gave it
    /// (`None`: a packet of a node that did not number it).
    fn deliver(
        &self,
        envelope: &[u8],
        users: Option<&[String]>,
        exclude: &[String],
        seq: Option<&Seq>,
    );
    /// Delivers a channel message to this node's subscribers, as
    /// [`LocalNode::deliver`] does.
    fn publish(&self, channel: &str, envelope: &[u8], seq: Option<&Seq>);
    /// Keeps a numbered packet read back from the cluster's history log
    /// (sent `age` ago) in this node's history, without delivering it.
    fn remember(&self, seq: &Seq, body: &Body<'_>, age: Duration);
    /// Delivers a message this node queued for numbering that could not
    /// reach Redis, to this node's connections only, unnumbered.
    fn fall_back(&self, packet: &[u8]);
    /// This node's history epoch (proposed to Redis when it has none).
    fn epoch(&self) -> String;
    /// The cluster's history epoch, read from Redis.
    fn adopt_epoch(&self, epoch: &str);
    /// Streams' last offsets read from Redis (`sequence::streams` names).
    fn raise_offsets(&self, offsets: &[(String, u64)]);
    /// Whether this node knows every stream's last offset (it has read
    /// them from Redis since its subscription started): until it does, no
    /// client recovers here.
    fn history_complete(&self, complete: bool);
    /// Subscribes (or unsubscribes) `users`' connections here to `channel`.
    fn subscribe_users(&self, channel: &str, users: &[String], subscribe: bool);
    /// Closes a user's connections on this node.
    fn disconnect(&self, user: &str, code: CloseCode);
    /// Every user connected here, with their connection count.
    fn presence_snapshot(&self) -> Vec<(String, usize)>;
    /// Users whose count changed since the last call, with the new count.
    fn presence_changes(&self) -> Vec<(String, usize)>;
    /// Every channel subscription here, as `("<channel> <user>", connections)`.
    fn subs_snapshot(&self) -> Vec<(String, u32)>;
    /// Subscriptions whose count changed since the last call (0: gone).
    fn subs_changes(&self) -> Vec<(String, u32)>;
    /// The other nodes' subscriptions changed: count them in this node's
    /// channels, and tell its presence subscribers who joined or left.
    fn remote_subs(&self, deltas: Vec<subs::SubDelta>);
    /// This node's counters, for the heartbeat.
    fn counters(&self) -> NodeCounters;
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--redis-url: {0}")]
    Url(String),
}

/// Link health and traffic counters (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct LinkStats {
    pub publisher_up: AtomicBool,
    pub subscriber_up: AtomicBool,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub malformed: AtomicU64,
}

/// This node's membership in a cluster.
pub(crate) struct Cluster {
    pub node_id: String,
    /// Random per process: a restarted node with the same id is a new run.
    pub inc: u64,
    pub names: Names,
    client: redis::Client,
    /// `host:port` of Redis, for logs and `/healthz` (never the password).
    pub redis_addr: String,
    outbox: Outbox,
    view: Mutex<View>,
    /// Entries the cluster's history log keeps (0: none, history is off).
    history_log: usize,
    pub stats: LinkStats,
    pub stop: AtomicBool,
}

impl Cluster {
    pub fn new(
        url: &str,
        node_id: String,
        cluster_name: &str,
        history_log: usize,
    ) -> Result<Cluster, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::Url(e.to_string()))?;
        let redis_addr = client.get_connection_info().addr().to_string();
        Ok(Cluster {
            node_id,
            inc: rand::random::<u64>() >> 1,
            names: Names::new(cluster_name),
            client,
            redis_addr,
            outbox: Outbox::new(OUTBOX, OUTBOX_BYTES),
            view: Mutex::new(View::new(NODE_TTL)),
            history_log,
            stats: LinkStats::default(),
            stop: AtomicBool::new(false),
        })
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `body` for the other nodes; never blocks. False (and
    /// counted in `wsedge_cluster_dropped_total`) when the queue is full
    /// because Redis is down or slow: then the other nodes will not get it.
    pub fn publish(&self, body: Body<'_>) -> bool {
        self.queue(body, false)
    }

    /// Queues a message (a broadcast, a send, a channel publish) for Redis
    /// to number on its streams and publish to every node, this one
    /// included; as [`Cluster::publish`] otherwise.
    pub fn publish_numbered(&self, body: Body<'_>) -> bool {
        self.queue(body, true)
    }

    fn queue(&self, body: Body<'_>, numbered: bool) -> bool {
        let streams = if numbered {
            sequence::streams(&body)
        } else {
            Vec::new()
        };
        let packet = wire::encode(&Packet {
            node: self.node_id.as_str().into(),
            inc: self.inc,
            body,
        });
        let queued = self.outbox.push(Outgoing { packet, streams });
        if !queued {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
        queued
    }

    /// Connections `user` holds on the other live nodes.
    pub fn remote_user_count(&self, user: &str) -> usize {
        self.view().user_count(user, Instant::now())
    }

    /// Stops counting `user` on the other nodes until their next change of
    /// it: they were just asked to disconnect it.
    pub fn forget_user(&self, user: &str) {
        self.view().forget_user(user);
    }

    /// Connections on the other live nodes of every user but `exclude`'s.
    pub fn remote_count_except(&self, exclude: &HashSet<&str>) -> usize {
        self.view().count_all_except(exclude, Instant::now())
    }

    /// The other live nodes with their counters; `connections` is the sum
    /// of each one's per-user counts, as fresh as they are.
    pub fn remote_nodes(&self) -> Vec<(String, NodeCounters)> {
        self.view().nodes(Instant::now())
    }

    /// Users of the other live nodes that `local` does not hold: how many,
    /// and up to `limit` of them.
    pub fn remote_users(&self, local: &dyn LocalUsers, limit: usize) -> (usize, Vec<String>) {
        self.view().users_not_local(local, limit, Instant::now())
    }

    /// `Some(reason)` while the link to Redis is down.
    pub fn degraded(&self) -> Option<String> {
        let up = self.stats.publisher_up.load(Relaxed) && self.stats.subscriber_up.load(Relaxed);
        (!up).then(|| {
            format!(
                "redis at {} unreachable; delivering to this node's connections only",
                self.redis_addr
            )
        })
    }

    /// Prometheus lines for the cluster link.
    pub fn render_metrics(&self, o: &mut String) {
        let s = &self.stats;
        let mut p = Prom::new(o);
        p.single(
            "wsedge_cluster_redis_up",
            "1 while both Redis connections work.",
            "gauge",
            u64::from(self.degraded().is_none()),
        );
        p.single(
            "wsedge_cluster_nodes",
            "Live nodes in the cluster, this one included.",
            "gauge",
            self.remote_nodes().len() as u64 + 1,
        );
        for (name, help, counter) in [
            (
                "wsedge_cluster_published_total",
                "Packets published to the cluster channel.",
                &s.published,
            ),
            (
                "wsedge_cluster_received_total",
                "Packets received from other nodes.",
                &s.received,
            ),
            (
                "wsedge_cluster_dropped_total",
                "Packets not published because Redis was down or slow (the queue to it was full).",
                &s.dropped,
            ),
            (
                "wsedge_cluster_malformed_total",
                "Packets on the channel that could not be read.",
                &s.malformed,
            ),
        ] {
            p.single(name, help, "counter", counter.load(Relaxed));
        }
    }
}

/// `hostname:port`, the default `--node-id`.
pub fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsedge".to_string());
    format!("{host}:{port}")
}
