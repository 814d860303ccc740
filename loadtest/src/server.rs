//! The server under test: a wsedge child process (default), a wsedge in
//! this process, a given server binary, a running server (`--target`), or
//! a cluster of wsedge child processes joined through Redis (`--cluster N`).
//!
//! A child process is the default because memory and CPU can then be
//! measured for the server alone: in one process, the client's sockets and
//! buffers would be counted as the server's. The child is this very binary
//! re-executed in a hidden server mode, so it runs exactly the wsedge code
//! this tool was compiled with (a `target/release/wsedge` left over from an
//! older build cannot be measured by mistake); `--server-bin` measures a
//! given binary instead.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;
use crate::tls::ServerCert;

/// How the server under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Child,
    InProcess,
    Binary,
    Target,
    Cluster,
}

pub struct ServerUnderTest {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The process to measure (`None`: unknown, for a target without a pid).
    pub pid: Option<u32>,
    pub shards: Option<usize>,
    child: Option<(Child, Option<ChildStdin>)>,
    in_process: Option<wsedge::Server>,
    /// `--cluster`: the other nodes (this one is node 0) and the Redis
    /// started for them, if any.
    others: Vec<ServerUnderTest>,
    redis: Option<Child>,
}

/// Options for a server this tool starts.
pub struct Own<'a> {
    pub secret: &'a str,
    pub shards: usize,
    pub max_per_user: usize,
    /// `--history-size` of the server (`None`: its default).
    pub history_size: Option<usize>,
    /// The address to listen on (`None`: a free loopback port); a child
    /// restarted by the drill takes its old port again.
    pub bind: Option<SocketAddr>,
    /// `--server-tls`: serve HTTPS and WSS with this certificate and key.
    pub tls: Option<&'a ServerCert>,
    /// `--jwt-algorithm` and `--jwt-public-key` for asymmetric tokens
    /// (`None`: HS256 with `secret`).
    pub jwt: Option<&'a (String, std::path::PathBuf)>,
}

fn config(own: &Own) -> wsedge::Config {
    let mut c = wsedge::Config {
        bind: own.bind.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        shards: own.shards,
        jwt_secret: Some(own.secret.to_string()),
        serve_web: false,
        ..wsedge::Config::default()
    };
    c.max_connections_per_user = own.max_per_user.max(c.max_connections_per_user);
    if let Some(n) = own.history_size {
        c.history_size = n;
    }
    if let Some(t) = own.tls {
        c.tls_cert = Some(t.cert_path.clone());
        c.tls_key = Some(t.key_path.clone());
    }
    if let Some((alg, key)) = own.jwt {
        c.jwt_secret = None;
        c.jwt_algorithm = alg.clone();
        c.jwt_public_key = Some(key.clone());
    }
    c
}

impl ServerUnderTest {
    pub fn in_process(own: &Own) -> Result<ServerUnderTest, String> {
        let server = wsedge::Server::start(config(own)).map_err(|e| e.to_string())?;
        Ok(ServerUnderTest {
            kind: Kind::InProcess,
            addr: server.local_addr(),
            pid: Some(std::process::id()),
            shards: Some(own.shards),
            child: None,
            in_process: Some(server),
            others: Vec::new(),
            redis: None,
        })
    }

    /// Re-executes this binary as a server (see [`serve_child`]).
    pub fn child(own: &Own) -> Result<ServerUnderTest, String> {
        spawn_and_wait(
            child_command(own)?,
            Kind::Child,
            own.shards,
            |line| line.strip_prefix("LISTENING ").map(str::to_string),
            true,
        )
    }

    /// `nodes` child servers in one cluster through Redis at `redis_url`,
    /// or through a `redis-server` started here on a free loopback port.
    pub fn cluster(
        own: &Own,
        nodes: usize,
        redis_url: Option<&str>,
    ) -> Result<ServerUnderTest, String> {
        let (url, redis) = match redis_url {
            Some(u) => (u.to_string(), None),
            None => {
                let (url, child) = start_redis()?;
                (url, Some(child))
            }
        };
        // Unique per run, so a shared Redis mixes no two runs.
        let name = format!("loadtest-{}-{}", std::process::id(), sys::unix_micros());
        let mut started: Vec<ServerUnderTest> = Vec::new();
        for i in 0..nodes {
            let mut cmd = child_command(own)?;
            cmd.env("WSEDGE_LOADTEST_REDIS_URL", &url)
                .env("WSEDGE_LOADTEST_CLUSTER", &name)
                .env("WSEDGE_LOADTEST_NODE", format!("node-{i}"));
            let node = spawn_and_wait(
                cmd,
                Kind::Cluster,
                own.shards,
                |line| line.strip_prefix("LISTENING ").map(str::to_string),
                true,
            );
            match node {
                Ok(n) => started.push(n),
                Err(e) => {
                    for mut n in started {
                        n.stop();
                    }
                    if let Some(mut r) = redis {
                        let _ = r.kill();
                        let _ = r.wait();
                    }
                    return Err(e);
                }
            }
        }
        let mut first = started.remove(0);
        first.others = started;
        first.redis = redis;
        Ok(first)
    }

    /// Every node's address, node 0 first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.others.iter().map(|n| n.addr))
            .collect()
    }

    /// The processes that serve: every node, and a Redis started here;
    /// none when the server's own pid is unknown.
    pub fn pids(&self) -> Vec<u32> {
        if self.pid.is_none() {
            return Vec::new();
        }
        let mut v: Vec<u32> = self.pid.into_iter().collect();
        v.extend(self.others.iter().filter_map(|n| n.pid));
        v.extend(self.redis.as_ref().map(Child::id));
        v
    }

    /// Resident memory of the serving processes together.
    pub fn rss_bytes(&self) -> Option<u64> {
        sys::rss_sum(&self.pids())
    }

    /// CPU seconds of the serving processes together.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.pid?;
        self.pids().into_iter().map(sys::cpu_secs).sum()
    }

    /// Starts a wsedge binary (`--server-bin`): flags and `JWT_SECRET`; the
    /// address comes from its `listening on` log line.
    pub fn binary(path: &str, own: &Own) -> Result<ServerUnderTest, String> {
        let mut cmd = Command::new(path);
        cmd.args(["--bind", "127.0.0.1:0", "--no-web"]);
        if let Some(t) = own.tls {
            cmd.arg("--tls-cert")
                .arg(&t.cert_path)
                .arg("--tls-key")
                .arg(&t.key_path);
        }
        cmd.arg("--shards")
            .arg(own.shards.to_string())
            .arg("--max-connections-per-user")
            .arg(own.max_per_user.max(100).to_string())
            .env("RUST_LOG", "warn,wsedge::server=info");
        match own.jwt {
            Some((alg, key)) => cmd
                .arg("--jwt-algorithm")
                .arg(alg)
                .arg("--jwt-public-key")
                .arg(key),
            None => cmd.env("JWT_SECRET", own.secret),
        };
        spawn_and_wait(
            cmd,
            Kind::Binary,
            own.shards,
            |line| {
                let at = line.find("listening on ")? + "listening on ".len();
                line[at..].split_whitespace().next().map(str::to_string)
            },
            false,
        )
    }

    pub fn target(addr: SocketAddr, pid: Option<u32>) -> ServerUnderTest {
        ServerUnderTest {
            kind: Kind::Target,
            addr,
            pid: pid.or_else(|| sys::find_listener_pid(addr.port())),
            shards: None,
            child: None,
            in_process: None,
            others: Vec::new(),
            redis: None,
        }
    }

    /// The drill: kills node `i` (0 is this one) with SIGKILL and reaps it;
    /// when the signal went out (unix micros). The node is then gone for
    /// good: no pid, nothing left to stop.
    pub fn kill_node(&mut self, i: usize) -> Result<u64, String> {
        let node = if i == 0 {
            self
        } else {
            self.others
                .get_mut(i - 1)
                .ok_or_else(|| format!("no node {i}"))?
        };
        let (mut child, _stdin) = node
            .child
            .take()
            .ok_or("only a server started here in a child process can be killed")?;
        let at = sys::unix_micros();
        child
            .kill()
            .map_err(|e| format!("cannot kill node {i}: {e}"))?;
        let _ = child.wait();
        node.pid = None;
        Ok(at)
    }

    /// The drill on one node: kills this child server with SIGKILL, then
    /// starts it again on the same address (so its history and epoch are
    /// new). When the signal went out and when the new one listened (unix
    /// micros).
    pub fn restart(&mut self, own: &Own) -> Result<(u64, u64), String> {
        let killed = self.kill_node(0)?;
        let own = Own {
            bind: Some(self.addr),
            ..*own
        };
        let fresh = spawn_and_wait(
            child_command(&own)?,
            self.kind,
            own.shards,
            |line| line.strip_prefix("LISTENING ").map(str::to_string),
            true,
        )?;
        let listening = sys::unix_micros();
        self.child = fresh.child;
        self.pid = fresh.pid;
        Ok((killed, listening))
    }

    /// Stops a server this tool started (bounded: 10 s, then SIGKILL). By
    /// reference, so that the run keeps its kind, address and pid for the
    /// report.
    pub fn stop(&mut self) {
        for mut node in std::mem::take(&mut self.others) {
            node.stop();
        }
        if let Some(server) = self.in_process.take() {
            server.shutdown();
        }
        if let Some((mut child, stdin)) = self.child.take() {
            // The child server stops on stdin EOF; a wsedge binary on SIGTERM.
            drop(stdin);
            sys::send_signal(child.id(), libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if let Some(mut r) = self.redis.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

fn child_command(own: &Own) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--internal-serve")
        .arg("--server-shards")
        .arg(own.shards.to_string())
        .arg("--internal-max-per-user")
        .arg(own.max_per_user.to_string())
        .env("WSEDGE_LOADTEST_SECRET", own.secret);
    if let Some((alg, key)) = own.jwt {
        cmd.env("WSEDGE_LOADTEST_JWT_ALGORITHM", alg)
            .env("WSEDGE_LOADTEST_JWT_PUBLIC_KEY", key);
    }
    if let Some(n) = own.history_size {
        cmd.arg("--server-history-size").arg(n.to_string());
    }
    if let Some(addr) = own.bind {
        cmd.env("WSEDGE_LOADTEST_BIND", addr.to_string());
    }
    if let Some(t) = own.tls {
        cmd.env("WSEDGE_LOADTEST_TLS_CERT", &t.cert_path)
            .env("WSEDGE_LOADTEST_TLS_KEY", &t.key_path);
    }
    Ok(cmd)
}

/// Whether a Redis on this loopback port answers `PING` (inline command).
fn redis_answers(port: u16) -> bool {
    use std::io::Write;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Starts `redis-server` (from `PATH`, or `WSEDGE_REDIS_SERVER`) on a free
/// loopback port, without persistence, and waits (at most 10 s) until it
/// answers.
fn start_redis() -> Result<(String, Child), String> {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for redis-server: {e}"))?
        .port();
    let bin = std::env::var("WSEDGE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            sys::die_with_parent();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!("--cluster needs Redis: cannot run {bin} ({e}); install redis-server or give --redis-url")
    })?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis_answers(port) {
            return Ok((url, child));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{bin} did not answer on port {port} within 10 s"))
}

/// Spawns `cmd`, reads its stdout (child mode) or stderr (binary) until a
/// line gives the listening address (at most 20 s), then forwards the rest
/// of that stream to our stderr from a thread.
fn spawn_and_wait(
    mut cmd: Command,
    kind: Kind,
    shards: usize,
    addr_of: impl Fn(&str) -> Option<String> + Send + 'static,
    from_stdout: bool,
) -> Result<ServerUnderTest, String> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::piped());
    if from_stdout {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            sys::die_with_parent();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let stream: Box<dyn Read + Send> = if from_stdout {
        Box::new(child.stdout.take().expect("piped stdout"))
    } else {
        Box::new(child.stderr.take().expect("piped stderr"))
    };
    let (tx, rx) = crossbeam_channel::bounded::<Result<String, String>>(1);
    std::thread::Builder::new()
        .name("lt-server-log".into())
        .spawn(move || {
            let mut lines = BufReader::new(stream).lines();
            let mut seen = Vec::new();
            let mut tx = Some(tx);
            for line in lines.by_ref().map_while(Result::ok).take(1_000_000) {
                if let Some(t) = tx.as_ref() {
                    if let Some(addr) = addr_of(&line) {
                        let _ = t.send(Ok(addr));
                        tx = None;
                        continue;
                    }
                    seen.push(line);
                } else {
                    eprintln!("[server] {line}");
                }
            }
            if let Some(t) = tx {
                let _ = t.send(Err(seen.join("\n")));
            }
        })
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take();
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => addr,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match other {
                Ok(Err(out)) => format!("it exited or said:\n{out}"),
                _ => "no address within 20 s".into(),
            };
            return Err(format!("the server did not start: {why}"));
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("unexpected server address {addr:?}"))?;
    let pid = child.id();
    Ok(ServerUnderTest {
        kind,
        addr,
        pid: Some(pid),
        shards: Some(shards),
        child: Some((child, stdin)),
        in_process: None,
        others: Vec::new(),
        redis: None,
    })
}

/// The hidden `--internal-serve` mode: run wsedge until stdin closes.
pub fn serve_child(shards: usize, max_per_user: usize, history_size: Option<usize>) -> i32 {
    sys::die_with_parent();
    let Ok(secret) = std::env::var("WSEDGE_LOADTEST_SECRET") else {
        eprintln!("wsedge-loadtest: --internal-serve is for the tool's own use");
        return 2;
    };
    let jwt = std::env::var("WSEDGE_LOADTEST_JWT_ALGORITHM")
        .ok()
        .zip(std::env::var_os("WSEDGE_LOADTEST_JWT_PUBLIC_KEY").map(std::path::PathBuf::from));
    let own = Own {
        secret: &secret,
        shards,
        max_per_user,
        history_size,
        jwt: jwt.as_ref(),
        bind: std::env::var("WSEDGE_LOADTEST_BIND")
            .ok()
            .and_then(|a| a.parse().ok()),
        tls: None,
    };
    let mut cfg = config(&own);
    if let (Some(cert), Some(key)) = (
        std::env::var_os("WSEDGE_LOADTEST_TLS_CERT"),
        std::env::var_os("WSEDGE_LOADTEST_TLS_KEY"),
    ) {
        cfg.tls_cert = Some(cert.into());
        cfg.tls_key = Some(key.into());
    }
    if let Ok(url) = std::env::var("WSEDGE_LOADTEST_REDIS_URL") {
        cfg.redis_url = Some(url);
        cfg.cluster_name = std::env::var("WSEDGE_LOADTEST_CLUSTER").unwrap_or_default();
        cfg.node_id = std::env::var("WSEDGE_LOADTEST_NODE").ok();
    }
    let server = match wsedge::Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsedge-loadtest: server: {e}");
            return 1;
        }
    };
    println!("LISTENING {}", server.local_addr());
    // SIGTERM or the parent closing our stdin: shut down gracefully.
    let _ = signal_ignore_term();
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    server.shutdown();
    0
}

/// In the child, SIGTERM would kill before the graceful shutdown; stdin EOF
/// is the signal that matters, so SIGTERM just closes stdin's wait early.
fn signal_ignore_term() -> io::Result<()> {
    // SAFETY: installing SIG_IGN for SIGTERM; the parent closes stdin next.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    Ok(())
}
