//! Everything before the first connection: the flags checked, the
//! watchdog, how many connections fit under the open-file limit, the
//! server(s) under test, and the tokens.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::say;
use crate::channels::{self, Layout};
use crate::rest::Mode;
use crate::server::{Kind, Own, ServerUnderTest};
use crate::sys;
use crate::tls::{ServerCert, Tls};
use crate::tokens::Signer;
use crate::Cli;

/// Refuses flags out of range before anything starts.
pub fn check_flags(cli: &Cli) -> Result<(), String> {
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
    check_hostile_flags(cli)?;
    if cli.ca_file.is_some() && (cli.server_tls || !uses_tls(cli)) {
        // Silently unused otherwise: --server-tls trusts its own CA only.
        return Err("--ca-file is for a wss:// (or https://) --target".into());
    }
    layout(cli).map(|_| ())
}

/// `--mode channel`: the channels and subscriptions per connection; none
/// in other modes, where giving either flag is an error.
pub fn layout(cli: &Cli) -> Result<Option<Layout>, String> {
    if cli.mode != Mode::Channel {
        if cli.channels.is_some() || cli.subs_per_conn.is_some() {
            return Err("--channels and --subs-per-conn are for --mode channel".into());
        }
        return Ok(None);
    }
    if !(1..=3600).contains(&cli.subscribe_timeout_secs) {
        return Err("--subscribe-timeout-secs must be between 1 and 3600".into());
    }
    Layout::new(cli.channels.unwrap_or(1), cli.subs_per_conn.unwrap_or(1)).map(Some)
}

fn check_hostile_flags(cli: &Cli) -> Result<(), String> {
    if cli.hostile > 100_000 {
        return Err("--hostile is at most 100,000".into());
    }
    if cli.hostile_secs.is_some_and(|s| !(s > 0.0 && s <= 3600.0)) {
        return Err("--hostile-secs must be above 0 and at most 3600 seconds".into());
    }
    if cli.hostile > 0 && cli.duration <= 0.0 && cli.rate.is_none() {
        return Err("--hostile runs a measured phase again under attack: it needs --duration above 0 or --rate".into());
    }
    if cli.hostile > 0 && uses_tls(cli) {
        // The attacks write raw bytes on the socket (slow heads, garbage
        // frames): over TLS they would test the TLS layer, not the server's
        // HTTP and WebSocket limits they are meant for.
        return Err(
            "--hostile is plaintext only: not with a wss:// --target or --server-tls".into(),
        );
    }
    Ok(())
}

/// The run is over TLS: `--server-tls`, or a `wss://`/`https://` target.
pub fn uses_tls(cli: &Cli) -> bool {
    cli.server_tls
        || cli.target.as_deref().is_some_and(|t| {
            t.split(',')
                .any(|u| u.trim().starts_with("wss://") || u.trim().starts_with("https://"))
        })
}

/// A last resort against any wait this tool failed to bound: the whole
/// run has a budget from its flags; past it (plus a margin), exit.
pub fn start_watchdog(cli: &Cli) {
    let budget = cli.connect_timeout_secs as f64
        + cli.handshake_timeout_secs as f64
        + if cli.mode == Mode::Channel {
            cli.subscribe_timeout_secs as f64
        } else {
            0.0
        }
        + cli.warmup_secs
        + cli.duration
        + cli.rate_secs.unwrap_or(cli.duration.max(10.0))
        + (cli.sweep_steps as f64) * (cli.sweep_step_secs + cli.drain_secs + 12.0)
        + 4.0 * (cli.drain_secs + 12.0)
        + super::attack::budget(cli)
        + 180.0;
    let _ = std::thread::Builder::new()
        .name("lt-watchdog".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(budget));
            eprintln!("wsedge-loadtest: still running after {budget:.0} s: giving up");
            std::process::exit(3);
        });
}

/// How many of each thing the run uses: from the flags, the CPUs and the
/// open-file limit.
pub struct Sizes {
    pub cpus: usize,
    pub rest_conns: usize,
    pub window: usize,
    pub threads: usize,
    pub kind: Kind,
    pub fd: sys::FdLimit,
    /// Connections that fit under the open-file limit.
    pub fit: usize,
    /// Fewer connections than requested, for the limit.
    pub capped: bool,
    /// Connections to open.
    pub n: usize,
    pub users: usize,
    pub per_user: usize,
    pub source_addrs: usize,
    /// `--mode channel`.
    pub channels: Option<Layout>,
}

impl Sizes {
    /// Raises the open-file soft limit, then opens no more connections
    /// than fit (and says so).
    pub fn fit(cli: &Cli, notes: &mut Vec<String>) -> Result<Sizes, String> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let rest_conns = cli.rest_conns.clamp(1, 64);
        let fd =
            sys::raise_fd_limit().map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
        let kind = server_kind(cli);
        let reserve = 64 + 2 * rest_conns as u64 + cli.hostile as u64;
        let fit = match kind {
            // Client and server sockets in one process: two fds per connection.
            Kind::InProcess => fd.soft.saturating_sub(2 * reserve) / 2,
            _ => fd.soft.saturating_sub(reserve),
        } as usize;
        let mut n = cli.connections;
        let capped = n > fit;
        if capped {
            let why = cap_reason(kind, &fd, fit);
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
        let channels = layout(cli)?;
        Ok(Sizes {
            cpus,
            rest_conns,
            window: cli.window.clamp(1, 1 << 16),
            threads: cli.threads.unwrap_or((cpus / 2).max(1)).clamp(1, 64),
            kind,
            fd,
            fit,
            capped,
            n,
            users,
            per_user: n.div_ceil(users),
            source_addrs: cli
                .source_addrs
                .unwrap_or_else(|| 4.max(n.div_ceil(20_000)))
                .clamp(1, 254),
            channels,
        })
    }
}

fn server_kind(cli: &Cli) -> Kind {
    if cli.target.is_some() {
        Kind::Target
    } else if cli.cluster.is_some() {
        Kind::Cluster
    } else if cli.in_process {
        Kind::InProcess
    } else if cli.server_bin.is_some() {
        Kind::Binary
    } else {
        Kind::Child
    }
}

fn cap_reason(kind: Kind, fd: &sys::FdLimit, fit: usize) -> String {
    match kind {
        Kind::InProcess => format!(
            "open-file limit {} (hard): in-process, server and client fds share one process, so at most {fit} connections fit (run without --in-process for about twice as many)",
            fd.hard
        ),
        _ => format!(
            "open-file limit {} (hard) caps this process at {fit} connections",
            fd.hard
        ),
    }
}

/// Where the tool connects.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// `wss://` (and `https://` for the REST calls): the TLS settings,
    /// with the URL's host as the name the certificate must match.
    pub tls: Option<Tls>,
}

/// `ws://` or `http://` (plain), `wss://` or `https://` (TLS, trusting the
/// system's roots and `ca_file`).
fn parse_target(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, String> {
    let (rest, secure) = if let Some(r) = url.strip_prefix("ws://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(format!(
            "--target {url:?}: expected ws://HOST:PORT[/path] or wss://HOST:PORT[/path]"
        ));
    };
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
    let tls = if secure {
        // The name the certificate must match: the host without its port
        // (and without the brackets of an IPv6 literal).
        let host = match hostport.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => hostport,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Tls::new(ca_file, host).map_err(|e| format!("--target {url:?}: {e}"))?)
    } else {
        None
    };
    Ok(Endpoint {
        addr,
        host_header: hostport.to_string(),
        path: path.to_string(),
        tls,
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

/// The server(s) under test.
pub struct Server {
    pub srv: ServerUnderTest,
    /// Node 0 first: it takes the REST calls.
    pub endpoints: Vec<Endpoint>,
    /// Signs the tokens: HS256 with the secret, or `--jwt-algorithm`.
    pub signer: Signer,
    /// A target's own open-file soft limit, when it can be read.
    pub soft_limit: Option<u64>,
    /// `--server-tls`: the throwaway certificate files, kept (and then
    /// removed) for as long as the server(s) may read them.
    pub cert: Option<ServerCert>,
}

impl Server {
    /// Starts the server(s), or finds the `--target`, and says what runs
    /// where.
    pub fn start(cli: &Cli, sizes: &Sizes, notes: &mut Vec<String>) -> Result<Server, String> {
        let secret = match (&cli.secret, sizes.kind) {
            (Some(s), _) => s.clone(),
            (None, Kind::Target) => {
                return Err("--target needs --secret (or JWT_SECRET): the server's HS256 secret, to mint user tokens".into())
            }
            (None, _) => random_hex(32),
        };
        let cert = match (cli.server_tls, &cli.target) {
            (false, _) => None,
            (true, Some(_)) => {
                return Err("--server-tls is for a server started here: give a wss:// --target (and --ca-file) instead".into())
            }
            (true, None) => Some(ServerCert::new()?),
        };
        let client_tls = cert.as_ref().map(ServerCert::client_tls).transpose()?;
        let signer = Signer::new(cli, &secret)?;
        let jwt = own_jwt(cli, &signer)?;
        let own = Own {
            secret: &secret,
            shards: cli.server_shards.unwrap_or(sizes.cpus).max(1),
            max_per_user: sizes.per_user + 1,
            history_size: cli.server_history_size,
            bind: None,
            tls: cert.as_ref(),
            jwt: jwt.as_ref(),
        };
        let (endpoints, srv) = match &cli.target {
            Some(urls) => {
                let eps = urls
                    .split(',')
                    .map(|u| parse_target(u.trim(), cli.ca_file.as_deref()))
                    .collect::<Result<Vec<_>, _>>()?;
                if eps.iter().any(|e| e.tls.is_some()) && eps.iter().any(|e| e.tls.is_none()) {
                    return Err(
                        "--target: every node plain (ws://) or every node TLS (wss://), not a mix"
                            .into(),
                    );
                }
                let srv = ServerUnderTest::target(eps[0].addr, cli.server_pid);
                (eps, srv)
            }
            None => {
                let srv = start_own(cli, sizes.kind, &own)?;
                let eps = srv
                    .addrs()
                    .into_iter()
                    .map(|addr| Endpoint {
                        addr,
                        host_header: addr.to_string(),
                        path: "/ws".into(),
                        tls: client_tls.clone(),
                    })
                    .collect();
                (eps, srv)
            }
        };
        let mut server = Server {
            srv,
            endpoints,
            signer,
            soft_limit: None,
            cert,
        };
        server.soft_limit = server.announce(sizes.n, notes);
        Ok(server)
    }

    /// Says what runs where and what its figures will lack; the target's
    /// open-file soft limit, when known.
    fn announce(&self, n: usize, notes: &mut Vec<String>) -> Option<u64> {
        let srv = &self.srv;
        if self.endpoints.len() > 1 {
            let msg = format!(
                "cluster of {} nodes: connections spread over them, REST calls to {}; server memory and CPU are the nodes' (and a Redis started here) together",
                self.endpoints.len(),
                self.endpoints[0].addr
            );
            say(&msg);
            notes.push(msg);
        }
        say(format!(
            "server: {:?} at {}{}",
            srv.kind,
            srv.addr,
            srv.pid.map(|p| format!(" (pid {p})")).unwrap_or_else(|| {
                " (pid unknown: no memory/CPU figures; give --server-pid)".into()
            })
        ));
        if let Some(cert) = &self.cert {
            say(format!(
                "TLS: the server serves a throwaway certificate for localhost and 127.0.0.1 (CA {})",
                cert.ca_path.display()
            ));
        }
        if self.endpoints.iter().any(|e| e.tls.is_some()) {
            notes.push("over TLS (wss:// and https://): the connect rate and handshake times include the TLS handshake, reported apart as well".into());
        }
        let soft_limit = if srv.kind == Kind::Target {
            srv.pid.and_then(sys::fd_soft_limit_of)
        } else {
            None
        };
        if let Some(s) = soft_limit {
            if (n as u64) + 16 > s {
                let msg = format!("the target's own open-file soft limit is {s}: it cannot hold {n} connections (raise it with ulimit -n before starting it)");
                say(&msg);
                notes.push(msg);
            }
        }
        if srv.kind == Kind::Target && srv.pid.is_none() {
            notes.push(
                "server pid unknown: no server memory or CPU figures (give --server-pid)".into(),
            );
        }
        if srv.kind == Kind::InProcess {
            notes.push("in-process server: RSS is the server's and the tool's together; CPU is split by thread name".into());
        }
        soft_limit
    }
}

/// A server this tool starts itself.
fn start_own(cli: &Cli, kind: Kind, own: &Own) -> Result<ServerUnderTest, String> {
    match kind {
        Kind::InProcess => ServerUnderTest::in_process(own),
        Kind::Binary => {
            let path = cli.server_bin.as_ref().expect("binary kind has a path");
            ServerUnderTest::binary(&path.to_string_lossy(), own)
        }
        Kind::Cluster => {
            let nodes = cli.cluster.unwrap_or(1);
            if !(1..=16).contains(&nodes) {
                return Err("--cluster takes 1 to 16 nodes".into());
            }
            ServerUnderTest::cluster(own, nodes, cli.redis_url.as_deref())
        }
        _ => ServerUnderTest::child(own),
    }
}

/// The users' tokens and the REST API's bearer.
pub struct Credentials {
    pub user_ids: Arc<Vec<String>>,
    /// One per user, in the order of `user_ids`.
    pub tokens: Arc<Vec<String>>,
    pub bearer: String,
}

impl Credentials {
    /// Tokens for `users` users (`lt-u0`, `lt-u1`, …), valid for six hours;
    /// the bearer is `--admin-key`, or an admin JWT.
    pub fn mint(cli: &Cli, signer: &Signer, users: usize) -> Result<Credentials, String> {
        let extra = match cli.mode {
            Mode::Channel => json!({"channels": [channels::CLAIM]}),
            _ => json!({}),
        };
        let (user_ids, tokens) = signer.users("lt-u", users, &extra);
        let (user_ids, tokens) = (Arc::new(user_ids), Arc::new(tokens));
        let bearer = signer.admin(cli)?;
        Ok(Credentials {
            user_ids,
            tokens,
            bearer,
        })
    }
}

/// The key a server started here checks asymmetric tokens with: needed
/// with a non-HMAC `--jwt-algorithm` unless the server is a `--target`.
fn own_jwt(cli: &Cli, signer: &Signer) -> Result<Option<(String, std::path::PathBuf)>, String> {
    match (&signer.server_key, &cli.target) {
        (Some(k), _) => Ok(Some(k.clone())),
        (None, Some(_)) => Ok(None),
        (None, None) if cli.jwt_algorithm.to_ascii_uppercase().starts_with("HS") => Ok(None),
        (None, None) => Err(format!(
            "--jwt-algorithm {} needs --jwt-public-key for the server started here",
            cli.jwt_algorithm
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_loopback() {
        let ep = parse_target("ws://127.0.0.1:3100", None).unwrap();
        assert_eq!(ep.path, "/ws");
        assert_eq!(ep.addr.port(), 3100);
        assert_eq!(parse_target("ws://localhost:9/x", None).unwrap().path, "/x");
        assert!(parse_target("ws://10.0.0.1:80", None).is_err());
        assert!(parse_target("ftp://127.0.0.1:80", None).is_err());
        assert!(parse_target("ws://127.0.0.1:80", None)
            .unwrap()
            .tls
            .is_none());
    }

    #[test]
    fn wss_targets_take_the_hosts_name_and_the_ca_file() {
        let cert = ServerCert::new().expect("throwaway certificate");
        let ca = Some(cert.ca_path.as_path());
        let ep = parse_target("wss://localhost:3443/ws", ca).unwrap();
        assert_eq!(ep.addr.port(), 3443);
        assert_eq!(ep.host_header, "localhost:3443");
        let tls = ep.tls.expect("tls");
        assert_eq!(format!("{:?}", tls.name), r#"DnsName("localhost")"#);
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let ep = parse_target("https://127.0.0.1:3443", ca).unwrap();
        assert!(matches!(
            ep.tls.expect("tls").name,
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        // A CA file that is not there is an error before anything connects.
        let missing = cert.dir.join("missing.pem");
        let err = parse_target("wss://localhost:3443", Some(&missing))
            .err()
            .expect("refused");
        assert!(err.contains("missing.pem"), "{err}");
    }
}
