//! wsedge-loadtest: opens N authenticated WebSocket connections to a wsedge
//! (started here by default, or any server with its API via `--target`),
//! drives broadcasts through the REST API, and reports connect rate,
//! deliveries per second, end-to-end latency, losses, order, server memory
//! and CPU per connection, and a capacity estimate; with `--hostile N`, the
//! same again beside misbehaving connections (docs/PROTOCOL.md §8, README.md
//! "Load testing").
//!
//! ```text
//! main.rs    the flags and main
//! run/       the run, stage by stage: server → tokens → connect → phases → attack → report
//! server.rs  the server under test: child process, in-process, binary, target
//! client.rs  WebSocket clients: a few mio worker threads, frames by hand
//! rest.rs    REST load: pipelined keep-alive requests, window or fixed rate
//! channels.rs  --mode channel: which channels each connection joins, byte scans
//! hostile/   --hostile: misbehaving connections beside the measured ones
//! drill/     --kill-node-after / --restart-after: the failover drill
//! ws.rs      handshake, frame parser, masked frames, payload byte scan
//! report/    the figures: the human table, the JSON line, the HTML page
//! sys.rs     rlimit, /proc (RSS, CPU, listener pid), socket options
//! ```

mod channels;
mod client;
mod drill;
mod hostile;
mod report;
mod rest;
mod run;
mod server;
mod sys;
mod tls;
mod tokens;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use rest::Mode;

/// Load test for wsedge (or any server with its API): N authenticated
/// WebSockets, broadcasts through the REST API, latency and capacity.
///
/// Without --target it starts wsedge itself (in a child process, so that
/// the server's memory and CPU are measured apart from the tool's).
/// Everything runs on loopback and stops by itself.
#[derive(Debug, Parser)]
#[command(name = "wsedge-loadtest", version, about, long_about = None)]
struct Cli {
    /// WebSocket connections to open
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users (token `sub`s) the connections are spread over [default: connections / 10]
    #[arg(long)]
    users: Option<usize>,
    /// Client threads (each a mio event loop) [default: half the CPUs, at least 1]
    #[arg(long)]
    threads: Option<usize>,
    /// Loopback source addresses 127.0.0.1 … 127.0.0.K the connections are spread over [default: 4, more above 80k connections]
    #[arg(long)]
    source_addrs: Option<usize>,
    /// Upgrade handshakes in flight at once (all threads together)
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up opening connections after this many seconds
    #[arg(long, default_value_t = 120)]
    connect_timeout_secs: u64,
    /// One handshake (TCP + upgrade) must finish within this many seconds
    #[arg(long, default_value_t = 15)]
    handshake_timeout_secs: u64,
    /// Size of the message payload object {"s":…,"t":…,"p":"xxx…"} in bytes
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// broadcast: everyone; send: POST /v1/websocket/send/:userId, users in turn; users: broadcast with userIds; channel: every connection subscribes to channels lt:…, publishes go to them in turn
    #[arg(long, value_enum, default_value_t = Mode::Broadcast)]
    mode: Mode,
    /// Users per request in --mode users
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// --mode channel: channels lt:0 … lt:{C-1} the connections are dealt over in turn [default: 1]
    #[arg(long, value_name = "C")]
    channels: Option<usize>,
    /// --mode channel: channels each connection subscribes to (connection i: lt:{(i·K + j) mod C}, j < K) [default: 1]
    #[arg(long, value_name = "K")]
    subs_per_conn: Option<usize>,
    /// --mode channel: wait at most this long for every subscription to be acknowledged
    #[arg(long, default_value_t = 60)]
    subscribe_timeout_secs: u64,
    /// REST requests in flight (pipelined over the REST connections)
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Keep-alive REST connections the requests are spread over (message order is checked per REST connection)
    #[arg(long, default_value_t = 1)]
    rest_conns: usize,
    /// Throughput phase: also hold back while more than this many requests' worth of deliveries are outstanding (0: only the window limits)
    #[arg(long, default_value_t = 32)]
    max_lag: u64,
    /// Seconds of the throughput phase (as fast as the window allows); 0 skips it
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up before the measured phases (reported apart)
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Also run a phase at this fixed offered rate (requests per second), for latency; in the drill, publishes per second, the three kinds together [drill default: 60]
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of the --rate phase [default: --duration, or 10]
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Sweep the offered rate upwards until p99 exceeds --p99-bound-ms (or a message is lost)
    #[arg(long)]
    sweep: bool,
    /// Seconds per sweep step
    #[arg(long, default_value_t = 2.0)]
    sweep_step_secs: f64,
    /// Most sweep steps
    #[arg(long, default_value_t = 10)]
    sweep_steps: usize,
    /// Latency bound for the sustainable-rate estimate, milliseconds
    #[arg(long, default_value_t = 5.0)]
    p99_bound_ms: f64,
    /// After a phase, wait at most this long for the promised deliveries
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Hostile connections beside the measured ones (unauthenticated bodies, slowloris heads, oversized messages, garbage frames, never-readers), each kind reconnecting when the server ends it: the measured phases run first without them, then again under attack
    #[arg(long, default_value_t = 0, value_name = "N")]
    hostile: usize,
    /// Kinds of hostile connection, spread evenly over --hostile
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = hostile::Kind::ALL, value_name = "KIND,…")]
    hostile_kinds: Vec<hostile::Kind>,
    /// Seconds of each phase under attack [default: the phase's own length]
    #[arg(long, value_name = "S")]
    hostile_secs: Option<f64>,
    /// Failover drill: with --cluster N, SIGKILL the last node this many seconds after publishing starts; its clients reconnect to the other nodes with the recovery parameters, and the report counts per client what was lost, duplicated and out of order, and the time to recover
    #[arg(long, value_name = "S")]
    kill_node_after: Option<f64>,
    /// Failover drill on one node (no --cluster): SIGKILL the server this many seconds after publishing starts and start it again on the same port; every client must reconnect and reload (recovered: false)
    #[arg(long, value_name = "S")]
    restart_after: Option<f64>,
    /// Drill: seconds of publishing after the kill or restart
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    drill_secs: f64,
    /// Also write an HTML report with charts to this file
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Load a running server instead, e.g. ws://127.0.0.1:3000, or wss://localhost:3443 for TLS (WebSockets over wss://, REST over https://; loopback only); a comma-separated list spreads the connections over a running cluster's nodes, with the REST calls to the first
    #[arg(long, value_name = "ws[s]://HOST:PORT[,…]")]
    target: Option<String>,
    /// TLS: trust the CA certificates of this PEM file on top of the system's roots (for a wss:// --target with a private or self-signed certificate)
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Start the server(s) here with TLS (--tls-cert/--tls-key), the drill's too: a throwaway CA and a certificate for localhost and 127.0.0.1 are made at start-up in a temp directory and trusted; the clients use wss:// and the REST calls https://
    #[arg(long)]
    server_tls: bool,
    /// Start a cluster of this many wsedge nodes (child processes joined through Redis), spread the connections over them and send the REST calls to node 0
    #[arg(long, value_name = "NODES")]
    cluster: Option<usize>,
    /// Redis for --cluster [default: a redis-server started here on a free loopback port]
    #[arg(long, value_name = "redis://HOST:PORT")]
    redis_url: Option<String>,
    /// The server's JWT secret (HS256): user tokens, and the admin token unless --admin-key [default: random, for a server started here]
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Algorithm of the tokens: HS256 (from --secret), or RS256, ES256, EdDSA… signed with --jwt-private-key, to measure what asymmetric tokens cost per handshake
    #[arg(long, default_value = "HS256", value_name = "ALG")]
    jwt_algorithm: String,
    /// PEM private key that signs the tokens with a non-HMAC --jwt-algorithm
    #[arg(long, value_name = "PEM_FILE")]
    jwt_private_key: Option<PathBuf>,
    /// PEM public key given to a server started here, with a non-HMAC --jwt-algorithm
    #[arg(long, value_name = "PEM_FILE")]
    jwt_public_key: Option<PathBuf>,
    /// Static admin key for the REST API, instead of an admin JWT minted from --secret
    #[arg(long, env = "WSEDGE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Claim and value that mark an admin JWT
    #[arg(long, default_value = "role=admin", value_name = "CLAIM=VALUE")]
    admin_claim: String,
    /// The target server's process id, for its memory and CPU [default: found from the listening port]
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this wsedge binary instead of the built-in server, e.g. target/release/wsedge
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Run the server in this process (memory is then server + tool)
    #[arg(long)]
    in_process: bool,
    /// Shards of the server started here [default: number of CPUs]
    #[arg(long)]
    server_shards: Option<usize>,
    /// Messages the server started here keeps per stream for recovery (its --history-size; 0 turns history off) [default: the server's, 100]
    #[arg(long, value_name = "N")]
    server_history_size: Option<usize>,
    /// Send the user token in Authorization: Bearer instead of ?token=
    #[arg(long)]
    token_in_header: bool,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
    #[arg(long, hide = true)]
    internal_serve: bool,
    #[arg(long, hide = true, default_value_t = 100)]
    internal_max_per_user: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.internal_serve {
        let shards = cli.server_shards.unwrap_or_else(wsedge::default_shards);
        let served =
            server::serve_child(shards, cli.internal_max_per_user, cli.server_history_size);
        return ExitCode::from(served as u8);
    }
    if drill::wanted(&cli) {
        return match drill::run(&cli) {
            Ok(report) => {
                println!("{}", report.table());
                println!("{}", report.json_line());
                // 4: the drill ran and missed its goal (CI asserts on it).
                ExitCode::from(if report.pass { 0 } else { 4 })
            }
            Err(e) => {
                eprintln!("wsedge-loadtest: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run::run(cli) {
        Ok(report) => {
            println!("{}", report.table());
            println!("{}", report.json_line());
            if report.connect.open == 0 {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsedge-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
