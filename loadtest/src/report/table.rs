//! The human table printed before the JSON line: one labelled line per
//! figure, one row per phase. Scripts read it too, so its columns and
//! labels stay put.

use std::fmt::Write as _;

use super::fmt::{bytes, kind_cols, latency_cols, map_text, ms, opt, pace, rss_cols, si};
use super::Report;

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        self.setup_lines(&mut o);
        self.connect_lines(&mut o);
        self.phase_rows(&mut o);
        self.hostile_lines(&mut o);
        self.closing_lines(&mut o);
        o
    }

    /// What ran against what: server, setup, open-file limit.
    fn setup_lines(&self, o: &mut String) {
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
    }

    /// What the connections cost: connect rate, memory, CPU.
    fn connect_lines(&self, o: &mut String) {
        let k = &self.connect;
        let _ = writeln!(
            o,
            "connect       {} open / {} requested in {:.2} s = {} conn/s (TCP + {}upgrade + JWT); handshake p50 {} ms, p99 {} ms, max {} ms{}; failed {} ({})",
            k.open,
            k.requested,
            k.seconds,
            si(k.per_second),
            if k.tls { "TLS + " } else { "" },
            ms(k.handshake_ms.p50),
            ms(k.handshake_ms.p99),
            ms(k.handshake_ms.max),
            k.tls_handshake_ms
                .as_ref()
                .map(|t| format!(
                    " (of which TCP + TLS p50 {} ms, p99 {} ms)",
                    ms(t.p50),
                    ms(t.p99)
                ))
                .unwrap_or_default(),
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
        self.channel_line(o);
        let u = &self.cpu;
        let _ = writeln!(
            o,
            "cpu           server {} s connect, {} s load; tool {:.2} s connect, {:.2} s load",
            opt(u.server_connect_s, |v| format!("{v:.2}")),
            opt(u.server_load_s, |v| format!("{v:.2}")),
            u.tool_connect_s,
            u.tool_load_s
        );
    }

    /// `--mode channel`: subscriptions, what they cost, what went astray.
    fn channel_line(&self, o: &mut String) {
        let Some(c) = &self.channels else {
            return;
        };
        let _ = writeln!(
            o,
            "channels      {} channels, {} per connection: {} of {} subscriptions acknowledged in {:.2} s = {}/s, {} refused{}; server RSS {} connected → {} subscribed = {} per subscription beyond the connection{}; server cpu {} s; {} misrouted, {} stray acks",
            c.channels,
            c.subs_per_conn,
            c.subscriptions_acknowledged,
            c.subscriptions_requested,
            c.subscribe_seconds,
            si(c.subscribes_per_second),
            c.subscriptions_refused,
            c.first_refusal
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            opt(c.server_rss_connected_bytes, |b| bytes(b as f64)),
            opt(c.server_rss_subscribed_bytes, |b| bytes(b as f64)),
            opt(c.server_bytes_per_subscription, |b| format!("{b:.0} B")),
            match (c.server_rss_first_subscribed_bytes, c.server_bytes_per_further_subscription) {
                (Some(f), Some(b)) => format!(
                    " ({} with one each, then {b:.0} B per further subscription)",
                    bytes(f as f64)
                ),
                _ => String::new(),
            },
            opt(c.server_subscribe_cpu_s, |v| format!("{v:.2}")),
            c.misrouted,
            c.stray_acks,
        );
    }

    fn phase_rows(&self, o: &mut String) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<12} {:>12} {:>6} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7}",
            "phase", "pace", "secs", "req", "req/s", "expected", "received", "lost", "ooo",
            "deliv/s", "p50 ms", "p99 ms", "p99.9", "max ms", "REST p99", "srv cpu", "lt cpu", "others"
        );
        for p in &self.phases {
            let pace = pace(p);
            let [p50, p99, p999, max] = latency_cols(&p.latency_ms);
            let _ = writeln!(
                o,
                "{:<12} {:>12} {:>6.1} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>12} {p50:>8} {p99:>8} {p999:>8} {max:>8} {:>9} {:>7} {:>7.2} {:>7}{}",
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
    }

    /// `--hostile`: what the measured clients lost under attack, their
    /// latency without and with it, the server's RSS, and per kind what the
    /// hostile connections did and how the server ended them.
    fn hostile_lines(&self, o: &mut String) {
        let Some(h) = &self.hostile else {
            return;
        };
        let _ = writeln!(
            o,
            "hostile       {} connections for {:.1} s beside the measured ones, which lost {} ({} out of order) under attack",
            h.connections, h.seconds, h.lost, h.out_of_order
        );
        for c in &h.compared {
            let _ = writeln!(
                o,
                "hostile p99   {} ms without ({}) → {} ms with ({}); p50 {} → {} ms",
                ms(c.p99_ms_without),
                c.without,
                ms(c.p99_ms_with),
                c.with,
                ms(c.p50_ms_without),
                ms(c.p50_ms_with)
            );
        }
        let [start, peak, end] = rss_cols(h);
        let _ = writeln!(
            o,
            "hostile rss   server {start} at the start → peak {peak} → {end} at the stop"
        );
        for k in &h.kinds {
            let [kind, slots, opened, sent, ended] = kind_cols(k);
            let _ = writeln!(
                o,
                "hostile kind  {kind:<10} {slots} at once, {opened} opened, {sent} sent; ended: {ended}"
            );
        }
        let _ = writeln!(o);
    }

    /// Closes, the machine, the notes, and the capacity estimate last.
    fn closing_lines(&self, o: &mut String) {
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
    }
}
