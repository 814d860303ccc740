//! Every option of the server, with its documented default, in one struct.
//!
//! `Config` is what the library consumes; the binary builds it from flags,
//! environment and an optional TOML file (see `main.rs`), the library from
//! [`crate::ServerBuilder`]. Nothing here touches a socket: `validate()` only
//! rejects combinations that could never work, before any thread starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The server's configuration. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`--bind`). Default `0.0.0.0:3000`.
    pub bind: SocketAddr,
    /// PEM certificate chain served on `bind` (`--tls-cert`, with
    /// `--tls-key`): HTTPS and WSS instead of plaintext.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate (`--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// Reactor threads (`--shards`). Default: number of CPUs.
    pub shards: usize,
    /// Static admin credential for the REST API (`--admin-key`).
    pub admin_key: Option<String>,
    /// Shared HMAC secret (`JWT_SECRET`). Neither this nor a public key: dev mode.
    pub jwt_secret: Option<String>,
    /// JWT algorithm accepted (`--jwt-algorithm`). Default `HS256`.
    pub jwt_algorithm: String,
    /// PEM public key file for RS*/PS*/ES*/EdDSA (`--jwt-public-key`).
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS document the verification keys come from (`--jwt-jwks-url`),
    /// instead of a secret or a public key file (docs/PROTOCOL.md §12.3).
    pub jwt_jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS document
    /// (`--jwt-jwks-refresh-secs`). Default 300.
    pub jwt_jwks_refresh_secs: u64,
    /// PEM certificates trusted beside the system's roots for an https
    /// JWKS URL (`--jwt-jwks-ca-file`).
    pub jwt_jwks_ca_file: Option<PathBuf>,
    /// Required `iss` claim, when set (`--jwt-issuer`).
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set (`--jwt-audience`).
    pub jwt_audience: Option<String>,
    /// Clock-skew leeway for `exp`/`nbf` (`--jwt-leeway-secs`). Default 30.
    pub jwt_leeway_secs: u64,
    /// Claim that marks an admin token (`--admin-role-claim`). Default `role`.
    pub admin_role_claim: String,
    /// Value of that claim for admins (`--admin-role-value`). Default `admin`.
    pub admin_role_value: String,
    /// Largest WebSocket message accepted (`--max-message-bytes`). Default 64 KiB.
    pub max_message_bytes: usize,
    /// WebSocket connections in total before `503` (`--max-connections`). Default 1,000,000.
    pub max_connections: usize,
    /// WebSocket connections per user before `429` (`--max-connections-per-user`). Default 100.
    pub max_connections_per_user: usize,
    /// Outbound bytes queued per connection before `1008 slow consumer`
    /// (`--outbound-buffer-bytes`). Default 1 MiB.
    pub outbound_buffer_bytes: usize,
    /// Allowed `Origin` values; empty means any (`--allowed-origins`).
    pub allowed_origins: Vec<String>,
    /// Origins whose browsers may call the REST API (`--cors-origins`, `*`
    /// for any). Default none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Connections not (yet) WebSockets before a new one is closed at once
    /// (`--max-http-connections`). Default 10,000.
    pub max_http_connections: usize,
    /// Channels one connection may subscribe to
    /// (`--max-channels-per-connection`). Default 128.
    pub max_channels_per_connection: usize,
    /// Messages kept per stream for recovery (`--history-size`). Default
    /// 100; 0 keeps none (offsets still count).
    pub history_size: usize,
    /// Seconds a message is kept for recovery (`--history-ttl-secs`).
    /// Default 300.
    pub history_ttl_secs: u64,
    /// Bytes of history kept in all, oldest first out
    /// (`--history-max-bytes`). Default 64 MiB.
    pub history_max_bytes: usize,
    /// Seconds between server pings (`--ping-interval-secs`). Default 25; 0 disables.
    pub ping_interval_secs: u64,
    /// Seconds to wait for a pong (`--pong-timeout-secs`). Default 20.
    pub pong_timeout_secs: u64,
    /// Seconds for a client to send a whole HTTP request (`--handshake-timeout-secs`). Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds an idle keep-alive REST connection is kept (`--idle-timeout-secs`). Default 60.
    pub idle_timeout_secs: u64,
    /// Largest HTTP request head (`--max-header-bytes`). Default 8 KiB.
    pub max_header_bytes: usize,
    /// Largest REST request body (`--max-body-bytes`). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Seconds graceful shutdown waits for output to drain (`--drain-timeout-secs`). Default 5.
    pub drain_timeout_secs: u64,
    /// Serve the test page and `realtime.js` (`--no-web` turns off). Default on.
    pub serve_web: bool,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it
    /// (`--no-compression` turns off). Default on.
    pub compression: bool,
    /// Messages the server sends shorter than this go uncompressed even to
    /// a connection that negotiated compression (`--compression-min-bytes`).
    /// Default 256.
    pub compression_min_bytes: usize,
    /// Redis to join a cluster through (`--redis-url`, `WSEDGE_REDIS_URL`).
    /// Unset: a single node that needs no Redis.
    pub redis_url: Option<String>,
    /// This node's name in the cluster (`--node-id`). Default: hostname + port.
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel (`--cluster-name`), so that
    /// several clusters can share one Redis. Default `wsedge`.
    pub cluster_name: String,
    /// Commands (broadcasts, sends, disconnects) one shard's inbox holds
    /// before operations that would add more are refused with `503`
    /// (`--shard-inbox-capacity`). Default 4096.
    pub shard_inbox_capacity: usize,
}

/// The largest number of shards accepted; more threads than this on one
/// process only adds contention.
pub const MAX_SHARDS: usize = 256;

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([0, 0, 0, 0], 3000)),
            shards: default_shards(),
            admin_key: None,
            tls_cert: None,
            tls_key: None,
            jwt_secret: None,
            jwt_algorithm: "HS256".to_string(),
            jwt_public_key: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 300,
            jwt_jwks_ca_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            admin_role_claim: "role".to_string(),
            admin_role_value: "admin".to_string(),
            max_message_bytes: 64 * 1024,
            max_connections: 1_000_000,
            max_connections_per_user: 100,
            outbound_buffer_bytes: 1024 * 1024,
            allowed_origins: Vec::new(),
            cors_origins: Vec::new(),
            max_http_connections: 10_000,
            max_channels_per_connection: 128,
            history_size: 100,
            history_ttl_secs: 300,
            history_max_bytes: 64 << 20,
            ping_interval_secs: 25,
            pong_timeout_secs: 20,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            drain_timeout_secs: 5,
            serve_web: true,
            compression: true,
            compression_min_bytes: 256,
            redis_url: None,
            node_id: None,
            cluster_name: "wsedge".to_string(),
            shard_inbox_capacity: 4096,
        }
    }
}

/// Number of CPUs, the default shard count.
pub fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--shards must be at most {MAX_SHARDS}")]
    TooManyShards,
    #[error("unknown --jwt-algorithm {0:?} (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")]
    UnknownAlgorithm(String),
    #[error("--jwt-algorithm {0} needs --jwt-public-key")]
    NeedsPublicKey(String),
    #[error("--jwt-algorithm {0} is an HMAC algorithm and needs JWT_SECRET, not a public key")]
    NeedsSecret(String),
    #[error("cannot read --jwt-public-key {path}: {err}")]
    PublicKey { path: PathBuf, err: String },
    #[error("--jwt-jwks-url cannot be combined with {0}: keys come from one source")]
    JwksConflict(&'static str),
    #[error("--jwt-jwks-url {0:?} must be an http:// or https:// URL with a host")]
    JwksUrl(String),
    #[error("--jwt-jwks-ca-file needs --jwt-jwks-url")]
    JwksCaWithoutUrl,
    #[error("cannot use --jwt-jwks-ca-file {path}: {err}")]
    JwksCaFile { path: PathBuf, err: String },
    #[error("cannot read config file {path}: {err}")]
    File { path: PathBuf, err: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file into a config whose missing keys keep their defaults.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            err: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            err: e.to_string(),
        })
    }

    /// True when no key is configured: the server makes up a secret.
    pub fn is_dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none() && self.jwt_jwks_url.is_none()
    }

    /// Rejects settings that can never work. Keys are checked when the
    /// verifier is built (`auth::Verifier::from_config`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("--shards", self.shards),
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-connections", self.max_connections),
            ("--max-connections-per-user", self.max_connections_per_user),
            ("--outbound-buffer-bytes", self.outbound_buffer_bytes),
            ("--max-header-bytes", self.max_header_bytes),
            ("--max-http-connections", self.max_http_connections),
            (
                "--max-channels-per-connection",
                self.max_channels_per_connection,
            ),
            (
                "--handshake-timeout-secs",
                self.handshake_timeout_secs as usize,
            ),
            // 0 would close every keep-alive (and every paused) REST
            // connection the moment it goes quiet.
            ("--idle-timeout-secs", self.idle_timeout_secs as usize),
            ("--shard-inbox-capacity", self.shard_inbox_capacity),
            ("--history-ttl-secs", self.history_ttl_secs as usize),
            (
                "--jwt-jwks-refresh-secs",
                self.jwt_jwks_refresh_secs as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "--tls-cert and --tls-key go together: give both or neither".into(),
            ));
        }
        if self.shards > MAX_SHARDS {
            return Err(ConfigError::TooManyShards);
        }
        self.validate_jwks()?;
        if self.ping_interval_secs > 0 && self.pong_timeout_secs == 0 {
            return Err(ConfigError::Zero("--pong-timeout-secs"));
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "--redis-url {url:?} must start with redis:// (or redis+unix://)"
                )));
            }
        }
        for (name, v) in [
            ("--node-id", self.node_id.as_deref()),
            ("--cluster-name", Some(self.cluster_name.as_str())),
        ] {
            if let Some(v) = v {
                if v.is_empty()
                    || v.len() > 200
                    || v.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ConfigError::Invalid(format!(
                        "{name} {v:?} must be 1-200 characters without spaces"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Keys come from one source: a JWKS, or a secret, or a key file. The
    /// URL is checked for its form only; reaching it is the refresher's.
    fn validate_jwks(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.jwt_jwks_url else {
            if self.jwt_jwks_ca_file.is_some() {
                return Err(ConfigError::JwksCaWithoutUrl);
            }
            return Ok(());
        };
        if self.jwt_secret.is_some() {
            return Err(ConfigError::JwksConflict("JWT_SECRET"));
        }
        if self.jwt_public_key.is_some() {
            return Err(ConfigError::JwksConflict("--jwt-public-key"));
        }
        let rest = ["http://", "https://"].iter().find_map(|scheme| {
            url.get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .map(|_| &url[scheme.len()..])
        });
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
        match host {
            Some(h) if !h.is_empty() && !h.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                Ok(())
            }
            _ => Err(ConfigError::JwksUrl(url.clone())),
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}
