//! Streams, offsets and the history a reconnecting client recovers from
//! (docs/PROTOCOL.md §11).
//!
//! Every message sent on behalf of the API travels on a stream: `@all`,
//! one `@user` stream per user, or a channel. Appending gives it the next
//! offset of its stream and keeps its encoded frame (the very bytes the
//! live delivery shares, so a replay copies nothing) in a bounded log:
//! the last `--history-size` entries per stream, none older than
//! `--history-ttl-secs`, and at most `--history-max-bytes` in all, the
//! oldest entry of the whole node going first. An append is O(1) in the
//! number of connections: a broadcast to everyone is one entry.
//!
//! The offset of a stream only grows within an epoch, which is drawn at
//! random when the history starts: a client that recovers with another
//! epoch missed messages this node cannot know about.
//!
//! Order: offsets must reach every connection in increasing order, so the
//! caller holds the [`Writer`] (a mutex guard) from the append until the
//! message is in every target shard's inbox; the shards' inboxes are FIFO.
//! A shard opening a connection or a subscription reads the offsets under
//! the same lock, so nothing published before it is counted after it.
//! Nothing here does I/O.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::frame::SharedFrame;

/// Bytes an entry costs beyond its frame (its bookkeeping here), so that a
/// flood of tiny messages is bounded by `--history-max-bytes` too.
const ENTRY_OVERHEAD: usize = 64;

/// A stream, as named in a message's `channel` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream<'a> {
    All,
    User(&'a str),
    Channel(&'a str),
}

/// The users a targeted message goes to, each once, in the order given,
/// without those in `exclude` (exclusion wins): one `@user` stream each.
/// Every node computes it the same way from the same lists.
pub fn targets<'a>(
    users: &'a [String],
    exclude: &'a [String],
) -> impl Iterator<Item = &'a String> + 'a {
    let exclude: HashSet<&String> = exclude.iter().collect();
    let mut seen = HashSet::new();
    users
        .iter()
        .filter(move |u| !exclude.contains(u) && seen.insert(*u))
}

/// History limits (`--history-size`, `--history-ttl-secs`,
/// `--history-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries kept per stream; 0 keeps none (offsets still count).
    pub size: usize,
    pub ttl: Duration,
    pub max_bytes: usize,
}

/// The streams of a node and their recent messages.
#[derive(Debug)]
pub struct History {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    epoch: Arc<str>,
    /// Whether `last` of every stream is known (always on a single node;
    /// in a cluster once the node has read the offsets from Redis). Until
    /// then nothing is recovered: a stream this node has not seen may have
    /// had messages.
    complete: bool,
    all: Log,
    users: HashMap<Arc<str>, Log>,
    channels: HashMap<Arc<str>, Log>,
    /// The oldest entry of every stream that holds one, by its sequence
    /// number: the node-wide eviction order (oldest first).
    heads: BTreeMap<u64, Key>,
    /// Sequence numbers of entries, node-wide, in append order.
    next_seq: u64,
    bytes: usize,
    /// Entries kept, all streams (so that `/metrics` reads it without
    /// walking every stream under the lock).
    entries: usize,
}

/// An owned stream name, for the eviction index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    All,
    User(Arc<str>),
    Channel(Arc<str>),
}

#[derive(Debug, Default)]
struct Log {
    /// The offset of the last message appended (0: none yet).
    last: u64,
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    seq: u64,
    at: Instant,
    frame: SharedFrame,
    /// Users a broadcast to everyone left out: not replayed to them.
    exclude: Option<Arc<HashSet<String>>>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

/// The last offset a client got on a stream.
#[derive(Debug, Clone, Copy)]
pub struct Since<'a> {
    pub stream: Stream<'a>,
    pub offset: u64,
}

fn since(stream: Stream<'_>, offset: u64) -> Since<'_> {
    Since { stream, offset }
}

/// What a connecting client asks to recover: the epoch it saw and the last
/// offsets it got on `@all` and `@user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub epoch: String,
    pub all: u64,
    pub user: u64,
}

/// Where a connection starts on its streams.
#[derive(Debug)]
pub struct ConnectionStart {
    pub epoch: Arc<str>,
    pub all: u64,
    pub user: u64,
    /// `None` when nothing was asked.
    pub recovered: Option<bool>,
    /// What it missed, oldest first (empty unless recovered).
    pub replay: Vec<SharedFrame>,
}

/// Where a subscription starts on its channel's stream.
#[derive(Debug)]
pub struct SubscriptionStart {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub recovered: Option<bool>,
    pub replay: Vec<SharedFrame>,
}

impl History {
    /// A node's history: complete from the start on a single node; in a
    /// cluster (`complete: false`) once [`Writer::set_complete`] says so.
    pub fn new(limits: Limits, complete: bool) -> History {
        History {
            limits,
            state: Mutex::new(State {
                epoch: Arc::from(new_epoch()),
                complete,
                ..State::default()
            }),
        }
    }

    pub fn epoch(&self) -> Arc<str> {
        self.lock().state.epoch.clone()
    }

    /// Takes the history for appending or reading; hold it until the
    /// message is queued to every target shard.
    pub fn lock(&self) -> Writer<'_> {
        Writer {
            limits: self.limits,
            // A poisoned lock still holds consistent logs: every mutation
            // below completes before anything that can panic.
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Where a new connection of `user` starts on `@all` and `@user`, and
    /// (when it asks, with the epoch and offsets it saw) whether it
    /// recovers and what it missed, both streams merged oldest first. Read
    /// under the lock after the connection joined presence: anything
    /// routed without it is at or below the offsets returned.
    pub fn start_connection(
        &self,
        user: &str,
        ask: Option<&Resume>,
        now: Instant,
    ) -> ConnectionStart {
        let mut w = self.lock();
        let all = w.last(Stream::All);
        let own = w.last(Stream::User(user));
        let mut start = ConnectionStart {
            epoch: w.state.epoch.clone(),
            all,
            user: own,
            recovered: None,
            replay: Vec::new(),
        };
        let Some(ask) = ask else {
            return start;
        };
        let missed = w
            .may_recover(&ask.epoch)
            .then(|| {
                let a = w.missed(since(Stream::All, ask.all), user, now)?;
                let u = w.missed(since(Stream::User(user), ask.user), user, now)?;
                Some((a, u))
            })
            .flatten();
        start.recovered = Some(missed.is_some());
        if let Some((mut a, u)) = missed {
            // Offsets it saw that this node has not applied yet (another
            // node's, a moment ahead) come live later: start after them.
            start.all = start.all.max(ask.all);
            start.user = start.user.max(ask.user);
            a.extend(u);
            a.sort_by_key(|(seq, _)| *seq);
            start.replay = a.into_iter().map(|(_, f)| f).collect();
        }
        start
    }

    /// Where a subscription to `channel` starts, and (when it asks) whether
    /// it recovers and what it missed. Read under the lock after the
    /// subscription joined the channel directory.
    pub fn start_subscription(
        &self,
        channel: &str,
        user: &str,
        ask: Option<(&str, u64)>,
        now: Instant,
    ) -> SubscriptionStart {
        let mut w = self.lock();
        let stream = Stream::Channel(channel);
        let mut start = SubscriptionStart {
            epoch: w.state.epoch.clone(),
            offset: w.last(stream),
            recovered: None,
            replay: Vec::new(),
        };
        if let Some((epoch, offset)) = ask {
            let missed = w
                .may_recover(epoch)
                .then(|| w.missed(since(stream, offset), user, now))
                .flatten();
            start.recovered = Some(missed.is_some());
            if missed.is_some() {
                start.offset = start.offset.max(offset);
            }
            start.replay = missed
                .unwrap_or_default()
                .into_iter()
                .map(|(_, f)| f)
                .collect();
        }
        start
    }

    /// Entries kept and their bytes (frames plus bookkeeping).
    pub fn usage(&self) -> (usize, usize) {
        let s = self.lock();
        (s.state.entries, s.state.bytes)
    }
}

/// The history, locked.
pub struct Writer<'a> {
    limits: Limits,
    state: MutexGuard<'a, State>,
}

impl Writer<'_> {
    /// Whether a client that saw `epoch` may be told what it missed.
    fn may_recover(&self, epoch: &str) -> bool {
        self.state.complete && *self.state.epoch == *epoch
    }

    /// The cluster's epoch, read from Redis. Another than this node's
    /// drops everything: its offsets count anew. True when it changed.
    pub fn adopt_epoch(&mut self, epoch: &str) -> bool {
        if *self.state.epoch == *epoch {
            return false;
        }
        let complete = self.state.complete;
        *self.state = State {
            epoch: Arc::from(epoch),
            complete,
            ..State::default()
        };
        true
    }

    /// Says whether every stream's last offset is known (see [`State`]).
    pub fn set_complete(&mut self, complete: bool) {
        self.state.complete = complete;
    }

    /// Raises `stream`'s last offset to `offset` (read from Redis) without
    /// a message: this node knows it was used.
    pub fn raise_last(&mut self, stream: Stream<'_>, offset: u64) {
        let s = &mut *self.state;
        let log = s.log_mut(stream);
        if offset > log.last {
            log.last = offset;
            // What it holds is no longer followed by all that came after.
            s.clear_stream(&Key::of(stream));
        }
    }

    /// Records message `offset` of `stream`, numbered by the cluster (its
    /// frame built by `build`), sent at `at`. Kept when it follows the last
    /// one kept; after a gap the stream's older entries are dropped first
    /// (a replay must never skip a message), and one at or below the last
    /// offset is not kept again. Returns its frame in every case: whether
    /// a connection takes it is up to the connection's own floor.
    pub fn append_at(
        &mut self,
        stream: Stream<'_>,
        offset: u64,
        at: Instant,
        now: Instant,
        exclude: Option<Arc<HashSet<String>>>,
        build: impl FnOnce(u64) -> SharedFrame,
    ) -> SharedFrame {
        let frame = build(offset);
        let last = self.last(stream);
        if offset <= last {
            return frame;
        }
        if offset > last + 1 {
            let s = &mut *self.state;
            s.clear_stream(&Key::of(stream));
            s.log_mut(stream).last = offset - 1;
        }
        let kept = frame.clone();
        self.append(stream, at.min(now), exclude, move |_| kept);
        self.state.expire(now, self.limits.ttl);
        frame
    }

    /// The offset of the last message on `stream` (0: none yet).
    pub fn last(&self, stream: Stream<'_>) -> u64 {
        self.state.log(stream).map_or(0, |l| l.last)
    }

    /// Appends a message to `stream`: `build` makes its frame from its
    /// offset. Returns the offset and the frame.
    pub fn append(
        &mut self,
        stream: Stream<'_>,
        now: Instant,
        exclude: Option<Arc<HashSet<String>>>,
        build: impl FnOnce(u64) -> SharedFrame,
    ) -> (u64, SharedFrame) {
        let limits = self.limits;
        let s = &mut *self.state;
        s.expire(now, limits.ttl);
        let seq = s.next_seq;
        s.next_seq += 1;
        let log = s.log_mut(stream);
        log.last += 1;
        let offset = log.last;
        let frame = build(offset);
        if limits.size == 0 {
            return (offset, frame);
        }
        let entry = Entry {
            offset,
            seq,
            at: now,
            frame: frame.clone(),
            exclude,
        };
        let cost = entry.cost();
        let was_empty = log.entries.is_empty();
        log.entries.push_back(entry);
        let over = log.entries.len() > limits.size;
        s.bytes += cost;
        s.entries += 1;
        if was_empty {
            s.heads.insert(seq, Key::of(stream));
        }
        if over {
            s.pop_front(&Key::of(stream));
        }
        while s.bytes > limits.max_bytes {
            if !s.evict_oldest() {
                break;
            }
        }
        (offset, frame)
    }

    /// The frames a client missed on `since.stream` after `since.offset`,
    /// oldest first, with their node-wide sequence numbers (to merge
    /// streams); `None` when the history no longer holds all of them (or
    /// the offset is ahead of the stream). Entries that left `user` out
    /// are skipped.
    pub fn missed(
        &mut self,
        since: Since<'_>,
        user: &str,
        now: Instant,
    ) -> Option<Vec<(u64, SharedFrame)>> {
        let ttl = self.limits.ttl;
        let s = &mut *self.state;
        s.expire(now, ttl);
        let (last, entries) = match s.log(since.stream) {
            Some(l) => (l.last, &l.entries),
            None => return (since.offset == 0).then(Vec::new),
        };
        if since.offset >= last {
            // Nothing after it here; a client ahead of this node saw
            // messages it has yet to apply, which come live.
            return Some(Vec::new());
        }
        // Every offset after `since` must still be here.
        let first = entries.front()?.offset;
        if first > since.offset + 1 {
            return None;
        }
        let skip = (since.offset + 1 - first) as usize;
        Some(
            entries
                .iter()
                .skip(skip)
                .filter(|e| e.exclude.as_ref().is_none_or(|x| !x.contains(user)))
                .map(|e| (e.seq, e.frame.clone()))
                .collect(),
        )
    }
}

impl Key {
    fn of(stream: Stream<'_>) -> Key {
        match stream {
            Stream::All => Key::All,
            Stream::User(u) => Key::User(Arc::from(u)),
            Stream::Channel(c) => Key::Channel(Arc::from(c)),
        }
    }

    fn stream(&self) -> Stream<'_> {
        match self {
            Key::All => Stream::All,
            Key::User(u) => Stream::User(u),
            Key::Channel(c) => Stream::Channel(c),
        }
    }
}

impl State {
    fn log(&self, stream: Stream<'_>) -> Option<&Log> {
        match stream {
            Stream::All => Some(&self.all),
            Stream::User(u) => self.users.get(u),
            Stream::Channel(c) => self.channels.get(c),
        }
    }

    fn log_mut(&mut self, stream: Stream<'_>) -> &mut Log {
        // The counter of a stream lives as long as the epoch: dropping it
        // would restart its offsets under the same epoch.
        match stream {
            Stream::All => &mut self.all,
            Stream::User(u) => self.users.entry(Arc::from(u)).or_default(),
            Stream::Channel(c) => self.channels.entry(Arc::from(c)).or_default(),
        }
    }

    /// Drops the oldest entry of `key`'s stream, keeping the byte count
    /// and the eviction index.
    fn pop_front(&mut self, key: &Key) {
        let stream = key.stream();
        let log = match stream {
            Stream::All => Some(&mut self.all),
            Stream::User(u) => self.users.get_mut(u),
            Stream::Channel(c) => self.channels.get_mut(c),
        };
        let Some(log) = log else {
            return;
        };
        let Some(old) = log.entries.pop_front() else {
            return;
        };
        let next = log.entries.front().map(|e| e.seq);
        self.bytes = self.bytes.saturating_sub(old.cost());
        self.entries = self.entries.saturating_sub(1);
        self.heads.remove(&old.seq);
        if let Some(seq) = next {
            self.heads.insert(seq, key.clone());
        }
    }

    /// Drops the oldest entry of the node; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.heads.first_key_value().map(|(s, k)| (*s, k.clone())) else {
            return false;
        };
        self.pop_front(&key);
        true
    }

    /// Drops every entry of `key`'s stream (its offset counter stays).
    fn clear_stream(&mut self, key: &Key) {
        while self
            .log(key.stream())
            .is_some_and(|l| !l.entries.is_empty())
        {
            self.pop_front(key);
        }
    }

    /// Drops entries older than `ttl`, oldest first.
    fn expire(&mut self, now: Instant, ttl: Duration) {
        loop {
            let Some(key) = self.heads.first_key_value().map(|(_, k)| k.clone()) else {
                return;
            };
            let old = self
                .log(key.stream())
                .and_then(|l| l.entries.front())
                .is_some_and(|e| now.saturating_duration_since(e.at) >= ttl);
            if !old {
                return;
            }
            self.pop_front(&key);
        }
    }
}

/// A fresh epoch: 16 hex digits, random per start.
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests;
