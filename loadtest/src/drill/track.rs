//! The drill's accounting, pure: what the tool published (its own sequence
//! numbers per stream, never the server's offsets), what each client got,
//! and the verdict per client: lost, duplicated, out of order, whether it
//! recovered or reloaded, and how long recovery took. No I/O, so all of it
//! is unit-tested.

use std::collections::HashMap;

/// A stream as the tool numbers it: broadcasts, one user's sends, one
/// channel's publishes. Each has its own sequence numbers from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    All,
    User(u32),
    Chan(u32),
}

/// What became of one publish (REST call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx (or `404` to a send: the message is kept in the user's
    /// history all the same, docs/PROTOCOL.md §11.1): every client of the
    /// stream must get it.
    Ok,
    /// Refused (another status, or the connection could not be made): no
    /// client should get it; one that does is not counted against anything.
    Failed,
    /// Written, but no answer came (the connection broke): it may or may
    /// not have gone out, so it is never counted lost.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub stream: Stream,
    pub seq: u64,
    /// Just before the request was written, unix micros.
    pub sent_us: u64,
    /// When its answer was read (or it failed).
    pub answered_us: u64,
    pub outcome: Outcome,
}

/// One message of ours as a client got it.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub stream: Stream,
    pub seq: u64,
    pub at_us: u64,
}

/// A `connected` the client read.
#[derive(Debug, Clone, Copy)]
pub struct Connected {
    pub at_us: u64,
    /// `payload.recovered` (`None`: it asked nothing, the first connect).
    pub recovered: Option<bool>,
    pub node: u16,
    /// Backoff waited since the connection before this one ended (the sum
    /// of the delays before each attempt), microseconds.
    pub backoff_us: u64,
}

/// A `subscribed` the client read for one of its channels.
#[derive(Debug, Clone, Copy)]
pub struct Subscribed {
    pub channel: u32,
    pub at_us: u64,
    pub recovered: Option<bool>,
}

/// Everything one client saw, in order.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    pub user: u32,
    pub channels: Vec<u32>,
    pub got: Vec<Got>,
    pub connects: Vec<Connected>,
    pub subs: Vec<Subscribed>,
    /// When an open connection of it ended (EOF, reset, close frame).
    pub drops: Vec<u64>,
    /// Messages of ours on a stream that is not the client's, or whose
    /// envelope `channel` disagrees with the payload.
    pub misrouted: u64,
    /// Server messages that did not parse as JSON envelopes.
    pub unparsed: u64,
    /// Attempts that did not give a `connected` (refused, timeout, HTTP
    /// error), by reason.
    pub failures: Vec<String>,
}

impl ClientLog {
    /// The streams the client should get.
    pub fn streams(&self) -> impl Iterator<Item = Stream> + '_ {
        [Stream::All, Stream::User(self.user)]
            .into_iter()
            .chain(self.channels.iter().map(|&c| Stream::Chan(c)))
    }
}

/// What was published, by stream, in sequence order.
#[derive(Debug, Default)]
pub struct PubIndex {
    by_stream: HashMap<Stream, Vec<Published>>,
}

impl PubIndex {
    pub fn new(published: &[Published]) -> PubIndex {
        let mut by_stream: HashMap<Stream, Vec<Published>> = HashMap::new();
        for p in published {
            by_stream.entry(p.stream).or_default().push(*p);
        }
        for v in by_stream.values_mut() {
            v.sort_by_key(|p| p.seq);
        }
        PubIndex { by_stream }
    }

    fn of(&self, s: Stream) -> &[Published] {
        self.by_stream.get(&s).map_or(&[], Vec::as_slice)
    }
}

/// One client's verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Messages of its streams published OK and not covered by a reload.
    pub expected: u64,
    /// Published (answered OK), its own, not covered by a reload, never got.
    pub lost: u64,
    /// Got again after the first time.
    pub duplicated: u64,
    /// Got after a later message of the same stream.
    pub out_of_order: u64,
    /// Missed but published before it reloaded (`recovered: false`): the
    /// application re-syncs them from its backend.
    pub covered_by_reload: u64,
    pub misrouted: u64,
    /// Its connection ended at or after the event (kill or restart).
    pub dropped: bool,
    /// It got a `connected` again after that.
    pub reconnected: bool,
    /// The reconnect's `connected` and every resubscribe said
    /// `recovered: true` (`Some(false)`: at least one said false).
    pub recovered: Option<bool>,
    /// From the event to the moment it had the reconnect's `connected`,
    /// every resubscribe's `subscribed` and every message published before
    /// them (the replay), microseconds.
    pub recover_us: Option<u64>,
    /// Backoff it waited before that reconnect, microseconds.
    pub backoff_us: u64,
    /// The node it reconnected to.
    pub node_after: Option<u16>,
}

/// The verdict on `log`, given what was published and when the event (the
/// kill or the restart) happened.
pub fn judge(log: &ClientLog, index: &PubIndex, event_us: u64) -> Verdict {
    let mut v = Verdict {
        misrouted: log.misrouted,
        ..Verdict::default()
    };
    // First arrival of each message, and duplicates / order per stream.
    let mut first: HashMap<(Stream, u64), u64> = HashMap::with_capacity(log.got.len());
    let mut highest: HashMap<Stream, u64> = HashMap::new();
    for g in &log.got {
        if first.contains_key(&(g.stream, g.seq)) {
            v.duplicated += 1;
            continue;
        }
        first.insert((g.stream, g.seq), g.at_us);
        let top = highest.entry(g.stream).or_insert(0);
        if g.seq < *top {
            v.out_of_order += 1;
        } else {
            *top = g.seq;
        }
    }
    // The reconnect after the event, and the resubscribes after it.
    v.dropped = log.drops.iter().any(|&d| d >= event_us);
    let reconnect = log
        .connects
        .iter()
        .find(|c| v.dropped && c.at_us >= event_us);
    v.reconnected = reconnect.is_some();
    // Reload points per stream: a `recovered: false` (or none asked) after
    // the first connect or subscribe of that stream.
    let mut reload: HashMap<Stream, u64> = HashMap::new();
    for c in log.connects.iter().skip(1) {
        if c.recovered != Some(true) {
            reload.insert(Stream::All, c.at_us);
            reload.insert(Stream::User(log.user), c.at_us);
        }
    }
    let mut seen_sub: HashMap<u32, ()> = HashMap::new();
    for s in &log.subs {
        if seen_sub.insert(s.channel, ()).is_some() && s.recovered != Some(true) {
            reload.insert(Stream::Chan(s.channel), s.at_us);
        }
    }
    // When each stream came back after the event: the reconnect for @all
    // and @user, the channel's first `subscribed` after it.
    let mut back: HashMap<Stream, u64> = HashMap::new();
    if let Some(c) = reconnect {
        v.node_after = Some(c.node);
        v.backoff_us = c.backoff_us;
        back.insert(Stream::All, c.at_us);
        back.insert(Stream::User(log.user), c.at_us);
        let mut all_true = c.recovered == Some(true);
        for &ch in &log.channels {
            match log
                .subs
                .iter()
                .find(|s| s.channel == ch && s.at_us >= c.at_us)
            {
                Some(s) => {
                    all_true &= s.recovered == Some(true);
                    back.insert(Stream::Chan(ch), s.at_us);
                }
                None => all_true = false,
            }
        }
        v.recovered = Some(all_true);
    }
    let mut done = reconnect.map(|c| c.at_us);
    let mut complete = reconnect.is_some() && back.len() == log.channels.len() + 2;
    for s in log.streams() {
        let own = &mut v;
        let reload_at = reload.get(&s).copied();
        let back_at = back.get(&s).copied();
        if let (Some(b), Some(d)) = (back_at, done.as_mut()) {
            *d = (*d).max(b);
        }
        for p in index.of(s) {
            let got = first.get(&(s, p.seq)).copied();
            if p.outcome != Outcome::Ok {
                continue;
            }
            own.expected += 1;
            match got {
                Some(at) => {
                    // Part of the replay: published before the stream came back.
                    if let (Some(b), Some(d)) = (back_at, done.as_mut()) {
                        if p.sent_us < b {
                            *d = (*d).max(at);
                        }
                    }
                }
                None if reload_at.is_some_and(|r| p.sent_us < r) => {
                    own.covered_by_reload += 1;
                    own.expected -= 1;
                }
                None => {
                    own.lost += 1;
                    complete = false;
                }
            }
        }
    }
    // Messages of ours on a stream that is not the client's.
    let mine: Vec<Stream> = log.streams().collect();
    v.misrouted += first.keys().filter(|(s, _)| !mine.contains(s)).count() as u64;
    if complete {
        v.recover_us = done.map(|d| d.saturating_sub(event_us));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: u64 = 10_000;

    fn publish(
        stream: Stream,
        seqs: std::ops::RangeInclusive<u64>,
        every_us: u64,
    ) -> Vec<Published> {
        seqs.map(|s| Published {
            stream,
            seq: s,
            sent_us: s * every_us,
            answered_us: s * every_us + 100,
            outcome: Outcome::Ok,
        })
        .collect()
    }

    fn got(stream: Stream, seq: u64, at_us: u64) -> Got {
        Got { stream, seq, at_us }
    }

    /// A client of user 3 and channel 1 that got every broadcast 1..=20
    /// (sent every 1 ms) 50 µs after it was sent.
    fn steady() -> (ClientLog, PubIndex) {
        let mut published = publish(Stream::All, 1..=20, 1_000);
        published.extend(publish(Stream::User(3), 1..=2, 5_000));
        published.extend(publish(Stream::Chan(1), 1..=2, 7_000));
        let mut log = ClientLog {
            user: 3,
            channels: vec![1],
            ..ClientLog::default()
        };
        log.connects.push(Connected {
            at_us: 0,
            recovered: None,
            node: 2,
            backoff_us: 0,
        });
        log.subs.push(Subscribed {
            channel: 1,
            at_us: 1,
            recovered: None,
        });
        let mut all: Vec<Got> = published
            .iter()
            .map(|p| got(p.stream, p.seq, p.sent_us + 50))
            .collect();
        all.sort_by_key(|g| g.at_us);
        log.got = all;
        (log, PubIndex::new(&published))
    }

    #[test]
    fn a_client_that_got_everything_lost_nothing_and_never_dropped() {
        let (log, index) = steady();
        let v = judge(&log, &index, EVENT);
        assert_eq!(
            v,
            Verdict {
                expected: 24,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn losses_duplicates_and_disorder_are_counted_per_stream() {
        let (mut log, index) = steady();
        // Lose broadcast 4, get 6 twice, get 9 after 10.
        log.got.retain(|g| !(g.stream == Stream::All && g.seq == 4));
        let six = *log
            .got
            .iter()
            .find(|g| g.stream == Stream::All && g.seq == 6)
            .unwrap();
        log.got.push(six);
        let i9 = log
            .got
            .iter()
            .position(|g| g.stream == Stream::All && g.seq == 9)
            .unwrap();
        let i10 = log
            .got
            .iter()
            .position(|g| g.stream == Stream::All && g.seq == 10)
            .unwrap();
        log.got.swap(i9, i10);
        // A message of another user's stream.
        log.got.push(got(Stream::User(4), 1, 99_000));
        let v = judge(&log, &index, EVENT);
        assert_eq!(
            (v.lost, v.duplicated, v.out_of_order, v.misrouted),
            (1, 1, 1, 1)
        );
    }

    /// Dropped at the event, back 300 ms later with recovery, the missed
    /// broadcasts replayed at once.
    fn recovered_client(recovered: bool) -> (ClientLog, PubIndex) {
        let (mut log, index) = steady();
        log.drops.push(EVENT + 1);
        // Missed broadcasts 10..=20, user #2 and channel #2 (all got at or after EVENT).
        log.got.retain(|g| g.at_us < EVENT);
        log.connects.push(Connected {
            at_us: 30_000,
            recovered: Some(recovered),
            node: 0,
            backoff_us: 250,
        });
        log.subs.push(Subscribed {
            channel: 1,
            at_us: 30_010,
            recovered: Some(recovered),
        });
        if recovered {
            for s in 10..=20 {
                log.got.push(got(Stream::All, s, 30_020 + s));
            }
            log.got.push(got(Stream::User(3), 2, 30_040));
            log.got.push(got(Stream::Chan(1), 2, 30_050));
        }
        (log, index)
    }

    #[test]
    fn a_recovered_client_loses_nothing_and_its_recovery_ends_with_the_replay() {
        let (log, index) = recovered_client(true);
        let v = judge(&log, &index, EVENT);
        assert_eq!((v.lost, v.duplicated, v.out_of_order), (0, 0, 0), "{v:?}");
        assert!(v.dropped && v.reconnected);
        assert_eq!(v.recovered, Some(true));
        assert_eq!(v.node_after, Some(0));
        assert_eq!(v.backoff_us, 250);
        // The last replayed message (channel 1 #2 at 30_050) ends it.
        assert_eq!(v.recover_us, Some(30_050 - EVENT));
    }

    #[test]
    fn a_reloading_client_has_what_it_missed_covered_not_lost() {
        let (log, index) = recovered_client(false);
        let v = judge(&log, &index, EVENT);
        assert_eq!(v.recovered, Some(false));
        assert_eq!(v.lost, 0, "{v:?}");
        // 11 broadcasts, user #2 and channel #2.
        assert_eq!(v.covered_by_reload, 13);
        assert_eq!(v.recover_us, Some(30_010 - EVENT));
    }

    #[test]
    fn a_message_published_after_a_reload_must_still_arrive() {
        let (log, index) = recovered_client(false);
        let mut published: Vec<Published> = Vec::new();
        for s in [Stream::All, Stream::User(3), Stream::Chan(1)] {
            published.extend_from_slice(index.of(s));
        }
        published.push(Published {
            stream: Stream::All,
            seq: 21,
            sent_us: 40_000,
            answered_us: 40_100,
            outcome: Outcome::Ok,
        });
        let v = judge(&log, &PubIndex::new(&published), EVENT);
        assert_eq!(v.lost, 1);
        assert_eq!(v.recover_us, None, "not complete while something is lost");
    }

    #[test]
    fn failed_and_unknown_publishes_are_never_lost() {
        let (mut log, _) = steady();
        log.got.clear();
        let published: Vec<Published> = [Outcome::Failed, Outcome::Unknown]
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| Published {
                stream: Stream::All,
                seq: i as u64 + 1,
                sent_us: 1,
                answered_us: 2,
                outcome,
            })
            .collect();
        let v = judge(&log, &PubIndex::new(&published), EVENT);
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn a_client_that_never_came_back_loses_what_followed() {
        let (mut log, index) = steady();
        log.drops.push(EVENT + 1);
        log.got.retain(|g| g.at_us < EVENT);
        let v = judge(&log, &index, EVENT);
        assert!(v.dropped && !v.reconnected);
        assert_eq!(v.recovered, None);
        assert_eq!(v.lost, 13);
        assert_eq!(v.recover_us, None);
    }
}
