//! The figures of a run and their three renderings: a human table, one JSON
//! line, and a self-contained HTML page with inline SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    /// Connections per second: TCP connect + upgrade (JWT check) + 101.
    pub per_second: f64,
    pub handshake_ms: Pct,
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

fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn bytes(v: f64) -> String {
    if v >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0))
    } else if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let s = &self.server;
        let _ = writeln!(
            o,
            "\nserver        {:?} at {} (pid {}, {} shards{}){}",
            s.kind,
            s.addr,
            opt(s.pid, |p| p.to_string()),
            opt(s.shards, |n| n.to_string()),
            if s.nodes > 1 {
                format!(" each, {} nodes", s.nodes)
            } else {
                String::new()
            },
            if s.rss_combined {
                " — in-process: RSS is server + tool"
            } else {
                ""
            }
        );
        let c = &self.config;
        let _ = writeln!(
            o,
            "setup         {} connections over {} users, {} source addresses, {} client thread(s); {} B payload; mode {:?}; window {} over {} REST connection(s)",
            c.connections, c.users, c.source_addrs, c.client_threads, c.payload_bytes, c.mode, c.window, c.rest_conns
        );
        let f = &self.fd_limit;
        let _ = writeln!(
            o,
            "fd limit      soft {} → {} (hard {}): up to {} connections fit{}",
            f.soft_before,
            f.soft,
            f.hard,
            f.max_connections,
            if f.capped { " — REQUEST CAPPED" } else { "" }
        );
        let k = &self.connect;
        let _ = writeln!(
            o,
            "connect       {} open / {} requested in {:.2} s = {} conn/s (TCP + upgrade + JWT); handshake p50 {} ms, p99 {} ms, max {} ms; failed {} ({})",
            k.open,
            k.requested,
            k.seconds,
            si(k.per_second),
            ms(k.handshake_ms.p50),
            ms(k.handshake_ms.p99),
            ms(k.handshake_ms.max),
            k.failed,
            map_text(&k.failures)
        );
        let m = &self.memory;
        let _ = writeln!(
            o,
            "memory        server RSS {} idle → {} connected = {} per connection{}; after load {}; tool {} per connection",
            opt(m.server_rss_idle_bytes, |b| bytes(b as f64)),
            opt(m.server_rss_connected_bytes, |b| bytes(b as f64)),
            opt(m.server_bytes_per_connection, bytes),
            if m.combined { " (server + tool)" } else { "" },
            opt(m.server_rss_after_load_bytes, |b| bytes(b as f64)),
            opt(m.tool_bytes_per_connection, bytes),
        );
        let u = &self.cpu;
        let _ = writeln!(
            o,
            "cpu           server {} s connect, {} s load; tool {:.2} s connect, {:.2} s load",
            opt(u.server_connect_s, |v| format!("{v:.2}")),
            opt(u.server_load_s, |v| format!("{v:.2}")),
            u.tool_connect_s,
            u.tool_load_s
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<12} {:>12} {:>6} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7}",
            "phase", "pace", "secs", "req", "req/s", "expected", "received", "lost", "ooo",
            "deliv/s", "p50 ms", "p99 ms", "p99.9", "max ms", "REST p99", "srv cpu", "lt cpu", "others"
        );
        for p in &self.phases {
            let pace = match p.offered_per_s {
                Some(r) => format!("{}/s", si(r)),
                None => format!("window {}", p.window),
            };
            let _ = writeln!(
                o,
                "{:<12} {:>12} {:>6.1} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7.2} {:>7}{}",
                p.name,
                pace,
                p.seconds,
                p.requests,
                si(p.requests_per_s),
                p.expected,
                p.received,
                p.lost,
                p.out_of_order,
                si(p.deliveries_per_s),
                ms(p.latency_ms.p50),
                ms(p.latency_ms.p99),
                ms(p.latency_ms.p999),
                ms(p.latency_ms.max),
                ms(p.rest_latency_ms.p99),
                opt(p.server_cpu_s, |v| format!("{v:.2}")),
                p.tool_cpu_s,
                opt(p.other_cpu_s, |v| format!("{v:.2}")),
                if p.rest_errors.is_empty() {
                    String::new()
                } else {
                    format!("  REST errors: {}", map_text(&p.rest_errors))
                }
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "closed        {} during the run ({}); {} open at the end; {} pings answered",
            self.closes.values().sum::<u64>(),
            map_text(&self.closes),
            self.open_at_end,
            self.pings_answered
        );
        let _ = writeln!(
            o,
            "machine       {} CPUs; load average {} at the start, {} at the end (server, tool and any other process share them)",
            self.machine.cpus,
            opt(self.machine.loadavg_start, |v| format!("{v:.2}")),
            opt(self.machine.loadavg_end, |v| format!("{v:.2}"))
        );
        for n in &self.notes {
            let _ = writeln!(o, "note          {n}");
        }
        let cap = &self.capacity;
        let _ = writeln!(
            o,
            "capacity      {} connections per GiB of server RSS; sustainable {} deliveries/s ({} requests/s) with p99 ≤ {} ms — {}",
            opt(cap.connections_per_gib, |v| si(v.floor())),
            opt(cap.sustainable_deliveries_per_s, si),
            opt(cap.sustainable_requests_per_s, si),
            cap.p99_bound_ms,
            cap.basis
        );
        o
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A self-contained page: summary, charts as inline SVG, no scripts or
    /// external resources.
    pub fn html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>wsedge load test</title><style>");
        h.push_str("body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}h1{font-size:20px}h2{font-size:16px;margin-top:28px}table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.big{font-size:22px;font-weight:600}.kpi{display:inline-block;margin:0 28px 12px 0}.kpi div:first-child{color:#666;font-size:12px}svg{background:#fff;border:1px solid #eee}pre{background:#f6f6f6;padding:8px;overflow:auto}.bad{color:#b00}");
        h.push_str("</style></head><body>");
        let _ = write!(
            h,
            "<h1>wsedge load test — {} connections, {:?} server at {}</h1>",
            self.connect.open,
            self.server.kind,
            esc(&self.server.addr)
        );
        let best = self
            .phases
            .iter()
            .filter(|p| !p.warmup)
            .map(|p| p.deliveries_per_s)
            .fold(0.0, f64::max);
        let main = self.phases.iter().find(|p| !p.warmup);
        let kpis = [
            (
                "connect rate",
                format!("{} /s", si(self.connect.per_second)),
            ),
            ("peak deliveries", format!("{} /s", si(best))),
            (
                "p99 latency (first phase)",
                main.map(|p| format!("{} ms", ms(p.latency_ms.p99)))
                    .unwrap_or_else(|| "n/a".into()),
            ),
            (
                "server memory / connection",
                opt(self.memory.server_bytes_per_connection, bytes),
            ),
            (
                "connections per GiB",
                opt(self.capacity.connections_per_gib, |v| si(v.floor())),
            ),
            (
                "sustainable at p99 bound",
                opt(self.capacity.sustainable_deliveries_per_s, |v| {
                    format!("{} /s", si(v))
                }),
            ),
            (
                "lost / out of order",
                format!(
                    "{} / {}",
                    self.phases.iter().map(|p| p.lost).sum::<u64>(),
                    self.phases.iter().map(|p| p.out_of_order).sum::<u64>()
                ),
            ),
        ];
        for (k, v) in kpis {
            let _ = write!(
                h,
                "<div class=kpi><div>{}</div><div class=big>{}</div></div>",
                esc(k),
                esc(&v)
            );
        }
        h.push_str("<h2>Deliveries per 100 ms</h2>");
        h.push_str(&self.timeline_svg());
        h.push_str("<h2>End-to-end latency by percentile</h2><p>Time from the REST request (its due time at a fixed rate) to the message read by the client; log scales.</p>");
        h.push_str(&self.percentile_svg());
        h.push_str("<h2>Latency distribution</h2>");
        h.push_str(&self.histogram_svg());
        if self
            .phases
            .iter()
            .filter(|p| p.offered_per_s.is_some())
            .count()
            >= 2
        {
            h.push_str("<h2>Latency against offered load</h2>");
            h.push_str(&self.sweep_svg());
        }
        if self.connect_ramp.len() >= 2 {
            h.push_str("<h2>Connection ramp</h2>");
            h.push_str(&self.ramp_svg());
        }
        h.push_str("<h2>Phases</h2><table><tr><th>phase</th><th>pace</th><th>s</th><th>requests</th><th>expected</th><th>received</th><th>lost</th><th>out of order</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>server CPU s</th></tr>");
        for p in &self.phases {
            let pace = match p.offered_per_s {
                Some(r) => format!("{}/s", si(r)),
                None => format!("window {}", p.window),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.name),
                esc(&pace),
                p.seconds,
                p.requests,
                p.expected,
                p.received,
                if p.lost > 0 { " class=bad" } else { "" },
                p.lost,
                if p.out_of_order > 0 { " class=bad" } else { "" },
                p.out_of_order,
                si(p.deliveries_per_s),
                ms(p.latency_ms.p50),
                ms(p.latency_ms.p99),
                ms(p.latency_ms.p999),
                ms(p.latency_ms.max),
                opt(p.server_cpu_s, |v| format!("{v:.2}"))
            );
        }
        h.push_str("</table><h2>Summary</h2><pre>");
        h.push_str(&esc(&self.table()));
        h.push_str("</pre><h2>JSON</h2><pre>");
        h.push_str(&esc(&serde_json::to_string_pretty(self).unwrap_or_default()));
        h.push_str("</pre></body></html>\n");
        h
    }

    fn timeline_svg(&self) -> String {
        let data = &self.deliveries_per_100ms;
        let (w, hgt, l, b) = (1000.0, 260.0, 70.0, 30.0);
        let pw = w - l - 10.0;
        let ph = hgt - b - 10.0;
        let mut s = svg_open(w, hgt);
        if data.is_empty() {
            s.push_str("<text x=20 y=40>no deliveries</text></svg>");
            return s;
        }
        let maxv = *data.iter().max().unwrap_or(&1) as f64;
        let maxv = nice(maxv.max(1.0));
        let n = data.len() as f64;
        let x = |i: f64| l + pw * i / n;
        let y = |v: f64| 10.0 + ph * (1.0 - v / maxv);
        // phase bands
        let colors = ["#eef5ff", "#fff4e6"];
        for (i, p) in self.phases.iter().enumerate() {
            let x0 = x(p.start_ms / 100.0);
            let x1 = x(p.end_ms / 100.0).max(x0 + 1.0);
            let _ = write!(
                s,
                "<rect x='{x0:.1}' y='10' width='{:.1}' height='{ph:.1}' fill='{}'/><text x='{:.1}' y='22' font-size='10' fill='#555'>{}</text>",
                x1 - x0,
                colors[i % 2],
                x0 + 2.0,
                esc(&p.name)
            );
        }
        let mut path = String::new();
        for (i, v) in data.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1} {:.1},{:.1} ",
                if i == 0 { "M" } else { "L" },
                x(i as f64),
                y(*v as f64),
                x(i as f64 + 1.0),
                y(*v as f64)
            );
        }
        let _ = write!(
            s,
            "<path d='{path}' fill='none' stroke='#1f6feb' stroke-width='1.2'/>"
        );
        axis_y(&mut s, l, 10.0, ph, maxv, |v| si(v * 10.0) + "/s");
        let secs = n / 10.0;
        let step = nice(secs / 10.0).max(0.1);
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let xx = x(t * 10.0);
            let _ = write!(
                s,
                "<line x1='{xx:.1}' x2='{xx:.1}' y1='{:.1}' y2='{:.1}' stroke='#999'/><text x='{xx:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{}s</text>",
                10.0 + ph,
                14.0 + ph,
                26.0 + ph,
                si(t)
            );
            t += step;
        }
        s.push_str("</svg>");
        s
    }

    fn percentile_svg(&self) -> String {
        let (w, hgt, l, b) = (1000.0, 320.0, 70.0, 30.0);
        let pw = w - l - 160.0;
        let ph = hgt - b - 10.0;
        let mut s = svg_open(w, hgt);
        let curves: Vec<&PhaseInfo> = self.phases.iter().filter(|p| !p.curve.is_empty()).collect();
        if curves.is_empty() {
            s.push_str("<text x=20 y=40>no latency samples</text></svg>");
            return s;
        }
        // x: -log10(1 - q), q = 0 .. 0.99999
        let qx = |q: f64| -((1.0 - q).max(1e-5)).log10();
        let xmax = 5.0;
        let vmax = curves
            .iter()
            .flat_map(|p| p.curve.iter().map(|c| c.1))
            .fold(0.01, f64::max);
        let vmin = curves
            .iter()
            .flat_map(|p| p.curve.iter().map(|c| c.1))
            .fold(f64::MAX, f64::min)
            .max(0.001);
        let (lo, hi) = (
            vmin.log10().floor(),
            vmax.log10().ceil().max(vmin.log10().floor() + 1.0),
        );
        let x = |q: f64| l + pw * qx(q) / xmax;
        let y = |v: f64| 10.0 + ph * (1.0 - (v.max(1e-3).log10() - lo) / (hi - lo));
        for (label, q) in [
            ("0%", 0.0),
            ("90%", 0.9),
            ("99%", 0.99),
            ("99.9%", 0.999),
            ("99.99%", 0.9999),
            ("99.999%", 0.99999),
        ] {
            let xx = x(q);
            let _ = write!(
                s,
                "<line x1='{xx:.1}' x2='{xx:.1}' y1='10' y2='{:.1}' stroke='#eee'/><text x='{xx:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{label}</text>",
                10.0 + ph,
                26.0 + ph
            );
        }
        let mut e = lo;
        while e <= hi + 1e-9 {
            let yy = y(10f64.powf(e));
            let _ = write!(
                s,
                "<line x1='{l}' x2='{:.1}' y1='{yy:.1}' y2='{yy:.1}' stroke='#eee'/><text x='{:.1}' y='{:.1}' font-size='10' text-anchor='end'>{} ms</text>",
                l + pw,
                l - 4.0,
                yy + 3.0,
                fmt_pow10(e)
            );
            e += 1.0;
        }
        if self.capacity.p99_bound_ms > 0.0 {
            let yy = y(self.capacity.p99_bound_ms);
            if yy > 10.0 && yy < 10.0 + ph {
                let _ = write!(
                    s,
                    "<line x1='{l}' x2='{:.1}' y1='{yy:.1}' y2='{yy:.1}' stroke='#c00' stroke-dasharray='4 3'/><text x='{:.1}' y='{:.1}' font-size='10' fill='#c00'>p99 bound</text>",
                    l + pw,
                    l + pw - 60.0,
                    yy - 3.0
                );
            }
        }
        for (i, p) in curves.iter().enumerate() {
            let color = palette(i);
            let pts: Vec<String> = p
                .curve
                .iter()
                .filter(|(q, _)| *q < 1.0)
                .map(|(q, v)| format!("{:.1},{:.1}", x(*q), y(*v)))
                .collect();
            let _ = write!(
                s,
                "<polyline points='{}' fill='none' stroke='{color}' stroke-width='1.6'/><rect x='{:.1}' y='{:.1}' width='10' height='10' fill='{color}'/><text x='{:.1}' y='{:.1}' font-size='11'>{}</text>",
                pts.join(" "),
                l + pw + 12.0,
                14.0 + 16.0 * i as f64,
                l + pw + 26.0,
                23.0 + 16.0 * i as f64,
                esc(&p.name)
            );
        }
        s.push_str("</svg>");
        s
    }

    fn histogram_svg(&self) -> String {
        let (w, hgt, l, b) = (1000.0, 240.0, 70.0, 30.0);
        let pw = w - l - 40.0;
        let ph = hgt - b - 10.0;
        let mut s = svg_open(w, hgt);
        let Some(p) = self
            .phases
            .iter()
            .filter(|p| !p.warmup && !p.histogram.is_empty())
            .max_by_key(|p| p.received)
        else {
            s.push_str("<text x=20 y=40>no latency samples</text></svg>");
            return s;
        };
        let total: u64 = p.histogram.iter().map(|b| b.1).sum::<u64>().max(1);
        let maxc = p.histogram.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
        let vmin = p
            .histogram
            .first()
            .map(|b| b.0 / 1.25)
            .unwrap_or(0.01)
            .max(0.001);
        let vmax = p
            .histogram
            .last()
            .map(|b| b.0)
            .unwrap_or(1.0)
            .max(vmin * 10.0);
        let (lo, hi) = (vmin.log10().floor(), vmax.log10().ceil());
        let x = |v: f64| l + pw * (v.max(1e-3).log10() - lo) / (hi - lo);
        let mut prev = vmin;
        for (v, c) in &p.histogram {
            let x0 = x(prev);
            let x1 = x(*v);
            let hh = ph * (*c as f64) / maxc;
            let _ = write!(
                s,
                "<rect x='{x0:.1}' y='{:.1}' width='{:.1}' height='{hh:.1}' fill='#1f6feb'><title>≤ {} ms: {} ({:.2}%)</title></rect>",
                10.0 + ph - hh,
                (x1 - x0 - 0.5).max(0.5),
                ms(*v),
                c,
                100.0 * *c as f64 / total as f64
            );
            prev = *v;
        }
        let mut e = lo;
        while e <= hi + 1e-9 {
            let xx = x(10f64.powf(e));
            let _ = write!(
                s,
                "<line x1='{xx:.1}' x2='{xx:.1}' y1='{:.1}' y2='{:.1}' stroke='#999'/><text x='{xx:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{} ms</text>",
                10.0 + ph,
                14.0 + ph,
                26.0 + ph,
                fmt_pow10(e)
            );
            e += 1.0;
        }
        let _ = write!(
            s,
            "<text x='{:.1}' y='24' font-size='11'>phase {} — {} messages, log latency axis</text></svg>",
            l + 6.0,
            esc(&p.name),
            total
        );
        s
    }

    fn sweep_svg(&self) -> String {
        let pts: Vec<&PhaseInfo> = self
            .phases
            .iter()
            .filter(|p| p.offered_per_s.is_some() && p.received > 0)
            .collect();
        let (w, hgt, l, b) = (1000.0, 260.0, 70.0, 30.0);
        let pw = w - l - 120.0;
        let ph = hgt - b - 10.0;
        let mut s = svg_open(w, hgt);
        let xmax = nice(pts.iter().map(|p| p.deliveries_per_s).fold(1.0, f64::max));
        let ymax = nice(
            pts.iter()
                .map(|p| p.latency_ms.p99)
                .fold(self.capacity.p99_bound_ms, f64::max)
                .max(0.1),
        );
        let x = |v: f64| l + pw * v / xmax;
        let y = |v: f64| 10.0 + ph * (1.0 - (v / ymax).min(1.0));
        axis_y(&mut s, l, 10.0, ph, ymax, |v| format!("{} ms", ms(v)));
        for i in 0..=5 {
            let v = xmax * i as f64 / 5.0;
            let _ = write!(
                s,
                "<text x='{:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{}/s</text>",
                x(v),
                26.0 + ph,
                si(v)
            );
        }
        let yy = y(self.capacity.p99_bound_ms);
        let _ = write!(
            s,
            "<line x1='{l}' x2='{:.1}' y1='{yy:.1}' y2='{yy:.1}' stroke='#c00' stroke-dasharray='4 3'/>",
            l + pw
        );
        for (k, (label, color)) in [("p50", "#2da44e"), ("p99", "#1f6feb"), ("p99.9", "#8250df")]
            .iter()
            .enumerate()
        {
            let val = |p: &PhaseInfo| match k {
                0 => p.latency_ms.p50,
                1 => p.latency_ms.p99,
                _ => p.latency_ms.p999,
            };
            let line: Vec<String> = pts
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.deliveries_per_s), y(val(p))))
                .collect();
            let _ = write!(
                s,
                "<polyline points='{}' fill='none' stroke='{color}' stroke-width='1.6'/>",
                line.join(" ")
            );
            for p in &pts {
                let _ = write!(
                    s,
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'><title>{}: {} deliveries/s, {label} {} ms</title></circle>",
                    x(p.deliveries_per_s),
                    y(val(p)),
                    esc(&p.name),
                    si(p.deliveries_per_s),
                    ms(val(p))
                );
            }
            let _ = write!(
                s,
                "<rect x='{:.1}' y='{:.1}' width='10' height='10' fill='{color}'/><text x='{:.1}' y='{:.1}' font-size='11'>{label}</text>",
                l + pw + 12.0,
                14.0 + 16.0 * k as f64,
                l + pw + 26.0,
                23.0 + 16.0 * k as f64
            );
        }
        s.push_str("</svg>");
        s
    }

    fn ramp_svg(&self) -> String {
        let (w, hgt, l, b) = (1000.0, 200.0, 70.0, 30.0);
        let pw = w - l - 10.0;
        let ph = hgt - b - 10.0;
        let mut s = svg_open(w, hgt);
        let tmax = self
            .connect_ramp
            .last()
            .map(|r| r.0)
            .unwrap_or(1.0)
            .max(0.1);
        let cmax = nice(self.connect.requested.max(1) as f64);
        let x = |t: f64| l + pw * t / tmax;
        let y = |c: f64| 10.0 + ph * (1.0 - c / cmax);
        let pts: Vec<String> = self
            .connect_ramp
            .iter()
            .map(|(t, c)| format!("{:.1},{:.1}", x(*t), y(*c as f64)))
            .collect();
        axis_y(&mut s, l, 10.0, ph, cmax, si);
        for i in 0..=5 {
            let t = tmax * i as f64 / 5.0;
            let _ = write!(
                s,
                "<text x='{:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{:.1}s</text>",
                x(t),
                26.0 + ph,
                t
            );
        }
        let _ = write!(
            s,
            "<polyline points='{}' fill='none' stroke='#1f6feb' stroke-width='1.6'/></svg>",
            pts.join(" ")
        );
        s
    }
}

fn svg_open(w: f64, h: f64) -> String {
    format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}' font-family='sans-serif'>")
}

fn axis_y(s: &mut String, l: f64, top: f64, ph: f64, maxv: f64, label: impl Fn(f64) -> String) {
    for i in 0..=4 {
        let v = maxv * i as f64 / 4.0;
        let yy = top + ph * (1.0 - i as f64 / 4.0);
        let _ = write!(
            s,
            "<line x1='{l}' x2='990' y1='{yy:.1}' y2='{yy:.1}' stroke='#eee'/><text x='{:.1}' y='{:.1}' font-size='10' text-anchor='end'>{}</text>",
            l - 4.0,
            yy + 3.0,
            esc(&label(v))
        );
    }
}

fn fmt_pow10(e: f64) -> String {
    let v = 10f64.powf(e);
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// 1, 2 or 5 × a power of ten, at least `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn palette(i: usize) -> &'static str {
    const P: [&str; 10] = [
        "#1f6feb", "#2da44e", "#bf3989", "#d4a72c", "#8250df", "#cf222e", "#0a7ea4", "#6e7781",
        "#fb8500", "#54aeff",
    ];
    P[i % P.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(12.0), 20.0);
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(nice(5000.0), 5000.0);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
