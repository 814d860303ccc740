//! What can go wrong in the client, as one typed error.
//!
//! The error is `Clone` so that the last one can be kept in the client's
//! status and handed out to any thread; I/O errors are shared behind an `Arc`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A client error. Also the `message` of the synthetic `error` event
/// (`payload: {"kind": err.kind(), "message": err.to_string()}`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// `send` while the client is not connected (the message is dropped).
    #[error("not connected")]
    NotConnected,
    /// The URL cannot be used (not `ws://` or `wss://host[:port]/path`).
    #[error("invalid URL: {0}")]
    Url(String),
    /// The token provider returned an error.
    #[error("token provider failed: {0}")]
    Token(String),
    /// The server answered the upgrade with this HTTP status (e.g. 401).
    #[error("handshake refused with HTTP status {0}")]
    Handshake(u16),
    /// The upgrade did not complete in time.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// A socket error (connection refused, reset, ...).
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),
    /// `wss://`: the TLS handshake or session failed (the server's
    /// certificate is not trusted, is for another name or has expired; no
    /// common protocol version; a bad record), or the TLS configuration
    /// could not be built (unreadable CA file). A failed handshake counts as
    /// a failed connection attempt: the client retries it with the backoff
    /// like any other (see the module documentation, *Reconnect*).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The WebSocket protocol was broken by the peer (or by tungstenite).
    #[error("WebSocket error: {0}")]
    Protocol(String),
    /// Nothing arrived from the server for this long, even after a ping.
    #[error("no data from the server for {0:?}")]
    KeepaliveTimeout(Duration),
    /// The server sent something that is not `{"type": string, "payload": any}`.
    #[error("invalid message from the server: {0}")]
    InvalidMessage(String),
    /// The payload could not be encoded as JSON.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The outgoing buffer is full (the server does not read); message dropped.
    #[error("send buffer full; message dropped")]
    SendBufferFull,
    /// The server closed with a code in 4500–4999: the client must not come back.
    #[error("server closed the connection with {code}{}; not reconnecting", fmt_reason(.reason))]
    Terminal { code: u16, reason: String },
    /// Every reconnect attempt failed.
    #[error("giving up after {0} reconnect attempts")]
    GaveUp(u32),
    /// The client's thread is gone (the client was dropped).
    #[error("client is shut down")]
    Shutdown,
}

fn fmt_reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl ClientError {
    /// A short stable name, the `kind` field of the `error` event.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::NotConnected => "not_connected",
            ClientError::Url(_) => "url",
            ClientError::Token(_) => "token",
            ClientError::Handshake(_) => "handshake",
            ClientError::HandshakeTimeout(_) => "handshake_timeout",
            ClientError::Io(_) => "io",
            ClientError::Tls(_) => "tls",
            ClientError::Protocol(_) => "protocol",
            ClientError::KeepaliveTimeout(_) => "keepalive_timeout",
            ClientError::InvalidMessage(_) => "invalid_message",
            ClientError::Encode(_) => "encode",
            ClientError::SendBufferFull => "send_buffer_full",
            ClientError::Terminal { .. } => "terminal_close",
            ClientError::GaveUp(_) => "gave_up",
            ClientError::Shutdown => "shutdown",
        }
    }
}

impl From<io::Error> for ClientError {
    /// rustls reports its errors (an untrusted certificate, a bad record)
    /// inside `io::Error`s: those become [`ClientError::Tls`].
    fn from(e: io::Error) -> Self {
        match super::tls::rustls_error(&e) {
            Some(tls) => ClientError::Tls(tls.to_string()),
            None => ClientError::Io(Arc::new(e)),
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(e) => e.into(),
            tungstenite::Error::Http(resp) => ClientError::Handshake(resp.status().as_u16()),
            tungstenite::Error::Url(e) => ClientError::Url(e.to_string()),
            tungstenite::Error::WriteBufferFull(_) => ClientError::SendBufferFull,
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
