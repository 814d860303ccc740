//! # wsedge
//!
//! An authenticated WebSocket edge server: sharded `mio` reactors hold many
//! long-lived WebSocket connections of users logged in with a JWT, and a
//! backend pushes JSON messages to all of them, to some users or to one user,
//! through a REST API or this crate's [`Handle`].
//!
//! # Layout
//!
//! ```text
//! server.rs     start/stop: binds a listener per shard, spawns the shards
//! acceptor.rs   SO_REUSEPORT listeners; each shard accepts on its own
//! shard.rs      a reactor: Poll loop, Slab of connections, inbox, timers
//! conn/         one connection: state machine Http → Ws → Draining → Closed,
//!   mod.rs        HTTP reading and dispatch; outbound.rs the write queue
//!   ws.rs         WebSocket session over tungstenite; refresh; ping; expiry
//!   sock.rs       the socket: TCP, or an in-memory sink for benches and tests
//! http/         request parsing on bytes (httparse) and response writing
//! upgrade.rs    GET /ws checks: handshake headers, Origin, JWT
//! auth.rs       JWT validation and admin credentials
//! rest.rs       routes of the management API → Handle calls
//! handle.rs     the operations (broadcast, send, disconnect, stats): one
//!               code path for REST and the library
//! bus.rs        commands to shards over crossbeam channels + mio::Waker
//! frame.rs      JSON envelopes and WebSocket frames, encoded once
//! presence.rs   who is connected, how often, on which shards
//! metrics.rs    counters per shard; Prometheus text
//! config.rs     every option and its default
//! error.rs      HTTP errors → status, close codes, in one place
//! web.rs        the embedded test page and browser client
//! cluster/      cluster mode: Redis pub/sub link threads, wire format,
//!               the view of the other nodes' presence
//! client/       the Rust client: a thread per client, reconnect with backoff
//! ```
//!
//! # The two data flows
//!
//! ```text
//! WebSocket: shard's listener → accept → conn Http: read → http::parse_request
//!            → upgrade::check (auth) → limits → 101 → conn Ws: frames ↔ tungstenite
//! Broadcast: REST route or Handle → frame::shared_message (encoded once)
//!            → presence picks shards → bus → shard inbox → each target's
//!            Outbound queue (Arc'd frame) → send/sendmsg when the socket is writable
//! Cluster:   the same call also → cluster::publish → publisher thread →
//!            Redis channel → other nodes' subscriber thread → their bus
//! ```

pub mod acceptor;
pub mod auth;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod error;
pub mod frame;
pub mod handle;
pub mod http;
pub mod metrics;
pub mod presence;
pub mod rest;
pub mod server;
pub mod shard;
pub mod upgrade;
pub mod web;

pub use config::Config;
pub use error::{CloseCode, HttpError};
pub use handle::{
    Data, EchoHandler, Handle, MessageHandler, NodeStats, RawEchoHandler, RawVerdict, ShardStats,
    Stats,
};
pub use server::{DevMode, Server, ServerBuilder, StartError};
