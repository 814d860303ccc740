//! The state one server's threads share: its configuration, token verifier,
//! presence table, counters, the bus to its shards, the message handler,
//! and the cluster link when there is one.
//!
//! Built once by `server` and never replaced. Who writes what: shards write
//! presence and their own counters (through their registry); the cluster
//! link writes its view of the other nodes; everything else is read-only
//! after start (the TLS pair is swapped whole on reload). Nothing here is locked on the hot path: presence is striped
//! and counters are relaxed atomics.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::channels::Directory;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::handler::MessageHandler;
use crate::history::History;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::tls::ServerTls;

/// State shared by every shard, the REST routes and the [`crate::Handle`].
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub presence: Arc<Presence>,
    /// Who is subscribed to which channel, node-wide.
    pub channels: Arc<Directory>,
    /// Stream offsets and the recent messages clients recover from.
    pub history: Arc<History>,
    pub metrics: Arc<Metrics>,
    pub bus: Bus,
    pub started: Instant,
    pub handler: Arc<dyn MessageHandler>,
    /// A user token pre-filled in the test page (dev mode only).
    pub dev_user_token: Option<String>,
    /// WebSocket connections open or being opened, checked against
    /// `--max-connections` by the shards' registries.
    pub ws_slots: Arc<AtomicUsize>,
    /// Connections not (yet) WebSockets, checked against
    /// `--max-http-connections` when one is accepted.
    pub http_slots: Arc<AtomicUsize>,
    /// The link to the other nodes, in cluster mode (`--redis-url`).
    pub cluster: Option<Arc<Cluster>>,
    /// The port's certificate and TLS config (`--tls-cert`), reloaded in
    /// place on `SIGHUP`.
    pub tls: Option<Arc<ServerTls>>,
}
