//! Counters, kept per shard as relaxed atomics that only their shard
//! writes, and gathered on demand for `/metrics` and the stats route.
//! How many WebSockets count is presence's to say (`crate::presence`),
//! not a counter here: a connection a disconnect took out stops counting
//! before its shard has removed it.
//!
//! Counting never takes a lock and never allocates on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
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

/// Why a WebSocket upgrade was refused: the `reason` label of
/// `wsedge_handshakes_rejected_total`. `HttpError::reject_reason` maps each
/// refusal to one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    BadRequest,
    Unauthorized,
    Origin,
    PerUserLimit,
    ConnectionLimit,
    Timeout,
    HeadersTooLarge,
    Other,
}

impl Reject {
    /// Every reason, in the order of [`Metrics::rejected`].
    pub const ALL: [Reject; 8] = [
        Reject::BadRequest,
        Reject::Unauthorized,
        Reject::Origin,
        Reject::PerUserLimit,
        Reject::ConnectionLimit,
        Reject::Timeout,
        Reject::HeadersTooLarge,
        Reject::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::Unauthorized => "unauthorized",
            Reject::Origin => "origin",
            Reject::PerUserLimit => "per_user_limit",
            Reject::ConnectionLimit => "connection_limit",
            Reject::Timeout => "timeout",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::Other => "other",
        }
    }
}

/// A writer of the Prometheus text exposition format, shared by the
/// server's counters and the cluster link's.
pub(crate) struct Prom<'a> {
    out: &'a mut String,
}

impl<'a> Prom<'a> {
    pub fn new(out: &'a mut String) -> Prom<'a> {
        Prom { out }
    }

    /// The `# HELP` and `# TYPE` lines of one metric family.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample with one label.
    pub fn labelled(&mut self, name: &str, label: &str, value: impl std::fmt::Display, n: u64) {
        let _ = writeln!(self.out, "{name}{{{label}=\"{value}\"}} {n}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: u64) {
        self.family(name, help, kind);
        let _ = writeln!(self.out, "{name} {value}");
    }
}

/// All counters of a server.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Vec<ShardMetrics>,
    pub handshakes_accepted: AtomicU64,
    pub rejected: [AtomicU64; Reject::ALL.len()],
    pub accept_errors: AtomicU64,
    /// Connections closed at accept: `--max-http-connections` were open.
    pub http_refused: AtomicU64,
    pub broadcasts: AtomicU64,
    /// Channel publishes accepted.
    pub channel_publishes: AtomicU64,
    /// Operations refused because a shard's inbox was full.
    pub commands_refused: AtomicU64,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            handshakes_accepted: AtomicU64::new(0),
            rejected: Reject::ALL.map(|_| AtomicU64::new(0)),
            accept_errors: AtomicU64::new(0),
            http_refused: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            channel_publishes: AtomicU64::new(0),
            commands_refused: AtomicU64::new(0),
        }
    }

    pub fn reject(&self, reason: Reject) {
        self.rejected[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Prometheus text exposition format, every metric named `wsedge_…`;
    /// `connections` are presence's counted WebSockets per shard.
    pub fn render(&self, connections: &[usize], users: usize, uptime_secs: u64) -> String {
        let mut o = String::with_capacity(4096);
        let mut p = Prom::new(&mut o);
        let per_shard = |p: &mut Prom<'_>,
                         name: &str,
                         help: &str,
                         kind: &str,
                         f: &dyn Fn(&ShardMetrics) -> u64| {
            p.family(name, help, kind);
            for (i, s) in self.shards.iter().enumerate() {
                p.labelled(name, "shard", i, f(s));
            }
        };
        let name = "wsedge_connections";
        p.family(name, "Open WebSocket connections per shard.", "gauge");
        for (i, n) in connections.iter().enumerate() {
            p.labelled(name, "shard", i, *n as u64);
        }
        per_shard(
            &mut p,
            "wsedge_http_connections",
            "Open HTTP connections per shard.",
            "gauge",
            &|s| s.http_connections.load(Relaxed) as u64,
        );
        p.single(
            "wsedge_users",
            "Distinct connected users.",
            "gauge",
            users as u64,
        );
        for (name, help, f) in COUNTERS {
            per_shard(&mut p, name, help, "counter", &|s| f(s).load(Relaxed));
        }
        p.single(
            "wsedge_handshakes_accepted_total",
            "WebSocket upgrades accepted.",
            "counter",
            self.handshakes_accepted.load(Relaxed),
        );
        let name = "wsedge_handshakes_rejected_total";
        p.family(name, "WebSocket upgrades refused, by reason.", "counter");
        for (r, c) in Reject::ALL.iter().zip(&self.rejected) {
            p.labelled(name, "reason", r.label(), c.load(Relaxed));
        }
        p.single(
            "wsedge_accept_errors_total",
            "Errors from accept(2) (e.g. EMFILE).",
            "counter",
            self.accept_errors.load(Relaxed),
        );
        p.single(
            "wsedge_http_connections_refused_total",
            "Connections closed at accept because --max-http-connections were open.",
            "counter",
            self.http_refused.load(Relaxed),
        );
        p.single(
            "wsedge_broadcasts_total",
            "Broadcasts and sends accepted.",
            "counter",
            self.broadcasts.load(Relaxed),
        );
        p.single(
            "wsedge_commands_refused_total",
            "Operations refused (503) because a shard's command inbox was full.",
            "counter",
            self.commands_refused.load(Relaxed),
        );
        p.single(
            "wsedge_uptime_seconds",
            "Seconds since start.",
            "gauge",
            uptime_secs,
        );
        o
    }
}

/// The per-shard counters on `/metrics`: name, help, counter.
const COUNTERS: [(&str, &str, Counter); 7] = [
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
