//! The failover drill (`--cluster N --kill-node-after S`, or
//! `--restart-after S` on one node): clients that recover as a real client
//! must, publishes at a fixed rate through node 0, one node SIGKILLed (or
//! the one server killed and started again) while they go on, and per
//! client what was lost, duplicated, out of order, and how long recovery
//! took (docs/PROTOCOL.md §8.1, README "Load testing").
//!
//! ```text
//! mod.rs      the drill, stage by stage: flags, server(s), clients, publishing, the event, the verdicts
//! client.rs   the clients: mio workers that reconnect with backoff and the recovery parameters
//! publish.rs  the publisher: broadcasts, user sends and channel publishes in turn, at a fixed rate
//! track.rs    the accounting per client, from the tool's own sequence numbers (pure, tested)
//! report.rs   the totals, the goal, the table and the JSON line
//! ```

mod client;
mod publish;
pub mod report;
mod track;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::channels::{self, Layout};
use crate::rest::{self, Mode};
use crate::server::{Own, ServerUnderTest};
use crate::sys;
use crate::tls::{Blocking, ServerCert, Tls};
use crate::tokens::Signer;
use crate::Cli;

use report::{Drill, DrillReport, Inputs};

/// The drill's default rate: publishes per second, the three kinds together.
const DEFAULT_RATE: f64 = 60.0;
/// The drill's default number of channels.
const DEFAULT_CHANNELS: usize = 10;

fn say(msg: impl AsRef<str>) {
    eprintln!("wsedge-loadtest: {}", msg.as_ref());
}

/// Whether the flags ask for a drill.
pub fn wanted(cli: &Cli) -> bool {
    cli.kill_node_after.is_some() || cli.restart_after.is_some()
}

/// What the flags ask, checked.
struct Plan {
    drill: Drill,
    n: usize,
    users: usize,
    layout: Layout,
    nodes: usize,
    event_after: f64,
    drill_secs: f64,
    rate: f64,
    threads: usize,
}

impl Plan {
    fn of(cli: &Cli) -> Result<Plan, String> {
        let (drill, event_after) = match (cli.kill_node_after, cli.restart_after) {
            (Some(_), Some(_)) => {
                return Err("--kill-node-after and --restart-after: one drill at a time".into())
            }
            (Some(s), None) => (Drill::KillNode, s),
            (None, Some(s)) => (Drill::Restart, s),
            (None, None) => return Err("no drill asked".into()),
        };
        let nodes = match (drill, cli.cluster) {
            (Drill::KillNode, Some(n)) if (2..=16).contains(&n) => n,
            (Drill::KillNode, _) => {
                return Err("--kill-node-after needs --cluster 2 to 16 (the last node is killed, node 0 takes the REST calls)".into())
            }
            (Drill::Restart, None) => 1,
            (Drill::Restart, Some(_)) => {
                return Err("--restart-after restarts the one server: without --cluster".into())
            }
        };
        if cli.ca_file.is_some() {
            return Err(
                "the drill starts its own servers: no --ca-file (--server-tls trusts its own CA)"
                    .into(),
            );
        }
        if cli.target.is_some() || cli.in_process || cli.server_bin.is_some() {
            return Err("the drill kills servers it started in child processes: no --target, --in-process or --server-bin".into());
        }
        if cli.hostile > 0 || cli.sweep || cli.mode != Mode::Broadcast {
            return Err("the drill publishes broadcasts, user sends and channel publishes in turn: no --mode, --hostile or --sweep".into());
        }
        for (name, v) in [
            ("--kill-node-after / --restart-after", event_after),
            ("--drill-secs", cli.drill_secs),
        ] {
            if !(v > 0.0 && v <= 3600.0) {
                return Err(format!("{name} must be above 0 and at most 3600 seconds"));
            }
        }
        let rate = cli.rate.unwrap_or(DEFAULT_RATE);
        if !(1.0..=100_000.0).contains(&rate) {
            return Err("--rate (publishes per second in the drill) must be 1 to 100,000".into());
        }
        if cli.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        let n = cli.connections;
        let layout = Layout::new(
            cli.channels.unwrap_or(DEFAULT_CHANNELS),
            cli.subs_per_conn.unwrap_or(1),
        )?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Plan {
            drill,
            n,
            users: cli.users.unwrap_or(n / 10).clamp(1, n),
            layout,
            nodes,
            event_after,
            drill_secs: cli.drill_secs,
            rate,
            threads: cli.threads.unwrap_or((cpus / 2).max(1)).clamp(1, 64),
        })
    }
}

/// Runs the drill `cli` asks for.
pub fn run(cli: &Cli) -> Result<DrillReport, String> {
    let started = Instant::now();
    let plan = Plan::of(cli)?;
    start_watchdog(cli, &plan);
    let fd = sys::raise_fd_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if plan.n as u64 + 64 > fd.soft {
        return Err(format!(
            "open-file limit {}: too low for {} clients",
            fd.soft, plan.n
        ));
    }
    // --server-tls: the nodes (and a restarted server) serve a throwaway
    // certificate; the clients and the publisher trust its CA.
    let cert = cli.server_tls.then(ServerCert::new).transpose()?;
    let tls = cert.as_ref().map(ServerCert::client_tls).transpose()?;
    let secret = random_hex(32);
    let signer = Signer::new(cli, &secret)?;
    let (user_ids, tokens) =
        signer.users("lt-u", plan.users, &json!({"channels": [channels::CLAIM]}));
    let (user_ids, tokens) = (Arc::new(user_ids), Arc::new(tokens));
    let bearer = signer.admin(cli)?;
    let own = Own {
        secret: &secret,
        shards: cli
            .server_shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        // A dead node's connections count in presence for ~3 s: room for
        // every connection of a user twice.
        max_per_user: 2 * plan.n.div_ceil(plan.users) + 2,
        history_size: cli.server_history_size,
        tls: cert.as_ref(),
        bind: None,
        jwt: signer.server_key.as_ref(),
    };
    let mut srv = match plan.drill {
        Drill::KillNode => ServerUnderTest::cluster(&own, plan.nodes, cli.redis_url.as_deref())?,
        Drill::Restart => ServerUnderTest::child(&own)?,
    };
    let result = drill(
        cli, &plan, &mut srv, &own, user_ids, tokens, bearer, started, tls,
    );
    srv.stop();
    result
}

/// The drill on servers already started (stopped by the caller, whatever
/// happens here).
#[allow(clippy::too_many_arguments)]
fn drill(
    cli: &Cli,
    plan: &Plan,
    srv: &mut ServerUnderTest,
    own: &Own,
    user_ids: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
    bearer: String,
    started: Instant,
    tls: Option<Tls>,
) -> Result<DrillReport, String> {
    let addrs = srv.addrs();
    say(format!(
        "drill: {:?}, {} clients over {} node(s) at {}, {} users, channels lt:0…lt:{} ({} per client)",
        plan.drill,
        plan.n,
        addrs.len(),
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        plan.users,
        plan.layout.channels - 1,
        plan.layout.per_conn
    ));
    if addrs.len() > 1 {
        wait_linked(&addrs, tls.as_ref());
    }
    let shared = Arc::new(client::Shared::default());
    let cfg = Arc::new(client::Config {
        targets: addrs.clone(),
        tls: tls.clone(),
        tokens,
        max_pending: cli.connect_concurrency.div_ceil(plan.threads).max(1),
        handshake_timeout: Duration::from_secs(cli.handshake_timeout_secs.max(1)),
        same_node: plan.drill == Drill::Restart,
    });
    let specs = specs(plan);
    let homes: Vec<u16> = specs.iter().map(|s| s.home).collect();
    let mut per_worker: Vec<Vec<client::Spec>> = vec![Vec::new(); plan.threads];
    for s in specs {
        per_worker[s.idx % plan.threads].push(s);
    }
    let mut workers = Vec::new();
    for (id, specs) in per_worker.into_iter().enumerate() {
        workers.push(
            client::spawn(id, cfg.clone(), specs, shared.clone())
                .map_err(|e| format!("cannot start a client thread: {e}"))?,
        );
    }
    let stop_workers = |workers: Vec<std::thread::JoinHandle<_>>| {
        shared.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for w in workers {
            if let Ok(l) = w.join() {
                logs.extend(l);
            }
        }
        logs
    };
    if let Err(e) = wait_ready(cli, plan, &shared) {
        stop_workers(workers);
        return Err(e);
    }
    if addrs.len() > 1 {
        wait_presence(addrs[0], tls.as_ref(), &bearer, plan.n);
    }
    // Publishing, the event in the middle.
    let pcfg = publish::PubConfig {
        addr: addrs[0],
        tls,
        bearer,
        user_ids,
        channels: plan.layout.channels,
        rate: plan.rate,
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(plan.event_after + plan.drill_secs);
    let publisher = std::thread::Builder::new()
        .name("lt-drill-pub".into())
        .spawn(move || publish::run(&pcfg, end))
        .map_err(|e| format!("cannot start the publisher: {e}"))?;
    std::thread::sleep(Duration::from_secs_f64(plan.event_after));
    let killed_node = (plan.drill == Drill::KillNode).then_some(plan.nodes - 1);
    let before = shared.received.load(Ordering::Relaxed);
    let (event_us, restart_ms) = match killed_node {
        Some(k) => {
            let at = srv.kill_node(k)?;
            say(format!(
                "killed node {k} ({}) with SIGKILL after {:.1} s ({before} messages received so far)",
                addrs[k], plan.event_after
            ));
            (at, None)
        }
        None => {
            let (at, listening) = srv.restart(own)?;
            let ms = listening.saturating_sub(at) as f64 / 1000.0;
            say(format!(
                "killed the server with SIGKILL after {:.1} s and started it again on {} ({ms:.0} ms)",
                plan.event_after, addrs[0]
            ));
            (at, Some(ms))
        }
    };
    let published = publisher
        .join()
        .map_err(|_| "the publisher thread panicked".to_string())?;
    drain(cli, plan, &shared);
    let connected_at_end = shared.connected.load(Ordering::Relaxed);
    let mut logs = stop_workers(workers);
    logs.sort_by_key(|(i, _)| *i);
    say(format!(
        "published {} messages; {connected_at_end} of {} clients connected at the end",
        published.len(),
        plan.n
    ));
    let index = track::PubIndex::new(&published);
    let verdicts: Vec<track::Verdict> = logs
        .iter()
        .map(|(_, l)| track::judge(l, &index, event_us))
        .collect();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for (_, l) in &logs {
        for f in &l.failures {
            *events.entry(f.clone()).or_default() += 1;
        }
    }
    let base = DrillReport {
        clients: plan.n,
        users: plan.users,
        channels: plan.layout.channels,
        subs_per_conn: plan.layout.per_conn,
        nodes: plan.nodes,
        rate: plan.rate,
        event_after_secs: plan.event_after,
        drill_secs: plan.drill_secs,
        restart_ms,
        seconds: started.elapsed().as_secs_f64(),
        ..DrillReport::default()
    };
    Ok(DrillReport::build(
        Inputs {
            drill: plan.drill,
            verdicts: &verdicts,
            homes: &homes,
            received: shared.received.load(Ordering::Relaxed),
            unparsed: logs.iter().map(|(_, l)| l.unparsed).sum(),
            events,
            published: &published,
            killed_node,
        },
        base,
    ))
}

/// Client `i`: user `i mod U`; its `k`-th connection of that user goes to
/// node `(u + k) mod N`, so a user's connections spread over the nodes and
/// a killed node takes some of each user's, not all of some users'.
fn specs(plan: &Plan) -> Vec<client::Spec> {
    (0..plan.n)
        .map(|i| {
            let user = i % plan.users;
            let k = i / plan.users;
            let first = plan.layout.first(i);
            client::Spec {
                idx: i,
                user: user as u32,
                home: ((user + k) % plan.nodes) as u16,
                source: sys::source_addr(i, 4),
                channels: (0..plan.layout.per_conn)
                    .map(|j| plan.layout.nth(first, j))
                    .collect(),
            }
        })
        .collect()
}

/// Waits until every client is connected and subscribed (at most
/// `--connect-timeout-secs` + `--subscribe-timeout-secs`).
fn wait_ready(cli: &Cli, plan: &Plan, shared: &client::Shared) -> Result<(), String> {
    let start = Instant::now();
    let limit = Duration::from_secs(cli.connect_timeout_secs + cli.subscribe_timeout_secs);
    let mut said = Instant::now();
    loop {
        let c = shared.connected.load(Ordering::Relaxed);
        let s = shared.subscribed.load(Ordering::Relaxed);
        if c == plan.n && s == plan.n {
            say(format!(
                "{} clients connected and subscribed in {:.2} s",
                plan.n,
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "only {c} of {} clients connected and {s} subscribed within {} s",
                plan.n,
                limit.as_secs()
            ));
        }
        if !cli.quiet && said.elapsed() > Duration::from_secs(2) {
            say(format!("{c} connected, {s} subscribed of {}", plan.n));
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster: waits (at most 10 s) until every node reaches Redis
/// (`/healthz` says `ok`, not `degraded`). A node has taken the cluster's
/// history epoch by then; a client that connected earlier would hold the
/// node's provisional one, and could not recover on another node.
fn wait_linked(addrs: &[std::net::SocketAddr], tls: Option<&Tls>) {
    let end = Instant::now() + Duration::from_secs(10);
    for addr in addrs {
        while !healthz_ok(*addr, tls) {
            if Instant::now() >= end {
                say(format!(
                    "{addr} did not reach Redis within 10 s; starting anyway"
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `addr` answers `GET /healthz` with `ok`.
fn healthz_ok(addr: std::net::SocketAddr, tls: Option<&Tls>) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = Blocking::connect(addr, tls, Duration::from_secs(1)) else {
        return false;
    };
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lt\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.take(4096).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    // The body follows the head; `ok`, or `degraded: …` while Redis is out
    // of reach.
    text.starts_with("HTTP/1.1 200")
        && text
            .split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body == "ok")
}

/// A cluster: waits (at most 5 s) until node 0's presence counts every
/// client, so that the first sends find their users.
fn wait_presence(node0: std::net::SocketAddr, tls: Option<&Tls>, bearer: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let total = rest::get_json(node0, tls, "/v1/websocket/stats?limit=0", bearer)
            .ok()
            .and_then(|v| v["totalConnections"].as_u64());
        if total == Some(n as u64) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say("node 0 did not count every client within 5 s; publishing anyway");
}

/// After the last publish: waits until nothing has arrived for 500 ms (at
/// least 1 s, at most `--drain-secs`).
fn drain(cli: &Cli, plan: &Plan, shared: &client::Shared) {
    let start = Instant::now();
    let cap = Duration::from_secs_f64(cli.drain_secs.max(1.0));
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while start.elapsed() < cap {
        std::thread::sleep(Duration::from_millis(50));
        let now = shared.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if start.elapsed() >= Duration::from_secs(1)
            && quiet_since.elapsed() >= Duration::from_millis(500)
            && shared.connected.load(Ordering::Relaxed) == plan.n
        {
            return;
        }
    }
}

/// A last resort against a wait this drill failed to bound.
fn start_watchdog(cli: &Cli, plan: &Plan) {
    let budget = (cli.connect_timeout_secs + cli.subscribe_timeout_secs) as f64
        + plan.event_after
        + plan.drill_secs
        + cli.drain_secs
        + 120.0;
    let _ = std::thread::Builder::new()
        .name("lt-watchdog".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(budget));
            eprintln!("wsedge-loadtest: the drill still runs after {budget:.0} s: giving up");
            std::process::exit(3);
        });
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let t = sys::unix_micros() ^ (u64::from(std::process::id()) << 32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
