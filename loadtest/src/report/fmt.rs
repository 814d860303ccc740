//! Number and text formatting shared by the table, the HTML page and its
//! charts, so that a figure reads the same in each.

use std::collections::BTreeMap;

use super::{HostileInfo, Pct, PhaseInfo};
use crate::hostile::KindStats;

/// A count or rate with a k/M/G suffix, about three significant digits:
/// the table's columns stay narrow.
pub(super) fn si(v: f64) -> String {
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

/// Binary units, as RSS is usually read.
pub(super) fn bytes(v: f64) -> String {
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

/// Milliseconds with fewer decimals as they grow.
pub(super) fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A figure that may be unknown (no pid, no /proc): `n/a`.
pub(super) fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".into())
}

/// A phase's p50, p99, p99.9 and max latency, as the table and the page
/// show them.
pub(super) fn latency_cols(l: &Pct) -> [String; 4] {
    [ms(l.p50), ms(l.p99), ms(l.p999), ms(l.max)]
}

/// The server's RSS at the start of an attack, at its peak and at the stop.
pub(super) fn rss_cols(h: &HostileInfo) -> [String; 3] {
    [
        h.server_rss_start_bytes,
        h.server_rss_peak_bytes,
        h.server_rss_end_bytes,
    ]
    .map(|b| opt(b, |b| bytes(b as f64)))
}

/// One hostile kind: name, connections at once, opened, bytes sent, and
/// how they ended.
pub(super) fn kind_cols(k: &KindStats) -> [String; 5] {
    [
        k.kind.name().into(),
        k.slots.to_string(),
        k.opened.to_string(),
        bytes(k.bytes_sent as f64),
        map_text(&k.ended),
    ]
}

/// Counts by reason, e.g. `401: 3, timeout: 1`, or `none`.
pub(super) fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a phase was paced: its offered rate, or its window.
pub(super) fn pace(p: &PhaseInfo) -> String {
    match p.offered_per_s {
        Some(r) => format!("{}/s", si(r)),
        None => format!("window {}", p.window),
    }
}

/// Text into HTML (and SVG): names and reasons come from the server and
/// the flags.
pub(super) fn esc(s: &str) -> String {
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
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
