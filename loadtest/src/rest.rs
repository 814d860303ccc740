//! The REST side of the load: broadcasts (or user sends) over keep-alive
//! HTTP/1.1 connections ("lanes"), pipelined up to a window of requests in
//! flight. One writer (the thread running a phase) builds and writes the
//! requests; each lane has a reader thread that parses the answers in order
//! and adds up `sentToConnections`, the number of deliveries the server
//! promised.
//!
//! Two ways to pace a phase: as fast as the window (and, optionally, the
//! delivery lag) allows, or at a fixed offered rate. At a fixed rate a
//! message's timestamp is the time it was *due*, not the time it could be
//! written, so a server that falls behind shows it in the latency
//! (no coordinated omission).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;
use memchr::memmem;

use crate::channels;
use crate::client::new_histogram;
use crate::sys::unix_micros;
use crate::tls::{self, Tls};
use crate::ws::sample_payload;

/// What each request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `POST /v1/websocket/broadcast` to everyone.
    Broadcast,
    /// `POST /v1/websocket/send/:userId`, users in turn.
    Send,
    /// `POST /v1/websocket/broadcast` with `userIds` (`--targets` users each).
    Users,
    /// `POST /v1/websocket/channels/lt:{c}/publish`, channels in turn.
    Channel,
}

pub struct RestConfig {
    pub addr: SocketAddr,
    /// `https://`: TLS on every lane (blocking rustls; a lane's writer and
    /// reader threads share its state, see [`tls::Split`]).
    pub tls: Option<Tls>,
    pub host_header: String,
    pub bearer: String,
    pub payload_bytes: usize,
    pub mode: Mode,
    pub user_ids: Arc<Vec<String>>,
    pub targets: usize,
    /// `--mode channel`: channels `lt:0 … lt:{channels-1}`.
    pub channels: u32,
    pub lanes: usize,
    pub window: usize,
    /// The most deliveries one answer can promise to the measured clients,
    /// when other connections (`--hostile`) get the broadcasts too.
    pub audience: Option<Audience>,
}

/// How many measured connections are open now.
pub type Audience = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How a phase is paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as `window` requests in flight (and `max_lag`) allow.
    Window { max_lag: u64 },
    /// A fixed offered rate, requests per second.
    Rate(f64),
}

/// Answers counted by the readers (reset at each phase).
pub struct Tally {
    pub ok: u64,
    pub expected: u64,
    pub errors: BTreeMap<String, u64>,
    /// Request written → answer read, microseconds.
    pub rest_latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ok: 0,
            expected: 0,
            errors: BTreeMap::new(),
            rest_latency: new_histogram(),
        }
    }
}

/// Counters the writer reads while it paces (cumulative over phases).
#[derive(Default)]
struct Live {
    /// Requests answered (or given up).
    answered: AtomicU64,
    /// Sum of `sentToConnections`.
    expected: AtomicU64,
}

/// Requests a lane sends on one connection before it moves to a fresh one:
/// under the 1,000 a wsedge keep-alive connection serves (and nginx's
/// default), so the server never closes a lane under load with requests
/// in flight.
const LANE_REQUESTS: u64 = 900;

struct Lane {
    stream: LaneWriter,
    /// Requests written on this connection.
    sent: u64,
    permits: Receiver<()>,
    meta: Option<Sender<Instant>>,
    dead: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

/// What the writer did in one phase.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub requests: u64,
    /// The next free sequence number.
    pub next_seq: u64,
    pub start_us: u64,
    pub elapsed: Duration,
}

pub struct RestDriver {
    cfg: RestConfig,
    lanes: Vec<Lane>,
    tally: Arc<Mutex<Tally>>,
    live: Arc<Live>,
    sent_total: u64,
    /// Requests issued per user (send / users modes) or per channel
    /// (channel mode) so far.
    cursor: u64,
}

impl RestDriver {
    pub fn connect(cfg: RestConfig) -> io::Result<RestDriver> {
        let mut d = RestDriver {
            lanes: Vec::new(),
            tally: Arc::new(Mutex::new(Tally::new())),
            live: Arc::new(Live::default()),
            sent_total: 0,
            cursor: 0,
            cfg,
        };
        for i in 0..d.cfg.lanes.max(1) {
            let lane = d.open_lane(i)?;
            d.lanes.push(lane);
        }
        Ok(d)
    }

    fn open_lane(&self, i: usize) -> io::Result<Lane> {
        let stream = TcpStream::connect_timeout(&self.cfg.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        // The TLS handshake is bounded by those timeouts; then the reader's
        // short timeout, so it notices a dead lane.
        let (reader, stream): (Box<dyn Read + Send>, LaneWriter) = match &self.cfg.tls {
            None => (Box::new(stream.try_clone()?), LaneWriter::Plain(stream)),
            Some(t) => {
                let (r, w) = tls::Split::handshake(t, stream)?;
                (Box::new(r), LaneWriter::Tls(w))
            }
        };
        stream
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(500)))?;
        let window = self.cfg.window.max(1);
        let (permit_tx, permits) = bounded(window);
        for _ in 0..window {
            let _ = permit_tx.send(());
        }
        let (meta_tx, meta_rx) = unbounded::<Instant>();
        let dead = Arc::new(AtomicBool::new(false));
        let reader = {
            let stream = reader;
            let tally = self.tally.clone();
            let live = self.live.clone();
            let dead = dead.clone();
            let audience = self.cfg.audience.clone();
            std::thread::Builder::new()
                .name(format!("lt-rest-{i}"))
                .spawn(move || {
                    read_answers(stream, meta_rx, permit_tx, tally, live, dead, audience)
                })?
        };
        Ok(Lane {
            stream,
            sent: 0,
            permits,
            meta: Some(meta_tx),
            dead,
            reader: Some(reader),
        })
    }

    /// Replaces lanes whose connection the server closed.
    pub fn revive(&mut self) -> io::Result<()> {
        for i in 0..self.lanes.len() {
            if self.lanes[i].dead.load(Ordering::Acquire) {
                let fresh = self.open_lane(i)?;
                let old = std::mem::replace(&mut self.lanes[i], fresh);
                close_lane(old);
            }
        }
        Ok(())
    }

    /// Moves every lane that sent [`LANE_REQUESTS`] to a fresh connection,
    /// once the old one's answers are in: a request on the new connection
    /// (another shard, maybe) must not overtake one still in flight on the
    /// old, or the broadcasts would arrive out of order.
    fn recycle(&mut self) {
        let window = self.cfg.window.max(1);
        for i in 0..self.lanes.len() {
            if self.lanes[i].sent < LANE_REQUESTS {
                continue;
            }
            let idle_by = Instant::now() + Duration::from_secs(10);
            let lane = &self.lanes[i];
            while lane.permits.len() < window
                && !lane.dead.load(Ordering::Acquire)
                && Instant::now() < idle_by
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            match self.open_lane(i) {
                Ok(fresh) => close_lane(std::mem::replace(&mut self.lanes[i], fresh)),
                // Stays on the old connection; the server's close revives it.
                Err(_) => self.lanes[i].sent = 0,
            }
        }
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Expected deliveries promised so far (all phases).
    pub fn expected_total(&self) -> u64 {
        self.live.expected.load(Ordering::Relaxed)
    }

    /// Answers received so far (all phases).
    pub fn answered_total(&self) -> u64 {
        self.live.answered.load(Ordering::Relaxed)
    }

    /// Takes the tally of the answers since the last call.
    pub fn take_tally(&self) -> Tally {
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *t, Tally::new())
    }

    /// Waits (at most `timeout`) until every request sent has its answer.
    pub fn wait_answers(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.answered_total() < self.sent_total {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Runs one phase: requests numbered from `first_seq` (a multiple of
    /// the lane count, so that `seq % lanes` is the lane) for `duration`.
    /// `received` tells how many messages the clients got so far (for the
    /// lag bound); `fanout_hint` is the delivery count expected per request
    /// before any answer says so.
    pub fn run_phase(
        &mut self,
        pace: Pace,
        duration: Duration,
        first_seq: u64,
        received: &dyn Fn() -> u64,
        fanout_hint: u64,
    ) -> Sent {
        let lanes = self.lanes.len() as u64;
        let start = Instant::now();
        let start_us = unix_micros();
        let end = start + duration;
        let received_base = received();
        let expected_base = self.expected_total();
        let answered_base = self.answered_total();
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); self.lanes.len()];
        let mut metas: Vec<usize> = vec![0; self.lanes.len()];
        let mut k: u64 = 0;
        let mut body = Vec::with_capacity(self.cfg.payload_bytes + 256);
        'phase: loop {
            let now = Instant::now();
            if now >= end || self.lanes.iter().all(|l| l.dead.load(Ordering::Relaxed)) {
                break;
            }
            let due = match pace {
                Pace::Window { .. } => u64::MAX,
                Pace::Rate(r) => (now.duration_since(start).as_secs_f64() * r) as u64 + 1,
            };
            if k >= due {
                if let Pace::Rate(r) = pace {
                    let next = start + Duration::from_secs_f64(k as f64 / r);
                    let wait = next.saturating_duration_since(now).min(end - now);
                    if wait > Duration::from_micros(50) {
                        std::thread::sleep(wait);
                    } else {
                        std::thread::yield_now();
                    }
                }
                continue;
            }
            if let Pace::Window { max_lag } = pace {
                if max_lag > 0
                    && self.lagging(
                        max_lag,
                        received() - received_base,
                        expected_base,
                        answered_base,
                        k,
                        fanout_hint,
                    )
                {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
            }
            // A batch: as many requests as are due and have a permit.
            let mut batch = 0usize;
            while batch < 64 && k < due {
                let lane = (k % lanes) as usize;
                let l = &self.lanes[lane];
                if l.dead.load(Ordering::Relaxed) {
                    break 'phase;
                }
                let got = if batch == 0 {
                    let wait = end
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50));
                    match l.permits.recv_timeout(wait) {
                        Ok(()) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => break 'phase,
                    }
                } else {
                    l.permits.try_recv().is_ok()
                };
                if !got {
                    break;
                }
                let seq = first_seq + k;
                let t_us = match pace {
                    Pace::Window { .. } => unix_micros(),
                    Pace::Rate(r) => start_us + (k as f64 * 1e6 / r) as u64,
                };
                self.request(seq, t_us, &mut body, &mut bufs[lane]);
                metas[lane] += 1;
                k += 1;
                batch += 1;
            }
            if batch == 0 {
                continue;
            }
            let written = Instant::now();
            for (i, lane) in self.lanes.iter_mut().enumerate() {
                if bufs[i].is_empty() {
                    continue;
                }
                let ok = lane.stream.write_all(&bufs[i]).is_ok();
                bufs[i].clear();
                let n = std::mem::take(&mut metas[i]);
                self.sent_total += n as u64;
                for _ in 0..n {
                    let delivered =
                        ok && lane.meta.as_ref().is_some_and(|m| m.send(written).is_ok());
                    if !delivered {
                        // The reader will never see this one: count it here.
                        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
                        *t.errors.entry("request not written".into()).or_default() += 1;
                        self.live.answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lane.sent += n as u64;
                if !ok {
                    lane.dead.store(true, Ordering::Release);
                }
            }
            self.recycle();
        }
        Sent {
            requests: k,
            next_seq: first_seq + k,
            start_us,
            elapsed: start.elapsed(),
        }
    }

    /// True when more deliveries are outstanding than `max_lag` requests'
    /// worth: the clients are behind, wait before offering more.
    fn lagging(
        &self,
        max_lag: u64,
        received: u64,
        expected_base: u64,
        answered_base: u64,
        sent: u64,
        fanout_hint: u64,
    ) -> bool {
        let answered = self.answered_total() - answered_base;
        let expected = self.expected_total() - expected_base;
        let fanout = expected.checked_div(answered).unwrap_or(fanout_hint).max(1);
        let outstanding = expected + sent.saturating_sub(answered) * fanout;
        outstanding.saturating_sub(received) > max_lag * fanout
    }

    fn request(&mut self, seq: u64, t_us: u64, body: &mut Vec<u8>, out: &mut Vec<u8>) {
        use std::io::Write as _;
        body.clear();
        body.extend_from_slice(br#"{"type":"lt","payload":"#);
        sample_payload(seq, t_us, self.cfg.payload_bytes, body);
        let users = &self.cfg.user_ids;
        let path_user;
        let path = match self.cfg.mode {
            Mode::Broadcast => "/v1/websocket/broadcast",
            Mode::Users => {
                body.extend_from_slice(br#","userIds":["#);
                let n = self.cfg.targets.clamp(1, users.len());
                for j in 0..n {
                    if j > 0 {
                        body.push(b',');
                    }
                    let u = &users[((self.cursor + j as u64) % users.len() as u64) as usize];
                    body.push(b'"');
                    body.extend_from_slice(u.as_bytes());
                    body.push(b'"');
                }
                body.push(b']');
                self.cursor += n as u64;
                "/v1/websocket/broadcast"
            }
            Mode::Send => {
                let u = &users[(self.cursor % users.len() as u64) as usize];
                self.cursor += 1;
                path_user = format!("/v1/websocket/send/{u}");
                &path_user
            }
            Mode::Channel => {
                let c = (self.cursor % u64::from(self.cfg.channels.max(1))) as u32;
                self.cursor += 1;
                path_user = format!("/v1/websocket/channels/{}/publish", channels::name(c));
                &path_user
            }
        };
        body.push(b'}');
        let _ = write!(
            out,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.cfg.host_header,
            self.cfg.bearer,
            body.len()
        );
        out.extend_from_slice(body);
    }

    /// Closes every lane and joins the readers.
    pub fn close(mut self) {
        for lane in self.lanes.drain(..) {
            close_lane(lane);
        }
    }
}

/// The writing half of a lane: the socket itself, or TLS over it.
enum LaneWriter {
    Plain(TcpStream),
    Tls(tls::SplitWriter),
}

impl LaneWriter {
    fn tcp(&self) -> &TcpStream {
        match self {
            LaneWriter::Plain(s) => s,
            LaneWriter::Tls(w) => w.tcp(),
        }
    }
}

impl Write for LaneWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LaneWriter::Plain(s) => s.write(buf),
            LaneWriter::Tls(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LaneWriter::Plain(s) => s.flush(),
            LaneWriter::Tls(w) => w.flush(),
        }
    }
}

fn close_lane(mut lane: Lane) {
    lane.meta = None;
    let _ = lane.stream.tcp().shutdown(std::net::Shutdown::Both);
    if let Some(r) = lane.reader.take() {
        let _ = r.join();
    }
}

/// Reads answers in order on one lane until the writer goes away or the
/// connection fails. Each answer returns one permit to the window.
fn read_answers(
    mut stream: Box<dyn Read + Send>,
    meta: Receiver<Instant>,
    permits: Sender<()>,
    tally: Arc<Mutex<Tally>>,
    live: Arc<Live>,
    dead: Arc<AtomicBool>,
    audience: Option<Audience>,
) {
    let finder = memmem::Finder::new(b"\"sentToConnections\":");
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0usize;
    let mut failure: Option<String> = None;
    while let Ok(sent_at) = meta.recv() {
        match next_answer(&mut stream, &mut buf, &mut start, &dead) {
            Ok(answer) => {
                let now = Instant::now();
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                t.rest_latency
                    .saturating_record((now - sent_at).as_micros().max(1) as u64);
                let n = finder
                    .find(&answer.body)
                    .and_then(|at| leading_number(&answer.body[at + 20..]))
                    .map(|n| audience.as_ref().map_or(n, |open| n.min(open())));
                if answer.status == 200 {
                    t.ok += 1;
                    if let Some(n) = n {
                        t.expected += n;
                        live.expected.fetch_add(n, Ordering::Relaxed);
                    } else {
                        *t.errors
                            .entry("200 without sentToConnections".into())
                            .or_default() += 1;
                    }
                } else {
                    *t.errors
                        .entry(format!("HTTP {}", answer.status))
                        .or_default() += 1;
                }
                drop(t);
                live.answered.fetch_add(1, Ordering::Relaxed);
                let _ = permits.try_send(());
                if answer.close {
                    failure = Some("server closed the REST connection".into());
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(reason) = failure {
        dead.store(true, Ordering::Release);
        // This request and every one queued behind it get no answer.
        let lost = 1 + meta.try_iter().count() as u64;
        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
        *t.errors.entry(reason).or_default() += lost;
        live.answered.fetch_add(lost, Ordering::Relaxed);
    }
}

/// One HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

/// Reads the next whole answer from `buf[*start..]`, reading more as needed.
fn next_answer(
    stream: &mut dyn Read,
    buf: &mut Vec<u8>,
    start: &mut usize,
    dead: &AtomicBool,
) -> Result<Answer, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match parse_answer(&buf[*start..]) {
            Ok(Some((answer, used))) => {
                *start += used;
                if *start == buf.len() {
                    buf.clear();
                    *start = 0;
                } else if *start > 32 * 1024 {
                    buf.drain(..*start);
                    *start = 0;
                }
                return Ok(answer);
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline || dead.load(Ordering::Relaxed) {
            return Err("no answer within 30 s".into());
        }
        let len = buf.len();
        buf.resize(len + 64 * 1024, 0);
        match stream.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Err("server closed the REST connection".into());
            }
            Ok(n) => buf.truncate(len + n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                buf.truncate(len)
            }
            Err(e) => {
                buf.truncate(len);
                return Err(format!("REST read: {e}"));
            }
        }
    }
}

/// Parses one answer (Content-Length or chunked body) at the front of
/// `data`: `Ok(None)` when incomplete.
/// One blocking `GET` (Connection: close) answered with JSON, bounded by
/// 2 s timeouts; for setup checks, never on the measured path. Over
/// `https://` with a blocking rustls stream.
pub fn get_json(
    addr: SocketAddr,
    tls: Option<&Tls>,
    path: &str,
    bearer: &str,
) -> Result<serde_json::Value, String> {
    let mut s =
        tls::Blocking::connect(addr, tls, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| s.flush())
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head in the answer")?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&buf[..at]).into_owned());
    }
    serde_json::from_slice(&buf[at + 4..]).map_err(|e| e.to_string())
}

pub fn parse_answer(data: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for h in resp.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().map_err(|_| "bad Content-Length".to_string())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let rest = &data[head..];
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let Some(eol) = memchr::memmem::find(&rest[at..], b"\r\n") else {
                return Ok(None);
            };
            let line = std::str::from_utf8(&rest[at..at + eol]).map_err(|_| "bad chunk")?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
            at += eol + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                let Some(end) = memchr::memmem::find(&rest[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                return Ok(Some((
                    Answer {
                        status,
                        body,
                        close,
                    },
                    head + at,
                )));
            }
            if rest.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    let len = length.unwrap_or(0);
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some((
        Answer {
            status,
            body: rest[..len].to_vec(),
            close,
        },
        head + len,
    )))
}

fn leading_number(b: &[u8]) -> Option<u64> {
    let b = b.strip_prefix(b" ").unwrap_or(b);
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_length_and_chunked() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"sentToConnections\":1000}\nHTTP/1.1 404";
        let (ans, used) = parse_answer(a).unwrap().unwrap();
        assert_eq!(ans.status, 200);
        assert_eq!(ans.body, b"{\"sentToConnections\":1000}\n");
        assert_eq!(&a[used..], b"HTTP/1.1 404");
        assert_eq!(parse_answer(&a[..used - 1]).unwrap(), None);

        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (ans, used) = parse_answer(c).unwrap().unwrap();
        assert_eq!(ans.body, b"hello world");
        assert!(ans.close);
        assert_eq!(used, c.len());
        for cut in [c.len() - 1, c.len() - 3, 70] {
            assert_eq!(parse_answer(&c[..cut]).unwrap(), None, "cut {cut}");
        }
    }

    #[test]
    fn sent_to_connections_is_read() {
        let body = br#"{"message":"Message broadcasted successfully","sentToConnections":4321,"targetUsers":"all"}"#;
        let f = memmem::Finder::new(b"\"sentToConnections\":");
        let at = f.find(body).unwrap();
        assert_eq!(leading_number(&body[at + 20..]), Some(4321));
    }

    /// A driver with no connection, for what it writes: 64-byte payloads,
    /// 3 channels.
    fn driver(mode: Mode, user_ids: Arc<Vec<String>>, targets: usize) -> RestDriver {
        RestDriver {
            cfg: RestConfig {
                addr: "127.0.0.1:1".parse().unwrap(),
                tls: None,
                host_header: "127.0.0.1:1".into(),
                bearer: "tok".into(),
                payload_bytes: 64,
                mode,
                user_ids,
                targets,
                channels: 3,
                lanes: 1,
                window: 1,
                audience: None,
            },
            lanes: Vec::new(),
            tally: Arc::new(Mutex::new(Tally::new())),
            live: Arc::new(Live::default()),
            sent_total: 0,
            cursor: 0,
        }
    }

    #[test]
    fn requests_are_well_formed() {
        let users: Arc<Vec<String>> = Arc::new((0..5).map(|i| format!("u{i}")).collect());
        let mk = |mode| driver(mode, users.clone(), 2);
        for (mode, path) in [
            (Mode::Broadcast, "/v1/websocket/broadcast"),
            (Mode::Users, "/v1/websocket/broadcast"),
            (Mode::Send, "/v1/websocket/send/u0"),
            (Mode::Channel, "/v1/websocket/channels/lt:0/publish"),
        ] {
            let mut d = mk(mode);
            let (mut body, mut out) = (Vec::new(), Vec::new());
            d.request(7, 99, &mut body, &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&out).unwrap() {
                httparse::Status::Complete(n) => n,
                _ => panic!(),
            };
            assert_eq!(req.path, Some(path));
            let v: serde_json::Value = serde_json::from_slice(&out[head..]).unwrap();
            assert_eq!(v["type"], "lt");
            assert_eq!(v["payload"]["s"], 7);
            assert_eq!(v["payload"]["t"], 99);
            assert_eq!(serde_json::to_vec(&v["payload"]).unwrap().len(), 64);
            if mode == Mode::Users {
                assert_eq!(v["userIds"], serde_json::json!(["u0", "u1"]));
            }
        }
    }

    #[test]
    fn publishes_go_to_the_channels_in_turn() {
        let mut d = driver(Mode::Channel, Arc::new(vec!["u0".into()]), 1);
        let mut paths = Vec::new();
        for seq in 0..4 {
            let (mut body, mut out) = (Vec::new(), Vec::new());
            d.request(seq, 1, &mut body, &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&out).unwrap() {
                httparse::Status::Complete(n) => n,
                _ => panic!(),
            };
            paths.push(req.path.unwrap().to_string());
            let v: serde_json::Value = serde_json::from_slice(&out[head..]).unwrap();
            assert_eq!(v["type"], "lt");
            assert_eq!(v["payload"]["s"], seq);
        }
        let want: Vec<String> = [0, 1, 2, 0]
            .iter()
            .map(|c| format!("/v1/websocket/channels/lt:{c}/publish"))
            .collect();
        assert_eq!(paths, want);
    }
}
