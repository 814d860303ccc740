//! One hostile engine thread: a `mio::Poll` over its share of the slots and
//! a 10 ms tick. A slot waits, connects, upgrades (the WebSocket kinds),
//! then plays its kind's script: a prelude (the body's head, the oversized
//! frame's header, the garbage frame) and a paced stream (body bytes, head
//! bytes, the 8 MiB payload, the never-reader's probe). What the server
//! sends is read as it comes (except by a never-reader, until the server
//! has ended it) and says how the connection ended; the slot then waits
//! [`AGAIN_AFTER`] and connects again, [`MAX_ATTEMPTS`] times at most.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::frames::{self, Frames, Garbage};
use super::{Config, Kind, KindStats, Progress, MAX_ATTEMPTS};
use crate::{sys, ws};

/// The engine's tick: the finest pace of a script.
const TICK: Duration = Duration::from_millis(10);
/// The first connects are spread over this.
const RAMP: Duration = Duration::from_secs(1);
/// Pause before a slot connects again once the server ended it.
const AGAIN_AFTER: Duration = Duration::from_millis(250);
/// A never-reader's receive buffer (the kernel doubles it).
const NONREADER_RCVBUF: usize = 4096;
/// A never-reader's probe interval.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Most bytes of the server's answer kept per connection: whole frames are
/// dropped as they come, so this bounds one frame.
const KEEP: usize = frames::MAX_FRAME;
/// Reads per readiness event at most (each up to the scratch buffer).
const READS_PER_EVENT: usize = 256;

/// The buffers every connection writes its paced stream from.
pub struct Bufs {
    body: Vec<u8>,
    slowloris: Vec<u8>,
    filler: Vec<u8>,
    probe: Vec<u8>,
}

impl Bufs {
    pub fn new(host: &str) -> Bufs {
        Bufs {
            body: vec![b'x'; 16 << 10],
            slowloris: frames::slowloris_head(host),
            filler: frames::masked_filler(),
            probe: frames::probe(),
        }
    }

    /// The bytes a kind's paced stream repeats.
    fn source(&self, kind: Kind) -> &[u8] {
        match kind {
            Kind::Bodies => &self.body,
            Kind::Slowloris => &self.slowloris,
            _ => &self.filler,
        }
    }
}

/// A kind's paced stream: `total` bytes, at most `piece` every `every`.
struct Pace {
    total: usize,
    piece: usize,
    every: Duration,
}

fn pace(kind: Kind) -> Option<Pace> {
    let (total, piece, every) = match kind {
        // About 400 KiB/s: most of the mebibyte in some 2.5 s.
        Kind::Bodies => (frames::BODY_SENT, 16 << 10, Duration::from_millis(40)),
        // 40 bytes/s: a head that would take minutes to reach 8 KiB.
        Kind::Slowloris => (frames::SLOWLORIS_MAX, 4, Duration::from_millis(100)),
        // As fast as the socket takes it.
        Kind::Oversized => (frames::OVERSIZED, frames::FILLER, TICK),
        Kind::Garbage | Kind::Nonreader => return None,
    };
    Some(Pace {
        total,
        piece,
        every,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Connecting,
    Upgrading,
    Active,
    /// Out of attempts.
    Retired,
}

struct Conn {
    kind: Kind,
    /// Index over all the slots: picks the token, source and target.
    slot: usize,
    stream: Option<TcpStream>,
    state: State,
    /// When the next step is due.
    due: Instant,
    attempts: u32,
    /// Bytes of the paced stream written in this attempt.
    done: usize,
    /// Prelude bytes the socket has not taken yet.
    out: Vec<u8>,
    /// What the server sent: the upgrade answer, frames not looked at yet,
    /// the start of an HTTP answer.
    inbuf: Vec<u8>,
    /// The expected `Sec-WebSocket-Accept` while upgrading.
    accept: String,
    /// Whether the first connect has finished (for the ramp).
    settled: bool,
}

/// One write without blocking: the bytes taken (0 when the socket is full
/// or the call was interrupted; the next tick tries again).
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    match stream.write(bytes) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// How a failed read or write ended the stream.
fn failure(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset".into(),
        io::ErrorKind::BrokenPipe => "eof".into(),
        _ => e.to_string(),
    }
}

/// What the server's bytes so far say ended the connection, if anything.
fn verdict(c: &Conn) -> Option<String> {
    match c.state {
        State::Upgrading => match ws::check_upgrade_response(&c.inbuf, &c.accept) {
            Err(r) if r.bytes().all(|b| b.is_ascii_digit()) => Some(format!("http {r}")),
            Err(r) => Some(format!("upgrade: {r}")),
            Ok(None) if c.inbuf.len() >= KEEP => Some("upgrade: answer head too long".into()),
            Ok(_) => None,
        },
        State::Active if c.kind.upgrades() => match frames::scan_frames(&c.inbuf) {
            Frames::Close(code) => Some(format!("close {code}")),
            Frames::Broken => Some("not WebSocket frames".into()),
            Frames::Seen(_) => None,
        },
        State::Active => frames::http_status(&c.inbuf).map(|s| format!("http {s}")),
        _ => None,
    }
}

pub struct Engine {
    poll: Poll,
    cfg: Arc<Config>,
    bufs: Arc<Bufs>,
    progress: Arc<Progress>,
    conns: Vec<Conn>,
    /// Per kind, in the order of [`Kind::ALL`].
    stats: Vec<KindStats>,
    scratch: Vec<u8>,
}

impl Engine {
    /// An engine for `mine` (slot index, kind); their first connects spread
    /// over [`RAMP`].
    pub fn new(
        mine: Vec<(usize, Kind)>,
        cfg: Arc<Config>,
        bufs: Arc<Bufs>,
        progress: Arc<Progress>,
    ) -> io::Result<Engine> {
        let now = Instant::now();
        let n = mine.len().max(1) as u32;
        let mut stats: Vec<KindStats> = Kind::ALL.iter().map(|k| KindStats::new(*k)).collect();
        let conns = mine
            .into_iter()
            .enumerate()
            .map(|(j, (slot, kind))| {
                stats[kind as usize].slots += 1;
                Conn {
                    kind,
                    slot,
                    stream: None,
                    state: State::Waiting,
                    due: now + RAMP * j as u32 / n,
                    attempts: 0,
                    done: 0,
                    out: Vec::new(),
                    inbuf: Vec::new(),
                    accept: String::new(),
                    settled: false,
                }
            })
            .collect();
        Ok(Engine {
            poll: Poll::new()?,
            cfg,
            bufs,
            progress,
            conns,
            stats,
            scratch: vec![0u8; 64 << 10],
        })
    }

    /// Runs until told to stop or the deadline; the figures per kind.
    pub fn run(mut self) -> Vec<KindStats> {
        let mut events = Events::with_capacity(1024);
        while !self.progress.stop.load(Ordering::Relaxed) && Instant::now() < self.cfg.deadline {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("wsedge-loadtest: hostile engine: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                let closed = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                self.on_event(ev.token().0, ev.is_readable(), closed);
            }
            let now = Instant::now();
            for idx in 0..self.conns.len() {
                if self.conns[idx].due <= now {
                    self.on_due(idx, now);
                }
            }
        }
        self.wind_down()
    }

    /// Counts what is still open at the stop, and closes it.
    fn wind_down(mut self) -> Vec<KindStats> {
        for c in &mut self.conns {
            let what = match c.state {
                State::Connecting => "still connecting",
                State::Upgrading | State::Active => "still open",
                State::Waiting | State::Retired => continue,
            };
            *self.stats[c.kind as usize]
                .ended
                .entry(what.into())
                .or_default() += 1;
            c.stream = None;
        }
        self.stats.retain(|s| s.slots > 0);
        self.stats
    }

    fn on_due(&mut self, idx: usize, now: Instant) {
        match self.conns[idx].state {
            State::Waiting => self.connect(idx),
            State::Active => self.step(idx, now),
            // Nothing timed: events move these on.
            _ => self.conns[idx].due = self.cfg.deadline,
        }
    }

    fn on_event(&mut self, idx: usize, readable: bool, closed: bool) {
        let Some(c) = self.conns.get(idx) else {
            return;
        };
        match (c.state, c.kind) {
            (State::Connecting, _) => self.on_connecting(idx),
            // A never-reader learns of its end from an error event only.
            (State::Active, Kind::Nonreader) if closed => self.look(idx, Some("reset".into())),
            (State::Active, Kind::Nonreader) => {
                self.flush(idx);
            }
            (State::Upgrading | State::Active, _) => {
                let open = self.flush(idx);
                if open && (readable || closed) {
                    self.look(idx, None);
                }
            }
            _ => {}
        }
    }

    fn connect(&mut self, idx: usize) {
        let c = &self.conns[idx];
        let source = sys::source_addr(c.slot, self.cfg.source_addrs);
        let target = self.cfg.targets[c.slot % self.cfg.targets.len()];
        let rcvbuf = (c.kind == Kind::Nonreader).then_some(NONREADER_RCVBUF);
        let opened = sys::connect_from(source, target, rcvbuf).and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match opened {
            Ok(s) => {
                let c = &mut self.conns[idx];
                c.stream = Some(s);
                c.state = State::Connecting;
                c.due = self.cfg.deadline;
            }
            Err(e) => self.end(idx, format!("connect: {e}")),
        }
    }

    fn on_connecting(&mut self, idx: usize) {
        let Some(stream) = self.conns[idx].stream.as_ref() else {
            return;
        };
        match sys::connect_done(stream) {
            Ok(false) => {}
            Ok(true) => self.opened(idx),
            Err(e) => self.end(idx, format!("connect: {e}")),
        }
    }

    /// TCP is up: the prelude (body head, upgrade request) goes out.
    fn opened(&mut self, idx: usize) {
        self.settle(idx);
        let c = &mut self.conns[idx];
        self.stats[c.kind as usize].opened += 1;
        let cfg = &self.cfg;
        c.out = match c.kind {
            Kind::Bodies => frames::body_head(&cfg.host_header, c.slot % 2 == 1),
            Kind::Slowloris => Vec::new(),
            _ => {
                let (req, accept) = ws::keyed_upgrade_request(
                    &cfg.host_header,
                    &cfg.path,
                    &cfg.tokens[c.slot % cfg.tokens.len()],
                    cfg.token_in_header,
                    false,
                );
                c.accept = accept;
                req
            }
        };
        if c.kind.upgrades() {
            c.state = State::Upgrading;
            c.due = cfg.deadline;
        } else {
            c.state = State::Active;
            c.due = Instant::now();
        }
        self.flush(idx);
    }

    /// The `101` came: the kind's prelude after it, due at once.
    fn upgraded(&mut self, idx: usize, head: usize) {
        let c = &mut self.conns[idx];
        c.inbuf.drain(..head);
        c.accept = String::new();
        c.state = State::Active;
        c.due = Instant::now();
        match c.kind {
            Kind::Oversized => c.out = frames::oversized_head(),
            Kind::Garbage => c.out = Garbage::nth(c.slot + c.attempts as usize).frame(),
            Kind::Nonreader => {
                // From here on only error events: nothing is read.
                if let Some(s) = c.stream.as_mut() {
                    let _ = self
                        .poll
                        .registry()
                        .reregister(s, Token(idx), Interest::WRITABLE);
                }
                c.due += PROBE_EVERY;
            }
            Kind::Bodies | Kind::Slowloris => {}
        }
    }

    /// A due step of an open connection: the rest of the prelude, then the
    /// kind's paced stream or probe.
    fn step(&mut self, idx: usize, now: Instant) {
        if !self.flush(idx) {
            return;
        }
        let c = &mut self.conns[idx];
        if !c.out.is_empty() {
            c.due = now + TICK;
            return;
        }
        match c.kind {
            Kind::Nonreader => {
                c.out = self.bufs.probe.clone();
                c.due = now + PROBE_EVERY;
                self.flush(idx);
            }
            // The frame is out: the server's answer comes as an event.
            Kind::Garbage => c.due = self.cfg.deadline,
            _ => self.paced(idx, now),
        }
    }

    /// The next piece of the kind's paced stream.
    fn paced(&mut self, idx: usize, now: Instant) {
        let c = &mut self.conns[idx];
        let Some(p) = pace(c.kind) else {
            return;
        };
        if c.done >= p.total {
            c.due = self.cfg.deadline;
            return;
        }
        let src = self.bufs.source(c.kind);
        let off = c.done % src.len();
        let len = p.piece.min(p.total - c.done).min(src.len() - off);
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        match write_some(stream, &src[off..off + len]) {
            Ok(n) => {
                c.done += n;
                self.stats[c.kind as usize].bytes_sent += n as u64;
                c.due = now + p.every;
            }
            Err(e) => self.look(idx, Some(failure(&e))),
        }
    }

    /// Writes what is left of the prelude; false when that ended the
    /// connection.
    fn flush(&mut self, idx: usize) -> bool {
        let c = &mut self.conns[idx];
        let Some(stream) = c.stream.as_mut() else {
            return false;
        };
        if c.out.is_empty() {
            return true;
        }
        match write_some(stream, &c.out) {
            Ok(n) => {
                self.stats[c.kind as usize].bytes_sent += n as u64;
                c.out.drain(..n);
                true
            }
            Err(e) => {
                self.look(idx, Some(failure(&e)));
                false
            }
        }
    }

    /// Reads what the server sent and ends the connection when that (or
    /// `failure`, a failed write or an error event) says it is over: the
    /// server's own word (close code, status) first, then how the stream
    /// ended.
    fn look(&mut self, idx: usize, failure: Option<String>) {
        if self.conns[idx].stream.is_none() {
            return;
        }
        let end = self.read_in(idx).or(failure);
        let c = &self.conns[idx];
        if c.state == State::Upgrading {
            if let Ok(Some(head)) = ws::check_upgrade_response(&c.inbuf, &c.accept) {
                self.upgraded(idx, head);
            }
        }
        if let Some(reason) = verdict(&self.conns[idx]).or(end) {
            self.end(idx, reason);
        }
    }

    /// Reads what the socket has into `inbuf` (at most [`KEEP`] bytes kept,
    /// the rest read and dropped); on an open WebSocket, drops whole frames
    /// as they come and stops at a close frame. How the stream ended, if it
    /// did.
    fn read_in(&mut self, idx: usize) -> Option<String> {
        let c = &mut self.conns[idx];
        let fd = c.stream.as_ref()?.as_raw_fd();
        let frames = c.state == State::Active && c.kind.upgrades();
        for _ in 0..READS_PER_EVENT {
            match sys::recv(fd, &mut self.scratch) {
                Ok(0) => return Some("eof".into()),
                Ok(n) => {
                    let room = KEEP.saturating_sub(c.inbuf.len()).min(n);
                    c.inbuf.extend_from_slice(&self.scratch[..room]);
                    if frames {
                        match frames::scan_frames(&c.inbuf) {
                            Frames::Seen(whole) => drop(c.inbuf.drain(..whole)),
                            // The verdict is in the buffer.
                            Frames::Close(_) | Frames::Broken => return None,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(failure(&e)),
            }
        }
        None
    }

    /// Counts how the connection ended, closes it, and schedules the next
    /// attempt (or retires the slot).
    fn end(&mut self, idx: usize, reason: String) {
        self.settle(idx);
        let c = &mut self.conns[idx];
        *self.stats[c.kind as usize].ended.entry(reason).or_default() += 1;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.attempts += 1;
        c.done = 0;
        c.out = Vec::new();
        c.inbuf = Vec::new();
        c.accept = String::new();
        if c.attempts >= MAX_ATTEMPTS {
            c.state = State::Retired;
            c.due = self.cfg.deadline;
        } else {
            c.state = State::Waiting;
            c.due = Instant::now() + AGAIN_AFTER;
        }
    }

    /// The slot's first connect has finished (for [`super::Attack::ramped`]).
    fn settle(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if !c.settled {
            c.settled = true;
            self.progress.settled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
