//! The real `wsedge` binary: signals, dev mode, configuration by flags,
//! environment and TOML file, `--help`, and refused configurations.
//!
//! Every child runs under a guard that kills it when the test fails, its
//! address comes from its own log line, and every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use serde_json::json;
use wsedge::{mint_hs256, now_secs};

/// Waits (bounded) for the child to exit.
fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "wsedge did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line a reader thread still has, up to EOF (bounded).
fn collect(rx: &Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => panic!("output did not end: {out:?}"),
        }
    }
}

/// Waits for the close frame, answers it, returns its code.
fn close_code(ws: &mut Ws) -> u16 {
    let code = expect_close(ws);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if ws.read().is_err() {
            return code;
        }
    }
    panic!("connection not finished after close");
}

/// Args and env of a real (non-dev) server with the test secret and admin key.
fn real_env() -> [(&'static str, &'static str); 1] {
    [("JWT_SECRET", SECRET)]
}

fn graceful_exit_on(sig: &str) {
    let mut p = spawn(&["--admin-key", ADMIN_KEY], &real_env());
    let mut clients: Vec<Ws> = (0..4)
        .map(|i| connect(p.addr, &token(&format!("sig{i}"), 600)).0)
        .collect();
    eventually("all four connected", || {
        let (st, body) = rest(p.addr, "GET", "/v1/websocket/stats", Some(ADMIN_KEY), None);
        st == 200 && body["totalConnections"] == 4
    });
    signal(&p.child, sig);
    let started = Instant::now();
    for ws in clients.iter_mut() {
        assert_eq!(close_code(ws), 1001, "close code on {sig}");
    }
    let status = wait_exit(&mut p.child, Duration::from_secs(8));
    assert!(status.success(), "exit status after {sig}: {status}");
    assert!(started.elapsed() < Duration::from_secs(8));
    let log = collect(&p.stderr).join("\n");
    assert!(log.contains("wsedge stopped"), "{log}");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    graceful_exit_on("TERM");
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    graceful_exit_on("INT");
}

#[test]
fn a_signal_right_after_the_listening_line_is_still_graceful() {
    // A supervisor may stop the server as soon as it reports listening;
    // that must never kill it with the default signal disposition.
    for sig in ["TERM", "INT", "TERM", "INT", "TERM", "INT"] {
        let mut p = spawn(&[], &real_env());
        signal(&p.child, sig);
        let status = wait_exit(&mut p.child, Duration::from_secs(8));
        assert!(
            status.success(),
            "SIG{sig} right after start: {status}; stderr: {:?}",
            p.log
        );
    }
}

#[test]
fn dev_mode_prints_working_tokens() {
    let mut p = spawn(&[], &[]);
    let mut lines = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !lines.iter().any(|l: &String| l.contains("admin token:")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.stdout.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(e) => panic!("no dev banner ({e}): {lines:?}"),
        }
    }
    let value_of = |label: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.split_once(label).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label:?} line in {lines:?}"))
    };
    let user = value_of("user token:");
    let admin = value_of("admin token:");
    let page = value_of("test page:");
    assert_eq!(page, format!("http://{}/", p.addr));
    assert!(!user.is_empty() && !admin.is_empty() && user != admin);
    // The warning goes to stderr, read by another thread than stdout's:
    // wait for it rather than expect it already there.
    let deadline = Instant::now() + WAIT;
    while !p.log.iter().any(|l| l.contains("DEV MODE")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.stderr.recv_timeout(left) {
            Ok(l) => p.log.push(l),
            Err(e) => panic!("no loud warning ({e}): {:?}", p.log),
        }
    }

    let (mut ws, hello) = connect(p.addr, &user);
    assert_eq!(hello["payload"]["userId"], "dev-user");
    send_json(&mut ws, &json!({"type": "hi", "payload": 1}));
    assert_eq!(next_json(&mut ws)["type"], "echo");

    let (st, body) = rest(p.addr, "GET", "/v1/websocket/stats", Some(&admin), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totalConnections"], 1);
    assert_eq!(body["users"], json!(["dev-user"]));
    let (st, _) = rest(p.addr, "GET", "/v1/websocket/stats", Some(&user), None);
    assert_eq!(st, 403, "the user token is no admin");

    // The test page comes pre-filled with the user token.
    let (st, _, body) = http_raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains(&user));
}

#[test]
fn a_configured_secret_means_no_dev_banner() {
    let mut p = spawn(&["--admin-key", "k"], &[("JWT_SECRET", "x")]);
    let exp = now_secs() + 600;
    let tok = mint_hs256("x", &json!({"sub": "real-user", "exp": exp}));
    let (mut ws, hello) = connect(p.addr, &tok);
    assert_eq!(hello["payload"]["userId"], "real-user");
    // A token signed with another secret is refused.
    let other = mint_hs256("y", &json!({"sub": "real-user", "exp": exp}));
    assert_eq!(
        try_connect(p.addr, &format!("/ws?token={other}"), &[]).err(),
        Some(401)
    );
    let (st, body) = rest(p.addr, "GET", "/v1/websocket/stats", Some("k"), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totalConnections"], 1);
    // An admin JWT signed with x works too.
    let admin = mint_hs256("x", &json!({"sub": "a", "role": "admin", "exp": exp}));
    let (st, _) = rest(p.addr, "GET", "/v1/websocket/stats", Some(&admin), None);
    assert_eq!(st, 200);

    signal(&p.child, "TERM");
    assert_eq!(close_code(&mut ws), 1001);
    let status = wait_exit(&mut p.child, Duration::from_secs(8));
    assert!(status.success(), "{status}");
    let out = collect(&p.stdout).join("\n");
    assert!(
        !out.contains("user token:") && !out.contains("admin token:") && !out.contains("dev mode"),
        "no dev banner with JWT_SECRET: {out}"
    );
    let err = collect(&p.stderr).join("\n");
    assert!(!err.contains("DEV MODE"), "{err}");
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let mut child = Guard(
        command(&["--help"], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let out = collect(&lines_of(child.0.stdout.take().expect("stdout")));
    let status = wait_exit(&mut child.0, WAIT);
    assert!(status.success(), "{status}");
    let text = out.join("\n");
    // Each flag's help block: from its line to the next option line.
    let block = |flag: &str| -> String {
        let start = out
            .iter()
            .position(|l| {
                l.trim_start()
                    .split([' ', ','])
                    .next()
                    .is_some_and(|f| f == flag)
            })
            .unwrap_or_else(|| panic!("{flag} is not in --help:\n{text}"));
        let mut b = out[start].clone();
        for l in &out[start + 1..] {
            if l.trim_start().starts_with('-') {
                break;
            }
            b.push('\n');
            b.push_str(l);
        }
        b
    };
    let with_defaults = [
        ("--bind", "0.0.0.0:3000"),
        ("--shards", "CPUs"),
        ("--jwt-algorithm", "HS256"),
        ("--jwt-issuer", ""),
        ("--jwt-audience", ""),
        ("--max-message-bytes", "65536"),
        ("--max-connections", "1000000"),
        ("--max-connections-per-user", "100"),
        ("--outbound-buffer-bytes", "1048576"),
        ("--allowed-origins", ""),
        ("--ping-interval-secs", "25"),
        ("--pong-timeout-secs", ""),
        ("--handshake-timeout-secs", "10"),
        ("--jwt-leeway-secs", "30"),
        ("--admin-role-claim", "role"),
        ("--admin-role-value", "admin"),
    ];
    for (flag, default) in with_defaults {
        let b = block(flag);
        let d = b
            .split_once("[default: ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(d, _)| d)
            .unwrap_or_else(|| panic!("{flag} shows no default:\n{b}"));
        assert!(
            d.contains(default),
            "{flag} default {d:?}, want {default:?}"
        );
    }
    // Flags without a default value are still documented.
    for flag in ["--admin-key", "--jwt-public-key", "--config"] {
        let b = block(flag);
        assert!(b.lines().count() >= 2, "{flag} has a description:\n{b}");
    }
}

/// A TOML file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("wsedge-lifecycle-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How many connections of one user the server accepts before 429 (probes up to `max + 1`).
fn per_user_limit(addr: SocketAddr, user: &str, max: usize) -> usize {
    let tok = token(user, 600);
    let mut open = Vec::new();
    for _ in 0..=max {
        match try_connect(addr, &format!("/ws?token={tok}"), &[]) {
            Ok(mut ws) => {
                assert_eq!(next_json(&mut ws)["type"], "connected");
                open.push(ws);
            }
            Err(st) => {
                assert_eq!(st, 429, "over the per-user limit");
                return open.len();
            }
        }
    }
    open.len()
}

#[test]
fn toml_file_flags_and_environment_set_options() {
    let file = TempFile::new("limits.toml", "max_connections_per_user = 1\n");
    let file_args = ["--admin-key", ADMIN_KEY, "--config", file.path()];

    // The file alone.
    let p = spawn(&file_args, &real_env());
    assert_eq!(per_user_limit(p.addr, "cfg", 3), 1, "the file's limit");
    drop(p);

    // A flag overrides the file.
    let mut args = file_args.to_vec();
    args.extend(["--max-connections-per-user", "2"]);
    let p = spawn(&args, &real_env());
    assert_eq!(per_user_limit(p.addr, "cfg", 3), 2, "the flag wins");
    drop(p);

    // The environment alone.
    let p = spawn(
        &["--admin-key", ADMIN_KEY],
        &[
            ("JWT_SECRET", SECRET),
            ("WSEDGE_MAX_CONNECTIONS_PER_USER", "1"),
        ],
    );
    assert_eq!(
        per_user_limit(p.addr, "env", 3),
        1,
        "the environment's limit"
    );
    drop(p);

    // The environment overrides the file (flag > env > file).
    let p = spawn(
        &file_args,
        &[
            ("JWT_SECRET", SECRET),
            ("WSEDGE_MAX_CONNECTIONS_PER_USER", "3"),
        ],
    );
    assert_eq!(per_user_limit(p.addr, "env", 4), 3, "env over file");
    drop(p);

    // The admin key from the environment, the secret from the file.
    let file2 = TempFile::new(
        "secret.toml",
        &format!("jwt_secret = \"{SECRET}\"\nshards = 3\n"),
    );
    let p = spawn(
        &["--config", file2.path()],
        &[("WSEDGE_ADMIN_KEY", "env-key")],
    );
    let (_ws, _) = connect(p.addr, &token("filesecret", 600));
    let (st, body) = rest(p.addr, "GET", "/v1/websocket/stats", Some("env-key"), None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["totalConnections"], 1);
    // --shards 2 (given by spawn) overrides the file's 3.
    assert_eq!(body["shards"].as_array().map(Vec::len), Some(2), "{body}");
}

/// Runs the binary expecting it to refuse to start; returns (status, stderr).
fn refused(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut all = vec!["--bind", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut child = Guard(
        command(&all, envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let err = lines_of(child.0.stderr.take().expect("stderr"));
    let status = wait_exit(&mut child.0, WAIT);
    (status, collect(&err).join("\n"))
}

#[test]
fn invalid_configuration_exits_non_zero_with_a_clear_message() {
    let secret = [("JWT_SECRET", "x")];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--shards", "0"], "--shards must be at least 1"),
        (vec!["--jwt-algorithm", "XX"], "unknown --jwt-algorithm"),
        (
            vec!["--max-connections-per-user", "0"],
            "--max-connections-per-user",
        ),
        (vec!["--shards", "lots"], "--shards"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (
            vec!["--jwt-algorithm", "RS256"],
            "--jwt-algorithm RS256 needs --jwt-public-key",
        ),
    ];
    for (args, msg) in cases {
        let (status, err) = refused(&args, &secret);
        assert!(!status.success(), "{args:?} must not start: {status}");
        assert!(err.contains(msg), "{args:?}: stderr {err:?} lacks {msg:?}");
        assert!(
            !err.contains("listening on"),
            "{args:?} must not listen: {err}"
        );
    }

    // A file with an unknown key or a missing file.
    let bad = TempFile::new("bad.toml", "max_conections = 5\n");
    let (status, err) = refused(&["--config", bad.path()], &secret);
    assert!(!status.success());
    assert!(
        err.contains("max_conections") && err.contains(bad.path()),
        "{err}"
    );
    let (status, err) = refused(&["--config", "/nonexistent/wsedge.toml"], &secret);
    assert!(!status.success());
    assert!(err.contains("/nonexistent/wsedge.toml"), "{err}");
}
