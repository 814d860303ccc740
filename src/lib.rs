//! # wsedge
//!
//! An authenticated WebSocket edge server: sharded `mio` reactors hold many
//! long-lived WebSocket connections of users logged in with a JWT, and a
//! backend pushes JSON messages to all of them, to some users or to one user,
//! through a REST API or this crate's [`Handle`]. The protocol (routes,
//! messages, close codes, flags) is in `docs/PROTOCOL.md`; the threads and
//! the path of a broadcast are in `docs/ARCHITECTURE.md`.
//!
//! # Layout
//!
//! ```text
//! server.rs     start/stop: binds a listener per shard, assembles the shared
//!               state, spawns the shards and the cluster link
//! acceptor.rs   SO_REUSEPORT listeners; each shard accepts on its own
//! tls.rs        the port's certificate and rustls config; SIGHUP reload
//! shard/        a reactor: Poll loop, Slab of connections, timers (mod.rs);
//!   commands.rs   the inbox: broadcasts fan out to connections here
//!   registry.rs   the WebSocket lifecycle: limits, presence, users index
//!   members.rs    channel membership of the shard's connections
//!   sink.rs       the fan-out test bed (in-memory sinks), never the server
//! conn/         one connection: state machine Http → Ws → Flushing → Closed
//!   http.rs       HTTP requests framed for the router; keep-alive, pipelining
//!   ws.rs         WebSocket state over tungstenite; close, ping, expiry
//!   session.rs    what a session does with a message: handler, refresh
//!   outbound.rs   the write queue (shared broadcast frames + owned bytes)
//!   sock.rs       the socket: TCP, TLS, or an in-memory sink for the test bed
//!   tls.rs        a TLS session over TCP: handshake, records, close_notify
//! http/         request parsing on bytes (httparse) and response writing
//! router.rs     a complete request → the upgrade checks or the REST API
//! upgrade.rs    GET /ws checks: handshake headers, Origin, JWT, the
//!               permessage-deflate offer
//! deflate/      permessage-deflate: negotiation (negotiate.rs) and the
//!               filter that inflates client messages before tungstenite
//! auth/         JWT validation and admin credentials (mod.rs);
//!   jwks.rs       keys from a JWKS endpoint, refreshed off the shards
//! rest/         the management API's routes → operations
//! channels.rs   channel names, token grants, the node's channel directory
//! ops/          the operations behind Handle (broadcast, send, disconnect,
//!               stats, channels): one code path for REST and the library
//!   deliver.rs    the fan-out of a message on its streams, numbered
//!   node.rs       what the cluster link may ask of this node
//! history.rs    streams, offsets, the epoch and the messages kept for
//!               clients that reconnect
//! handler.rs    MessageHandler: what an application answers to messages
//! shared.rs     the state one server's threads share
//! bus.rs        commands to shards over crossbeam channels + mio::Waker
//! frame.rs      JSON envelopes and WebSocket frames, encoded once, and
//!               their compressed twins, compressed once
//! presence.rs   who is connected, how often, on which shards
//! metrics.rs    counters per shard; Prometheus text
//! ratelog.rs    refusals logged at a bounded rate
//! config.rs     every option and its default
//! error.rs      HTTP errors → status, close codes, in one place
//! web.rs        the embedded test page and browser client
//! cluster/      cluster mode: Redis pub/sub link threads, wire format,
//!               the view of the other nodes' presence and subscriptions,
//!               the numbering of messages by Redis (sequence.rs)
//! client/       the Rust client: a thread per client, reconnect with backoff
//! testbed.rs    internals for the fuzz targets, benches and tests only
//! ```
//!
//! # The data flows
//!
//! ```text
//! WebSocket: shard's listener → accept (→ TLS handshake in conn::tls)
//!            → conn Http: read → http::parse_request
//!            → router → upgrade::check (auth) → registry (limits) → 101
//!            → conn Ws: frames ↔ tungstenite → session (handler)
//! REST:      conn Http: read → http::parse_request → router → rest → ops
//! Broadcast: REST route or Handle → ops: history numbers it on its stream,
//!            frame::stream_message (encoded once) → presence picks shards →
//!            bus → shard inbox (commands.rs) → each target's Outbound queue
//!            (Arc'd frame) → send/sendmsg when the socket is writable
//! Cluster:   the call goes → cluster::publish_numbered → publisher thread →
//!            Redis numbers and publishes it → every node's subscriber
//!            thread (this one's too) → its ops (through cluster::LocalNode)
//!            → its history and bus
//! ```

mod acceptor;
mod auth;
mod bus;
mod channels;
pub mod client;
mod cluster;
mod config;
mod conn;
mod deflate;
mod error;
mod frame;
mod handler;
mod history;
mod http;
mod metrics;
mod ops;
mod presence;
mod ratelog;
mod rest;
mod router;
mod server;
mod shard;
mod shared;
mod tls;
mod upgrade;
mod web;

#[doc(hidden)]
pub mod testbed;

pub use auth::{mint_hs256, now_secs};
pub use config::{default_shards, Config, ConfigError};
pub use error::{CloseCode, HttpError};
pub use handler::{Data, EchoHandler, MessageHandler, RawEchoHandler, RawVerdict};
pub use ops::{ChannelCount, ChannelInfo, ChannelList, Handle, NodeStats, ShardStats, Stats};
pub use server::{DevMode, Server, ServerBuilder, StartError};
pub use tls::TlsError;
