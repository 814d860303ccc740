//! A blocking Rust client for wsedge (docs/PROTOCOL.md §6): the counterpart of the
//! original `useRealtime` hook and of the browser's `realtime.js`, usable
//! without an async runtime.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use wsedge::client::{Client, ClientConfig};
//!
//! let client = Client::new(
//!     ClientConfig::new("ws://127.0.0.1:3000/ws")
//!         .token_provider(|| Ok(std::env::var("WSEDGE_TOKEN").map_err(|e| e.to_string())?)),
//! )?;
//! // Subscribe before connecting so that the first `connected` is not missed.
//! let _hello = client.on("connected", |ev| println!("connected as {}", ev.payload["userId"]));
//! let _news = client.on("notification", |ev| println!("notification: {}", ev.payload));
//! client.on("disconnected", |ev| eprintln!("closed {:?}", ev.close_code())).detach();
//! client.connect();
//! client.wait_for(wsedge::client::State::Connected, Duration::from_secs(5));
//! client.send("chat", json!({"text": "hi"}))?;
//! # Ok::<(), wsedge::client::ClientError>(())
//! ```
//!
//! # What it owns
//!
//! Each [`Client`] owns one background thread (`wsedge-client`), started by
//! [`Client::new`] and joined when the client is dropped. That thread owns
//! the socket — a blocking tungstenite WebSocket over TCP, or over TLS for
//! `wss://` (see [TLS](#tls)), whose reads
//! time out every [`ClientConfig::poll_interval`] (50 ms) so that they
//! interleave with the commands the `Client` methods queue (`send`,
//! `connect`, `disconnect`) — and the reconnect state machine
//! (`Idle → Connecting → Open → Backoff → Connecting …`, see `worker.rs`).
//! The `Client` methods never block on the network: they queue a command and
//! return. State ([`Status`]) is shared and readable from any thread.
//!
//! # Callbacks
//!
//! [`Client::on`] registers `Fn(&Event) + Send + Sync` callbacks by message
//! type (`"*"` receives every event, after the type's own callbacks).
//! **Callbacks run on the client thread**, one at a time, in event order.
//! They must not block for long: while one runs, nothing is read, sent or
//! reconnected. Hand heavy work to your own thread (a channel is the usual
//! way). A callback may call `on`, `off`, `send`, `connect` and
//! `disconnect`. A callback that panics is caught (and logged): the other
//! callbacks of the event still run and the client goes on.
//!
//! # Events
//!
//! | type | when | payload | `synthetic` |
//! |---|---|---|---|
//! | any server type (`echo`, `notification`, …) | a message arrives | the message's `payload` | `false` |
//! | `connected` | once per successful connection | the server's hello `{userId, connectionId, message, timestamp, epoch, offsets}` (`recovered` too on a reconnect) | `false` |
//! | `connected` | same, when the server sent no hello within [`ClientConfig::hello_timeout`] (1 s) or sent something else first | `null` | `true` |
//! | `disconnected` | a connection that was open ended | `{code, reason}` (1006 + the error text when it broke without a close frame; 1000 after `disconnect()`) | `true` |
//! | `error` | any problem, including `send` while disconnected | `{kind, message}` ([`ClientError::kind`]) | `true` (`false` when the server sent an `error` message) |
//! | `reconnecting` | a retry was scheduled | `{attempt, maxAttempts, delayMs}` (attempt counts from 1; `delayMs` may have a fraction) | `true` |
//! | `recovered` | every connection but the first, right after `connected` | `{recovered}`: whether what `@all` and `@user` missed is replayed (see [Recovery](#recovery)) | `true` |
//!
//! A message sent on behalf of the API has its stream in [`Event::channel`]
//! (`@all`, `@user` or a channel's name) and its [`Event::offset`].
//!
//! **The `connected` name.** The server greets every new connection with a
//! message of type `connected`. The client does not add a second event of
//! its own: that hello *is* the `connected` event, delivered once, with the
//! server's payload (`userId`, `connectionId`, …). Only when the hello does
//! not come (another server, or something else arrives first) does the
//! client make the event up, with a `null` payload and `synthetic: true`,
//! so `connected` fires exactly once per connection either way. The state
//! is already [`State::Connected`] (and `send` works) when it fires: the
//! state changes when the upgrade succeeds, just before.
//!
//! A failed connection attempt (refused, `401`, timeout) gives an `error`
//! and a `reconnecting` event, not `disconnected`: that one is only for a
//! connection that was open.
//!
//! # Reconnect
//!
//! After a connection is lost or an attempt fails, the client waits
//! `min(base·2^min(attempt, 6) + random(0..jitter), max_delay)` (1 s, 1 s,
//! 30 s by default; [`backoff_delay`]) and tries again, at most
//! [`ClientConfig::max_attempts`] (10) times in a row; then it gives up with
//! an `error` event ([`ClientError::GaveUp`]) and stays
//! [`State::Disconnected`] until [`Client::connect`]. A successful connect
//! resets the count. It does not reconnect after [`Client::disconnect`], nor
//! after a close with a code in 4500–4999 (e.g. `4500`, the management API's
//! `reconnect=false`; an `error` event [`ClientError::Terminal`] says so). It
//! does reconnect after `1001` (server restart), `4000` (disconnected by the
//! API), `4001` (token expired: the token provider is asked again), `1006`,
//! and a server's `1000`. The jitter spreads the clients of a restarted
//! server over a second instead of a single instant.
//!
//! # Recovery
//!
//! The client remembers the history epoch and the last offset received on
//! each stream (`@all`, `@user`, every subscribed channel; docs/PROTOCOL.md
//! §11). Every connection after the first passes `epoch`, `since_all` and
//! `since_user`, and restores each channel with `since` and `epoch`: the
//! server replays what was missed, in order, before live messages. Right
//! after `connected` comes a `recovered` event, `{"recovered": true}` when
//! the server replays `@all` and `@user`, `false` when the application
//! should reload its state (another epoch: the server restarted; history
//! gone). A channel's own answer is the `recovered` field of its
//! `subscribed` event, which its missed messages follow. A message whose
//! offset is not above the last one of its stream is dropped, not
//! dispatched ([`Status::duplicates_dropped`]). A `connected` that did not
//! recover resets the offsets to the server's when the epoch changed.
//!
//! # Token refresh
//!
//! With a [`ClientConfig::token_provider`], the client keeps a connection
//! alive across token lifetimes: [`ClientConfig::refresh_before`] (30 s)
//! before the current token's `exp` (halfway through shorter tokens) it asks
//! the provider for a new token and sends it in-band
//! (`{"type":"refresh","payload":{"token":…}}`); the server's `refreshed`
//! answer (delivered as an event too) plans the next one. A refused refresh
//! (the server's `error` `Token refresh failed`) or a provider error leaves
//! the old expiry: the server closes with `4001` then, and the reconnect asks
//! the provider again. A refreshed token that does not expire later than the
//! last one ends the refreshing (no loop on a provider that hands out the
//! same token). A static [`ClientConfig::token`] is never refreshed.
//!
//! # TLS
//!
//! A `wss://` URL (port 443 unless given) connects TCP, runs a rustls TLS
//! handshake (TLS 1.2 or 1.3, aws-lc-rs, ALPN `http/1.1`, SNI = the URL's
//! host; an IP address host is checked against the certificate's IP SANs),
//! then the same upgrade. The server's certificate is verified against the
//! system's roots plus, with [`ClientConfig::ca_file`], every certificate of
//! a PEM file (a private CA, or a self-signed server certificate). Both are
//! read once, in [`Client::new`]: an unreadable or empty CA file fails
//! there with [`ClientError::Tls`]. [`ClientConfig::tls_config`] takes a
//! whole `Arc<rustls::ClientConfig>` instead (client certificates, other
//! roots); [`tls_client_config`] builds the default one, to start from.
//!
//! A failed TLS handshake (untrusted certificate, wrong name, expired, no
//! common version) is an `error` event of kind `tls`
//! ([`ClientError::Tls`], the rustls reason in its message) and counts as a
//! failed attempt: **it is retried** with the backoff like a refused
//! connection, up to [`ClientConfig::max_attempts`]. A certificate error is
//! usually a configuration mistake that retrying will not fix, but not
//! always (a certificate being rotated, a node behind a load balancer with
//! a stale one, a clock just corrected), and the attempts are bounded and
//! spaced, so the client treats it like the browser does a failed `wss://`
//! connection rather than giving up at the first one. Watch for `kind ==
//! "tls"` to stop early ([`Client::disconnect`]). A handshake that stalls
//! is [`ClientError::HandshakeTimeout`]; the TLS handshake and the upgrade
//! share [`ClientConfig::handshake_timeout`] per read or write.
//!
//! When the client closes, it sends the TLS `close_notify` after the
//! WebSocket close handshake.

mod backoff;
mod config;
mod error;
mod events;
mod refresh;
mod shared;
mod streams;
mod tls;
mod worker;

use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::json;

pub use backoff::backoff_delay;
pub use config::{ClientConfig, TokenProvider, TokenSource};
pub use error::ClientError;
pub use events::{Event, Subscription, ANY};
pub use tls::tls_client_config;

use shared::Shared;
use worker::{Command, Worker};

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Not connected: before `connect()`, after `disconnect()`, between
    /// reconnect attempts, after giving up.
    #[default]
    Disconnected,
    /// Getting a token, opening the TCP connection, upgrading.
    Connecting,
    /// The WebSocket is open; `send` works.
    Connected,
}

/// A snapshot of the client's state.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub state: State,
    /// The most recent error (cleared by a successful connect).
    pub last_error: Option<ClientError>,
    /// Successful connects so far (the first one and every reconnect).
    pub connects: u64,
    /// Reconnect attempts since the last successful connect.
    pub reconnect_attempt: u32,
    /// Messages dropped because their offset was not above the last one
    /// received on their stream (docs/PROTOCOL.md §11): a duplicate guard,
    /// 0 against a correct server.
    pub duplicates_dropped: u64,
}

/// A wsedge client. See the [module documentation](self).
pub struct Client {
    shared: Arc<Shared>,
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
    config: ClientConfig,
}

impl Client {
    /// Checks the configuration and starts the client thread. Does not
    /// connect: register callbacks, then call [`connect`](Self::connect).
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoint = config.validate()?;
        let shared = Arc::new(Shared::new());
        let (tx, rx) = crossbeam_channel::unbounded();
        let worker = Worker::new(config.clone(), endpoint, shared.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("wsedge-client".into())
            .spawn(move || worker.run())?;
        Ok(Client {
            shared,
            tx,
            thread_id: thread.thread().id(),
            thread: Some(thread),
            config,
        })
    }

    /// Connects (a no-op while connecting or connected). Also cancels a
    /// pending backoff and a previous give-up: the attempt count restarts.
    pub fn connect(&self) {
        let _ = self.tx.send(Command::Connect);
    }

    /// Closes the connection with `1000` (a `disconnected` event follows once
    /// the client thread has done it) and stops reconnecting until the next
    /// [`connect`](Self::connect).
    pub fn disconnect(&self) {
        let _ = self.tx.send(Command::Disconnect);
    }

    /// Sends `{"type": kind, "payload": payload}`.
    ///
    /// When not connected: `Err(NotConnected)` and an `error` event, and the
    /// message is dropped (as the original hook did; nothing is queued for
    /// later). `Ok` means the message was handed to the client thread while
    /// connected; like a browser `WebSocket.send`, it does not mean the server
    /// got it (if the connection drops at that instant, an `error` event says
    /// the message was not sent).
    pub fn send(&self, kind: &str, payload: impl Serialize) -> Result<(), ClientError> {
        let result = match serde_json::to_value(payload) {
            Err(e) => Err(ClientError::Encode(e.to_string())),
            Ok(_) if self.state() != State::Connected => Err(ClientError::NotConnected),
            Ok(payload) => {
                let text = json!({"type": kind, "payload": payload}).to_string();
                return self
                    .tx
                    .send(Command::Send(text))
                    .map_err(|_| ClientError::Shutdown);
            }
        };
        if let Err(e) = &result {
            self.shared.update(|s| s.last_error = Some(e.clone()));
            let _ = self.tx.send(Command::Error(e.clone()));
        }
        result
    }

    /// Subscribes to `channel` (with `presence`, also to its `join`/`leave`
    /// events), now when connected and again after every reconnect until
    /// [`unsubscribe`](Self::unsubscribe). The server answers `subscribed`,
    /// or an `error` naming the channel (e.g. when the token's `channels`
    /// claim does not allow it). Its messages arrive as events whose
    /// [`Event::channel`] is the channel.
    pub fn subscribe(&self, channel: &str, presence: bool) {
        self.lock_channels().insert(channel.to_string(), presence);
        if self.state() == State::Connected {
            let _ = self
                .tx
                .send(Command::Subscribe(channel.to_string(), presence));
        }
    }

    /// Unsubscribes from `channel`; it is no longer restored on reconnect.
    pub fn unsubscribe(&self, channel: &str) {
        self.lock_channels().remove(channel);
        if self.state() == State::Connected {
            let text = json!({"type": "unsubscribe", "payload": {"channel": channel}}).to_string();
            let _ = self.tx.send(Command::Send(text));
        }
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, bool>> {
        self.shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `callback` for every event of type `kind` (`"*"` for all) until
    /// the returned [`Subscription`] is dropped or unsubscribed (or
    /// `.detach()`ed: then until [`off`](Self::off) or the client's end).
    /// Runs on the client thread; see the [module documentation](self).
    pub fn on(
        &self,
        kind: &str,
        callback: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Subscription {
        self.shared.registry.add(kind, Arc::new(callback))
    }

    /// Removes every callback of `kind`.
    pub fn off(&self, kind: &str) {
        self.shared.registry.remove_kind(kind);
    }

    /// Removes every callback.
    pub fn off_all(&self) {
        self.shared.registry.clear();
    }

    pub fn state(&self) -> State {
        self.shared.status().state
    }

    /// The most recent error (cleared by a successful connect).
    pub fn last_error(&self) -> Option<ClientError> {
        self.shared.status().last_error
    }

    /// Successful connects so far.
    pub fn connect_count(&self) -> u64 {
        self.shared.status().connects
    }

    /// State, last error, connect count and reconnect attempt, read together.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Blocks until the state is `state` or `timeout` passes; `true` when it
    /// is. Do not call it from a callback (the state cannot change while a
    /// callback runs).
    pub fn wait_for(&self, state: State, timeout: Duration) -> bool {
        self.shared.wait(timeout, |s| s.state == state)
    }

    /// Blocks until at least `n` successful connects happened (or `timeout`).
    pub fn wait_for_connects(&self, n: u64, timeout: Duration) -> bool {
        self.shared
            .wait(timeout, |s| s.connects >= n && s.state == State::Connected)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}

impl Drop for Client {
    /// Closes the connection (`1000`, bounded to about a second) and joins
    /// the client thread. An attempt in progress finishes first (bounded by
    /// the connect and handshake timeouts). Dropped from one of its own
    /// callbacks, it only asks the thread to stop.
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            if std::thread::current().id() != self.thread_id {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.config.url)
            .field("status", &self.status())
            .finish()
    }
}

/// `{"type":"subscribe","payload":{"channel","presence"}}`, with `since` and
/// `epoch` when resuming (docs/PROTOCOL.md §11.4).
fn subscribe_message(channel: &str, presence: bool, resume: Option<(u64, &str)>) -> String {
    let mut payload = json!({"channel": channel, "presence": presence});
    if let Some((since, epoch)) = resume {
        payload["since"] = json!(since);
        payload["epoch"] = json!(epoch);
    }
    json!({"type": "subscribe", "payload": payload}).to_string()
}
