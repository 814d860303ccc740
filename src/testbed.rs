//! Internals opened for the fuzz targets, the benches and the parser tests,
//! and for nothing else: no stability promise, hidden from the docs.
//!
//! Everything a peer can send goes through functions named here, so the
//! fuzzers and property tests drive the server's own code without sockets.
//! An application uses the crate root ([`crate::Server`], [`crate::Handle`],
//! [`crate::client`]) instead.

use std::time::Instant;

pub use crate::auth::{bearer_token, extract_token, UserClaims, Verifier};
pub use crate::bus::ConnRef;
pub use crate::channels::{check_name as check_channel_name, split_sub_key, Directory, Grants};
pub use crate::cluster::sequence::{split as split_numbered, streams as cluster_streams};
pub use crate::cluster::view::{NodeCounters, View};
pub use crate::cluster::wire::{decode as decode_cluster_packet, Body as ClusterBody};
pub use crate::conn::{feed, Outbound, WsEnv, WsRead, WsState};
pub use crate::deflate::negotiate::{
    negotiate as negotiate_deflate, parse as parse_extensions, response as deflate_response,
};
pub use crate::deflate::{Agreement, Inbound as DeflateInbound, InboundError};
pub use crate::frame::{
    client_frame, deflate_frames, envelope, shared_message, stream_message, text_frame, Deflating,
    Frame, SharedFrame,
};
pub use crate::http::{
    decode_chunked, parse_request, percent_decode, Chunked, Limits, Parsed, Request, Response,
};
pub use crate::metrics::ShardMetrics;
pub use crate::router::{route, Route};
pub use crate::shard::{sink_shards, SinkShard};
pub use crate::upgrade::{check as check_upgrade, Upgrade};

use crate::ops::Handle;

/// Gives a verifier built with `--jwt-jwks-url` the key set of `doc`, as a
/// fetch would (the benches time the JWKS path without an endpoint).
/// Returns the number of keys, or why the document was refused.
pub fn load_jwks(verifier: &Verifier, doc: &[u8]) -> Result<usize, String> {
    let jwks = verifier
        .jwks()
        .ok_or_else(|| "the verifier has no --jwt-jwks-url".to_string())?;
    jwks.install_document(doc).map_err(|e| e.to_string())
}

/// The answer the server gives to `req` on `route` (any route but `/ws`),
/// its head admitted first as the connection does.
pub fn answer(handle: &Handle, route: &Route, req: &Request<'_>) -> Response {
    match crate::rest::admit(handle, route, req, !req.body.is_empty()) {
        Ok(()) => crate::rest::answer(handle, route, req),
        Err(e) => Response::error(&e),
    }
}

/// A session's environment taken from a running server's `handle`.
pub fn ws_env<'a>(handle: &'a Handle, metrics: &'a ShardMetrics, now: Instant) -> WsEnv<'a> {
    WsEnv {
        verifier: &handle.shared.verifier,
        handler: &*handle.shared.handler,
        metrics,
        outbound_cap: handle.shared.config.outbound_buffer_bytes,
        max_channels: handle.shared.config.max_channels_per_connection,
        ops: Default::default(),
        now,
    }
}
