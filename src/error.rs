//! Typed errors of the HTTP layer and the WebSocket close codes, each mapped
//! to what the peer sees in exactly one place.
//!
//! `HttpError::status` and `HttpError::message` decide the status line and JSON
//! body of every refusal; `CloseCode` lists every close code the server sends
//! (docs/PROTOCOL.md §3), and which management call or peer error picks
//! which. Nothing else in the crate invents a status or a close code.

use crate::deflate::InboundError;
use crate::metrics::Reject;

/// A request the server refuses, and why. Turned into a response by
/// [`crate::http::Response::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("request timeout")]
    RequestTimeout,
    #[error("Content-Length or chunked Transfer-Encoding required")]
    LengthRequired,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UpgradeRequired(String),
    #[error("too many connections for this user")]
    TooManyRequests,
    #[error("request header fields larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("server at connection limit")]
    ServiceUnavailable,
    #[error("{0}")]
    ExpectationFailed(String),
    #[error("server shutting down")]
    ShuttingDown,
    #[error("server busy: a shard's command queue is full; nothing was sent, retry later")]
    Busy,
}

impl From<crate::bus::Busy> for HttpError {
    fn from(_: crate::bus::Busy) -> HttpError {
        HttpError::Busy
    }
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::Unauthorized => 401,
            HttpError::Forbidden => 403,
            HttpError::NotFound(_) => 404,
            HttpError::MethodNotAllowed { .. } => 405,
            HttpError::RequestTimeout => 408,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge { .. } => 413,
            HttpError::UpgradeRequired(_) => 426,
            HttpError::TooManyRequests => 429,
            HttpError::HeadersTooLarge { .. } => 431,
            HttpError::ServiceUnavailable | HttpError::ShuttingDown | HttpError::Busy => 503,
            HttpError::ExpectationFailed(_) => 417,
        }
    }

    /// The `error` field of the JSON body. Auth failures say no more than
    /// `unauthorized`/`forbidden`: the reason is logged, not sent.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Errors after which the request stream cannot be trusted to be in
    /// sync, so the connection is closed after the answer.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            HttpError::BadRequest(_)
                | HttpError::RequestTimeout
                | HttpError::LengthRequired
                | HttpError::PayloadTooLarge { .. }
                | HttpError::HeadersTooLarge { .. }
                | HttpError::ExpectationFailed(_)
        )
    }

    /// The `reason` of `wsedge_handshakes_rejected_total` when this refuses an upgrade.
    pub(crate) fn reject_reason(&self) -> Reject {
        match self {
            HttpError::BadRequest(_) | HttpError::UpgradeRequired(_) => Reject::BadRequest,
            HttpError::Unauthorized => Reject::Unauthorized,
            HttpError::Forbidden => Reject::Origin,
            HttpError::TooManyRequests => Reject::PerUserLimit,
            HttpError::ServiceUnavailable => Reject::ConnectionLimit,
            HttpError::RequestTimeout => Reject::Timeout,
            HttpError::HeadersTooLarge { .. } => Reject::HeadersTooLarge,
            _ => Reject::Other,
        }
    }
}

/// Every close code the server sends (docs/PROTOCOL.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1002: the peer broke the protocol.
    Protocol,
    /// 1007: a text message was not UTF-8.
    InvalidUtf8,
    /// 1008: policy, e.g. a slow consumer over its outbound buffer.
    Policy,
    /// 1009: a message over `--max-message-bytes`.
    TooBig,
    /// 4000: disconnected by the management API; the client may reconnect.
    Disconnected,
    /// 4500: disconnected by the management API with `reconnect=false`.
    DisconnectedNoReconnect,
    /// 4001: the token expired.
    TokenExpired,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Disconnected => 4000,
            CloseCode::DisconnectedNoReconnect => 4500,
            CloseCode::TokenExpired => 4001,
        }
    }

    /// The reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::Protocol => "protocol error",
            CloseCode::InvalidUtf8 => "invalid utf-8",
            CloseCode::Policy => "slow consumer",
            CloseCode::TooBig => "message too big",
            CloseCode::Disconnected => "disconnected by server",
            CloseCode::DisconnectedNoReconnect => "disconnected by server, do not reconnect",
            CloseCode::TokenExpired => "token expired",
        }
    }

    /// The code of a disconnect by the management API: `4000` when the
    /// client may reconnect, `4500` when it must not.
    pub fn disconnect(reconnect: bool) -> CloseCode {
        if reconnect {
            CloseCode::Disconnected
        } else {
            CloseCode::DisconnectedNoReconnect
        }
    }

    /// Maps a tungstenite read error to the close code the peer gets, or
    /// `None` when the connection is simply gone (reset, EOF, closed).
    pub fn for_ws_error(err: &tungstenite::Error) -> Option<CloseCode> {
        use tungstenite::error::{CapacityError, Error};
        match err {
            Error::Capacity(CapacityError::MessageTooLong { .. }) => Some(CloseCode::TooBig),
            Error::Capacity(_) => Some(CloseCode::TooBig),
            Error::Utf8(_) => Some(CloseCode::InvalidUtf8),
            Error::Protocol(p) => match p {
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => None,
                _ => Some(CloseCode::Protocol),
            },
            // The inflating filter in front of tungstenite refused the
            // stream; its error comes back through the reader.
            Error::Io(e) => InboundError::from_io(e).map(CloseCode::for_deflate),
            _ => None,
        }
    }

    /// The close code for a refused compressed message: over the limit,
    /// compressed or inflated, is `1009`; anything else (data that does not
    /// inflate, RSV1 where it may not be) is `1002`.
    pub fn for_deflate(err: InboundError) -> CloseCode {
        match err {
            InboundError::TooBig => CloseCode::TooBig,
            InboundError::Corrupt
            | InboundError::Rsv1OnControl
            | InboundError::Rsv1OnContinuation
            | InboundError::Rsv1OnReserved
            | InboundError::ExpectedContinuation
            | InboundError::Unmasked => CloseCode::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_errors_through_tungstenite_map_to_close_codes() {
        let io = |e: InboundError| {
            tungstenite::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        };
        assert_eq!(
            CloseCode::for_ws_error(&io(InboundError::TooBig)),
            Some(CloseCode::TooBig)
        );
        for e in [
            InboundError::Corrupt,
            InboundError::Rsv1OnControl,
            InboundError::Rsv1OnContinuation,
            InboundError::Rsv1OnReserved,
            InboundError::ExpectedContinuation,
            InboundError::Unmasked,
        ] {
            assert_eq!(CloseCode::for_ws_error(&io(e)), Some(CloseCode::Protocol));
        }
        // Any other I/O error: the peer is gone.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            CloseCode::for_ws_error(&tungstenite::Error::Io(reset)),
            None
        );
    }
}
