//! permessage-deflate (RFC 7692): negotiation and the inbound side.
//!
//! tungstenite's `WebSocketContext` knows no extension and rejects any RSV
//! bit, so compression lives around it:
//!
//! - [`negotiate`] reads the client's `Sec-WebSocket-Extensions` offers and
//!   writes the answer for the 101; the [`Agreement`] travels with the
//!   upgrade into the connection.
//! - [`Inbound`] sits between the socket and tungstenite on a connection
//!   that negotiated: uncompressed frames go through byte for byte; a
//!   compressed message (RSV1 on its first frame) is collected, inflated
//!   under `--max-message-bytes` and handed on as one plain frame.
//!
//! The server always asks for `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is (de)compressed on its own,
//! so no zlib state is kept per connection. The one inflater is per thread
//! (one per shard), reset before each message. The outbound side, which
//! compresses a broadcast once for every connection, is in `frame`.

mod inbound;
pub mod negotiate;

pub use inbound::{Filtered, Inbound};

pub use crate::frame::Deflating;

/// What a connection agreed to with the server. Both no-context-takeover
/// parameters always hold and are not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The `server_max_window_bits` the client asked for (and the server
    /// echoed), 8..15; `None`: not asked, 15.
    pub server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// How the server's messages to this connection are compressed, from
    /// `min` payload bytes on: with the window the client allows. zlib
    /// cannot deflate with a 256-byte window, so a client that asked for 8
    /// bits gets uncompressed frames only, which RFC 7692 always allows.
    pub fn outbound(&self, min: usize) -> Option<Deflating> {
        let window = self.server_max_window_bits.unwrap_or(15);
        (window >= 9).then_some(Deflating { min, window })
    }
}

/// Why a compressed (or would-be compressed) inbound message was refused.
/// Mapped to close codes in one place: `error::CloseCode::for_deflate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The message, compressed or inflated, is over `--max-message-bytes`.
    #[error("compressed message over the message size limit")]
    TooBig,
    /// The payload is not valid raw deflate data.
    #[error("compressed message does not inflate")]
    Corrupt,
    /// RSV1 on a control frame.
    #[error("RSV1 set on a control frame")]
    Rsv1OnControl,
    /// RSV1 on a continuation frame (only the first frame carries it).
    #[error("RSV1 set on a continuation frame")]
    Rsv1OnContinuation,
    /// RSV1 on a frame whose opcode is reserved.
    #[error("RSV1 set on a frame with a reserved opcode")]
    Rsv1OnReserved,
    /// A new data frame while a compressed message waits for its end.
    #[error("data frame inside a fragmented compressed message")]
    ExpectedContinuation,
    /// A client frame of a compressed message without a mask.
    #[error("unmasked client frame")]
    Unmasked,
}

impl InboundError {
    /// The error inside an I/O error from the filter (tungstenite hands
    /// back what its reader returned), if it is one.
    pub fn from_io(e: &std::io::Error) -> Option<InboundError> {
        e.get_ref()?.downcast_ref::<InboundError>().copied()
    }
}
