//! The figures of a run (this file: the data model, filled in by the run)
//! and their three renderings, one module each:
//!
//! ```text
//! table.rs  the human table (stdout)
//! json.rs   the JSON line (stdout, read by scripts)
//! html.rs   the self-contained HTML page (--report)
//! svg.rs    the page's inline SVG charts
//! fmt.rs    number and text formatting the renderings share
//! ```
//!
//! The JSON line is this model serialized: a field's name here is a field
//! of the line; `#[serde(skip)]` marks what only the charts use.

mod fmt;
mod html;
mod json;
mod svg;
mod table;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pct {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Pct {
    pub fn of(h: &Histogram<u64>) -> Pct {
        if h.is_empty() {
            return Pct::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Pct {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ServerInfo {
    pub kind: crate::server::Kind,
    pub addr: String,
    pub pid: Option<u32>,
    pub shards: Option<usize>,
    /// In-process mode: server and tool share one RSS.
    pub rss_combined: bool,
    /// Nodes connected to (1, or the cluster's nodes).
    pub nodes: usize,
}

#[derive(Debug, Serialize)]
pub struct ConfigEcho {
    pub connections: usize,
    pub users: usize,
    pub client_threads: usize,
    pub source_addrs: usize,
    pub payload_bytes: usize,
    pub mode: crate::rest::Mode,
    pub targets: Option<usize>,
    pub window: usize,
    pub rest_conns: usize,
    pub max_lag: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rate: Option<f64>,
    pub sweep: bool,
    pub p99_bound_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct FdInfo {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
    /// Connections that fit under the limit in this mode.
    pub max_connections: usize,
    pub capped: bool,
    /// The target's own limit, when known.
    pub server_soft: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ConnectInfo {
    pub requested: usize,
    pub open: usize,
    pub failed: usize,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Connections per second: TCP connect (+ TLS handshake over `wss://`)
    /// + upgrade (JWT check) + 101.
    pub per_second: f64,
    /// `connect(2)` to the `101`, the TLS handshake included.
    pub handshake_ms: Pct,
    /// The connections ran over TLS (`wss://`).
    pub tls: bool,
    /// `wss://`: `connect(2)` to the end of the TLS handshake (a part of
    /// `handshake_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_ms: Option<Pct>,
}

#[derive(Debug, Serialize)]
pub struct MemInfo {
    pub server_rss_idle_bytes: Option<u64>,
    pub server_rss_connected_bytes: Option<u64>,
    pub server_rss_after_load_bytes: Option<u64>,
    /// (connected − idle) / open connections.
    pub server_bytes_per_connection: Option<f64>,
    pub tool_bytes_per_connection: Option<f64>,
    pub combined: bool,
}

/// `--mode channel`: the subscriptions and what they cost the server.
#[derive(Debug, Serialize)]
pub struct ChannelInfo {
    pub channels: u32,
    pub subs_per_conn: u32,
    /// Open connections × `subs_per_conn`.
    pub subscriptions_requested: u64,
    pub subscriptions_acknowledged: u64,
    /// `error` answers to subscribes.
    pub subscriptions_refused: u64,
    pub first_refusal: Option<String>,
    /// `subscribed` for a channel the connection did not ask for.
    pub stray_acks: u64,
    /// Messages of ours on a channel the connection is not in.
    pub misrouted: u64,
    /// From the first subscribe to the last answer.
    pub subscribe_seconds: f64,
    pub subscribes_per_second: f64,
    pub server_rss_connected_bytes: Option<u64>,
    /// Once every subscription was answered.
    pub server_rss_subscribed_bytes: Option<u64>,
    /// (subscribed − connected) / acknowledged subscriptions: what a
    /// subscription costs beyond the connection.
    pub server_bytes_per_subscription: Option<f64>,
    /// With more than one channel per connection: RSS once each
    /// connection's first subscription was answered…
    pub server_rss_first_subscribed_bytes: Option<u64>,
    /// …and (subscribed − that) / the further subscriptions: a
    /// subscription's own cost, without the connection's first-message
    /// costs (its read buffer, its list of channels).
    pub server_bytes_per_further_subscription: Option<f64>,
    pub server_subscribe_cpu_s: Option<f64>,
    pub tool_subscribe_cpu_s: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct CpuInfo {
    pub server_connect_s: Option<f64>,
    pub server_load_s: Option<f64>,
    pub tool_connect_s: f64,
    pub tool_load_s: f64,
}

#[derive(Debug, Serialize)]
pub struct PhaseInfo {
    pub name: String,
    /// `"window"` or `"rate"`.
    pub pace: &'static str,
    pub window: usize,
    /// Offered requests per second (rate pace).
    pub offered_per_s: Option<f64>,
    /// Sending time.
    pub seconds: f64,
    pub requests: u64,
    pub requests_ok: u64,
    pub rest_errors: BTreeMap<String, u64>,
    /// Sum of `sentToConnections`.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Received beyond what was promised (duplicates, or a server that
    /// under-reports).
    pub extra: u64,
    pub out_of_order: u64,
    pub requests_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency_ms: Pct,
    pub rest_latency_ms: Pct,
    pub server_cpu_s: Option<f64>,
    pub tool_cpu_s: f64,
    /// Wall time of the phase: sending, last answers, drain (the CPU
    /// figures cover this span).
    pub wall_s: f64,
    /// CPU seconds other processes on the machine used meanwhile.
    pub other_cpu_s: Option<f64>,
    /// p99 within `--p99-bound-ms` and nothing lost.
    pub within_bound: bool,
    /// Start and end (sending) relative to the timeline origin, ms.
    pub start_ms: f64,
    pub end_ms: f64,
    #[serde(skip)]
    pub curve: Curve,
    #[serde(skip)]
    pub histogram: Bars,
    #[serde(skip)]
    pub warmup: bool,
    /// Run under attack (`--hostile`): a measured phase again.
    pub hostile: bool,
}

#[derive(Debug, Serialize)]
pub struct Capacity {
    pub connections_per_gib: Option<f64>,
    pub p99_bound_ms: f64,
    pub sustainable_deliveries_per_s: Option<f64>,
    pub sustainable_requests_per_s: Option<f64>,
    /// Which phase gave it, or why there is none.
    pub basis: String,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub loadavg_start: Option<f64>,
    pub loadavg_end: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub server: ServerInfo,
    pub config: ConfigEcho,
    pub fd_limit: FdInfo,
    pub connect: ConnectInfo,
    pub memory: MemInfo,
    /// `--mode channel` (absent in the other modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelInfo>,
    pub cpu: CpuInfo,
    pub phases: Vec<PhaseInfo>,
    /// Open connections that closed during the run, by how.
    pub closes: BTreeMap<String, u64>,
    pub open_at_end: usize,
    pub other_messages: u64,
    pub pings_answered: u64,
    pub capacity: Capacity,
    pub machine: Machine,
    pub notes: Vec<String>,
    /// Messages of ours received per 100 ms from the end of the connect phase.
    pub deliveries_per_100ms: Vec<u64>,
    #[serde(skip)]
    pub connect_ramp: Vec<(f64, usize)>,
    /// `--hostile`: the attack and what it did (`null` without one).
    pub hostile: Option<HostileInfo>,
}

/// The measured phases beside hostile connections (`--hostile`).
#[derive(Debug, Serialize)]
pub struct HostileInfo {
    /// Hostile connections at once (slots, spread evenly over the kinds).
    pub connections: usize,
    /// From the first hostile connect to the stop.
    pub seconds: f64,
    /// What the measured clients lost, and got out of order, under attack.
    pub lost: u64,
    pub out_of_order: u64,
    /// Each measured phase beside its repeat under attack.
    pub compared: Vec<Compared>,
    /// Server RSS when the attack started, its peak (sampled every 50 ms)
    /// and when it stopped.
    pub server_rss_start_bytes: Option<u64>,
    pub server_rss_peak_bytes: Option<u64>,
    pub server_rss_end_bytes: Option<u64>,
    /// Per kind: slots, connections opened, how the server ended them,
    /// bytes sent.
    pub kinds: Vec<crate::hostile::KindStats>,
    /// (seconds since the attack started, server RSS bytes), for the page.
    #[serde(skip)]
    pub rss_curve: Vec<(f64, u64)>,
}

/// One measured phase without the attack and its repeat under attack.
#[derive(Debug, Serialize)]
pub struct Compared {
    pub without: String,
    pub with: String,
    pub p50_ms_without: f64,
    pub p50_ms_with: f64,
    pub p99_ms_without: f64,
    pub p99_ms_with: f64,
    pub lost_without: u64,
    pub lost_with: u64,
}

impl Compared {
    pub fn of(without: &PhaseInfo, with: &PhaseInfo) -> Compared {
        Compared {
            without: without.name.clone(),
            with: with.name.clone(),
            p50_ms_without: without.latency_ms.p50,
            p50_ms_with: with.latency_ms.p50,
            p99_ms_without: without.latency_ms.p99,
            p99_ms_with: with.latency_ms.p99,
            lost_without: without.lost,
            lost_with: with.lost,
        }
    }
}

/// Points of a percentile curve: (quantile, ms).
pub type Curve = Vec<(f64, f64)>;
/// Bars of a log-bucketed histogram: (upper bound ms, count).
pub type Bars = Vec<(f64, u64)>;

/// A percentile curve and a log-bucketed histogram, for the charts.
pub fn shapes(h: &Histogram<u64>) -> (Curve, Bars) {
    if h.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut curve = Vec::new();
    for q in [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
    ] {
        curve.push((q, h.value_at_quantile(q) as f64 / 1000.0));
    }
    let mut hist: Bars = Vec::new();
    for v in h.iter_log(10, 1.25).take(200) {
        let count = v.count_since_last_iteration();
        // Bars start at the first non-empty bucket.
        if count > 0 || !hist.is_empty() {
            hist.push((v.value_iterated_to() as f64 / 1000.0, count));
        }
    }
    (curve, hist)
}
