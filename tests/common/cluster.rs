//! Cluster helpers: a `redis-server` (shared by the test run through
//! `WSEDGE_TEST_REDIS_URL`, which `scripts/test` starts, or private to a
//! test), in-process nodes with a cluster name of their own, and waits on
//! what a node sees of the others. Every wait is bounded.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::*;

/// A `redis-server` child on a loopback port; killed on drop.
pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = Redis { child: None, port };
        r.restart();
        r
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let bin = std::env::var("WSEDGE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e} (apt-get install redis-server; scripts/test does it)")
            });
        self.child = Some(child);
        let url = self.url();
        eventually("redis-server answers PING", || ping(&url));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn ping(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
        .is_ok()
}

/// The shared Redis of the test run, or a private one.
pub fn shared_redis() -> (String, Option<Redis>) {
    match std::env::var("WSEDGE_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let r = Redis::start();
            (r.url(), Some(r))
        }
    }
}

pub fn cluster_name(test: &str) -> String {
    format!("test-{}-{}-{}", std::process::id(), test, rand_suffix())
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_007)
}

pub fn node(url: &str, cluster: &str, id: &str) -> TestServer {
    start(|c| {
        c.redis_url = Some(url.to_string());
        c.cluster_name = cluster.to_string();
        c.node_id = Some(id.to_string());
    })
}

pub fn stats(addr: SocketAddr) -> Value {
    let (status, body) = rest(addr, "GET", "/v1/websocket/stats", Some(ADMIN_KEY), None);
    assert_eq!(status, 200, "{body}");
    body
}

pub fn node_ids(stats: &Value) -> Vec<String> {
    stats["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `addr` sees exactly `ids` as live nodes and `conns` connections.
pub fn wait_cluster(addr: SocketAddr, ids: &[&str], conns: u64) {
    eventually(
        &format!("{addr} sees nodes {ids:?} with {conns} connections"),
        || {
            let s = stats(addr);
            node_ids(&s) == ids && s["totalConnections"] == conns
        },
    );
}

/// Three in-process nodes a, b, c of one cluster.
pub struct Three {
    pub _redis: Option<Redis>,
    pub url: String,
    pub name: String,
    pub a: TestServer,
    pub b: TestServer,
    pub c: TestServer,
}

pub fn three(test: &str) -> Three {
    let (url, redis) = shared_redis();
    let name = cluster_name(test);
    let t = Three {
        a: node(&url, &name, "a"),
        b: node(&url, &name, "b"),
        c: node(&url, &name, "c"),
        _redis: redis,
        url,
        name,
    };
    for n in [&t.a, &t.b, &t.c] {
        wait_cluster(n.addr, &["a", "b", "c"], 0);
    }
    t
}

/// A broadcast through the REST API, expected to succeed.
pub fn broadcast(addr: SocketAddr, body: Value) -> Value {
    let (status, resp) = rest(
        addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&body),
    );
    assert_eq!(status, 200, "{resp}");
    resp
}

/// Node `id` of cluster `name` as a child process (a test that must kill
/// a node without warning needs one).
pub fn spawn_node(url: &str, name: &str, id: &str) -> super::process::Proc {
    super::process::spawn(
        &[
            "--admin-key",
            ADMIN_KEY,
            "--redis-url",
            url,
            "--cluster-name",
            name,
            "--node-id",
            id,
        ],
        &[("JWT_SECRET", SECRET)],
    )
}
