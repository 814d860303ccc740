//! `--mode channel`: which channels each connection subscribes to, the
//! subscribe frames, and the byte scans that tell an acknowledgement, an
//! error and a channel message apart (docs/PROTOCOL.md §10). Pure logic, no
//! I/O, so all of it is unit-tested.
//!
//! Connection `i` subscribes to `lt:{(i·K + j) mod C}` for `j` in `0..K`
//! (K = `--subs-per-conn`, C = `--channels`): with K = 1 that is
//! `lt:{i mod C}`, the connections dealt over the channels in turn. K ≤ C
//! keeps a connection's channels distinct.

use memchr::memmem::Finder;

/// Prefix of every channel name this tool uses; the token claim is
/// `"channels":["lt:*"]`.
pub const PREFIX: &str = "lt:";
/// The token claim that allows every channel of [`PREFIX`].
pub const CLAIM: &str = "lt:*";

/// How the connections are spread over the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// C: channels `lt:0 … lt:{C-1}`.
    pub channels: u32,
    /// K: channels per connection (K ≤ C).
    pub per_conn: u32,
}

impl Layout {
    /// A layout for `channels` channels and `per_conn` subscriptions per
    /// connection, or why not.
    pub fn new(channels: usize, per_conn: usize) -> Result<Layout, String> {
        if !(1..=1_000_000).contains(&channels) {
            return Err("--channels takes 1 to 1,000,000".into());
        }
        if !(1..=128).contains(&per_conn) {
            return Err("--subs-per-conn takes 1 to 128 (the server's default --max-channels-per-connection)".into());
        }
        if per_conn > channels {
            return Err(format!(
                "--subs-per-conn {per_conn} is more than --channels {channels}: a connection's channels must be distinct"
            ));
        }
        Ok(Layout {
            channels: channels as u32,
            per_conn: per_conn as u32,
        })
    }

    /// The first channel of connection `i`; its others follow in turn.
    pub fn first(&self, i: usize) -> u32 {
        ((i as u64 * u64::from(self.per_conn)) % u64::from(self.channels)) as u32
    }

    /// The `j`-th channel of a connection whose first is `first`.
    pub fn nth(&self, first: u32, j: u32) -> u32 {
        ((u64::from(first) + u64::from(j)) % u64::from(self.channels)) as u32
    }

    /// Whether channel `c` is one of those of a connection whose first is
    /// `first`.
    pub fn owns(&self, first: u32, c: u32) -> bool {
        c < self.channels
            && (u64::from(c) + u64::from(self.channels) - u64::from(first))
                % u64::from(self.channels)
                < u64::from(self.per_conn)
    }

    /// Subscriptions of `n` connections.
    pub fn subscriptions(&self, n: usize) -> u64 {
        n as u64 * u64::from(self.per_conn)
    }

    /// Subscribers of channel `c` among connections `0..n`: the `n·K`
    /// subscriptions dealt over the channels in turn.
    pub fn subscribers(&self, c: u32, n: usize) -> u64 {
        let (total, ch) = (self.subscriptions(n), u64::from(self.channels));
        total / ch + u64::from(u64::from(c) < total % ch)
    }
}

/// `lt:{c}`.
pub fn name(c: u32) -> String {
    format!("{PREFIX}{c}")
}

/// The subscribe message's text: `{"type":"subscribe","payload":{"channel":"lt:7"}}`.
pub fn subscribe_text(c: u32, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(
        out,
        r#"{{"type":"subscribe","payload":{{"channel":"{PREFIX}{c}"}}}}"#
    );
}

/// What a message is, as far as channels go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `subscribed` for channel `lt:{c}` (`None`: a channel not of ours).
    Subscribed(Option<u32>),
    /// `error` (a refused subscribe), for `lt:{c}` when named.
    Error(Option<u32>),
    /// Anything else.
    Other,
}

/// Byte scans for the `type` and `channel` fields, without parsing JSON.
pub struct Scan {
    channel: Finder<'static>,
    subscribed: Finder<'static>,
    error: Finder<'static>,
}

impl Default for Scan {
    fn default() -> Self {
        Self::new()
    }
}

impl Scan {
    pub fn new() -> Scan {
        Scan {
            channel: Finder::new(b"\"channel\":"),
            subscribed: Finder::new(b"\"type\":\"subscribed\""),
            error: Finder::new(b"\"type\":\"error\""),
        }
    }

    /// The number `c` of the first `"channel":"lt:{c}"` in `msg`; `None`
    /// when there is no channel field or it names a channel not of ours.
    pub fn channel(&self, msg: &[u8]) -> Option<u32> {
        let at = self.channel.find(msg)? + 10;
        let rest = skip_spaces(&msg[at..]);
        let rest = rest.strip_prefix(b"\"")?;
        let rest = rest.strip_prefix(PREFIX.as_bytes())?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 10 || rest.get(digits) != Some(&b'"') {
            return None;
        }
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    }

    /// Tells an acknowledgement or an error from anything else (for
    /// messages that are not the tool's own samples).
    pub fn kind(&self, msg: &[u8]) -> Kind {
        if self.subscribed.find(msg).is_some() {
            Kind::Subscribed(self.channel(msg))
        } else if self.error.find(msg).is_some() {
            Kind::Error(self.channel(msg))
        } else {
            Kind::Other
        }
    }
}

/// What one client worker saw of the channels: acknowledgements, refused
/// subscribes, and channel messages that came on a channel the connection
/// is not in.
pub struct Seen {
    pub layout: Layout,
    /// Per connection of the worker: its first channel.
    pub firsts: Vec<u32>,
    scan: Scan,
    /// `subscribed` for one of the connection's channels.
    pub acks: u64,
    /// `subscribed` for a channel the connection did not ask for.
    pub stray_acks: u64,
    /// `error` answers (refused subscribes).
    pub errors: u64,
    /// The first `error`, for the report.
    pub first_error: Option<String>,
    /// Samples of ours on a channel the connection is not in (or on none).
    pub misrouted: u64,
}

impl Seen {
    pub fn new(layout: Layout, firsts: Vec<u32>) -> Seen {
        Seen {
            layout,
            firsts,
            scan: Scan::new(),
            acks: 0,
            stray_acks: 0,
            errors: 0,
            first_error: None,
            misrouted: 0,
        }
    }

    /// A sample of ours reached connection `idx`: checks its channel.
    pub fn sample(&mut self, idx: usize, msg: &[u8]) {
        let first = self.firsts.get(idx).copied();
        let mine = first
            .zip(self.scan.channel(msg))
            .is_some_and(|(f, c)| self.layout.owns(f, c));
        if !mine {
            self.misrouted += 1;
        }
    }

    /// Any other message to connection `idx`; whether it was an
    /// acknowledgement or an error.
    pub fn other(&mut self, idx: usize, msg: &[u8]) -> bool {
        let first = self.firsts.get(idx).copied();
        match self.scan.kind(msg) {
            Kind::Subscribed(c) => {
                if first.zip(c).is_some_and(|(f, c)| self.layout.owns(f, c)) {
                    self.acks += 1;
                } else {
                    self.stray_acks += 1;
                }
                true
            }
            Kind::Error(_) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    let end = msg.len().min(300);
                    self.first_error = Some(String::from_utf8_lossy(&msg[..end]).into_owned());
                }
                true
            }
            Kind::Other => false,
        }
    }
}

fn skip_spaces(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| **c == b' ').count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_connection_is_round_robin() {
        let l = Layout::new(3, 1).unwrap();
        let firsts: Vec<u32> = (0..7).map(|i| l.first(i)).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            (0..3).map(|c| l.subscribers(c, 7)).collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert!(l.owns(1, 1) && !l.owns(1, 2) && !l.owns(1, 0));
    }

    #[test]
    fn several_per_connection_are_distinct_and_counted() {
        for (c, k, n) in [(10, 10, 7), (1000, 10, 10_000), (7, 3, 50), (5, 2, 1)] {
            let l = Layout::new(c, k).unwrap();
            let mut count = vec![0u64; c];
            for i in 0..n {
                let first = l.first(i);
                let mine: Vec<u32> = (0..l.per_conn).map(|j| l.nth(first, j)).collect();
                let mut sorted = mine.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), k, "distinct channels of connection {i}");
                for ch in 0..l.channels {
                    assert_eq!(l.owns(first, ch), mine.contains(&ch), "{c} {k} {i} {ch}");
                }
                for ch in mine {
                    count[ch as usize] += 1;
                }
            }
            for (ch, got) in count.iter().enumerate() {
                assert_eq!(*got, l.subscribers(ch as u32, n), "{c} {k} {n} {ch}");
            }
            assert_eq!(count.iter().sum::<u64>(), l.subscriptions(n));
        }
        assert!(!Layout::new(4, 2).unwrap().owns(0, 4));
    }

    #[test]
    fn layouts_out_of_range_are_refused() {
        assert!(Layout::new(0, 1).is_err());
        assert!(Layout::new(3, 0).is_err());
        assert!(Layout::new(3, 4).is_err());
        assert!(Layout::new(1000, 129).is_err());
        assert!(Layout::new(1_000_001, 1).is_err());
    }

    #[test]
    fn subscribe_text_is_the_protocols() {
        let mut out = Vec::new();
        subscribe_text(42, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribe","payload":{"channel":"lt:42"}})
        );
        assert_eq!(name(42), "lt:42");
    }

    #[test]
    fn the_channel_field_is_read() {
        let s = Scan::new();
        let msg = br#"{"type":"lt","channel":"lt:7","payload":{"s":1,"t":2,"p":"x"}}"#;
        assert_eq!(s.channel(msg), Some(7));
        assert_eq!(
            s.channel(br#"{"channel": "lt:4294967295"}"#),
            Some(u32::MAX)
        );
        for bad in [
            &br#"{"type":"lt","payload":{}}"#[..],
            br#"{"channel":"news"}"#,
            br#"{"channel":"lt:"}"#,
            br#"{"channel":"lt:7x"}"#,
            br#"{"channel":"lt:4294967296"}"#,
            br#"{"channel":"lt:99999999999"}"#,
            br#"{"channel":lt:7}"#,
            br#"{"channel":"lt:7"#,
            br#"{"channel":"#,
        ] {
            assert_eq!(s.channel(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn acknowledgements_and_errors_are_told_apart() {
        let s = Scan::new();
        let ack = br#"{"type":"subscribed","payload":{"channel":"lt:12","timestamp":"2026-11-30T12:00:00.000Z"}}"#;
        assert_eq!(s.kind(ack), Kind::Subscribed(Some(12)));
        let err = br#"{"type":"error","payload":{"message":"not allowed to subscribe to lt:3","channel":"lt:3","timestamp":"x"}}"#;
        assert_eq!(s.kind(err), Kind::Error(Some(3)));
        assert_eq!(
            s.kind(br#"{"type":"error","payload":{"message":"bad"}}"#),
            Kind::Error(None)
        );
        assert_eq!(
            s.kind(br#"{"type":"connected","payload":{"userId":"u"}}"#),
            Kind::Other
        );
        assert_eq!(
            s.kind(br#"{"type":"unsubscribed","payload":{"channel":"lt:1"}}"#),
            Kind::Other
        );
    }

    #[test]
    fn a_worker_counts_acks_errors_and_misrouted_messages() {
        let l = Layout::new(4, 2).unwrap();
        // Connections 0 and 1 of the run: channels 0,1 and 2,3.
        let mut seen = Seen::new(l, vec![l.first(0), l.first(1)]);
        assert!(seen.other(0, br#"{"type":"subscribed","payload":{"channel":"lt:1"}}"#));
        assert!(seen.other(1, br#"{"type":"subscribed","payload":{"channel":"lt:1"}}"#));
        assert!(seen.other(
            1,
            br#"{"type":"error","payload":{"message":"no","channel":"lt:2"}}"#
        ));
        assert!(!seen.other(1, br#"{"type":"connected","payload":{}}"#));
        assert_eq!((seen.acks, seen.stray_acks, seen.errors), (1, 1, 1));
        assert!(seen
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("\"no\"")));
        seen.sample(
            0,
            br#"{"type":"lt","channel":"lt:0","payload":{"s":1,"t":1}}"#,
        );
        seen.sample(
            1,
            br#"{"type":"lt","channel":"lt:3","payload":{"s":1,"t":1}}"#,
        );
        assert_eq!(seen.misrouted, 0);
        seen.sample(
            1,
            br#"{"type":"lt","channel":"lt:0","payload":{"s":1,"t":1}}"#,
        );
        seen.sample(0, br#"{"type":"lt","payload":{"s":1,"t":1}}"#);
        seen.sample(
            9,
            br#"{"type":"lt","channel":"lt:0","payload":{"s":1,"t":1}}"#,
        );
        assert_eq!(seen.misrouted, 3);
    }
}
