//! The real `wsedge` binary as a child process of a test: spawned on an
//! ephemeral loopback port with a clean environment, its address read from
//! its own log line, killed on drop. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use super::WAIT;

pub const BIN: &str = env!("CARGO_BIN_EXE_wsedge");

/// A running `wsedge` child; killed on drop unless it already exited.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    /// stderr lines read while waiting for the address, for messages.
    pub log: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child that is killed on drop (for runs that are expected to exit).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A command for the binary with a clean environment: no `JWT_SECRET`, no
/// `WSEDGE_*` from the caller, `RUST_LOG=info`, then `envs`.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("JWT_SECRET")
        .env("RUST_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("WSEDGE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Forwards each line of `r` to a channel until EOF.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the binary on an ephemeral loopback port and waits for its
/// `wsedge listening on <addr>` log line.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut all = vec!["--bind", "127.0.0.1:0", "--shards", "2"];
    all.extend_from_slice(args);
    let mut child = command(&all, envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsedge");
    let stdout = lines_of(child.stdout.take().expect("stdout"));
    let stderr = lines_of(child.stderr.take().expect("stderr"));
    let mut proc = Proc {
        child,
        addr: "0.0.0.0:0".parse().expect("addr"),
        stdout,
        stderr,
        log: Vec::new(),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match proc.stderr.recv_timeout(left) {
            Ok(line) => {
                let addr = line
                    .split_once("wsedge listening on ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                proc.log.push(line);
                if let Some(addr) = addr {
                    proc.addr = addr;
                    return proc;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("no listening line within {WAIT:?}; stderr: {:?}", proc.log)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = proc.child.wait().expect("wait");
                panic!("wsedge exited ({status}) before listening: {:?}", proc.log)
            }
        }
    }
}

/// Sends `sig` (a name: `TERM`, `HUP`…) to a child with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for a stderr line containing `needle`; returns it.
pub fn wait_line(rx: &Receiver<String>, needle: &str, log: &mut Vec<String>) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no {needle:?} within {WAIT:?}: {log:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("wsedge exited: {log:?}"),
        }
    }
}
