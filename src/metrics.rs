//! Counters, kept per shard as relaxed atomics that only their shard
//! writes, and gathered on demand for `/metrics` and the stats route.
//!
//! Counting never takes a lock and never allocates on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// Open HTTP (REST or not yet upgraded) connections.
    pub http_connections: AtomicUsize,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumer_drops: AtomicU64,
    pub http_requests: AtomicU64,
    pub commands: AtomicU64,
}

/// Picks one counter out of a shard's metrics.
type Counter = fn(&ShardMetrics) -> &AtomicU64;

/// Handshake refusal reasons, in the order of [`Metrics::rejected`].
pub const REJECT_REASONS: &[&str] = &[
    "bad_request",
    "unauthorized",
    "origin",
    "per_user_limit",
    "connection_limit",
    "timeout",
    "headers_too_large",
    "other",
];

/// All counters of a server.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub handshakes_accepted: AtomicU64,
    pub rejected: Vec<AtomicU64>,
    pub accept_errors: AtomicU64,
    pub broadcasts: AtomicU64,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            handshakes_accepted: AtomicU64::new(0),
            rejected: REJECT_REASONS.iter().map(|_| AtomicU64::new(0)).collect(),
            accept_errors: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
        }
    }

    pub fn reject(&self, reason: &str) {
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECT_REASONS.len() - 1);
        self.rejected[i].fetch_add(1, Relaxed);
    }

    pub fn connections(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.connections.load(Relaxed))
            .sum()
    }

    pub fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Prometheus text exposition format, every metric named `wsedge_…`.
    pub fn render(&self, users: usize, uptime_secs: u64) -> String {
        let mut o = String::with_capacity(4096);
        let header = |o: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let per_shard = |o: &mut String,
                         name: &str,
                         help: &str,
                         kind: &str,
                         f: &dyn Fn(&ShardMetrics) -> u64| {
            header(o, name, help, kind);
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", f(s));
            }
        };
        let single = |o: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            header(o, name, help, kind);
            let _ = writeln!(o, "{name} {value}");
        };
        per_shard(
            &mut o,
            "wsedge_connections",
            "Open WebSocket connections per shard.",
            "gauge",
            &|s| s.connections.load(Relaxed) as u64,
        );
        per_shard(
            &mut o,
            "wsedge_http_connections",
            "Open HTTP connections per shard.",
            "gauge",
            &|s| s.http_connections.load(Relaxed) as u64,
        );
        single(
            &mut o,
            "wsedge_users",
            "Distinct connected users.",
            "gauge",
            users as u64,
        );
        let counters: [(&str, &str, Counter); 7] = [
            (
                "wsedge_messages_in_total",
                "WebSocket data messages received.",
                |s| &s.messages_in,
            ),
            (
                "wsedge_messages_out_total",
                "WebSocket messages queued to clients.",
                |s| &s.messages_out,
            ),
            ("wsedge_bytes_in_total", "Bytes read from sockets.", |s| {
                &s.bytes_in
            }),
            ("wsedge_bytes_out_total", "Bytes written to sockets.", |s| {
                &s.bytes_out
            }),
            (
                "wsedge_slow_consumer_drops_total",
                "Connections closed for exceeding their outbound buffer.",
                |s| &s.slow_consumer_drops,
            ),
            ("wsedge_http_requests_total", "HTTP requests parsed.", |s| {
                &s.http_requests
            }),
            (
                "wsedge_shard_commands_total",
                "Commands handled from the shard inbox.",
                |s| &s.commands,
            ),
        ];
        for (name, help, f) in counters {
            per_shard(&mut o, name, help, "counter", &|s| f(s).load(Relaxed));
        }
        single(
            &mut o,
            "wsedge_handshakes_accepted_total",
            "WebSocket upgrades accepted.",
            "counter",
            self.handshakes_accepted.load(Relaxed),
        );
        header(
            &mut o,
            "wsedge_handshakes_rejected_total",
            "WebSocket upgrades refused, by reason.",
            "counter",
        );
        for (r, c) in REJECT_REASONS.iter().zip(&self.rejected) {
            let _ = writeln!(
                o,
                "wsedge_handshakes_rejected_total{{reason=\"{r}\"}} {}",
                c.load(Relaxed)
            );
        }
        single(
            &mut o,
            "wsedge_accept_errors_total",
            "Errors from accept(2) (e.g. EMFILE).",
            "counter",
            self.accept_errors.load(Relaxed),
        );
        single(
            &mut o,
            "wsedge_broadcasts_total",
            "Broadcasts and sends accepted.",
            "counter",
            self.broadcasts.load(Relaxed),
        );
        single(
            &mut o,
            "wsedge_uptime_seconds",
            "Seconds since start.",
            "gauge",
            uptime_secs,
        );
        o
    }
}
