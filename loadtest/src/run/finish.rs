//! The end of a run: clients, REST connections and server(s) stopped in
//! that order, then the figures worked out and the report put together.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;

use super::phases::{merge_into, Ran};
use super::subscribe::Subscribed;
use super::{say, Run, Sample};
use crate::client::{self, WorkerResult};
use crate::report::{
    self, Capacity, ChannelInfo, ConfigEcho, ConnectInfo, CpuInfo, FdInfo, MemInfo, Pct, PhaseInfo,
    Report, ServerInfo,
};
use crate::rest::{Mode, Pace};
use crate::server::Kind;
use crate::sys;

/// Memory and CPU before connecting, once connected, once subscribed
/// (`--mode channel`), and after the load.
pub struct Samples {
    pub idle: Sample,
    pub connected: Sample,
    pub subscribed: Option<Subscribed>,
    pub loaded: Sample,
}

/// What the workers kept until they stopped, added up.
struct Merged {
    handshake: Histogram<u64>,
    tls_handshake: Histogram<u64>,
    failures: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    buckets: Vec<u64>,
    other_messages: u64,
    pings_answered: u64,
    open_at_end: usize,
    /// `--mode channel`: stray acknowledgements, misrouted messages, the
    /// first refusal.
    stray_acks: u64,
    misrouted: u64,
    first_error: Option<String>,
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Adds up the workers' results; the phase records they kept (late
/// messages of phases already collected) join their phases in `ran`.
fn merge_workers(workers: &[WorkerResult], ran: &mut [Ran]) -> Merged {
    let mut m = Merged {
        handshake: client::new_histogram(),
        tls_handshake: client::new_histogram(),
        failures: BTreeMap::new(),
        closes: BTreeMap::new(),
        buckets: Vec::new(),
        other_messages: 0,
        pings_answered: 0,
        open_at_end: 0,
        stray_acks: 0,
        misrouted: 0,
        first_error: None,
    };
    for r in workers {
        let _ = m.handshake.add(&r.handshake);
        let _ = m.tls_handshake.add(&r.tls_handshake);
        add_counts(&mut m.failures, &r.failures);
        add_counts(&mut m.closes, &r.closes);
        if m.buckets.len() < r.buckets.len() {
            m.buckets.resize(r.buckets.len(), 0);
        }
        for (i, b) in r.buckets.iter().enumerate() {
            m.buckets[i] += b;
        }
        m.other_messages += r.other_messages;
        m.pings_answered += r.pings_answered;
        m.open_at_end += r.open_at_end;
        if let Some(c) = &r.channels {
            m.stray_acks += c.stray_acks;
            m.misrouted += c.misrouted;
            if m.first_error.is_none() {
                m.first_error.clone_from(&c.first_error);
            }
        }
        for (q, ph) in r.phases.iter().enumerate() {
            merge_into(ran, q, ph);
        }
    }
    m
}

impl Run {
    /// Stops the clients first (the server then sees plain closes), then
    /// the REST connections, then the server(s); what the workers kept.
    pub(super) fn stop(&mut self) -> Vec<WorkerResult> {
        self.clients.shared.stop.store(true, Ordering::Relaxed);
        let mut results = Vec::new();
        for w in std::mem::take(&mut self.clients.workers) {
            if let Ok(r) = w.join() {
                results.push(r);
            }
        }
        if let Some(load) = self.load.take() {
            load.driver.close();
        }
        self.server.srv.stop();
        results
    }

    /// The report: the figures from the phases, the samples and what the
    /// workers kept. Takes the notes and the ramp.
    pub(super) fn report(&mut self, samples: &Samples, workers: &[WorkerResult]) -> Report {
        let merged = merge_workers(workers, &mut self.ran);
        let phases: Vec<PhaseInfo> = self.ran.iter().map(|r| self.phase_info(r)).collect();
        let hostile = self.hostile_info(&phases);
        let memory = self.memory(samples);
        let channels = self.channel_info(samples, &merged);
        let capacity = self.capacity(&phases, memory.server_bytes_per_connection);
        if memory.combined {
            self.notes
                .push("connections per GiB counts the tool's memory too (in-process)".into());
        }
        self.note_busy_machine(&phases);
        let failed = self.clients.shared.failed.load(Ordering::Relaxed);
        if failed > 0
            && merged
                .failures
                .contains_key("Cannot assign requested address (os error 99)")
        {
            self.notes
                .push("ephemeral ports ran out: raise --source-addrs".into());
        }
        say(format!(
            "done in {:.1} s",
            self.started.elapsed().as_secs_f64()
        ));
        Report {
            tool: "wsedge-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            server: self.server_info(),
            config: self.config_echo(),
            fd_limit: self.fd_info(),
            connect: ConnectInfo {
                requested: self.sizes.n,
                open: self.clients.open,
                failed,
                failures: merged.failures,
                seconds: self.clients.seconds,
                per_second: self.clients.per_second(),
                handshake_ms: Pct::of(&merged.handshake),
                tls: self.server.endpoints.iter().any(|e| e.tls.is_some()),
                tls_handshake_ms: (!merged.tls_handshake.is_empty())
                    .then(|| Pct::of(&merged.tls_handshake)),
            },
            memory,
            channels,
            cpu: samples.cpu(),
            phases,
            closes: merged.closes,
            open_at_end: merged.open_at_end,
            other_messages: merged.other_messages,
            pings_answered: merged.pings_answered,
            capacity,
            machine: report::Machine {
                cpus: self.sizes.cpus,
                loadavg_start: self.loadavg_start,
                loadavg_end: sys::loadavg(),
            },
            notes: std::mem::take(&mut self.notes),
            deliveries_per_100ms: merged.buckets,
            connect_ramp: std::mem::take(&mut self.clients.ramp),
            hostile,
        }
    }

    /// `--report`: the HTML page.
    pub(super) fn write_html(&self, report: &Report) -> Result<(), String> {
        if let Some(path) = &self.cli.report {
            std::fs::write(path, report.html())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            say(format!("HTML report: {}", path.display()));
        }
        Ok(())
    }

    /// One phase's figures.
    fn phase_info(&self, r: &Ran) -> PhaseInfo {
        let elapsed = r.sent.elapsed.as_secs_f64().max(1e-6);
        // Deliveries over the sending time, or until the last delivery
        // when the tail came later.
        let window_us = (r.recv.last_us.saturating_sub(r.sent.start_us) as f64).max(elapsed * 1e6);
        let latency = Pct::of(&r.recv.hist);
        let lost = r.lost();
        let (curve, histogram) = report::shapes(&r.recv.hist);
        let start_ms = r.sent.start_us.saturating_sub(self.clients.t0_us) as f64 / 1000.0;
        PhaseInfo {
            name: r.plan.name.clone(),
            pace: match r.plan.pace {
                Pace::Rate(_) => "rate",
                Pace::Window { .. } => "window",
            },
            window: self.sizes.window,
            offered_per_s: match r.plan.pace {
                Pace::Rate(x) => Some(x),
                Pace::Window { .. } => None,
            },
            seconds: elapsed,
            requests: r.sent.requests,
            requests_ok: r.tally.ok,
            rest_errors: r.tally.errors.clone(),
            expected: r.tally.expected,
            received: r.recv.received,
            lost,
            extra: r.recv.received.saturating_sub(r.tally.expected),
            out_of_order: r.recv.out_of_order,
            requests_per_s: r.tally.ok as f64 / elapsed,
            deliveries_per_s: r.recv.received as f64 / (window_us / 1e6),
            latency_ms: latency,
            rest_latency_ms: Pct::of(&r.tally.rest_latency),
            server_cpu_s: r.cpu.server,
            tool_cpu_s: r.cpu.tool,
            wall_s: r.wall,
            other_cpu_s: self.other_cpu(r),
            within_bound: r.recv.received > 0 && latency.p99 <= self.cli.p99_bound_ms && lost == 0,
            start_ms,
            end_ms: start_ms + elapsed * 1000.0,
            curve,
            histogram,
            warmup: r.plan.warmup,
            hostile: r.plan.hostile(),
        }
    }

    /// CPU seconds other processes used during a phase. Known only when the
    /// server's is: a target without a pid would count as "other".
    fn other_cpu(&self, r: &Ran) -> Option<f64> {
        match (r.machine_cpu, r.cpu.server, self.server.srv.pid.is_some()) {
            (Some(m), Some(sv), true) => Some((m - sv - r.cpu.tool).max(0.0)),
            _ => None,
        }
    }

    /// RSS before and after connecting, and per connection.
    fn memory(&self, s: &Samples) -> MemInfo {
        let open = self.clients.open;
        let combined = self.server.srv.kind == Kind::InProcess;
        let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if open > 0 => Some((b as f64 - a as f64) / open as f64),
            _ => None,
        };
        MemInfo {
            server_rss_idle_bytes: s.idle.server_rss,
            server_rss_connected_bytes: s.connected.server_rss,
            server_rss_after_load_bytes: s.loaded.server_rss,
            server_bytes_per_connection: per_conn(s.idle.server_rss, s.connected.server_rss),
            tool_bytes_per_connection: if combined {
                None
            } else {
                per_conn(s.idle.tool_rss, s.connected.tool_rss)
            },
            combined,
        }
    }

    /// `--mode channel`: the subscriptions, what they cost the server, and
    /// what arrived where it should not.
    fn channel_info(&self, s: &Samples, m: &Merged) -> Option<ChannelInfo> {
        let layout = self.sizes.channels?;
        let sub = s.subscribed.as_ref();
        let rss_subscribed = sub.and_then(|x| x.sample.server_rss);
        let acked = sub.map_or(0, |x| x.acked);
        let cpu = sub.map(|x| x.sample.cpu.since(s.connected.cpu));
        let seconds = sub.map_or(0.0, |x| x.seconds);
        let first = sub.and_then(|x| x.first);
        Some(ChannelInfo {
            channels: layout.channels,
            subs_per_conn: layout.per_conn,
            subscriptions_requested: sub.map_or(0, |x| x.requested),
            subscriptions_acknowledged: acked,
            subscriptions_refused: sub.map_or(0, |x| x.refused),
            first_refusal: m.first_error.clone(),
            stray_acks: m.stray_acks,
            misrouted: m.misrouted,
            subscribe_seconds: seconds,
            subscribes_per_second: acked as f64 / seconds.max(1e-6),
            server_rss_connected_bytes: s.connected.server_rss,
            server_rss_subscribed_bytes: rss_subscribed,
            server_bytes_per_subscription: match (s.connected.server_rss, rss_subscribed) {
                (Some(a), Some(b)) if acked > 0 => Some((b as f64 - a as f64) / acked as f64),
                _ => None,
            },
            server_rss_first_subscribed_bytes: first.and_then(|(f, _)| f.server_rss),
            server_bytes_per_further_subscription: match (first, rss_subscribed) {
                (Some((f, n)), Some(b)) if acked > n => f
                    .server_rss
                    .map(|a| (b as f64 - a as f64) / (acked - n) as f64),
                _ => None,
            },
            server_subscribe_cpu_s: cpu.and_then(|c| c.server),
            tool_subscribe_cpu_s: cpu.map(|c| c.tool),
        })
    }

    /// Connections per GiB, and the best rate within the latency bound.
    fn capacity(&self, phases: &[PhaseInfo], per_conn: Option<f64>) -> Capacity {
        let bound = self.cli.p99_bound_ms;
        let best = phases
            .iter()
            .filter(|p| !p.warmup && !p.hostile && p.within_bound)
            .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
        let measured_any = phases
            .iter()
            .any(|p| !p.warmup && !p.hostile && p.received > 0);
        let basis = match best {
            Some(p) => format!(
                "phase {} ({:.0} requests/s, p99 {:.2} ms, nothing lost){}",
                p.name,
                p.requests_per_s,
                p.latency_ms.p99,
                if p.pace == "window" {
                    " — the unbounded phase stayed within the bound"
                } else {
                    ""
                }
            ),
            None if !measured_any => "no load phase ran".into(),
            None if self.sweep.as_ref().is_some_and(|s| s.done > 0) => format!(
                "every sweep step exceeded the bound, down to {:.1} requests/s: one fan-out to {} connections already takes longer than {bound} ms at p99",
                self.sweep.as_ref().map(|s| s.lowest).unwrap_or(0.0),
                self.clients.open
            ),
            None => "no phase within the bound; add --sweep (or --rate R) to find the rate".into(),
        };
        Capacity {
            connections_per_gib: per_conn
                .filter(|b| *b > 0.0)
                .map(|b| (1u64 << 30) as f64 / b),
            p99_bound_ms: bound,
            sustainable_deliveries_per_s: best.map(|p| p.deliveries_per_s),
            sustainable_requests_per_s: best.map(|p| p.requests_per_s),
            basis,
        }
    }

    /// Notes when other processes kept the CPUs busy during the load: the
    /// figures are then lower than the server's own.
    fn note_busy_machine(&mut self, phases: &[PhaseInfo]) {
        let busy_others: f64 = phases.iter().filter_map(|p| p.other_cpu_s).sum();
        let load_secs: f64 = phases.iter().map(|p| p.wall_s).sum();
        if load_secs > 0.0 && busy_others / load_secs > 0.1 {
            self.notes.push(format!(
                "other processes kept {:.2} of the {} CPUs busy during the load phases: figures are lower than on an idle machine",
                busy_others / load_secs,
                self.sizes.cpus
            ));
        }
    }

    fn server_info(&self) -> ServerInfo {
        let srv = &self.server.srv;
        ServerInfo {
            kind: srv.kind,
            addr: srv.addr.to_string(),
            pid: srv.pid,
            shards: srv.shards,
            rss_combined: srv.kind == Kind::InProcess,
            nodes: self.server.endpoints.len(),
        }
    }

    fn config_echo(&self) -> ConfigEcho {
        let (cli, sizes) = (&self.cli, &self.sizes);
        ConfigEcho {
            connections: sizes.n,
            users: sizes.users,
            client_threads: sizes.threads,
            source_addrs: sizes.source_addrs,
            payload_bytes: cli.payload_bytes,
            mode: cli.mode,
            targets: (cli.mode == Mode::Users).then_some(cli.targets),
            window: sizes.window,
            rest_conns: sizes.rest_conns,
            max_lag: cli.max_lag,
            duration_s: cli.duration,
            warmup_s: cli.warmup_secs,
            rate: cli.rate,
            sweep: cli.sweep,
            p99_bound_ms: cli.p99_bound_ms,
        }
    }

    fn fd_info(&self) -> FdInfo {
        let sizes = &self.sizes;
        FdInfo {
            soft_before: sizes.fd.soft_before,
            soft: sizes.fd.soft,
            hard: sizes.fd.hard,
            max_connections: sizes.fit,
            capped: sizes.capped,
            server_soft: self.server.soft_limit,
        }
    }
}

impl Samples {
    /// CPU seconds while connecting and during the load (from the end of
    /// subscribing, in `--mode channel`).
    fn cpu(&self) -> CpuInfo {
        let connect = self.connected.cpu.since(self.idle.cpu);
        let loading = self
            .subscribed
            .as_ref()
            .map_or(&self.connected, |s| &s.sample);
        let load = self.loaded.cpu.since(loading.cpu);
        CpuInfo {
            server_connect_s: connect.server,
            server_load_s: load.server,
            tool_connect_s: connect.tool,
            tool_load_s: load.tool,
        }
    }
}
