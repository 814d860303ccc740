//! The WebSocket lifecycle in one place: a connection becomes a WebSocket
//! only through [`Registry::register`] and stops being one only through
//! [`Registry::unregister`]. Between them the pair owns everything that
//! must agree: the connection limits, the presence table, this shard's
//! users index, the server-wide slot count and the counters.
//!
//! One registry per shard, used on its thread only; what it shares with
//! other shards (presence, slots, counters) is behind atomics or striped
//! locks held for one map operation. It never touches a socket.
//!
//! A disconnect call may take a connection out of presence before its shard
//! closes it (see [`crate::presence`]): then the connection stays in the
//! users index and holds its `--max-connections` slot until it is removed,
//! but counts nowhere else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::bus::ConnRef;
use crate::cluster::Cluster;
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::presence::Presence;

/// One shard's view of who is connected, and its door to the shared tables.
pub(crate) struct Registry {
    shard: usize,
    /// This shard's open WebSockets by user, as slab keys.
    users: HashMap<Arc<str>, Vec<usize>>,
    presence: Arc<Presence>,
    /// WebSockets open or being opened on the whole server.
    slots: Arc<AtomicUsize>,
    /// Connections in the HTTP phase on the whole server.
    http_slots: Arc<AtomicUsize>,
    max_http: usize,
    metrics: Arc<Metrics>,
    max_connections: usize,
    max_per_user: usize,
    /// The other nodes' connections count toward the per-user limit.
    cluster: Option<Arc<Cluster>>,
}

impl Registry {
    pub fn new(shard: usize, handle: &crate::ops::Handle) -> Registry {
        let s = &handle.shared;
        Registry {
            shard,
            users: HashMap::new(),
            presence: s.presence.clone(),
            slots: s.ws_slots.clone(),
            http_slots: s.http_slots.clone(),
            max_http: s.config.max_http_connections,
            metrics: s.metrics.clone(),
            max_connections: s.config.max_connections,
            max_per_user: s.config.max_connections_per_user,
            cluster: s.cluster.clone(),
        }
    }

    /// A new connection in the HTTP phase; false (and counted) when
    /// `--max-http-connections` are already open: the caller closes it at
    /// once, before it costs a buffer or a timer.
    pub fn open_http(&mut self) -> bool {
        if self.http_slots.fetch_add(1, Relaxed) >= self.max_http {
            self.http_slots.fetch_sub(1, Relaxed);
            self.metrics.http_refused.fetch_add(1, Relaxed);
            return false;
        }
        self.metrics.shards[self.shard]
            .http_connections
            .fetch_add(1, Relaxed);
        true
    }

    fn conn_ref(&self, key: usize, gen: u32) -> ConnRef {
        ConnRef {
            shard: self.shard as u16,
            slot: key as u32,
            gen,
        }
    }

    /// Turns the HTTP connection `key` (of generation `gen`) into a
    /// WebSocket of `user`, unless that would pass `--max-connections`
    /// (`503`) or `--max-connections-per-user` (`429`); a refusal is counted
    /// and changes nothing else.
    pub fn register(&mut self, key: usize, gen: u32, user: &Arc<str>) -> Result<(), HttpError> {
        let conn = self.conn_ref(key, gen);
        let refused = if self.slots.fetch_add(1, Relaxed) >= self.max_connections {
            Some(HttpError::ServiceUnavailable)
        } else if !self.presence.try_add(user, conn, self.room_for(user)) {
            Some(HttpError::TooManyRequests)
        } else {
            None
        };
        if let Some(e) = refused {
            self.slots.fetch_sub(1, Relaxed);
            self.metrics.reject(e.reject_reason());
            return Err(e);
        }
        self.users.entry(user.clone()).or_default().push(key);
        let m = &self.metrics.shards[self.shard];
        m.http_connections.fetch_sub(1, Relaxed);
        self.http_slots.fetch_sub(1, Relaxed);
        self.metrics.handshakes_accepted.fetch_add(1, Relaxed);
        Ok(())
    }

    /// How many connections `user` may hold on this node. Cluster-wide, best
    /// effort: other nodes' counts are as of their last presence change
    /// heard here.
    fn room_for(&self, user: &str) -> usize {
        let remote = self
            .cluster
            .as_ref()
            .map_or(0, |c| c.remote_user_count(user));
        self.max_per_user.saturating_sub(remote)
    }

    /// Forgets the connection `key` of generation `gen`: a WebSocket of
    /// `user` leaves presence (unless a disconnect took it out already), the
    /// users index and its slot; an HTTP connection (`None`) only its count.
    pub fn unregister(&mut self, key: usize, gen: u32, user: Option<Arc<str>>) {
        let Some(user) = user else {
            self.metrics.shards[self.shard]
                .http_connections
                .fetch_sub(1, Relaxed);
            self.http_slots.fetch_sub(1, Relaxed);
            return;
        };
        self.presence.remove(&user, self.conn_ref(key, gen));
        self.slots.fetch_sub(1, Relaxed);
        if let Some(keys) = self.users.get_mut(&user) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.users.remove(&user);
            }
        }
        log::debug!("shard {}: websocket of user {user} closed", self.shard);
    }

    /// The slab keys of `user`'s WebSockets on this shard.
    pub fn connections_of(&self, user: &str) -> &[usize] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }
}
