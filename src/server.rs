//! Starting and stopping a server: binds one listener per shard, assembles
//! the shared state, spawns the shard threads (each accepts on its own
//! listener, see [`crate::acceptor`]) and the cluster link, and shuts them
//! down gracefully (docs/PROTOCOL.md §5, §7).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Poll, Waker};
use rand::Rng;
use serde_json::json;

use crate::acceptor::{self, Acceptor};
use crate::auth::jwks::{self, RefresherThread};
use crate::auth::{mint_hs256, now_secs, Verifier};
use crate::bus::{self, Bus, Inbox};
use crate::channels::Directory;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::handler::{EchoHandler, MessageHandler};
use crate::history::{self, History};
use crate::metrics::Metrics;
use crate::ops::Handle;
use crate::presence::Presence;
use crate::shard::{Registry, Shard, ShardCtx, LISTENER, WAKER};
use crate::shared::Shared;
use crate::tls::{ServerTls, TlsError};

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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    /// The JWKS refresher (`--jwt-jwks-url`).
    jwks_thread: Option<RefresherThread>,
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
        config.validate()?;
        raise_open_files_limit(config.max_connections);
        let listeners = acceptor::bind_listeners(config.bind, config.shards).map_err(|err| {
            StartError::Bind {
                addr: config.bind,
                err,
            }
        })?;
        let local_addr = listeners[0].local_addr()?;
        let parts = assemble(config, handler, Some(local_addr.port()))?;
        let handle = parts.handle;
        let cluster_thread = match &handle.shared.cluster {
            Some(c) => {
                log::info!(
                    "cluster mode: node {:?} through redis at {} (cluster {:?})",
                    c.node_id,
                    c.redis_addr,
                    handle.shared.config.cluster_name
                );
                Some(crate::cluster::spawn(c, Arc::new(handle.clone()))?)
            }
            None => None,
        };
        let jwks_thread = start_jwks(&handle)?;
        let mut shards = Vec::with_capacity(parts.shards.len());
        for (id, ((poll, inbox), listener)) in parts.shards.into_iter().zip(listeners).enumerate() {
            let acceptor = Acceptor::new(listener, poll.registry(), LISTENER)?;
            let shard = Shard::new(
                id,
                poll,
                inbox,
                Some(acceptor),
                Registry::new(id, &handle),
                ShardCtx::new(&handle),
            );
            shards.push(
                std::thread::Builder::new()
                    .name(format!("wsedge-shard-{id}"))
                    .spawn(move || shard.run())?,
            );
        }
        log::info!(
            "wsedge listening on {local_addr} ({}) with {} shards",
            if handle.shared.tls.is_some() {
                "TLS"
            } else {
                "plaintext"
            },
            shards.len()
        );
        Ok(Server {
            handle,
            local_addr,
            shards,
            cluster_thread,
            jwks_thread,
            dev: parts.dev,
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

    /// Reads `--tls-cert` and `--tls-key` again (what `SIGHUP` does): new
    /// handshakes present the new pair, open connections keep theirs. On
    /// error the old pair stays. `Ok(false)` when the port is plaintext.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.handle.shared.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether the port speaks TLS (`--tls-cert`).
    pub fn is_tls(&self) -> bool {
        self.handle.shared.tls.is_some()
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
        self.handle.shared.bus.shutdown_all();
        for t in self.shards.drain(..) {
            let _ = t.join();
        }
        // Only now, with no REST call left to publish anything: the
        // publisher writes out what is queued (at most ~1 s), then says
        // goodbye.
        if let Some(c) = &self.handle.shared.cluster {
            c.stop.store(true, std::sync::atomic::Ordering::Release);
        }
        if let Some(t) = self.cluster_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.jwks_thread.take() {
            t.stop(JWKS_STOP_WAIT);
        }
        log::info!("wsedge stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a shutdown waits for the JWKS refresher when it is in a fetch.
const JWKS_STOP_WAIT: Duration = Duration::from_secs(1);

/// Starts the JWKS refresher when keys come from one, and waits (at most
/// [`jwks::FIRST_FETCH_WAIT`]) for its first fetch, so that a server whose
/// endpoint answers checks tokens from its first connection on. One that
/// does not answer starts anyway, refusing every token until a fetch
/// succeeds (logged, and said on `/healthz`).
fn start_jwks(handle: &Handle) -> Result<Option<RefresherThread>, StartError> {
    let Some(jwks) = handle.shared.verifier.jwks() else {
        return Ok(None);
    };
    let thread = jwks.spawn()?;
    if !jwks.wait_first_fetch(jwks::FIRST_FETCH_WAIT) {
        log::warn!("JWKS: no keys loaded yet; every token is refused until a fetch succeeds");
    }
    Ok(thread)
}

/// A server's pieces before its threads run: the handle on its shared
/// state, and each shard's poll (with its waker registered) and inbox.
pub(crate) struct Parts {
    pub handle: Handle,
    pub shards: Vec<(Poll, Inbox)>,
    pub dev: Option<DevMode>,
}

/// Builds the shared state of a server of `config.shards` shards from a
/// validated `config`: the token
/// verifier (with dev mode's made-up secret when no key is configured), the
/// bus with a poll and waker per shard, and the cluster link's state when
/// `--redis-url` is set (`port` names the node by default).
pub(crate) fn assemble(
    config: Config,
    handler: Arc<dyn MessageHandler>,
    port: Option<u16>,
) -> Result<Parts, StartError> {
    let dev = config.is_dev_mode().then(dev_mode);
    let secret = config
        .jwt_secret
        .clone()
        .or_else(|| dev.as_ref().map(|d| d.secret.clone()));
    let verifier = Verifier::from_config(&config, secret.as_deref())?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(cert, key)?)),
        _ => None,
    };
    let mut inboxes = Vec::with_capacity(config.shards);
    let mut shards = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = bus::inbox(config.shard_inbox_capacity);
        inboxes.push((tx, waker));
        shards.push((poll, rx));
    }
    let cluster = match (&config.redis_url, port) {
        (Some(url), Some(port)) => {
            let node_id = config
                .node_id
                .clone()
                .unwrap_or_else(|| crate::cluster::default_node_id(port));
            // The cluster's log of numbered messages, from which a node
            // that starts fills its history: about one entry per KiB of
            // --history-max-bytes, at least 1,000 (none with history off).
            let log = match config.history_size {
                0 => 0,
                _ => (config.history_max_bytes / 1024).max(1000),
            };
            Some(Arc::new(Cluster::new(
                url,
                node_id,
                &config.cluster_name,
                log,
            )?))
        }
        _ => None,
    };
    let shared = Shared {
        presence: Arc::new(Presence::new(config.shards, cluster.is_some())),
        channels: Arc::new(Directory::new(config.shards, config.redis_url.is_some())),
        history: Arc::new(History::new(
            history::Limits {
                size: config.history_size,
                ttl: Duration::from_secs(config.history_ttl_secs),
                max_bytes: config.history_max_bytes,
            },
            // In a cluster the offsets are the cluster's, read from Redis.
            config.redis_url.is_none(),
        )),
        cluster,
        verifier: Arc::new(verifier),
        metrics: Arc::new(Metrics::new(config.shards)),
        bus: Bus::new(inboxes, config.shard_inbox_capacity),
        started: Instant::now(),
        handler,
        dev_user_token: dev.as_ref().map(|d| d.user_token.clone()),
        ws_slots: Arc::new(AtomicUsize::new(0)),
        http_slots: Arc::new(AtomicUsize::new(0)),
        tls,
        config: Arc::new(config),
    };
    Ok(Parts {
        handle: Handle {
            shared: Arc::new(shared),
        },
        shards,
        dev,
    })
}

/// Descriptors kept for what is not a client socket (listeners, pollers,
/// wakers, Redis, logs, files).
const RESERVED_FDS: u64 = 64;

/// Raises this process's open-file soft limit to its hard limit (once per
/// process), and logs how many connections the result leaves room for: a
/// default soft limit of 1,024 would cap a server sized for 100,000
/// connections at a thousand, with accept errors as the only sign.
fn raise_open_files_limit(max_connections: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct
        // passed by pointer, which lives for the calls.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            log::warn!("cannot read the open-file limit: {}", io::Error::last_os_error());
            return;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                log::warn!(
                    "cannot raise the open-file limit from {before}: {}",
                    io::Error::last_os_error()
                );
                lim.rlim_cur = before;
            }
        }
        let room = lim.rlim_cur.saturating_sub(RESERVED_FDS);
        let bound = if room < max_connections as u64 {
            "the open-file limit (raise the hard limit: ulimit -Hn, LimitNOFILE=)"
        } else {
            "--max-connections"
        };
        log::info!(
            "open files: soft limit {} (was {before}, hard {}); connection ceiling about {}, set by {bound}",
            lim.rlim_cur,
            lim.rlim_max,
            room.min(max_connections as u64)
        );
    });
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
