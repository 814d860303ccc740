//! Starting and stopping a server: binds one listener per shard, builds the
//! shared core, spawns the shard threads (each accepts on its own listener,
//! see [`crate::acceptor`]), and shuts them down gracefully (SPEC §5, §7).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::{Poll, Waker};
use rand::Rng;
use serde_json::json;

use crate::acceptor::{self, Acceptor};
use crate::auth::{mint_hs256, now_secs, Verifier};
use crate::bus::{self, Bus, Command};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::handle::{Core, EchoHandler, Handle, MessageHandler};
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::shard::{Shard, SinkShard, LISTENER, WAKER};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {err}")]
    Bind { addr: SocketAddr, err: io::Error },
    #[error("cannot start: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Tokens made up in dev mode (no key configured), valid for 24 hours.
#[derive(Debug, Clone)]
pub struct DevMode {
    pub secret: String,
    pub user_token: String,
    pub admin_token: String,
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    config: Config,
    bind: Option<String>,
    handler: Arc<dyn MessageHandler>,
}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// Address to listen on, e.g. `"127.0.0.1:0"` for an ephemeral port.
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = Some(addr.to_string());
        self
    }
    pub fn shards(mut self, n: usize) -> Self {
        self.config.shards = n;
        self
    }
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.jwt_secret = Some(secret.into());
        self
    }
    pub fn admin_key(mut self, key: impl Into<String>) -> Self {
        self.config.admin_key = Some(key.into());
        self
    }
    /// Replaces the default echo answer to client messages.
    pub fn handler(mut self, handler: impl MessageHandler) -> Self {
        self.handler = Arc::new(handler);
        self
    }
    /// Changes any other option.
    pub fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }
    pub fn start(mut self) -> Result<Server, StartError> {
        if let Some(addr) = self.bind.take() {
            self.config.bind = addr
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("--bind {addr:?} is not ADDR:PORT")))?;
        }
        Server::start_with(self.config, self.handler)
    }
}

/// A running server. Dropping it shuts it down.
pub struct Server {
    handle: Handle,
    local_addr: SocketAddr,
    shards: Vec<JoinHandle<()>>,
    /// The cluster publisher, joined last so its goodbye goes out.
    cluster_thread: Option<JoinHandle<()>>,
    dev: Option<DevMode>,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            bind: None,
            handler: Arc::new(EchoHandler),
        }
    }

    /// Starts a server with the default echo handler.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Self::start_with(config, Arc::new(EchoHandler))
    }

    fn start_with(config: Config, handler: Arc<dyn MessageHandler>) -> Result<Server, StartError> {
        let (dev, verifier) = checked(&config)?;

        let listeners = acceptor::bind_listeners(config.bind, config.shards).map_err(|err| {
            StartError::Bind {
                addr: config.bind,
                err,
            }
        })?;
        let local_addr = listeners[0].local_addr()?;

        let mut polls = Vec::with_capacity(config.shards);
        let mut inboxes = Vec::with_capacity(config.shards);
        let mut receivers = Vec::with_capacity(config.shards);
        let mut acceptors = Vec::with_capacity(config.shards);
        for listener in listeners {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            acceptors.push(Acceptor::new(listener, poll.registry(), LISTENER)?);
            let (tx, rx) = bus::inbox();
            inboxes.push((tx, waker));
            receivers.push(rx);
            polls.push(poll);
        }
        let bus = Bus::new(inboxes);
        let cluster = match &config.redis_url {
            Some(url) => Some(Cluster::new(
                url,
                config
                    .node_id
                    .clone()
                    .unwrap_or_else(|| crate::cluster::default_node_id(local_addr.port())),
                &config.cluster_name,
            )?),
            None => None,
        };
        let handle = core(config, verifier, bus, cluster, handler, dev.as_ref());
        let cluster_thread = match &handle.core.cluster {
            Some(c) => {
                log::info!(
                    "cluster mode: node {:?} through redis at {} (cluster {:?})",
                    c.node_id,
                    c.redis_addr,
                    handle.core.config.cluster_name
                );
                Some(crate::cluster::spawn(&handle)?)
            }
            None => None,
        };

        let mut shards = Vec::new();
        let parts = polls.into_iter().zip(receivers).zip(acceptors);
        for (id, ((poll, rx), acceptor)) in parts.enumerate() {
            let shard = Shard::new(id, poll, rx, Some(acceptor), handle.clone());
            shards.push(
                std::thread::Builder::new()
                    .name(format!("wsedge-shard-{id}"))
                    .spawn(move || shard.run())?,
            );
        }

        log::info!(
            "wsedge listening on {local_addr} with {} shards",
            shards.len()
        );
        Ok(Server {
            handle,
            local_addr,
            shards,
            cluster_thread,
            dev,
        })
    }

    /// A handle for broadcasts, sends and queries.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Dev mode's secret and tokens; `None` when a key was configured.
    pub fn dev_mode(&self) -> Option<&DevMode> {
        self.dev.as_ref()
    }

    /// Graceful stop: no new connections, `1001` to every WebSocket, queued
    /// answers written, threads joined (bounded by the drain timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shards.is_empty() {
            return;
        }
        // Each shard closes its listener first, then drains.
        self.handle.core.bus.send_all(|| Command::Shutdown);
        for t in self.shards.drain(..) {
            let _ = t.join();
        }
        if let Some(c) = &self.handle.core.cluster {
            c.stop.store(true, std::sync::atomic::Ordering::Release);
        }
        if let Some(t) = self.cluster_thread.take() {
            let _ = t.join();
        }
        log::info!("wsedge stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The state every shard and handle shares, for a server of `config.shards`
/// shards reached through `bus`.
fn core(
    config: Config,
    verifier: Verifier,
    bus: Bus,
    cluster: Option<Cluster>,
    handler: Arc<dyn MessageHandler>,
    dev: Option<&DevMode>,
) -> Handle {
    let core = Arc::new(Core {
        presence: Presence::with_change_tracking(config.shards, cluster.is_some()),
        cluster,
        verifier,
        metrics: Metrics::new(config.shards),
        bus,
        started: Instant::now(),
        handler,
        dev_user_token: dev.map(|d| d.user_token.clone()),
        ws_slots: AtomicUsize::new(0),
        config,
    });
    Handle { core }
}

/// The fan-out test bed, never used by the server: a handle on
/// `config.shards` shards that each hold `conns_per_shard` open WebSocket
/// connections writing into in-memory sinks, and those shards, which the
/// caller drives (one per thread, [`SinkShard::turn`]) in place of
/// [`Shard::run`]. Broadcasts through the handle take the real path: encode
/// once, the bus, each shard's inbox and waker, delivery and flush. There is
/// no listener and no cluster link (`redis_url` is ignored).
#[doc(hidden)]
pub fn sink_shards(
    mut config: Config,
    conns_per_shard: usize,
) -> Result<(Handle, Vec<SinkShard>), StartError> {
    config.redis_url = None;
    let (dev, verifier) = checked(&config)?;
    let mut polls = Vec::with_capacity(config.shards);
    let mut inboxes = Vec::with_capacity(config.shards);
    let mut receivers = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = bus::inbox();
        inboxes.push((tx, waker));
        receivers.push(rx);
        polls.push(poll);
    }
    let handler: Arc<dyn MessageHandler> = Arc::new(EchoHandler);
    let handle = core(
        config,
        verifier,
        Bus::new(inboxes),
        None,
        handler,
        dev.as_ref(),
    );
    let shards = polls
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(id, (poll, rx))| {
            let shard = Shard::new(id, poll, rx, None, handle.clone());
            SinkShard::new(shard, conns_per_shard)
        })
        .collect();
    Ok((handle, shards))
}

/// Validates `config` and builds its token verifier, with dev mode's made-up
/// secret when no key is configured.
fn checked(config: &Config) -> Result<(Option<DevMode>, Verifier), StartError> {
    config.validate()?;
    let dev = config.is_dev_mode().then(dev_mode);
    let secret = config
        .jwt_secret
        .clone()
        .or_else(|| dev.as_ref().map(|d| d.secret.clone()));
    let verifier = Verifier::from_config(config, secret.as_deref())?;
    Ok((dev, verifier))
}

fn dev_mode() -> DevMode {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let exp = now_secs() + 24 * 3600;
    DevMode {
        user_token: mint_hs256(&secret, &json!({"sub": "dev-user", "exp": exp})),
        admin_token: mint_hs256(
            &secret,
            &json!({"sub": "dev-admin", "role": "admin", "exp": exp}),
        ),
        secret,
    }
}
