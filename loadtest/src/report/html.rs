//! The HTML page (`--report`): one self-contained file, its charts inline
//! SVG, with no scripts or external resources, so that it opens anywhere and
//! can be archived with the run. It ends with the table and the JSON.

use std::fmt::Write as _;

use super::fmt::{bytes, esc, kind_cols, latency_cols, ms, opt, pace, rss_cols, si};
use super::Report;

impl Report {
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
        self.kpis(&mut h);
        self.charts(&mut h);
        self.phase_table(&mut h);
        h.push_str("</table>");
        self.hostile_section(&mut h);
        h.push_str("<h2>Summary</h2><pre>");
        h.push_str(&esc(&self.table()));
        h.push_str("</pre><h2>JSON</h2><pre>");
        h.push_str(&esc(&serde_json::to_string_pretty(self).unwrap_or_default()));
        h.push_str("</pre></body></html>\n");
        h
    }

    /// The headline figures, large, above the charts.
    fn kpis(&self, h: &mut String) {
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
    }

    /// The charts that have data to show.
    fn charts(&self, h: &mut String) {
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
    }

    fn phase_table(&self, h: &mut String) {
        h.push_str("<h2>Phases</h2><table><tr><th>phase</th><th>pace</th><th>s</th><th>requests</th><th>expected</th><th>received</th><th>lost</th><th>out of order</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>server CPU s</th></tr>");
        for p in &self.phases {
            let pace = pace(p);
            let [p50, p99, p999, max] = latency_cols(&p.latency_ms);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td{}>{}</td><td>{}</td><td>{p50}</td><td>{p99}</td><td>{p999}</td><td>{max}</td><td>{}</td></tr>",
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
                opt(p.server_cpu_s, |v| format!("{v:.2}"))
            );
        }
    }

    /// `--hostile`: the phases without and with the attack, the server's
    /// RSS over the attack, and per kind what the connections did.
    fn hostile_section(&self, h: &mut String) {
        let Some(x) = &self.hostile else {
            return;
        };
        let _ = write!(
            h,
            "<h2>Hostile connections</h2><p>{} hostile connections for {:.1} s beside the measured ones: each measured phase ran first without them, then again with them. Under attack the measured clients lost <span{}>{}</span> messages, {} out of order.</p>",
            x.connections,
            x.seconds,
            if x.lost > 0 { " class=bad" } else { "" },
            x.lost,
            x.out_of_order
        );
        h.push_str("<table><tr><th>without</th><th>p50 ms</th><th>p99 ms</th><th>with</th><th>p50 ms</th><th>p99 ms</th><th>lost with</th></tr>");
        for c in &x.compared {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.without),
                ms(c.p50_ms_without),
                ms(c.p99_ms_without),
                esc(&c.with),
                ms(c.p50_ms_with),
                ms(c.p99_ms_with),
                c.lost_with
            );
        }
        let [start, peak, end] = rss_cols(x);
        let _ = write!(
            h,
            "</table><h2>Server RSS under attack</h2><p>{start} at the start, peak {peak}, {end} at the stop.</p>"
        );
        h.push_str(&self.rss_svg());
        h.push_str("<h2>Hostile connections by kind</h2><table><tr><th>kind</th><th>at once</th><th>opened</th><th>sent</th><th>ended</th></tr>");
        for k in &x.kinds {
            h.push_str("<tr>");
            for col in kind_cols(k) {
                let _ = write!(h, "<td>{}</td>", esc(&col));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
}
