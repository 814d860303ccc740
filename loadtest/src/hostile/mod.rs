//! Hostile connections beside the measured ones (`--hostile N`): five kinds
//! of misbehaving peer, spread evenly over N slots, each slot connecting
//! again (after a pause, a bounded number of times) when the server ends
//! it, so that the pressure lasts as long as the attack. What the tool
//! learns: per kind, connections opened, how the server ended them, bytes
//! sent.
//!
//! ```text
//! mod.rs     the kinds, how N is spread over them, the attack's handle and figures
//! engine.rs  the event loop: connect, each kind's script, what ended it, again
//! frames.rs  the bytes sent and the reading of the server's answers (no I/O)
//! ```
//!
//! Never: an address other than the run's (loopback) endpoints; a loop
//! without a bound (each slot tries at most [`MAX_ATTEMPTS`] times, each
//! script is bounded in bytes, the threads stop at [`Attack::stop`] or the
//! deadline, whichever comes first); a read on a never-reading connection
//! before the server has ended it.

mod engine;
mod frames;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

/// Attempts per slot at most (the first connection and its successors).
pub const MAX_ATTEMPTS: u32 = 200;

/// The ways a hostile connection misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `POST /v1/websocket/broadcast` without valid credentials announcing
    /// 1 MiB, then most of the body, slowly, never all of it.
    Bodies,
    /// A request head sent a few bytes at a time, never finished.
    Slowloris,
    /// An authenticated WebSocket that sends one 8 MiB message.
    Oversized,
    /// An authenticated WebSocket that sends an invalid frame.
    Garbage,
    /// An authenticated WebSocket with a small receive buffer that never
    /// reads, while the broadcasts run.
    Nonreader,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Bodies,
        Kind::Slowloris,
        Kind::Oversized,
        Kind::Garbage,
        Kind::Nonreader,
    ];

    /// Whether the kind upgrades to a WebSocket (with a valid token) first.
    fn upgrades(self) -> bool {
        matches!(self, Kind::Oversized | Kind::Garbage | Kind::Nonreader)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Bodies => "bodies",
            Kind::Slowloris => "slowloris",
            Kind::Oversized => "oversized",
            Kind::Garbage => "garbage",
            Kind::Nonreader => "nonreader",
        }
    }
}

/// The kind of each of `n` slots: `kinds` (repeats dropped) in turn, so
/// that the counts differ by one at most.
pub fn spread(n: usize, kinds: &[Kind]) -> Vec<Kind> {
    let mut distinct: Vec<Kind> = Vec::new();
    for k in kinds {
        if !distinct.contains(k) {
            distinct.push(*k);
        }
    }
    if distinct.is_empty() {
        distinct.extend(Kind::ALL);
    }
    (0..n).map(|i| distinct[i % distinct.len()]).collect()
}

/// Where and as whom the hostile connections connect.
pub struct Config {
    /// The run's endpoints (checked to be loopback); slot `i` uses
    /// `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    pub host_header: String,
    pub path: String,
    pub token_in_header: bool,
    /// One user token per slot (the WebSocket kinds use theirs).
    pub tokens: Vec<String>,
    /// Loopback source addresses 127.0.0.1 … 127.0.0.K.
    pub source_addrs: usize,
    /// Nothing runs past it, whatever happens to the run.
    pub deadline: Instant,
}

/// What one kind did over the attack.
#[derive(Debug, Clone, Serialize)]
pub struct KindStats {
    pub kind: Kind,
    /// Slots of this kind (connections at once).
    pub slots: usize,
    /// TCP connections established, reconnections included.
    pub opened: u64,
    /// How each connection ended: `close 1009` (the server's close frame),
    /// `http 408` (its answer), `reset`, `eof` (closed without either),
    /// `connect: …`, and `still open` at the stop.
    pub ended: BTreeMap<String, u64>,
    /// The part of `ended` the server did: everything but the connections
    /// open (or connecting) at the stop and the connects that failed.
    pub ended_by_server: u64,
    pub bytes_sent: u64,
}

impl KindStats {
    fn new(kind: Kind) -> KindStats {
        KindStats {
            kind,
            slots: 0,
            opened: 0,
            ended: BTreeMap::new(),
            ended_by_server: 0,
            bytes_sent: 0,
        }
    }

    fn merge(&mut self, other: &KindStats) {
        self.slots += other.slots;
        self.opened += other.opened;
        self.bytes_sent += other.bytes_sent;
        for (k, v) in &other.ended {
            *self.ended.entry(k.clone()).or_default() += v;
        }
    }

    /// Works out `ended_by_server` from `ended`.
    fn count_server_ends(&mut self) {
        self.ended_by_server = self
            .ended
            .iter()
            .filter(|(k, _)| !k.starts_with("still ") && !k.starts_with("connect: "))
            .map(|(_, v)| v)
            .sum();
    }
}

/// State the engine threads share with the run.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    /// Slots whose first connect finished (opened or failed).
    settled: AtomicUsize,
}

/// The running attack.
pub struct Attack {
    progress: Arc<Progress>,
    threads: Vec<JoinHandle<Vec<KindStats>>>,
    slots: usize,
}

impl Attack {
    /// Starts `threads` engine threads with the slots dealt out in turn;
    /// the first connects are spread over the first second.
    pub fn start(cfg: Config, kinds: &[Kind], threads: usize) -> io::Result<Attack> {
        let slots = cfg.tokens.len();
        let plan = spread(slots, kinds);
        let progress = Arc::new(Progress::default());
        let cfg = Arc::new(cfg);
        let bufs = Arc::new(engine::Bufs::new(&cfg.host_header));
        let threads = threads.clamp(1, slots.max(1));
        // Dropped on an early return, the handle stops what already runs.
        let mut attack = Attack {
            progress,
            threads: Vec::new(),
            slots,
        };
        for t in 0..threads {
            let mine: Vec<(usize, Kind)> = plan
                .iter()
                .enumerate()
                .skip(t)
                .step_by(threads)
                .map(|(i, k)| (i, *k))
                .collect();
            let e = engine::Engine::new(mine, cfg.clone(), bufs.clone(), attack.progress.clone())?;
            attack.threads.push(
                std::thread::Builder::new()
                    .name(format!("lt-hostile-{t}"))
                    .spawn(move || e.run())?,
            );
        }
        Ok(attack)
    }

    /// Whether every slot's first connect has finished.
    pub fn ramped(&self) -> bool {
        self.progress.settled.load(Ordering::Relaxed) >= self.slots
    }

    /// Stops every hostile connection; the figures per kind, in the order
    /// of [`Kind::ALL`] (kinds with no slot left out).
    pub fn stop(mut self) -> Vec<KindStats> {
        self.progress.stop.store(true, Ordering::Relaxed);
        let mut total: Vec<KindStats> = Kind::ALL.iter().map(|k| KindStats::new(*k)).collect();
        for h in std::mem::take(&mut self.threads) {
            if let Ok(stats) = h.join() {
                for s in stats {
                    total[s.kind as usize].merge(&s);
                }
            }
        }
        total.retain(|s| s.slots > 0);
        total.iter_mut().for_each(KindStats::count_server_ends);
        total
    }
}

impl Drop for Attack {
    /// A run that ends early (an error) stops the attack too.
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spread_evenly_over_the_kinds() {
        let plan = spread(2000, &Kind::ALL);
        for k in Kind::ALL {
            assert_eq!(plan.iter().filter(|p| **p == k).count(), 400);
        }
        let plan = spread(7, &[Kind::Garbage, Kind::Bodies, Kind::Garbage]);
        assert_eq!(plan.iter().filter(|p| **p == Kind::Garbage).count(), 4);
        assert_eq!(plan.iter().filter(|p| **p == Kind::Bodies).count(), 3);
        assert_eq!(spread(3, &[]).len(), 3);
        assert!(spread(0, &Kind::ALL).is_empty());
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "Kind::ALL is in declaration order");
        }
    }

    #[test]
    fn only_what_the_server_did_counts_as_ended_by_it() {
        let mut s = KindStats::new(Kind::Bodies);
        for (k, v) in [
            ("http 408", 3),
            ("reset", 2),
            ("still open", 5),
            ("connect: refused", 1),
        ] {
            s.ended.insert(k.into(), v);
        }
        s.count_server_ends();
        assert_eq!(s.ended_by_server, 5);
    }
}
