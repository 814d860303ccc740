//! A bounded soak run: connection churn and broadcasts for `--secs`, watching
//! the server's memory and descriptors for leaks.
//!
//! ```text
//! cargo run --release --example soak -- --secs 600
//! cargo run --release --example soak -- --secs 600 --target ws://127.0.0.1:3000 \
//!     --admin-key KEY --jwt-secret SECRET --pid $(pidof wsedge)
//! ```
//!
//! By default it starts an in-process server (then RSS and descriptors are
//! this process's, clients included); with `--target` it drives a running
//! server on a loopback address and measures the process given by `--pid`
//! (this process when absent). Each round it connects `--clients` new
//! clients, broadcasts `--messages` messages through the REST API, checks
//! that every client (and a few long-lived ones) got every message in order,
//! disconnects one user through the REST API, and drops the other clients:
//! clean close handshakes, vanishings without a close frame (FIN) and
//! resets (RST), mixed. Every `--report-secs` it prints elapsed time, server
//! connections, RSS (VmRSS of /proc/PID/status) and open descriptors
//! (/proc/PID/fd).
//!
//! At the end it closes everything and exits non-zero when a message was
//! lost or a check failed, when RSS grew more than 20% between the end of
//! the warm-up and the end of the run (both measured between rounds; growth
//! under `--rss-slack-mib`, default 2 MiB, is allocator noise on a small
//! process and never fails), or
//! when the descriptors and connections did not return to where they were
//! before the run. Loopback only; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use serde_json::{json, Value};
use tungstenite::protocol::WebSocket;
use tungstenite::Message;
use wsedge::Server;
use wsedge::{mint_hs256, now_secs};

/// Connection churn and broadcasts against a wsedge server, checking for leaks.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Seconds of warm-up before the RSS baseline is taken [default: a fifth of --secs, at most 60].
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 30)]
    report_secs: u64,
    /// New clients connected (and dropped) each round.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Clients kept connected for the whole run.
    #[arg(long, default_value_t = 20)]
    long_lived: usize,
    /// Distinct users the churning clients log in as.
    #[arg(long, default_value_t = 25)]
    users: usize,
    /// Broadcasts per round.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Pause between rounds, in milliseconds (keeps TIME_WAIT sockets well
    /// under the ephemeral port range).
    #[arg(long, default_value_t = 50)]
    pause_ms: u64,
    /// A running server, `ws://127.0.0.1:PORT` (loopback only) [default: an in-process server].
    #[arg(long)]
    target: Option<String>,
    /// Admin key of the target server (env WSEDGE_ADMIN_KEY).
    #[arg(long, env = "WSEDGE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// HS256 secret of the target server, to mint user tokens (env JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Process whose RSS and descriptors are watched [default: this process].
    #[arg(long)]
    pid: Option<u32>,
    /// RSS growth after warm-up that never fails the run, however many percent it is.
    #[arg(long, default_value_t = 2)]
    rss_slack_mib: u64,
    /// Reactor threads of the in-process server.
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

/// Upper bound of any single wait.
const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocket<TcpStream>;

/// Where the server is and how to talk to it.
struct Target {
    addr: SocketAddr,
    admin_key: String,
    secret: String,
}

impl Target {
    fn token(&self, user: &str) -> String {
        mint_hs256(
            &self.secret,
            &json!({"sub": user, "exp": now_secs() + 3600}),
        )
    }

    /// One REST call on a fresh connection: (status, JSON body).
    fn rest(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut s = TcpStream::connect(self.addr).map_err(|e| format!("REST connect: {e}"))?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.admin_key,
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("REST write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("REST read {path}: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("REST {path}: no status in {text:?}"))?;
        let json = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        Ok((status, json))
    }

    fn connections(&self) -> Result<u64, String> {
        let (status, v) = self.rest("GET", "/v1/websocket/stats?limit=0", None)?;
        if status != 200 {
            return Err(format!("stats: {status} {v}"));
        }
        v["totalConnections"]
            .as_u64()
            .ok_or_else(|| format!("stats without totalConnections: {v}"))
    }

    fn connect(&self, user: &str) -> Result<Ws, String> {
        let stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{}/ws?token={}", self.addr, self.token(user));
        let (mut ws, _) =
            tungstenite::client(url, stream).map_err(|e| format!("upgrade of {user}: {e}"))?;
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str().contains("\"connected\"") => Ok(ws),
            other => Err(format!("{user}: expected connected, got {other:?}")),
        }
    }
}

/// Reads until `n` `soak` messages of `round` arrived, checking their order.
fn expect_round(ws: &mut Ws, round: u64, n: usize) -> Result<(), String> {
    let mut next = 0usize;
    let deadline = Instant::now() + WAIT;
    while next < n {
        if Instant::now() > deadline {
            return Err(format!("round {round}: {next} of {n} messages in {WAIT:?}"));
        }
        let msg = ws
            .read()
            .map_err(|e| format!("round {round}, after {next}: {e}"))?;
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
        if v["type"] != "soak" {
            continue;
        }
        let (r, seq) = (v["payload"]["round"].as_u64(), v["payload"]["seq"].as_u64());
        if r != Some(round) || seq != Some(next as u64) {
            return Err(format!("round {round}: expected seq {next}, got {v}"));
        }
        next += 1;
    }
    Ok(())
}

/// Reads until the server's close frame; returns its code.
fn expect_close(ws: &mut Ws) -> Result<u16, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if Instant::now() > deadline {
            return Err("no close frame".into());
        }
        match ws.read() {
            Ok(Message::Close(f)) => return Ok(f.map_or(1005, |f| f.code.into())),
            Ok(_) => {}
            Err(e) => return Err(format!("before the close frame: {e}")),
        }
    }
}

/// Closes from the client side and waits (bounded) for the end.
fn close_cleanly(mut ws: Ws) {
    let _ = ws.close(None);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if ws.read().is_err() {
            return;
        }
    }
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[derive(Default)]
struct Totals {
    rounds: u64,
    connects: u64,
    deliveries: u64,
    errors: u64,
}

impl Totals {
    fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.errors <= 20 {
            eprintln!("[soak] error: {what}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("[soak] {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let mut server = None;
    let target = match &args.target {
        Some(url) => {
            let hostport = url
                .strip_prefix("ws://")
                .ok_or("--target must look like ws://127.0.0.1:PORT")?
                .trim_end_matches('/');
            let addr: SocketAddr = hostport
                .parse()
                .map_err(|_| format!("--target {url}: not ws://IP:PORT"))?;
            if !addr.ip().is_loopback() {
                return Err(format!("--target {url}: loopback addresses only"));
            }
            Target {
                addr,
                admin_key: args.admin_key.clone().ok_or("--target needs --admin-key")?,
                secret: args
                    .jwt_secret
                    .clone()
                    .ok_or("--target needs --jwt-secret")?,
            }
        }
        None => {
            let mut key = [0u8; 16];
            rand::rng().fill(&mut key);
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let s = Server::builder()
                .bind("127.0.0.1:0")
                .shards(args.shards)
                .jwt_secret(format!("soak-{hex}"))
                .admin_key(format!("admin-{hex}"))
                .start()
                .map_err(|e| e.to_string())?;
            let t = Target {
                addr: s.local_addr(),
                admin_key: format!("admin-{hex}"),
                secret: format!("soak-{hex}"),
            };
            server = Some(s);
            t
        }
    };
    let pid = args
        .pid
        .map_or_else(|| "self".to_string(), |p| p.to_string());
    let secs = Duration::from_secs(args.secs);
    let warmup = Duration::from_secs(args.warmup_secs.unwrap_or((args.secs / 5).min(60)));
    let report = Duration::from_secs(args.report_secs.max(1));
    let pause = Duration::from_millis(args.pause_ms);
    let users = args.users.max(1);

    let conns0 = target.connections()?;
    let fds0 = fds(&pid);
    let rss0 = rss_kib(&pid);
    println!(
        "[soak] {} for {}s: {} clients/round, {} long-lived, {} messages/round; \
         before: connections {conns0}, RSS {:.1} MiB, fds {fds0}",
        if server.is_some() {
            format!("in-process server on {}", target.addr)
        } else {
            format!("target {} (pid {pid})", target.addr)
        },
        args.secs,
        args.clients,
        args.long_lived,
        args.messages,
        mib(rss0),
    );

    let mut totals = Totals::default();
    let mut keep: Vec<Ws> = Vec::new();
    for i in 0..args.long_lived {
        keep.push(target.connect(&format!("soak-keep{i}"))?);
        totals.connects += 1;
    }

    let started = Instant::now();
    let mut next_report = report;
    let mut rss_warm: Option<u64> = None;
    let mut rss_last = rss0;
    let mut round = 0u64;
    while started.elapsed() < secs {
        one_round(args, &target, &mut keep, round, users, &mut totals);
        round += 1;
        totals.rounds = round;
        rss_last = rss_kib(&pid);
        if rss_warm.is_none() && started.elapsed() >= warmup {
            rss_warm = Some(rss_last);
            println!(
                "[soak] warm-up done after {:.0}s: RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                mib(rss_last)
            );
        }
        if started.elapsed() >= next_report {
            next_report += report;
            let conns = target
                .connections()
                .map_or_else(|e| format!("? ({e})"), |c| c.to_string());
            println!(
                "[soak] elapsed {:>4.0}s  rounds {round:>6}  connections {conns:>5}  \
                 connects {:>8}  RSS {:>7.1} MiB  fds {:>5}  errors {}",
                started.elapsed().as_secs_f64(),
                totals.connects,
                mib(rss_last),
                fds(&pid),
                totals.errors
            );
        }
        std::thread::sleep(pause);
    }
    let rss_end = rss_last;
    let rss_warm = rss_warm.unwrap_or(rss_end);

    // Everything goes; the server must forget all of it.
    for ws in keep.drain(..) {
        close_cleanly(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut conns_end = target.connections()?;
    let mut fds_end = fds(&pid);
    while (conns_end > conns0 || fds_end > fds0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        conns_end = target.connections()?;
        fds_end = fds(&pid);
    }

    let growth = (rss_end as f64 - rss_warm as f64) / rss_warm.max(1) as f64 * 100.0;
    println!(
        "[soak] done: {:.0}s, {} rounds, {} connects, {} deliveries checked, {} errors",
        started.elapsed().as_secs_f64(),
        totals.rounds,
        totals.connects,
        totals.deliveries,
        totals.errors
    );
    println!(
        "[soak] RSS: before {:.1} MiB, after warm-up {:.1} MiB, end {:.1} MiB ({growth:+.1}% since warm-up)",
        mib(rss0),
        mib(rss_warm),
        mib(rss_end)
    );
    println!("[soak] fds: before {fds0}, after {fds_end}; connections: before {conns0}, after {conns_end}");

    let mut ok = true;
    if totals.errors > 0 {
        println!(
            "[soak] FAIL: {} errors (lost or late messages, failed calls)",
            totals.errors
        );
        ok = false;
    }
    if growth > 20.0 && rss_end.saturating_sub(rss_warm) > args.rss_slack_mib * 1024 {
        println!("[soak] FAIL: RSS grew {growth:.1}% after warm-up (limit 20%)");
        ok = false;
    }
    if fds_end > fds0 {
        println!("[soak] FAIL: {} descriptors did not return", fds_end - fds0);
        ok = false;
    }
    if conns_end > conns0 {
        println!(
            "[soak] FAIL: {} connections did not go away",
            conns_end - conns0
        );
        ok = false;
    }
    if let Some(s) = server {
        s.shutdown();
    }
    println!("[soak] {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// Connect, broadcast, check, disconnect one user by REST, drop the rest.
fn one_round(
    args: &Args,
    target: &Target,
    keep: &mut [Ws],
    round: u64,
    users: usize,
    totals: &mut Totals,
) {
    let mut clients: Vec<(usize, Ws)> = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let user = (round as usize * 7 + i) % users;
        match target.connect(&format!("soak{user}")) {
            Ok(ws) => {
                clients.push((user, ws));
                totals.connects += 1;
            }
            Err(e) => totals.error(e),
        }
    }
    let expected = (clients.len() + keep.len()) as u64;
    for seq in 0..args.messages {
        let body = json!({"type": "soak", "payload": {"round": round, "seq": seq}});
        match target.rest("POST", "/v1/websocket/broadcast", Some(&body)) {
            Ok((200, v)) if v["sentToConnections"].as_u64() >= Some(expected) => {}
            Ok((status, v)) => totals.error(format!("broadcast: {status} {v}")),
            Err(e) => totals.error(e),
        }
    }
    for ws in keep.iter_mut().chain(clients.iter_mut().map(|(_, ws)| ws)) {
        match expect_round(ws, round, args.messages) {
            Ok(()) => totals.deliveries += args.messages as u64,
            Err(e) => totals.error(e),
        }
    }

    // One user is disconnected by the management API: its clients get 4000.
    let kicked = (round as usize) % users;
    let kicked_count = clients.iter().filter(|(u, _)| *u == kicked).count();
    if kicked_count > 0 {
        let path = format!("/v1/websocket/user/soak{kicked}/disconnect");
        match target.rest("DELETE", &path, None) {
            Ok((200, v)) if v["disconnectedConnections"].as_u64() >= Some(kicked_count as u64) => {}
            Ok((status, v)) => totals.error(format!("disconnect: {status} {v}")),
            Err(e) => totals.error(e),
        }
    }
    for (n, (user, mut ws)) in clients.into_iter().enumerate() {
        if user == kicked {
            match expect_close(&mut ws) {
                Ok(4000) => close_cleanly(ws),
                Ok(code) => totals.error(format!("disconnect closed with {code}, not 4000")),
                Err(e) => totals.error(e),
            }
            continue;
        }
        match n % 10 {
            // A clean close handshake.
            0..=3 => close_cleanly(ws),
            // Gone without a close frame (FIN).
            4..=6 => drop(ws),
            // Gone with a reset.
            _ => {
                let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
                drop(ws);
            }
        }
    }
}
