//! wsedge-loadtest: opens N authenticated WebSocket connections to a wsedge
//! (started here by default, or any server with its API via `--target`),
//! drives broadcasts through the REST API, and reports connect rate,
//! deliveries per second, end-to-end latency, losses, order, server memory
//! and CPU per connection, and a capacity estimate (SPEC §8).
//!
//! ```text
//! main.rs    flags, the run: server → connect → phases → report
//! server.rs  the server under test: child process, in-process, binary, target
//! client.rs  WebSocket clients: a few mio worker threads, frames by hand
//! rest.rs    REST load: pipelined keep-alive requests, window or fixed rate
//! ws.rs      handshake, frame parser, masked frames, payload byte scan
//! report/    the figures: the human table, the JSON line, the HTML page
//! sys.rs     rlimit, /proc (RSS, CPU, listener pid), socket options
//! ```

mod client;
mod report;
mod rest;
mod server;
mod sys;
mod ws;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use client::{ClientConfig, ConnSpec, PhaseRecv, Shared};
use report::{
    Capacity, ConfigEcho, ConnectInfo, CpuInfo, FdInfo, MemInfo, Pct, PhaseInfo, Report, ServerInfo,
};
use rest::{Mode, Pace, RestConfig, RestDriver};
use server::{Kind, Own, ServerUnderTest};

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
    /// broadcast: everyone; send: POST /v1/websocket/send/:userId, users in turn; users: broadcast with userIds
    #[arg(long, value_enum, default_value_t = Mode::Broadcast)]
    mode: Mode,
    /// Users per request in --mode users
    #[arg(long, default_value_t = 10)]
    targets: usize,
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
    /// Also run a phase at this fixed offered rate (requests per second), for latency
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
    /// Also write an HTML report with charts to this file
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Load a running server instead, e.g. ws://127.0.0.1:3000 (loopback only); a comma-separated list spreads the connections over a running cluster's nodes, with the REST calls to the first
    #[arg(long, value_name = "ws://HOST:PORT[,…]")]
    target: Option<String>,
    /// Start a cluster of this many wsedge nodes (child processes joined through Redis), spread the connections over them and send the REST calls to node 0
    #[arg(long, value_name = "NODES")]
    cluster: Option<usize>,
    /// Redis for --cluster [default: a redis-server started here on a free loopback port]
    #[arg(long, value_name = "redis://HOST:PORT")]
    redis_url: Option<String>,
    /// The server's JWT secret (HS256): user tokens, and the admin token unless --admin-key [default: random, for a server started here]
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
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
        let shards = cli
            .server_shards
            .unwrap_or_else(wsedge::config::default_shards);
        return ExitCode::from(server::serve_child(shards, cli.internal_max_per_user) as u8);
    }
    match run(cli) {
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

fn say(msg: impl AsRef<str>) {
    eprintln!("wsedge-loadtest: {}", msg.as_ref());
}

/// Where the tool connects.
struct Endpoint {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

fn parse_target(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("--target {url:?}: expected ws://HOST:PORT[/path] (no TLS)"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let path = if path == "/" { "/ws" } else { path };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--target {url:?}: {e}"))?
        .find(|a| a.is_ipv4() && a.ip().is_loopback())
        .ok_or_else(|| {
            format!("--target {url:?}: only loopback IPv4 targets (127.0.0.0/8, localhost): the clients bind 127.0.0.x source addresses")
        })?;
    Ok(Endpoint {
        addr,
        host_header: hostport.to_string(),
        path: path.to_string(),
    })
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if ok.is_err() {
        let t = sys::unix_micros() ^ u64::from(std::process::id()) << 32;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rate sweep: doubles the offered rate while p99 stays within the
/// bound, then bisects (geometrically) between the last rate that passed and
/// the first that failed; halves instead when the first step already fails.
/// At most `steps` steps, never above the measured ceiling.
struct Sweep {
    pass: Option<f64>,
    fail: Option<f64>,
    ceiling: f64,
    steps: usize,
    done: usize,
    lowest: f64,
    /// Slowest rate worth a step (a handful of requests per step).
    floor: f64,
}

impl Sweep {
    /// The sweep and its first rate: 1/16 of the ceiling measured by the
    /// throughput phase, else `--rate` or 10 requests/s.
    fn new(ceiling: f64, rate: Option<f64>, steps: usize, floor: f64) -> (Sweep, f64) {
        let first = if ceiling > 0.0 {
            ceiling / 16.0
        } else {
            rate.unwrap_or(10.0)
        };
        let sweep = Sweep {
            pass: None,
            fail: None,
            ceiling: if ceiling > 0.0 {
                ceiling
            } else {
                f64::INFINITY
            },
            steps,
            done: 0,
            lowest: first,
            floor,
        };
        (sweep, first)
    }

    /// Records a step; the next rate, or `None` when the sweep is over.
    fn next(&mut self, rate: f64, pass: bool) -> Option<f64> {
        self.done += 1;
        self.lowest = self.lowest.min(rate);
        if pass {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        if self.done >= self.steps {
            return None;
        }
        match (self.pass, self.fail) {
            (Some(p), None) if p < self.ceiling => Some((p * 2.0).min(self.ceiling)),
            (Some(_), None) => None,
            (None, Some(f)) if f / 4.0 >= self.floor => Some(f / 4.0),
            (None, _) => None,
            (Some(p), Some(f)) if f / p > 1.15 => Some((p * f).sqrt()),
            (Some(_), Some(_)) => None,
        }
    }
}

/// One phase to run.
#[derive(Clone)]
struct Plan {
    name: String,
    pace: Pace,
    secs: f64,
    warmup: bool,
}

/// What main knows of a phase once it is over.
struct Ran {
    plan: Plan,
    index: usize,
    sent: rest::Sent,
    tally: rest::Tally,
    recv: PhaseRecv,
    server_cpu: Option<f64>,
    tool_cpu: f64,
    /// Busy CPU seconds of the whole machine during the phase.
    machine_cpu: Option<f64>,
    /// Sending, waiting for answers and draining.
    wall: f64,
}

/// CPU seconds of the server and of the tool at one instant.
fn cpu_now(srv: &ServerUnderTest) -> (Option<f64>, f64) {
    let me = std::process::id();
    let total = sys::cpu_secs(me).unwrap_or(0.0);
    match srv.kind {
        Kind::InProcess => {
            let server = sys::thread_cpu_secs(me, &["wsedge-"]);
            (Some(server), total - server)
        }
        _ => (srv.cpu_secs(), total),
    }
}

fn run(cli: Cli) -> Result<Report, String> {
    let started = Instant::now();
    let load_start = sys::loadavg();
    let mut notes: Vec<String> = Vec::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cli.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if cli.payload_bytes > 1 << 20 {
        return Err("--payload-bytes is at most 1 MiB".into());
    }
    for (name, v) in [
        ("--duration", cli.duration),
        ("--warmup-secs", cli.warmup_secs),
        ("--sweep-step-secs", cli.sweep_step_secs),
        ("--drain-secs", cli.drain_secs),
    ] {
        if !(0.0..=3600.0).contains(&v) {
            return Err(format!("{name} must be between 0 and 3600 seconds"));
        }
    }
    if let Some(r) = cli.rate {
        if !(r > 0.0 && r <= 1e7) {
            return Err("--rate must be above 0 and at most 10,000,000".into());
        }
    }
    // A last resort against any wait this tool failed to bound: the whole
    // run has a budget from its flags; past it (plus a margin), exit.
    let budget = cli.connect_timeout_secs as f64
        + cli.handshake_timeout_secs as f64
        + cli.warmup_secs
        + cli.duration
        + cli.rate_secs.unwrap_or(cli.duration.max(10.0))
        + (cli.sweep_steps as f64) * (cli.sweep_step_secs + cli.drain_secs + 12.0)
        + 4.0 * (cli.drain_secs + 12.0)
        + 180.0;
    let _ = std::thread::Builder::new()
        .name("lt-watchdog".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(budget));
            eprintln!("wsedge-loadtest: still running after {budget:.0} s: giving up");
            std::process::exit(3);
        });
    let rest_conns = cli.rest_conns.clamp(1, 64);
    let window = cli.window.clamp(1, 1 << 16);
    let threads = cli.threads.unwrap_or((cpus / 2).max(1)).clamp(1, 64);

    // Open files: raise the soft limit, then see how many connections fit.
    let fd = sys::raise_fd_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let kind = if cli.target.is_some() {
        Kind::Target
    } else if cli.cluster.is_some() {
        Kind::Cluster
    } else if cli.in_process {
        Kind::InProcess
    } else if cli.server_bin.is_some() {
        Kind::Binary
    } else {
        Kind::Child
    };
    let reserve = 64 + 2 * rest_conns as u64;
    let fit = match kind {
        // Client and server sockets in one process: two fds per connection.
        Kind::InProcess => fd.soft.saturating_sub(2 * reserve) / 2,
        _ => fd.soft.saturating_sub(reserve),
    } as usize;
    let mut n = cli.connections;
    let capped = n > fit;
    if capped {
        let why = match kind {
            Kind::InProcess => format!(
                "open-file limit {} (hard): in-process, server and client fds share one process, so at most {fit} connections fit (run without --in-process for about twice as many)",
                fd.hard
            ),
            _ => format!(
                "open-file limit {} (hard) caps this process at {fit} connections",
                fd.hard
            ),
        };
        say(format!("{why}; opening {fit} instead of {n}"));
        notes.push(format!("requested {n} connections; {why}"));
        n = fit;
    }
    if fd.soft > fd.soft_before {
        say(format!(
            "raised the open-file soft limit from {} to {} (hard limit)",
            fd.soft_before, fd.soft
        ));
    }
    let users = cli.users.unwrap_or(n / 10).clamp(1, n);
    let per_user = n.div_ceil(users);
    let source_addrs = cli
        .source_addrs
        .unwrap_or_else(|| 4.max(n.div_ceil(20_000)))
        .clamp(1, 254);

    // The server.
    let secret = match (&cli.secret, kind) {
        (Some(s), _) => s.clone(),
        (None, Kind::Target) => {
            return Err("--target needs --secret (or JWT_SECRET): the server's HS256 secret, to mint user tokens".into())
        }
        (None, _) => random_hex(32),
    };
    let shards = cli.server_shards.unwrap_or(cpus).max(1);
    let own = Own {
        secret: &secret,
        shards,
        max_per_user: per_user + 1,
    };
    let (endpoints, srv) = match (&cli.target, kind) {
        (Some(urls), _) => {
            let eps = urls
                .split(',')
                .map(|u| parse_target(u.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let srv = ServerUnderTest::target(eps[0].addr, cli.server_pid);
            (eps, srv)
        }
        (None, k) => {
            let srv = match k {
                Kind::InProcess => ServerUnderTest::in_process(&own)?,
                Kind::Binary => {
                    let path = cli.server_bin.as_ref().expect("binary kind has a path");
                    ServerUnderTest::binary(&path.to_string_lossy(), &own)?
                }
                Kind::Cluster => {
                    let nodes = cli.cluster.unwrap_or(1);
                    if !(1..=16).contains(&nodes) {
                        return Err("--cluster takes 1 to 16 nodes".into());
                    }
                    ServerUnderTest::cluster(&own, nodes, cli.redis_url.as_deref())?
                }
                _ => ServerUnderTest::child(&own)?,
            };
            let eps = srv
                .addrs()
                .into_iter()
                .map(|addr| Endpoint {
                    addr,
                    host_header: addr.to_string(),
                    path: "/ws".into(),
                })
                .collect();
            (eps, srv)
        }
    };
    let endpoint = &endpoints[0];
    if endpoints.len() > 1 {
        let msg = format!(
            "cluster of {} nodes: connections spread over them, REST calls to {}; server memory and CPU are the nodes' (and a Redis started here) together",
            endpoints.len(),
            endpoint.addr
        );
        say(&msg);
        notes.push(msg);
    }
    say(format!(
        "server: {:?} at {}{}",
        srv.kind,
        srv.addr,
        srv.pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_else(|| " (pid unknown: no memory/CPU figures; give --server-pid)".into())
    ));
    let server_soft = if srv.kind == Kind::Target {
        srv.pid.and_then(sys::fd_soft_limit_of)
    } else {
        None
    };
    if let Some(s) = server_soft {
        if (n as u64) + 16 > s {
            let msg = format!("the target's own open-file soft limit is {s}: it cannot hold {n} connections (raise it with ulimit -n before starting it)");
            say(&msg);
            notes.push(msg);
        }
    }
    if srv.kind == Kind::Target && srv.pid.is_none() {
        notes
            .push("server pid unknown: no server memory or CPU figures (give --server-pid)".into());
    }
    if srv.kind == Kind::InProcess {
        notes.push("in-process server: RSS is the server's and the tool's together; CPU is split by thread name".into());
    }

    // Tokens.
    let exp = wsedge::auth::now_secs() + 6 * 3600;
    let user_ids: Arc<Vec<String>> = Arc::new((0..users).map(|i| format!("lt-u{i}")).collect());
    let tokens: Arc<Vec<String>> = Arc::new(
        user_ids
            .iter()
            .map(|u| wsedge::auth::mint_hs256(&secret, &json!({"sub": u, "exp": exp})))
            .collect(),
    );
    let bearer = match &cli.admin_key {
        Some(k) => k.clone(),
        None => {
            let (claim, value) = cli
                .admin_claim
                .split_once('=')
                .ok_or("--admin-claim must be CLAIM=VALUE")?;
            wsedge::auth::mint_hs256(
                &secret,
                &json!({"sub": "lt-admin", claim: value, "exp": exp}),
            )
        }
    };

    // Baselines.
    std::thread::sleep(Duration::from_millis(300));
    let my_pid = std::process::id();
    let srv_rss_idle = srv.rss_bytes();
    let tool_rss_idle = sys::rss_bytes(my_pid);
    let (srv_cpu0, tool_cpu0) = cpu_now(&srv);

    // Connect.
    let t_connect_us = sys::unix_micros();
    let shared = Arc::new(Shared::new(threads, t_connect_us));
    let ccfg = Arc::new(ClientConfig {
        targets: endpoints.iter().map(|e| e.addr).collect(),
        host_header: endpoint.host_header.clone(),
        path: endpoint.path.clone(),
        token_in_header: cli.token_in_header,
        tokens,
        lanes: rest_conns as u64,
        max_pending: cli.connect_concurrency.div_ceil(threads).max(1),
        handshake_timeout: Duration::from_secs(cli.handshake_timeout_secs.max(1)),
    });
    let mut per_worker: Vec<Vec<ConnSpec>> = vec![Vec::new(); threads];
    for i in 0..n {
        per_worker[i % threads].push(ConnSpec {
            target: (i % endpoints.len()) as u16,
            user: (i % users) as u32,
            source: Ipv4Addr::new(127, 0, 0, 1 + (i % source_addrs) as u8),
        });
    }
    let (col_tx, col_rx) = crossbeam_channel::unbounded::<(usize, PhaseRecv)>();
    let mut workers = Vec::new();
    for (id, specs) in per_worker.into_iter().enumerate() {
        workers.push(
            client::spawn(id, ccfg.clone(), specs, shared.clone(), col_tx.clone())
                .map_err(|e| format!("cannot start client thread: {e}"))?,
        );
    }
    drop(col_tx);
    let connect_start = Instant::now();
    let bar = if cli.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "connecting [{bar:40}] {pos}/{len} {per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let plain_progress = !cli.quiet && bar.is_hidden();
    let mut ramp: Vec<(f64, usize)> = vec![(0.0, 0)];
    let connect_deadline = connect_start + Duration::from_secs(cli.connect_timeout_secs);
    let mut last_plain = Instant::now();
    let mut stop_sent = false;
    loop {
        let ok = shared.connected.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        bar.set_position((ok + failed) as u64);
        if failed > 0 {
            bar.set_message(format!("({failed} failed)"));
        }
        ramp.push((connect_start.elapsed().as_secs_f64(), ok));
        if plain_progress && last_plain.elapsed() >= Duration::from_secs(2) {
            say(format!("connecting: {ok} open, {failed} failed of {n}"));
            last_plain = Instant::now();
        }
        if ok + failed >= n {
            break;
        }
        let now = Instant::now();
        if now >= connect_deadline && !stop_sent {
            say(format!(
                "connect phase over after {} s: going on with {ok} connections",
                cli.connect_timeout_secs
            ));
            shared.stop_connecting.store(true, Ordering::Relaxed);
            stop_sent = true;
        }
        if now >= connect_deadline + Duration::from_secs(cli.handshake_timeout_secs + 5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    let open = shared.connected.load(Ordering::Relaxed);
    let last_open = shared.last_open_us.load(Ordering::Relaxed);
    let connect_secs = if last_open > t_connect_us {
        (last_open - t_connect_us) as f64 / 1e6
    } else {
        connect_start.elapsed().as_secs_f64()
    };
    say(format!(
        "{open} of {n} connections open in {connect_secs:.2} s ({:.0}/s)",
        open as f64 / connect_secs.max(1e-6)
    ));
    // Let the server settle (welcome messages out), then measure.
    std::thread::sleep(Duration::from_millis(500));
    if endpoints.len() > 1 {
        // A cluster counts deliveries from its presence, which is a
        // heartbeat behind: measure only once node 0 sees every connection.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = rest::get_json(endpoint.addr, "/v1/websocket/stats?limit=0", &bearer)
                .ok()
                .and_then(|v| v["totalConnections"].as_u64());
            if seen.is_some_and(|c| c >= open as u64) {
                break;
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "node 0 sees {seen:?} of {open} connections after 15 s; deliveries are counted from what it sees"
                );
                say(&msg);
                notes.push(msg);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let srv_rss_conn = srv.rss_bytes();
    let tool_rss_conn = sys::rss_bytes(my_pid);
    let (srv_cpu1, tool_cpu1) = cpu_now(&srv);

    // Phases.
    let mut plans: Vec<Plan> = Vec::new();
    let lag = Pace::Window {
        max_lag: cli.max_lag,
    };
    if cli.warmup_secs > 0.0 {
        plans.push(Plan {
            name: "warmup".into(),
            pace: lag,
            secs: cli.warmup_secs,
            warmup: true,
        });
    }
    if cli.duration > 0.0 {
        plans.push(Plan {
            name: "throughput".into(),
            pace: lag,
            secs: cli.duration,
            warmup: false,
        });
    }
    if let Some(r) = cli.rate {
        plans.push(Plan {
            name: "rate".into(),
            pace: Pace::Rate(r),
            secs: cli.rate_secs.unwrap_or(if cli.duration > 0.0 {
                cli.duration
            } else {
                10.0
            }),
            warmup: false,
        });
    }
    let mut ran: Vec<Ran> = Vec::new();
    let run_deadline = Instant::now()
        + Duration::from_secs_f64(
            cli.warmup_secs
                + cli.duration
                + cli.rate_secs.unwrap_or(cli.duration.max(10.0))
                + if cli.sweep {
                    cli.sweep_steps as f64 * cli.sweep_step_secs
                } else {
                    0.0
                }
                + (plans.len() + cli.sweep_steps + 2) as f64 * (cli.drain_secs + 12.0),
        );
    let mut driver = if open > 0 {
        Some(
            RestDriver::connect(RestConfig {
                addr: endpoint.addr,
                host_header: endpoint.host_header.clone(),
                bearer,
                payload_bytes: cli.payload_bytes,
                mode: cli.mode,
                user_ids: user_ids.clone(),
                targets: cli.targets,
                lanes: rest_conns,
                window,
            })
            .map_err(|e| format!("cannot open the REST connection: {e}"))?,
        )
    } else {
        say("no connection opened: skipping the load phases");
        None
    };
    let fanout_hint = match cli.mode {
        Mode::Broadcast => open as u64,
        Mode::Send => per_user as u64,
        Mode::Users => (per_user * cli.targets.min(users)) as u64,
    };
    let mut next_seq: u64 = 0;
    let mut sweep: Option<Sweep> = None;
    let mut sweep_started = !cli.sweep;
    let mut i = 0;
    while let Some(driver) = driver.as_mut() {
        if i >= plans.len() {
            if sweep_started {
                break;
            }
            // The sweep starts once the throughput phase told the ceiling.
            sweep_started = true;
            let ceiling = ran
                .iter()
                .filter(|r| !r.plan.warmup && matches!(r.plan.pace, Pace::Window { .. }))
                .map(|r| r.tally.ok as f64 / r.sent.elapsed.as_secs_f64().max(1e-3))
                .fold(0.0, f64::max);
            let steps = cli
                .sweep_steps
                .clamp(1, client::MAX_PHASES - plans.len() - 1);
            let (s, first) =
                Sweep::new(ceiling, cli.rate, steps, 5.0 / cli.sweep_step_secs.max(0.1));
            sweep = Some(s);
            plans.push(Plan {
                name: "sweep 1".into(),
                pace: Pace::Rate(first),
                secs: cli.sweep_step_secs,
                warmup: false,
            });
            continue;
        }
        let plan = plans[i].clone();
        i += 1;
        if Instant::now() >= run_deadline {
            notes.push(format!(
                "phase {} skipped: the run's time budget is spent",
                plan.name
            ));
            continue;
        }
        if let Err(e) = driver.revive() {
            notes.push(format!("phase {} skipped: REST connection: {e}", plan.name));
            continue;
        }
        let lanes = driver.lanes() as u64;
        let first_seq = next_seq.div_ceil(lanes) * lanes;
        let Some(index) = shared.begin_phase(first_seq) else {
            notes.push(format!("phase {} skipped: too many phases", plan.name));
            continue;
        };
        if !cli.quiet {
            let what = match plan.pace {
                Pace::Rate(r) => format!("{r:.0} requests/s"),
                Pace::Window { .. } => format!("window {window}"),
            };
            say(format!("phase {} ({what}, {:.1} s)", plan.name, plan.secs));
        }
        let (c0s, c0t) = cpu_now(&srv);
        let m0 = sys::machine_busy_secs();
        let wall0 = Instant::now();
        let expected_base = driver.expected_total();
        let received_base = shared.received_total();
        let recv_fn = || shared.received_total();
        let sent = driver.run_phase(
            plan.pace,
            Duration::from_secs_f64(plan.secs),
            first_seq,
            &recv_fn,
            fanout_hint,
        );
        next_seq = sent.next_seq;
        if !driver.wait_answers(Duration::from_secs(10)) {
            notes.push(format!("phase {}: some REST answers never came", plan.name));
        }
        let expected = driver.expected_total() - expected_base;
        let drain_end = Instant::now() + Duration::from_secs_f64(cli.drain_secs);
        while shared.received_total() - received_base < expected && Instant::now() < drain_end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (c1s, c1t) = cpu_now(&srv);
        let m1 = sys::machine_busy_secs();
        let tally = driver.take_tally();
        // Collect what the workers recorded for this phase.
        shared.collect(index);
        let mut recv = PhaseRecv::new();
        let mut got = 0;
        let collect_end = Instant::now() + Duration::from_secs(5);
        while got < threads {
            match col_rx.recv_timeout(collect_end.saturating_duration_since(Instant::now())) {
                Ok((q, ph)) => {
                    if q == index {
                        got += 1;
                    }
                    if let Some(r) = ran.iter_mut().find(|r| r.index == q) {
                        r.recv.merge(&ph);
                    } else if q == index {
                        recv.merge(&ph);
                    }
                }
                Err(_) => break,
            }
        }
        let r = Ran {
            plan: plan.clone(),
            index,
            sent,
            tally,
            recv,
            server_cpu: c1s.zip(c0s).map(|(a, b)| a - b),
            tool_cpu: c1t - c0t,
            machine_cpu: m1.zip(m0).map(|(a, b)| a - b),
            wall: wall0.elapsed().as_secs_f64(),
        };
        let p99 = r.recv.hist.value_at_quantile(0.99) as f64 / 1000.0;
        let lost = r.tally.expected.saturating_sub(r.recv.received);
        if !cli.quiet {
            say(format!(
                "  {} requests, {} deliveries expected, {} received, p99 {:.2} ms",
                r.sent.requests, r.tally.expected, r.recv.received, p99
            ));
        }
        // A sweep step decides the next offered rate.
        if let (Some(sw), Pace::Rate(rate)) = (sweep.as_mut(), plan.pace) {
            if plan.name.starts_with("sweep") {
                let kept_up = r.tally.ok as f64 >= 0.95 * rate * plan.secs;
                let pass = r.recv.received > 0
                    && p99 <= cli.p99_bound_ms
                    && lost == 0
                    && r.tally.errors.is_empty()
                    && kept_up;
                if let Some(next) = sw.next(rate, pass) {
                    plans.push(Plan {
                        name: format!("sweep {}", sw.done + 1),
                        pace: Pace::Rate(next),
                        secs: cli.sweep_step_secs,
                        warmup: false,
                    });
                }
            }
        }
        ran.push(r);
    }
    let srv_rss_load = srv.rss_bytes();
    let (srv_cpu2, tool_cpu2) = cpu_now(&srv);

    // Stop: clients first (the server then sees plain closes), then the server.
    shared.stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for w in workers {
        if let Ok(r) = w.join() {
            results.push(r);
        }
    }
    if let Some(d) = driver.take() {
        d.close();
    }
    let server_addr = srv.addr.to_string();
    let server_pid = srv.pid;
    let server_shards = srv.shards;
    let server_kind = srv.kind;
    srv.stop();

    // Merge what the workers kept (late messages of collected phases).
    let mut handshake = client::new_histogram();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut buckets: Vec<u64> = Vec::new();
    let (mut other, mut pings, mut open_at_end) = (0, 0, 0);
    for r in &results {
        let _ = handshake.add(&r.handshake);
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.closes {
            *closes.entry(k.clone()).or_default() += v;
        }
        if buckets.len() < r.buckets.len() {
            buckets.resize(r.buckets.len(), 0);
        }
        for (i, b) in r.buckets.iter().enumerate() {
            buckets[i] += b;
        }
        other += r.other_messages;
        pings += r.pings_answered;
        open_at_end += r.open_at_end;
        for (q, ph) in r.phases.iter().enumerate() {
            if let Some(run) = ran.iter_mut().find(|x| x.index == q) {
                run.recv.merge(ph);
            }
        }
    }

    // Phases → figures. Other processes' CPU is known only when the
    // server's is (a target without a pid would count as "other").
    let srv_is_local = server_pid.is_some();
    let bound = cli.p99_bound_ms;
    let mut phases = Vec::new();
    for r in &ran {
        let elapsed = r.sent.elapsed.as_secs_f64().max(1e-6);
        // Deliveries over the sending time, or until the last delivery
        // when the tail came later.
        let window_us = (r.recv.last_us.saturating_sub(r.sent.start_us) as f64).max(elapsed * 1e6);
        let latency = Pct::of(&r.recv.hist);
        let lost = r.tally.expected.saturating_sub(r.recv.received);
        let (curve, histogram) = report::shapes(&r.recv.hist);
        let start_ms = r.sent.start_us.saturating_sub(t_connect_us) as f64 / 1000.0;
        phases.push(PhaseInfo {
            name: r.plan.name.clone(),
            pace: match r.plan.pace {
                Pace::Rate(_) => "rate",
                Pace::Window { .. } => "window",
            },
            window,
            offered_per_s: match r.plan.pace {
                Pace::Rate(x) => Some(x),
                Pace::Window { .. } => None,
            },
            seconds: elapsed,
            requests: r.sent.requests,
            requests_ok: r.tally.ok,
            rest_errors: r.tally.errors.clone(),
            expected: r.tally.expected,
            received: r.recv.received,
            lost,
            extra: r.recv.received.saturating_sub(r.tally.expected),
            out_of_order: r.recv.out_of_order,
            requests_per_s: r.tally.ok as f64 / elapsed,
            deliveries_per_s: r.recv.received as f64 / (window_us / 1e6),
            latency_ms: latency,
            rest_latency_ms: Pct::of(&r.tally.rest_latency),
            server_cpu_s: r.server_cpu,
            tool_cpu_s: r.tool_cpu,
            wall_s: r.wall,
            other_cpu_s: match (r.machine_cpu, r.server_cpu, srv_is_local) {
                (Some(m), Some(sv), true) => Some((m - sv - r.tool_cpu).max(0.0)),
                _ => None,
            },
            within_bound: r.recv.received > 0 && latency.p99 <= bound && lost == 0,
            start_ms,
            end_ms: start_ms + elapsed * 1000.0,
            curve,
            histogram,
            warmup: r.plan.warmup,
        });
    }

    // Memory per connection.
    let combined = server_kind == Kind::InProcess;
    let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if open > 0 => Some((b as f64 - a as f64) / open as f64),
        _ => None,
    };
    let srv_per_conn = per_conn(srv_rss_idle, srv_rss_conn);
    let tool_per_conn = if combined {
        None
    } else {
        per_conn(tool_rss_idle, tool_rss_conn)
    };

    // Capacity: connections per GiB, and the best rate within the bound.
    let best = phases
        .iter()
        .filter(|p| !p.warmup && p.within_bound)
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
    let measured_any = phases.iter().any(|p| !p.warmup && p.received > 0);
    let basis = match best {
        Some(p) => format!(
            "phase {} ({:.0} requests/s, p99 {:.2} ms, nothing lost){}",
            p.name,
            p.requests_per_s,
            p.latency_ms.p99,
            if p.pace == "window" {
                " — the unbounded phase stayed within the bound"
            } else {
                ""
            }
        ),
        None if !measured_any => "no load phase ran".into(),
        None if sweep.as_ref().is_some_and(|s| s.done > 0) => format!(
            "every sweep step exceeded the bound, down to {:.1} requests/s: one fan-out to {open} connections already takes longer than {bound} ms at p99",
            sweep.as_ref().map(|s| s.lowest).unwrap_or(0.0)
        ),
        None => "no phase within the bound; add --sweep (or --rate R) to find the rate".into(),
    };
    let capacity = Capacity {
        connections_per_gib: srv_per_conn
            .filter(|b| *b > 0.0)
            .map(|b| (1u64 << 30) as f64 / b),
        p99_bound_ms: bound,
        sustainable_deliveries_per_s: best.map(|p| p.deliveries_per_s),
        sustainable_requests_per_s: best.map(|p| p.requests_per_s),
        basis,
    };
    if combined {
        notes.push("connections per GiB counts the tool's memory too (in-process)".into());
    }
    let busy_others: f64 = phases.iter().filter_map(|p| p.other_cpu_s).sum();
    let load_secs: f64 = phases.iter().map(|p| p.wall_s).sum();
    if load_secs > 0.0 && busy_others / load_secs > 0.1 {
        notes.push(format!(
            "other processes kept {:.2} of the {cpus} CPUs busy during the load phases: figures are lower than on an idle machine",
            busy_others / load_secs
        ));
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    if failed > 0 && failures.contains_key("Cannot assign requested address (os error 99)") {
        notes.push("ephemeral ports ran out: raise --source-addrs".into());
    }
    say(format!("done in {:.1} s", started.elapsed().as_secs_f64()));

    let report = Report {
        tool: "wsedge-loadtest",
        version: env!("CARGO_PKG_VERSION"),
        server: ServerInfo {
            kind: server_kind,
            addr: server_addr,
            pid: server_pid,
            shards: server_shards,
            rss_combined: combined,
            nodes: endpoints.len(),
        },
        config: ConfigEcho {
            connections: n,
            users,
            client_threads: threads,
            source_addrs,
            payload_bytes: cli.payload_bytes,
            mode: cli.mode,
            targets: (cli.mode == Mode::Users).then_some(cli.targets),
            window,
            rest_conns,
            max_lag: cli.max_lag,
            duration_s: cli.duration,
            warmup_s: cli.warmup_secs,
            rate: cli.rate,
            sweep: cli.sweep,
            p99_bound_ms: bound,
        },
        fd_limit: FdInfo {
            soft_before: fd.soft_before,
            soft: fd.soft,
            hard: fd.hard,
            max_connections: fit,
            capped,
            server_soft,
        },
        connect: ConnectInfo {
            requested: n,
            open,
            failed,
            failures,
            seconds: connect_secs,
            per_second: open as f64 / connect_secs.max(1e-6),
            handshake_ms: Pct::of(&handshake),
        },
        memory: MemInfo {
            server_rss_idle_bytes: srv_rss_idle,
            server_rss_connected_bytes: srv_rss_conn,
            server_rss_after_load_bytes: srv_rss_load,
            server_bytes_per_connection: srv_per_conn,
            tool_bytes_per_connection: tool_per_conn,
            combined,
        },
        cpu: CpuInfo {
            server_connect_s: srv_cpu1.zip(srv_cpu0).map(|(a, b)| a - b),
            server_load_s: srv_cpu2.zip(srv_cpu1).map(|(a, b)| a - b),
            tool_connect_s: tool_cpu1 - tool_cpu0,
            tool_load_s: tool_cpu2 - tool_cpu1,
        },
        phases,
        closes,
        open_at_end,
        other_messages: other,
        pings_answered: pings,
        capacity,
        machine: report::Machine {
            cpus,
            loadavg_start: load_start,
            loadavg_end: sys::loadavg(),
        },
        notes,
        deliveries_per_100ms: buckets,
        connect_ramp: ramp,
    };
    if let Some(path) = &cli.report {
        std::fs::write(path, report.html())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        say(format!("HTML report: {}", path.display()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_doubles_then_bisects() {
        let (mut s, first) = Sweep::new(1600.0, None, 10, 1.0);
        assert_eq!(first, 100.0);
        assert_eq!(s.next(100.0, true), Some(200.0));
        assert_eq!(s.next(200.0, true), Some(400.0));
        assert_eq!(s.next(400.0, false), Some((200.0f64 * 400.0).sqrt()));
        let mid = (200.0f64 * 400.0).sqrt();
        let n = s.next(mid, true).unwrap();
        assert!(n > mid && n < 400.0);
    }

    #[test]
    fn sweep_stops_at_the_ceiling_and_the_step_count() {
        let (mut s, first) = Sweep::new(100.0, None, 10, 1.0);
        let mut r = first;
        let mut steps = 0;
        while let Some(n) = s.next(r, true) {
            assert!(n <= 100.0);
            r = n;
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(r, 100.0);
        let (mut s, _) = Sweep::new(0.0, Some(50.0), 4, 1.0);
        assert_eq!(s.next(50.0, false), Some(12.5));
        assert_eq!(s.next(12.5, false), Some(3.125));
        assert_eq!(s.next(3.125, false), None, "under the floor");
        assert_eq!(s.lowest, 3.125);
    }

    #[test]
    fn targets_must_be_loopback() {
        let ep = parse_target("ws://127.0.0.1:3100").unwrap();
        assert_eq!(ep.path, "/ws");
        assert_eq!(ep.addr.port(), 3100);
        assert_eq!(parse_target("ws://localhost:9/x").unwrap().path, "/x");
        assert!(parse_target("ws://10.0.0.1:80").is_err());
        assert!(parse_target("wss://127.0.0.1:80").is_err());
    }
}
