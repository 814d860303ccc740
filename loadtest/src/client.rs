//! The WebSocket side of the load: a few worker threads, each with its own
//! `mio::Poll` and its share of the connections. A worker opens its
//! connections (bounded number of handshakes in flight, each socket bound to
//! one of the loopback source addresses), does the upgrade by hand, then
//! reads frames by hand, answers pings, and for every message of ours
//! records the latency, the sequence order and a 100 ms timeline bucket.
//!
//! Nothing here allocates per message: one read buffer per worker, one
//! clock read per `read(2)`, and a byte scan of the payload. With
//! `--compression` the connections offer permessage-deflate without
//! context takeover, and a compressed message is inflated by the worker's
//! one inflater (reset per message, which keeps its last 64 inflations for
//! the same broadcast to the worker's other connections) before the scan.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use crate::channels::{self, Layout, Seen};
use crate::sys;
use crate::tls::{self, Tls};
use crate::ws::{self, Inflater, Parsed, Scanner};

/// Most phases one run can have (warm-up, throughput, rate, sweep steps).
pub const MAX_PHASES: usize = 64;
/// Width of a timeline bucket.
pub const BUCKET_US: u64 = 100_000;
/// Timeline cap: one hour of 100 ms buckets.
const MAX_BUCKETS: usize = 36_000;
/// Largest server frame the client takes (a broadcast is small).
const MAX_FRAME: usize = 16 << 20;
/// Largest upgrade answer head.
const MAX_HEAD: usize = 16 << 10;
/// Reads from one socket per readiness event before others get a turn.
const READS_PER_TURN: usize = 32;

/// Latency histogram in microseconds, 1 µs .. 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[repr(align(128))]
#[derive(Default)]
pub struct Padded(pub AtomicU64);

/// State shared by the workers and the main thread, all atomics.
pub struct Shared {
    pub connected: AtomicUsize,
    pub failed: AtomicUsize,
    /// Open connections that closed later (server close frame, EOF, error).
    pub dropped: AtomicUsize,
    /// Messages of ours received so far, per worker (each written by one thread).
    pub received: Vec<Padded>,
    pub stop_connecting: AtomicBool,
    pub stop: AtomicBool,
    /// When the latest connection opened, unix micros.
    pub last_open_us: AtomicU64,
    /// `--mode channel`: how many of its channels every open connection
    /// subscribes to, in steps (the first, then the rest); one that opens
    /// later subscribes to as many at once.
    pub subscribe: AtomicU32,
    /// `subscribed` answers for a connection's own channels, all workers.
    pub acks: AtomicU64,
    /// `error` answers to subscribes, all workers.
    pub sub_errors: AtomicU64,
    /// Phases below this number are handed to the main thread (see
    /// [`Shared::collect`]).
    collect_upto: AtomicUsize,
    phase_starts: [AtomicU64; MAX_PHASES],
    phase_count: AtomicUsize,
    /// Origin of the timeline, unix microseconds.
    pub t0_us: u64,
}

impl Shared {
    pub fn new(workers: usize, t0_us: u64) -> Shared {
        Shared {
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            received: (0..workers).map(|_| Padded::default()).collect(),
            stop_connecting: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            last_open_us: AtomicU64::new(0),
            subscribe: AtomicU32::new(0),
            acks: AtomicU64::new(0),
            sub_errors: AtomicU64::new(0),
            collect_upto: AtomicUsize::new(0),
            phase_starts: std::array::from_fn(|_| AtomicU64::new(0)),
            phase_count: AtomicUsize::new(0),
            t0_us,
        }
    }

    /// Opens phase number `returned`, whose messages carry sequence numbers
    /// from `first_seq` on (higher than any earlier phase's).
    pub fn begin_phase(&self, first_seq: u64) -> Option<usize> {
        let n = self.phase_count.load(Ordering::Relaxed);
        if n >= MAX_PHASES {
            return None;
        }
        self.phase_starts[n].store(first_seq, Ordering::Relaxed);
        self.phase_count.store(n + 1, Ordering::Release);
        Some(n)
    }

    /// The phase a sequence number belongs to (usually the last one).
    fn phase_of(&self, seq: u64) -> Option<usize> {
        let n = self.phase_count.load(Ordering::Acquire);
        (0..n)
            .rev()
            .find(|&p| seq >= self.phase_starts[p].load(Ordering::Relaxed))
    }

    /// Asks every worker for what it recorded in phase `p` (and earlier
    /// phases not collected yet); they answer on their collection channel
    /// within one turn of their loop. Messages of `p` that arrive later are
    /// kept and come back with the worker's final result.
    pub fn collect(&self, p: usize) {
        self.collect_upto.fetch_max(p + 1, Ordering::AcqRel);
    }

    pub fn received_total(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One connection to open: which user's token, from which source address.
#[derive(Debug, Clone, Copy)]
pub struct ConnSpec {
    /// Index into [`ClientConfig::targets`].
    pub target: u16,
    pub user: u32,
    pub source: Ipv4Addr,
    /// `--mode channel`: the first of its channels ([`Layout::first`]).
    pub first_channel: u32,
}

/// How to reach the server, same for every worker.
pub struct ClientConfig {
    /// The server, or every node of a cluster.
    pub targets: Vec<SocketAddr>,
    /// `wss://`: TLS for each target, in the order of `targets` (empty:
    /// plain TCP).
    pub tls: Vec<Tls>,
    pub host_header: String,
    pub path: String,
    pub token_in_header: bool,
    /// One token per user.
    pub tokens: Arc<Vec<String>>,
    /// Number of REST lanes: sequence numbers are ordered per lane.
    pub lanes: u64,
    /// Handshakes in flight per worker.
    pub max_pending: usize,
    pub handshake_timeout: Duration,
    /// `--mode channel`: how the connections subscribe.
    pub channels: Option<Layout>,
    /// `--compression`: offer permessage-deflate.
    pub deflate: bool,
}

/// What one worker saw in one phase.
pub struct PhaseRecv {
    pub hist: Histogram<u64>,
    pub received: u64,
    /// Bytes of the frames that carried the phase's messages (headers
    /// included; the plaintext frames over TLS).
    pub wire_bytes: u64,
    /// Messages of the phase that came compressed (RSV1).
    pub compressed: u64,
    pub out_of_order: u64,
    pub first_us: u64,
    pub last_us: u64,
}

impl PhaseRecv {
    pub fn new() -> PhaseRecv {
        PhaseRecv {
            hist: new_histogram(),
            received: 0,
            wire_bytes: 0,
            compressed: 0,
            out_of_order: 0,
            first_us: u64::MAX,
            last_us: 0,
        }
    }

    pub fn merge(&mut self, other: &PhaseRecv) {
        let _ = self.hist.add(&other.hist);
        self.received += other.received;
        self.wire_bytes += other.wire_bytes;
        self.compressed += other.compressed;
        self.out_of_order += other.out_of_order;
        self.first_us = self.first_us.min(other.first_us);
        self.last_us = self.last_us.max(other.last_us);
    }
}

impl Default for PhaseRecv {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a worker hands back when it stops.
pub struct WorkerResult {
    pub phases: Vec<PhaseRecv>,
    /// Messages of ours per 100 ms since `t0_us`.
    pub buckets: Vec<u64>,
    /// Time from `connect(2)` to a verified `101`, microseconds (the TLS
    /// handshake included, over `wss://`).
    pub handshake: Histogram<u64>,
    /// `wss://`: time from `connect(2)` to the end of the TLS handshake,
    /// microseconds (empty over plain TCP).
    pub tls_handshake: Histogram<u64>,
    /// Connections that never opened, by reason (`"401"`, `"timeout"`…).
    pub failures: BTreeMap<String, u64>,
    /// Open connections that closed, by how (`"close 1008"`, `"eof"`…).
    pub closes: BTreeMap<String, u64>,
    /// Messages that are not ours (e.g. `connected`).
    pub other_messages: u64,
    /// Bytes of frames not counted in a phase: control frames, messages
    /// not ours, ours of no phase, those that failed to inflate.
    pub other_wire_bytes: u64,
    /// `--compression`: connections whose `101` accepted permessage-deflate.
    pub negotiated: usize,
    /// Compressed messages that did not inflate (corrupt, or past 16 MiB);
    /// they count as lost.
    pub inflate_errors: u64,
    /// Compressed messages actually inflated: the others had the same
    /// bytes as a recent one (the same broadcast to another connection).
    pub inflations: u64,
    pub pings_answered: u64,
    pub open_at_end: usize,
    /// `--mode channel`: what the worker saw of the channels.
    pub channels: Option<Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshaking,
    Open,
}

struct Conn {
    stream: TcpStream,
    /// `wss://`: the TLS state (boxed: about 1 KiB, and absent on `ws://`).
    /// `buf` and `out` hold plaintext either way.
    tls: Option<Box<ClientConnection>>,
    state: State,
    started: Instant,
    /// The expected `Sec-WebSocket-Accept` (only while handshaking).
    accept: Box<str>,
    /// Upgrade answer bytes, then the tail of a partial frame.
    buf: Vec<u8>,
    /// Bytes waiting for the socket to be writable (request, pongs, close).
    out: Vec<u8>,
    /// What the frames of a message need to know.
    rx: Rx,
    /// `wss://`: the TLS handshake's time is recorded.
    tls_timed: bool,
}

/// A connection's receive state beyond its bytes.
#[derive(Default)]
struct Rx {
    /// permessage-deflate was negotiated: RSV1 may mark a message.
    deflate: bool,
    /// A fragmented message being put together (rare).
    frag: Option<Vec<u8>>,
    /// Its first frame had RSV1 (compressed).
    frag_compressed: bool,
    /// Bytes of its frames so far.
    frag_wire: u64,
}

/// Per-message accounting, apart from the connections so both can be
/// borrowed at once.
struct Acct {
    shared: Arc<Shared>,
    scanner: Scanner,
    lanes: u64,
    phases: Vec<PhaseRecv>,
    buckets: Vec<u64>,
    /// Per connection and lane: last sequence number + 1 (0: none yet).
    last_seq: Vec<u64>,
    received: u64,
    other: u64,
    other_wire: u64,
    /// The worker's one inflater (taken out while a message is inflated).
    inflater: Option<Inflater>,
    inflate_errors: u64,
    pings: u64,
    rng: u64,
    /// `--mode channel`.
    chan: Option<Seen>,
}

enum Stop {
    /// The server sent a close frame with this code.
    Closed(u16),
    Protocol(&'static str),
}

impl Acct {
    /// A whole message: `compressed` (RSV1) ones are inflated first; `wire`
    /// bytes of frames carried it.
    fn deliver(&mut self, idx: usize, payload: &[u8], compressed: bool, wire: u64, now_us: u64) {
        if !compressed {
            return self.message(idx, payload, false, wire, now_us);
        }
        let Some(mut inflater) = self.inflater.take() else {
            // Not offered, so never negotiated: RSV1 is refused before.
            self.inflate_errors += 1;
            self.other_wire += wire;
            return;
        };
        match inflater.inflate(payload) {
            Ok(plain) => self.message(idx, plain, true, wire, now_us),
            Err(_) => {
                self.inflate_errors += 1;
                self.other_wire += wire;
            }
        }
        self.inflater = Some(inflater);
    }

    fn message(&mut self, idx: usize, payload: &[u8], compressed: bool, wire: u64, now_us: u64) {
        let Some(sample) = self.scanner.scan(payload) else {
            self.other_wire += wire;
            self.not_ours(idx, payload);
            return;
        };
        if let Some(chan) = self.chan.as_mut() {
            chan.sample(idx, payload);
        }
        let Some(p) = self.shared.phase_of(sample.seq) else {
            self.other += 1;
            self.other_wire += wire;
            return;
        };
        while self.phases.len() <= p {
            self.phases.push(PhaseRecv::new());
        }
        let ph = &mut self.phases[p];
        ph.hist
            .saturating_record(now_us.saturating_sub(sample.sent_us).max(1));
        ph.received += 1;
        ph.wire_bytes += wire;
        ph.compressed += u64::from(compressed);
        ph.first_us = ph.first_us.min(now_us);
        ph.last_us = ph.last_us.max(now_us);
        let slot = idx * self.lanes as usize + (sample.seq % self.lanes) as usize;
        if let Some(last) = self.last_seq.get_mut(slot) {
            if *last != 0 && sample.seq < *last {
                ph.out_of_order += 1;
            } else {
                *last = sample.seq + 1;
            }
        }
        let b = (now_us.saturating_sub(self.shared.t0_us) / BUCKET_US) as usize;
        if b < MAX_BUCKETS {
            if self.buckets.len() <= b {
                self.buckets.resize(b + 1, 0);
            }
            self.buckets[b] += 1;
        }
        self.received += 1;
    }

    /// A message without a sample: an acknowledgement or error of a
    /// subscribe (counted for the main thread at once), or another.
    fn not_ours(&mut self, idx: usize, payload: &[u8]) {
        let Some(chan) = self.chan.as_mut() else {
            self.other += 1;
            return;
        };
        let (acks, errors) = (chan.acks, chan.errors);
        if !chan.other(idx, payload) {
            self.other += 1;
            return;
        }
        let shared = &self.shared;
        shared.acks.fetch_add(chan.acks - acks, Ordering::Relaxed);
        shared
            .sub_errors
            .fetch_add(chan.errors - errors, Ordering::Relaxed);
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64: masks need not be secret for a load tool on loopback.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    /// Handles every whole frame at the front of `data`; returns how many
    /// bytes were used (the rest is a partial frame).
    fn frames(
        &mut self,
        idx: usize,
        data: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Rx,
        now_us: u64,
    ) -> Result<usize, Stop> {
        let mut off = 0;
        loop {
            let h = match ws::parse_frame_ext(&data[off..], MAX_FRAME, rx.deflate) {
                Parsed::Incomplete => return Ok(off),
                Parsed::Error(e) => return Err(Stop::Protocol(e)),
                Parsed::Frame(h) => h,
            };
            let payload = &data[off + h.header_len..off + h.total_len()];
            off += h.total_len();
            let wire = h.total_len() as u64;
            match h.opcode {
                ws::OP_TEXT | ws::OP_BINARY => {
                    if rx.frag.is_some() {
                        return Err(Stop::Protocol("new message inside a fragmented one"));
                    }
                    if h.fin {
                        self.deliver(idx, payload, h.rsv1, wire, now_us);
                    } else {
                        rx.frag = Some(payload.to_vec());
                        rx.frag_compressed = h.rsv1;
                        rx.frag_wire = wire;
                    }
                }
                ws::OP_CONTINUATION => {
                    let Some(mut f) = rx.frag.take() else {
                        return Err(Stop::Protocol("continuation without a first fragment"));
                    };
                    f.extend_from_slice(payload);
                    rx.frag_wire += wire;
                    if f.len() > MAX_FRAME {
                        return Err(Stop::Protocol("message larger than the client accepts"));
                    }
                    if h.fin {
                        self.deliver(idx, &f, rx.frag_compressed, rx.frag_wire, now_us);
                    } else {
                        rx.frag = Some(f);
                    }
                }
                ws::OP_PING => {
                    self.other_wire += wire;
                    let mask = self.mask();
                    ws::client_frame(ws::OP_PONG, payload, mask, out);
                    self.pings += 1;
                }
                ws::OP_PONG => self.other_wire += wire,
                _ => {
                    // OP_CLOSE: echo the code (RFC 6455 §5.5.1), then stop.
                    let code = ws::close_code(payload);
                    let mask = self.mask();
                    let echo = if code == 1005 {
                        Vec::new()
                    } else {
                        code.to_be_bytes().to_vec()
                    };
                    ws::client_frame(ws::OP_CLOSE, &echo, mask, out);
                    return Err(Stop::Closed(code));
                }
            }
        }
    }
}

struct Worker {
    id: usize,
    cfg: Arc<ClientConfig>,
    specs: Vec<ConnSpec>,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    next: usize,
    pending: usize,
    deadlines: VecDeque<(Instant, usize)>,
    /// Connections to read again (their turn ended before `WouldBlock`).
    again: Vec<usize>,
    scratch: Vec<u8>,
    acct: Acct,
    handshake: Histogram<u64>,
    tls_handshake: Histogram<u64>,
    failures: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    handed: usize,
    collected: crossbeam_channel::Sender<(usize, PhaseRecv)>,
    /// `--mode channel`: channels each open connection was told to
    /// subscribe to so far.
    subscribing: u32,
    /// `--compression`: connections that negotiated permessage-deflate.
    negotiated: usize,
}

/// Starts a worker thread for `specs`; it runs until `shared.stop`.
pub fn spawn(
    id: usize,
    cfg: Arc<ClientConfig>,
    specs: Vec<ConnSpec>,
    shared: Arc<Shared>,
    collected: crossbeam_channel::Sender<(usize, PhaseRecv)>,
) -> io::Result<std::thread::JoinHandle<WorkerResult>> {
    let poll = Poll::new()?;
    let n = specs.len();
    let lanes = cfg.lanes.max(1);
    let chan = cfg
        .channels
        .map(|l| Seen::new(l, specs.iter().map(|s| s.first_channel).collect()));
    let worker = Worker {
        id,
        specs,
        poll,
        conns: (0..n).map(|_| None).collect(),
        next: 0,
        pending: 0,
        deadlines: VecDeque::new(),
        again: Vec::new(),
        scratch: vec![0u8; 256 * 1024],
        acct: Acct {
            shared,
            scanner: Scanner::new(),
            lanes,
            phases: Vec::new(),
            buckets: Vec::new(),
            last_seq: vec![0; n * lanes as usize],
            received: 0,
            other: 0,
            other_wire: 0,
            inflater: cfg.deflate.then(Inflater::default),
            inflate_errors: 0,
            pings: 0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            chan,
        },
        handshake: new_histogram(),
        tls_handshake: new_histogram(),
        failures: BTreeMap::new(),
        closes: BTreeMap::new(),
        handed: 0,
        collected,
        subscribing: 0,
        negotiated: 0,
        cfg,
    };
    std::thread::Builder::new()
        .name(format!("lt-client-{id}"))
        .spawn(move || worker.run())
}

impl Worker {
    fn run(mut self) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        let shared = self.acct.shared.clone();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            self.start_connects();
            let upto = shared.subscribe.load(Ordering::Acquire);
            if upto > self.subscribing {
                self.subscribe_all(self.subscribing, upto);
                self.subscribing = upto;
            }
            let timeout = if self.again.is_empty() {
                Duration::from_millis(if self.pending > 0 { 10 } else { 50 })
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("wsedge-loadtest: worker {}: poll: {e}", self.id);
                    break;
                }
            }
            let again = std::mem::take(&mut self.again);
            for idx in again {
                self.on_ready(idx, true, true);
            }
            for ev in events.iter() {
                let idx = ev.token().0;
                let hup = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || hup;
                self.on_ready(idx, readable, hup);
            }
            self.expire_handshakes();
            self.hand_over(&shared);
            shared.received[self.id]
                .0
                .store(self.acct.received, Ordering::Relaxed);
        }
        let open_at_end = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.state == State::Open)
            .count();
        WorkerResult {
            phases: self.acct.phases,
            buckets: self.acct.buckets,
            handshake: self.handshake,
            tls_handshake: self.tls_handshake,
            failures: self.failures,
            closes: self.closes,
            other_messages: self.acct.other,
            other_wire_bytes: self.acct.other_wire,
            negotiated: self.negotiated,
            inflate_errors: self.acct.inflate_errors,
            inflations: self.acct.inflater.as_ref().map_or(0, |i| i.inflated),
            pings_answered: self.acct.pings,
            open_at_end,
            channels: self.acct.chan,
        }
    }

    /// `--mode channel`: every open connection subscribes to its channels
    /// `from..upto`.
    fn subscribe_all(&mut self, from: u32, upto: u32) {
        for idx in 0..self.conns.len() {
            if matches!(&self.conns[idx], Some(c) if c.state == State::Open) {
                self.subscribe(idx, from, upto);
            }
        }
    }

    /// Connection `idx` subscribes to its channels `from..upto`, the
    /// frames in one write.
    fn subscribe(&mut self, idx: usize, from: u32, upto: u32) {
        let Some(layout) = self.cfg.channels else {
            return;
        };
        let first = self.specs[idx].first_channel;
        let mut text = Vec::with_capacity(64);
        let mut frames = Vec::with_capacity(80 * upto.saturating_sub(from) as usize);
        for j in from..upto.min(layout.per_conn) {
            text.clear();
            channels::subscribe_text(layout.nth(first, j), &mut text);
            let mask = self.acct.mask();
            ws::client_frame(ws::OP_TEXT, &text, mask, &mut frames);
        }
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        conn.out.extend_from_slice(&frames);
        if let Err(e) = flush(conn) {
            self.finish(idx, format!("write: {e}"));
        }
    }

    fn hand_over(&mut self, shared: &Shared) {
        let upto = shared.collect_upto.load(Ordering::Acquire);
        while self.handed < upto {
            let q = self.handed;
            let ph = self
                .acct
                .phases
                .get_mut(q)
                .map(std::mem::take)
                .unwrap_or_default();
            let _ = self.collected.send((q, ph));
            self.handed += 1;
        }
    }

    fn start_connects(&mut self) {
        let shared = self.acct.shared.clone();
        while self.pending < self.cfg.max_pending && self.next < self.specs.len() {
            if shared.stop_connecting.load(Ordering::Relaxed) {
                // Count the ones never tried, once.
                let left = (self.specs.len() - self.next) as u64;
                *self
                    .failures
                    .entry("not tried (connect phase over)".into())
                    .or_default() += left;
                shared.failed.fetch_add(left as usize, Ordering::Relaxed);
                self.next = self.specs.len();
                break;
            }
            let idx = self.next;
            self.next += 1;
            match self.open(idx) {
                Ok(conn) => {
                    self.conns[idx] = Some(conn);
                    self.pending += 1;
                    self.deadlines
                        .push_back((Instant::now() + self.cfg.handshake_timeout, idx));
                }
                Err(e) => self.fail_unopened(&e.to_string()),
            }
        }
    }

    /// Starts one connection: a non-blocking socket from the start (no
    /// `fcntl`s), bound to its source address, connected, registered, and
    /// the upgrade request written at once when the connection is already
    /// up (on loopback the handshake usually completes inside `connect`),
    /// which saves waiting for a writable event and the `SO_ERROR` and
    /// `getpeername` checks that go with it. No `TCP_NODELAY`: a client
    /// writes its request once and otherwise only pongs and close frames.
    fn open(&mut self, idx: usize) -> io::Result<Conn> {
        let spec = self.specs[idx];
        let t = usize::from(spec.target) % self.cfg.targets.len();
        let target = self.cfg.targets[t];
        let tls = match self.cfg.tls.get(t) {
            Some(tls) => Some(Box::new(tls.connect()?)),
            None => None,
        };
        let mut stream = sys::connect_from(spec.source, target, None)?;
        self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let token = &self.cfg.tokens[spec.user as usize % self.cfg.tokens.len()];
        let (out, accept) = ws::keyed_upgrade_request(
            &self.cfg.host_header,
            &self.cfg.path,
            token,
            self.cfg.token_in_header,
            self.cfg.deflate,
        );
        let mut conn = Conn {
            stream,
            tls,
            state: State::Connecting,
            started: Instant::now(),
            accept: accept.into_boxed_str(),
            buf: Vec::new(),
            out,
            rx: Rx::default(),
            tls_timed: false,
        };
        // A write before the connection is up fails with WouldBlock (or
        // ENOTCONN): the writable event then takes the usual path. A real
        // error (refused) shows up the same way on that event.
        if let Some(tls) = conn.tls.as_deref_mut() {
            // The request waits in rustls until the handshake is done
            // (it is well under rustls's 64 KiB cap); the ClientHello goes
            // out now if the connection is up.
            let n = tls::send(tls, &conn.out)?;
            conn.out.drain(..n);
            if tls::flush_tls(tls, &mut conn.stream).is_ok() {
                conn.state = State::Handshaking;
            }
            return Ok(conn);
        }
        match conn.stream.write(&conn.out) {
            Ok(n) if n == conn.out.len() => {
                conn.out = Vec::new();
                conn.state = State::Handshaking;
            }
            Ok(n) => {
                conn.out.drain(..n);
                conn.state = State::Handshaking;
            }
            Err(_) => {}
        }
        Ok(conn)
    }

    fn fail_unopened(&mut self, reason: &str) {
        *self.failures.entry(reason.to_string()).or_default() += 1;
        self.acct.shared.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a connection: a failed handshake or a close after it opened.
    fn finish(&mut self, idx: usize, reason: String) {
        let Some(mut conn) = self.conns[idx].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.state == State::Open {
            *self.closes.entry(reason).or_default() += 1;
            self.acct.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.pending -= 1;
            self.fail_unopened(&reason);
        }
    }

    fn expire_handshakes(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, idx)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if matches!(&self.conns[idx], Some(c) if c.state != State::Open) {
                self.finish(idx, "handshake timeout".into());
            }
        }
    }

    /// Readiness of one connection. `to_end`: read until `WouldBlock` (the
    /// event also reported the peer's FIN or an error, which may wait behind
    /// the bytes, or a read stopped early); otherwise a short read means the
    /// socket is drained and later bytes raise a new (edge-triggered) event.
    fn on_ready(&mut self, idx: usize, readable: bool, to_end: bool) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.state == State::Connecting {
            match sys::connect_done(&conn.stream) {
                Ok(true) => conn.state = State::Handshaking,
                Ok(false) => return,
                Err(e) => return self.finish(idx, e.to_string()),
            }
        }
        if needs_flush(conn) {
            if let Err(e) = flush(conn) {
                return self.finish(idx, format!("write: {e}"));
            }
        }
        if readable {
            match conn.state {
                State::Handshaking => self.read_handshake(idx, to_end),
                State::Open => self.read_frames(idx, to_end),
                State::Connecting => {}
            }
        }
    }

    fn read_handshake(&mut self, idx: usize, to_end: bool) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        // Over TLS a short read says nothing about the socket: read on to
        // `WouldBlock` (edge-triggered readiness).
        let to_end = to_end || conn.tls.is_some();
        loop {
            let got = recv(conn, &mut self.scratch[..MAX_HEAD]);
            time_tls(conn, &mut self.tls_handshake);
            let n = match got {
                Ok(0) => return self.finish(idx, "closed during the handshake".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.finish(idx, e.to_string()),
            };
            conn.buf.extend_from_slice(&self.scratch[..n]);
            match ws::check_upgrade(&conn.buf, &conn.accept, self.cfg.deflate) {
                Ok(None) if conn.buf.len() < MAX_HEAD => continue,
                Ok(None) => return self.finish(idx, "upgrade answer head too large".into()),
                Err(reason) => return self.finish(idx, reason),
                Ok(Some(up)) => {
                    conn.buf.drain(..up.head);
                    conn.rx.deflate = up.deflate;
                    self.negotiated += usize::from(up.deflate);
                    conn.accept = Box::from("");
                    conn.state = State::Open;
                    let us = conn.started.elapsed().as_micros() as u64;
                    self.handshake.saturating_record(us.max(1));
                    self.pending -= 1;
                    self.acct.shared.connected.fetch_add(1, Ordering::Relaxed);
                    self.acct
                        .shared
                        .last_open_us
                        .fetch_max(sys::unix_micros(), Ordering::Relaxed);
                    // Frames that came with the head (e.g. `connected`).
                    let mut tail = std::mem::take(&mut conn.buf);
                    let used = match self.acct.frames(
                        idx,
                        &tail,
                        &mut conn.out,
                        &mut conn.rx,
                        sys::unix_micros(),
                    ) {
                        Ok(used) => used,
                        Err(stop) => return self.stop_conn(idx, stop),
                    };
                    tail.drain(..used);
                    conn.buf = tail;
                    if self.subscribing > 0 {
                        // Opened after the others subscribed.
                        self.subscribe(idx, 0, self.subscribing);
                    }
                    if n < MAX_HEAD && !to_end {
                        return; // drained; the next bytes raise an event
                    }
                    return self.read_frames(idx, to_end);
                }
            }
        }
    }

    fn read_frames(&mut self, idx: usize, to_end: bool) {
        let Worker {
            conns,
            scratch,
            acct,
            again,
            ..
        } = self;
        let Some(conn) = conns[idx].as_mut() else {
            return;
        };
        let to_end = to_end || conn.tls.is_some();
        let mut outcome: Option<Result<(), Stop>> = None;
        let mut error: Option<String> = None;
        for _ in 0..READS_PER_TURN {
            let n = match recv(conn, scratch) {
                Ok(0) => {
                    error = Some("eof".into());
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome = Some(Ok(()));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            let now_us = sys::unix_micros();
            let res = if conn.buf.is_empty() {
                acct.frames(idx, &scratch[..n], &mut conn.out, &mut conn.rx, now_us)
                    .map(|used| conn.buf.extend_from_slice(&scratch[used..n]))
            } else {
                conn.buf.extend_from_slice(&scratch[..n]);
                let mut buf = std::mem::take(&mut conn.buf);
                let r = acct
                    .frames(idx, &buf, &mut conn.out, &mut conn.rx, now_us)
                    .map(|used| {
                        buf.drain(..used);
                    });
                conn.buf = buf;
                r
            };
            if let Err(stop) = res {
                outcome = Some(Err(stop));
                break;
            }
            if n < scratch.len() && !to_end {
                outcome = Some(Ok(())); // drained: the next bytes raise an event
                break;
            }
        }
        if needs_flush(conn) {
            if let Err(e) = flush(conn) {
                error.get_or_insert(format!("write: {e}"));
            }
        }
        if let Some(e) = error {
            return self.finish(idx, e);
        }
        match outcome {
            None => again.push(idx),
            Some(Ok(())) => {}
            Some(Err(stop)) => self.stop_conn(idx, stop),
        }
    }

    fn stop_conn(&mut self, idx: usize, stop: Stop) {
        if let Some(conn) = self.conns[idx].as_mut() {
            let _ = flush(conn);
        }
        let reason = match stop {
            Stop::Closed(code) => format!("close {code}"),
            Stop::Protocol(e) => format!("protocol error: {e}"),
        };
        self.finish(idx, reason);
    }
}

/// `wss://`: records the TLS handshake's time once it is over (checked
/// after each read while the upgrade is under way: the handshake ends on
/// a read of the server's last flight).
fn time_tls(conn: &mut Conn, hist: &mut Histogram<u64>) {
    if let Some(tls) = conn.tls.as_deref() {
        if !conn.tls_timed && !tls.is_handshaking() {
            conn.tls_timed = true;
            let us = conn.started.elapsed().as_micros() as u64;
            hist.saturating_record(us.max(1));
        }
    }
}

/// Reads plaintext: straight from the socket, or through TLS.
fn recv(conn: &mut Conn, buf: &mut [u8]) -> io::Result<usize> {
    tls::read_plain(conn.tls.as_deref_mut(), &mut conn.stream, buf)
}

/// Something waits to be written: plaintext, or TLS records.
fn needs_flush(conn: &Conn) -> bool {
    tls::wants_flush(conn.tls.as_deref(), &conn.out)
}

/// Writes what is queued; keeps the rest for the next writable event.
fn flush(conn: &mut Conn) -> io::Result<()> {
    tls::write_plain(conn.tls.as_deref_mut(), &mut conn.stream, &mut conn.out)
}
