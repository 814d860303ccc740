//! The page's charts as inline SVG strings: deliveries over time, latency
//! by percentile, the latency histogram, latency against offered load, and
//! the connection ramp. Hand-written markup keeps the tool free of a
//! plotting dependency.

use std::fmt::Write as _;

use super::fmt::{bytes, esc, ms, si};
use super::{PhaseInfo, Report};

impl Report {
    pub(super) fn timeline_svg(&self) -> String {
        let data = &self.deliveries_per_100ms;
        let (mut s, l, pw, ph) = chart(260.0, 10.0);
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

    pub(super) fn percentile_svg(&self) -> String {
        let (mut s, l, pw, ph) = chart(320.0, 160.0);
        let curves: Vec<&PhaseInfo> = self.phases.iter().filter(|p| !p.curve.is_empty()).collect();
        if curves.is_empty() {
            s.push_str("<text x=20 y=40>no latency samples</text></svg>");
            return s;
        }
        // x: -log10(1 - q), q = 0 .. 0.99999
        let qx = |q: f64| -((1.0 - q).max(1e-5)).log10();
        let xmax = 5.0;
        let (lo, hi) = curve_decades(&curves);
        let x = |q: f64| l + pw * qx(q) / xmax;
        let y = |v: f64| 10.0 + ph * (1.0 - (v.max(1e-3).log10() - lo) / (hi - lo));
        quantile_ticks(&mut s, x, ph);
        for e in decades(lo, hi) {
            let yy = y(10f64.powf(e));
            let _ = write!(
                s,
                "<line x1='{l}' x2='{:.1}' y1='{yy:.1}' y2='{yy:.1}' stroke='#eee'/><text x='{:.1}' y='{:.1}' font-size='10' text-anchor='end'>{} ms</text>",
                l + pw,
                l - 4.0,
                yy + 3.0,
                fmt_pow10(e)
            );
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
                "<polyline points='{}' fill='none' stroke='{color}' stroke-width='1.6'/>",
                pts.join(" ")
            );
            legend(&mut s, l + pw, i, color, &esc(&p.name));
        }
        s.push_str("</svg>");
        s
    }

    pub(super) fn histogram_svg(&self) -> String {
        let (mut s, l, pw, ph) = chart(240.0, 40.0);
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
        for e in decades(lo, hi) {
            let xx = x(10f64.powf(e));
            let _ = write!(
                s,
                "<line x1='{xx:.1}' x2='{xx:.1}' y1='{:.1}' y2='{:.1}' stroke='#999'/><text x='{xx:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{} ms</text>",
                10.0 + ph,
                14.0 + ph,
                26.0 + ph,
                fmt_pow10(e)
            );
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

    pub(super) fn sweep_svg(&self) -> String {
        let pts: Vec<&PhaseInfo> = self
            .phases
            .iter()
            .filter(|p| p.offered_per_s.is_some() && p.received > 0)
            .collect();
        let (mut s, l, pw, ph) = chart(260.0, 120.0);
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
        axis_x(&mut s, ph, xmax, x, |v| format!("{}/s", si(v)));
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
            legend(&mut s, l + pw, k, color, label);
        }
        s.push_str("</svg>");
        s
    }

    pub(super) fn ramp_svg(&self) -> String {
        let pts: Vec<(f64, f64)> = self
            .connect_ramp
            .iter()
            .map(|(t, c)| (*t, *c as f64))
            .collect();
        line_svg(&pts, self.connect.requested as f64, si)
    }

    /// The server's RSS while the hostile connections ran.
    pub(super) fn rss_svg(&self) -> String {
        let pts: Vec<(f64, f64)> = self
            .hostile
            .iter()
            .flat_map(|h| h.rss_curve.iter().map(|(t, b)| (*t, *b as f64)))
            .collect();
        let peak = pts.iter().map(|p| p.1).fold(0.0, f64::max);
        line_svg(&pts, peak, bytes)
    }
}

/// One curve over time (seconds, from 0), its y-axis from 0 to `ymax`
/// rounded up to a nice number, labelled by `label`.
fn line_svg(pts: &[(f64, f64)], ymax: f64, label: impl Fn(f64) -> String) -> String {
    let (mut s, l, pw, ph) = chart(200.0, 10.0);
    let tmax = pts.last().map(|p| p.0).unwrap_or(1.0).max(0.1);
    let ymax = nice(ymax.max(1.0));
    let x = |t: f64| l + pw * t / tmax;
    let y = |v: f64| 10.0 + ph * (1.0 - v / ymax);
    let line: Vec<String> = pts
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    axis_y(&mut s, l, 10.0, ph, ymax, label);
    axis_x(&mut s, ph, tmax, x, |t| format!("{t:.1}s"));
    let _ = write!(
        s,
        "<polyline points='{}' fill='none' stroke='#1f6feb' stroke-width='1.6'/></svg>",
        line.join(" ")
    );
    s
}

/// Every chart's frame: 1000 px wide and `h` high, the y-axis labels in
/// the left 70 px, the x-axis labels in the bottom 30, `right` px for a
/// legend. The open `<svg>`, and the plot area 10 px below its top: left
/// edge, width, height.
fn chart(h: f64, right: f64) -> (String, f64, f64, f64) {
    let (w, l, b) = (1000.0, 70.0, 30.0);
    let svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}' font-family='sans-serif'>");
    (svg, l, w - l - right, h - b - 10.0)
}

/// A linear y-axis: five labelled gridlines from 0 to `maxv`.
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

/// A linear x-axis: six labels from 0 to `maxv` under a plot `ph` high.
fn axis_x(
    s: &mut String,
    ph: f64,
    maxv: f64,
    x: impl Fn(f64) -> f64,
    label: impl Fn(f64) -> String,
) {
    for i in 0..=5 {
        let v = maxv * i as f64 / 5.0;
        let _ = write!(
            s,
            "<text x='{:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{}</text>",
            x(v),
            26.0 + ph,
            label(v)
        );
    }
}

/// The percentile chart's x-axis: one line and label per nine.
fn quantile_ticks(s: &mut String, x: impl Fn(f64) -> f64, ph: f64) {
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
}

/// The decades (powers of ten, in ms) a log latency axis spans for these
/// curves: at least one.
fn curve_decades(curves: &[&PhaseInfo]) -> (f64, f64) {
    let vmax = curves
        .iter()
        .flat_map(|p| p.curve.iter().map(|c| c.1))
        .fold(0.01, f64::max);
    let vmin = curves
        .iter()
        .flat_map(|p| p.curve.iter().map(|c| c.1))
        .fold(f64::MAX, f64::min)
        .max(0.001);
    (
        vmin.log10().floor(),
        vmax.log10().ceil().max(vmin.log10().floor() + 1.0),
    )
}

/// Exponents `lo`, `lo + 1`, … up to `hi`: the gridlines of a log axis.
fn decades(lo: f64, hi: f64) -> impl Iterator<Item = f64> {
    std::iter::successors(Some(lo), |e| Some(e + 1.0)).take_while(move |e| *e <= hi + 1e-9)
}

/// One legend entry, right of the plot area, `i`-th from the top.
fn legend(s: &mut String, right: f64, i: usize, color: &str, label: &str) {
    let _ = write!(
        s,
        "<rect x='{:.1}' y='{:.1}' width='10' height='10' fill='{color}'/><text x='{:.1}' y='{:.1}' font-size='11'>{label}</text>",
        right + 12.0,
        14.0 + 16.0 * i as f64,
        right + 26.0,
        23.0 + 16.0 * i as f64
    );
}

/// A decade's label: `0.1`, `1`, `100`, without trailing zeros.
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

/// Distinct colours for the phases' curves, in turn.
fn palette(i: usize) -> &'static str {
    const P: [&str; 10] = [
        "#1f6feb", "#2da44e", "#bf3989", "#d4a72c", "#8250df", "#cf222e", "#0a7ea4", "#6e7781",
        "#fb8500", "#54aeff",
    ];
    P[i % P.len()]
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
}
