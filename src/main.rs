//! The `wsedge` binary: flags / environment / TOML → `Config` → `Server`,
//! then wait for SIGINT or SIGTERM and shut down gracefully (exit 0);
//! SIGHUP reloads the TLS certificate and key.
//!
//! Precedence: flag, then environment variable, then the `--config` file,
//! then the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsedge::{Config, Server};

/// Authenticated WebSocket edge server: JWT WebSockets on GET /ws, fan-out
/// through a REST API. With no key configured it starts in dev mode and
/// prints ready-to-use tokens.
#[derive(Debug, Parser)]
#[command(name = "wsedge", version, about, long_about = None)]
struct Cli {
    /// TOML file with any of the options below (keys in snake_case, e.g. max_connections = 1000) [default: none]
    #[arg(long, env = "WSEDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on [default: 0.0.0.0:3000]
    #[arg(long, env = "WSEDGE_BIND", value_name = "ADDR:PORT")]
    bind: Option<SocketAddr>,
    /// PEM certificate chain: serve HTTPS and WSS on --bind (with --tls-key; SIGHUP reloads both) [default: none: plaintext]
    #[arg(long, env = "WSEDGE_TLS_CERT", value_name = "PEM_FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1) [default: none]
    #[arg(long, env = "WSEDGE_TLS_KEY", value_name = "PEM_FILE")]
    tls_key: Option<PathBuf>,
    /// Reactor threads [default: number of CPUs]
    #[arg(long, env = "WSEDGE_SHARDS", value_name = "N")]
    shards: Option<usize>,
    /// Static admin credential for the REST API (compared in constant time) [default: none]
    #[arg(
        long,
        env = "WSEDGE_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    admin_key: Option<String>,
    /// HMAC secret for HS256/384/512 tokens [default: none: dev mode with a random secret]
    #[arg(
        long,
        env = "JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// Accepted JWT algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA [default: HS256]
    #[arg(long, env = "WSEDGE_JWT_ALGORITHM", value_name = "ALG")]
    jwt_algorithm: Option<String>,
    /// PEM public key file for RS*/PS*/ES*/EdDSA tokens [default: none]
    #[arg(long, env = "WSEDGE_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS URL (http:// or https://) the verification keys come from, picked by each token's kid; instead of JWT_SECRET or --jwt-public-key [default: none]
    #[arg(long, env = "WSEDGE_JWT_JWKS_URL", value_name = "URL")]
    jwt_jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS document (an unknown kid also fetches it, at most every 10 s) [default: 300]
    #[arg(long, env = "WSEDGE_JWT_JWKS_REFRESH_SECS", value_name = "SECS")]
    jwt_jwks_refresh_secs: Option<u64>,
    /// PEM file of CA certificates trusted beside the system's roots for an https JWKS URL [default: none]
    #[arg(long, env = "WSEDGE_JWT_JWKS_CA_FILE", value_name = "PEM_FILE")]
    jwt_jwks_ca_file: Option<PathBuf>,
    /// Required `iss` claim [default: not checked]
    #[arg(long, env = "WSEDGE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim [default: not checked]
    #[arg(long, env = "WSEDGE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Clock-skew leeway for exp/nbf, seconds [default: 30]
    #[arg(long, env = "WSEDGE_JWT_LEEWAY_SECS", value_name = "SECS")]
    jwt_leeway_secs: Option<u64>,
    /// Claim that marks an admin token [default: role]
    #[arg(long, env = "WSEDGE_ADMIN_ROLE_CLAIM")]
    admin_role_claim: Option<String>,
    /// Value of that claim for admins [default: admin]
    #[arg(long, env = "WSEDGE_ADMIN_ROLE_VALUE")]
    admin_role_value: Option<String>,
    /// Largest WebSocket message accepted; bigger closes with 1009 [default: 65536]
    #[arg(long, env = "WSEDGE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// WebSocket connections in total; more get 503 before upgrade [default: 1000000]
    #[arg(long, env = "WSEDGE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// WebSocket connections per user; more get 429 before upgrade [default: 100]
    #[arg(long, env = "WSEDGE_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    max_connections_per_user: Option<usize>,
    /// Outbound bytes queued per connection before close 1008 "slow consumer" [default: 1048576]
    #[arg(long, env = "WSEDGE_OUTBOUND_BUFFER_BYTES", value_name = "BYTES")]
    outbound_buffer_bytes: Option<usize>,
    /// Allowed Origin values, comma-separated; a foreign Origin gets 403 [default: any]
    #[arg(
        long,
        env = "WSEDGE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "A,B"
    )]
    allowed_origins: Option<Vec<String>>,
    /// Origins whose browsers may call the REST API (CORS), comma-separated, or * [default: none, no CORS headers]
    #[arg(
        long,
        env = "WSEDGE_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "A,B"
    )]
    cors_origins: Option<Vec<String>>,
    /// Connections in the HTTP phase (REST or not yet upgraded); more are closed at once [default: 10000]
    #[arg(long, env = "WSEDGE_MAX_HTTP_CONNECTIONS", value_name = "N")]
    max_http_connections: Option<usize>,
    /// Channels one WebSocket may subscribe to; one more gets an error message [default: 128]
    #[arg(long, env = "WSEDGE_MAX_CHANNELS_PER_CONNECTION", value_name = "N")]
    max_channels_per_connection: Option<usize>,
    /// Messages kept per stream (@all, each user, each channel) for clients that reconnect; 0 keeps none [default: 100]
    #[arg(long, env = "WSEDGE_HISTORY_SIZE", value_name = "N")]
    history_size: Option<usize>,
    /// Seconds a message is kept for clients that reconnect [default: 300]
    #[arg(long, env = "WSEDGE_HISTORY_TTL_SECS", value_name = "SECS")]
    history_ttl_secs: Option<u64>,
    /// Bytes of history kept in all; the oldest messages go first [default: 67108864]
    #[arg(long, env = "WSEDGE_HISTORY_MAX_BYTES", value_name = "BYTES")]
    history_max_bytes: Option<usize>,
    /// Seconds between server pings; 0 turns pings off [default: 25]
    #[arg(long, env = "WSEDGE_PING_INTERVAL_SECS", value_name = "SECS")]
    ping_interval_secs: Option<u64>,
    /// Seconds to wait for a pong before dropping the connection [default: 20]
    #[arg(long, env = "WSEDGE_PONG_TIMEOUT_SECS", value_name = "SECS")]
    pong_timeout_secs: Option<u64>,
    /// Seconds a client has to send a whole HTTP request (REST or upgrade) [default: 10]
    #[arg(long, env = "WSEDGE_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    handshake_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive REST connection is kept open [default: 60]
    #[arg(long, env = "WSEDGE_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    idle_timeout_secs: Option<u64>,
    /// Largest HTTP request head; bigger gets 431 [default: 8192]
    #[arg(long, env = "WSEDGE_MAX_HEADER_BYTES", value_name = "BYTES")]
    max_header_bytes: Option<usize>,
    /// Largest REST request body; bigger gets 413 [default: 1048576]
    #[arg(long, env = "WSEDGE_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds a graceful shutdown waits for clients to finish closing [default: 5]
    #[arg(long, env = "WSEDGE_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    drain_timeout_secs: Option<u64>,
    /// Do not serve the test page (/) and the browser client (/realtime.js)
    #[arg(long, env = "WSEDGE_NO_WEB")]
    no_web: bool,
    /// Never negotiate permessage-deflate compression, even when a client offers it
    #[arg(long, env = "WSEDGE_NO_COMPRESSION")]
    no_compression: bool,
    /// Messages the server sends shorter than this go uncompressed [default: 256]
    #[arg(long, env = "WSEDGE_COMPRESSION_MIN_BYTES", value_name = "BYTES")]
    compression_min_bytes: Option<usize>,
    /// Join a cluster through this Redis (redis://HOST:PORT[/DB]); unset: single node
    #[arg(long, env = "WSEDGE_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// This node's unique name in the cluster [default: hostname:port]
    #[arg(long, env = "WSEDGE_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Prefix of the cluster's Redis keys and channel; nodes with the same
    /// Redis and name form one cluster [default: wsedge]
    #[arg(long, env = "WSEDGE_CLUSTER_NAME", value_name = "NAME")]
    cluster_name: Option<String>,
    /// Commands one shard may have queued; operations that would add more
    /// are refused with 503 [default: 4096]
    #[arg(long, env = "WSEDGE_SHARD_INBOX_CAPACITY", value_name = "N")]
    shard_inbox_capacity: Option<usize>,
}

impl Cli {
    /// Lays flags and environment over the file (or the defaults).
    fn into_config(self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(path) => Config::from_toml_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        set!(
            bind,
            shards,
            jwt_algorithm,
            jwt_leeway_secs,
            jwt_jwks_refresh_secs,
            admin_role_claim,
            admin_role_value,
            max_message_bytes,
            max_connections,
            max_connections_per_user,
            outbound_buffer_bytes,
            allowed_origins,
            cors_origins,
            max_http_connections,
            max_channels_per_connection,
            history_size,
            history_ttl_secs,
            history_max_bytes,
            ping_interval_secs,
            pong_timeout_secs,
            handshake_timeout_secs,
            idle_timeout_secs,
            max_header_bytes,
            max_body_bytes,
            drain_timeout_secs,
            cluster_name
        );
        set_opt!(
            tls_cert,
            tls_key,
            admin_key,
            jwt_secret,
            jwt_public_key,
            jwt_jwks_url,
            jwt_jwks_ca_file,
            jwt_issuer,
            jwt_audience,
            redis_url,
            node_id
        );
        set!(shard_inbox_capacity, compression_min_bytes);
        if self.no_web {
            c.serve_web = false;
        }
        if self.no_compression {
            c.compression = false;
        }
        c.allowed_origins.retain(|o| !o.trim().is_empty());
        c.cors_origins.retain(|o| !o.trim().is_empty());
        Ok(c)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Cli::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsedge: {e}");
            return ExitCode::from(2);
        }
    };
    // Handlers first: a SIGINT/SIGTERM that arrives as soon as the server
    // logs that it listens must shut it down gracefully, not kill it.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsedge: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsedge: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = server.local_addr();
    if let Some(dev) = server.dev_mode() {
        print_dev_banner(addr, dev, server.is_tls());
    }
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            match server.reload_tls() {
                Ok(true) => log::info!("SIGHUP: TLS certificate and key reloaded"),
                Ok(false) => log::info!("SIGHUP: no --tls-cert to reload"),
                Err(e) => log::error!("SIGHUP: {e}; keeping the previous certificate"),
            }
            continue;
        }
        log::info!("signal {sig}: shutting down");
        break;
    }
    server.shutdown();
    ExitCode::SUCCESS
}

fn print_dev_banner(addr: SocketAddr, dev: &wsedge::DevMode, tls: bool) {
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    log::warn!("DEV MODE: no JWT_SECRET, --jwt-public-key or --jwt-jwks-url given; using a random secret. Do not use in production.");
    println!(
        "\n  wsedge dev mode (random secret, tokens valid 24 h)\n\n  test page:    {http}://{host}/\n  websocket:    {ws}://{host}/ws?token=<user token>\n  user token:   {user}\n  admin token:  {admin}\n\n  try: curl -X POST {http}://{host}/v1/websocket/broadcast -H 'Authorization: Bearer {admin}' \\\n         -H 'Content-Type: application/json' -d '{{\"type\":\"notification\",\"payload\":{{\"title\":\"hi\"}}}}'\n",
        user = dev.user_token,
        admin = dev.admin_token,
    );
}
