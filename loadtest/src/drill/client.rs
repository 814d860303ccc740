//! The drill's clients: a few mio worker threads, each with its share of
//! the clients. A client connects, reads `connected`, subscribes to its
//! channels, and then remembers what a real client must to recover: the
//! epoch and the last offset of `@all`, `@user` and each channel. When its
//! connection ends (EOF, reset, close frame) it waits a jittered backoff
//! ([`backoff`]), reconnects, to another node in a cluster, with
//! `?epoch&since_all&since_user`, and resubscribes with `since` and
//! `epoch`. Every message of ours is logged with its stream and sequence
//! number (from the payload the tool published), for [`super::track`].
//!
//! Messages are parsed as JSON (a drill carries tens of thousands per
//! second, not millions); nothing the server sends is trusted to parse.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use serde_json::Value;

use super::track::{ClientLog, Connected, Got, Stream, Subscribed};
use crate::channels;
use crate::sys;
use crate::tls::{self, Tls};
use crate::ws::{self, Parsed};

/// Largest server frame a drill client takes.
const MAX_FRAME: usize = 16 << 20;
/// Largest upgrade answer head.
const MAX_HEAD: usize = 16 << 10;
/// The backoff never exceeds this.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The delay before reconnect attempt `attempt` (0 for the first after a
/// drop): uniform in [100·2^a, 500·2^a) ms, at most 5 s. `r` is uniform in
/// [0, 1).
pub fn backoff(attempt: u32, r: f64) -> Duration {
    let base = 100.0 * f64::from(1u32 << attempt.min(6));
    Duration::from_secs_f64(base * (1.0 + 4.0 * r.clamp(0.0, 1.0)) / 1000.0).min(BACKOFF_CAP)
}

/// The node attempt `attempt` goes to after the connection to node `from`
/// ended: in a cluster another node, client `idx` starting at its own
/// offset among them so that a dead node's clients spread over the others;
/// on one node (or `same`), that node again.
pub fn next_node(nodes: usize, from: u16, idx: usize, attempt: u32, same: bool) -> u16 {
    if same || nodes <= 1 {
        return from;
    }
    let k = (idx + attempt as usize) % (nodes - 1);
    let n = k as u16;
    if n >= from {
        n + 1
    } else {
        n
    }
}

/// One client: its user, its first node, its source address, its channels.
#[derive(Debug, Clone)]
pub struct Spec {
    pub idx: usize,
    pub user: u32,
    pub home: u16,
    pub source: Ipv4Addr,
    pub channels: Vec<u32>,
}

pub struct Config {
    /// Node 0 first.
    pub targets: Vec<SocketAddr>,
    /// `--server-tls`: TLS to every node (`None`: plain TCP).
    pub tls: Option<Tls>,
    /// One per user.
    pub tokens: Arc<Vec<String>>,
    /// Attempts in flight per worker.
    pub max_pending: usize,
    /// A connect must give `connected` within this.
    pub handshake_timeout: Duration,
    /// Reconnect to the same node (one server restarted) instead of another.
    pub same_node: bool,
}

/// Counters the main thread follows.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Clients whose connection is open and greeted.
    pub connected: AtomicUsize,
    /// Clients whose current connection has every channel's `subscribed`.
    pub subscribed: AtomicUsize,
    /// Messages of ours received.
    pub received: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshaking,
    Open,
}

struct Conn {
    stream: TcpStream,
    /// `--server-tls`: the TLS state; `buf` and `out` hold plaintext.
    tls: Option<Box<ClientConnection>>,
    state: State,
    started: Instant,
    accept: String,
    buf: Vec<u8>,
    out: Vec<u8>,
    frag: Option<Vec<u8>>,
    /// `connected` came.
    greeted: bool,
}

struct Chan {
    channel: u32,
    epoch: Option<String>,
    last: u64,
    acked: bool,
}

struct Client {
    spec: Spec,
    conn: Option<Conn>,
    node: u16,
    /// The node whose connection ended last (the next attempts avoid it).
    left: u16,
    epoch: Option<String>,
    last_all: u64,
    last_user: u64,
    chans: Vec<Chan>,
    attempt: u32,
    retry_at: Option<Instant>,
    backoff_us: u64,
    /// Counted in `Shared::connected` / `Shared::subscribed`.
    counted: bool,
    counted_subs: bool,
    log: ClientLog,
}

struct Worker {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    poll: Poll,
    clients: Vec<Client>,
    pending: usize,
    scratch: Vec<u8>,
    rng: u64,
}

/// Starts a worker for `specs`; it runs until `shared.stop` and hands back
/// each client's log with its index.
pub fn spawn(
    id: usize,
    cfg: Arc<Config>,
    specs: Vec<Spec>,
    shared: Arc<Shared>,
) -> io::Result<JoinHandle<Vec<(usize, ClientLog)>>> {
    let poll = Poll::new()?;
    let now = Instant::now();
    let clients = specs
        .into_iter()
        .map(|spec| Client {
            node: spec.home,
            left: spec.home,
            chans: spec
                .channels
                .iter()
                .map(|&c| Chan {
                    channel: c,
                    epoch: None,
                    last: 0,
                    acked: false,
                })
                .collect(),
            log: ClientLog {
                user: spec.user,
                channels: spec.channels.clone(),
                ..ClientLog::default()
            },
            spec,
            conn: None,
            epoch: None,
            last_all: 0,
            last_user: 0,
            attempt: 0,
            retry_at: Some(now),
            backoff_us: 0,
            counted: false,
            counted_subs: false,
        })
        .collect();
    let w = Worker {
        cfg,
        shared,
        poll,
        clients,
        pending: 0,
        scratch: vec![0u8; 256 * 1024],
        rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
    };
    std::thread::Builder::new()
        .name(format!("lt-drill-{id}"))
        .spawn(move || w.run())
}

impl Worker {
    fn run(mut self) -> Vec<(usize, ClientLog)> {
        let mut events = Events::with_capacity(1024);
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.start_due();
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(5))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("wsedge-loadtest: drill worker: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                self.on_ready(ev.token().0);
            }
            self.expire();
        }
        self.clients
            .into_iter()
            .map(|c| (c.spec.idx, c.log))
            .collect()
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.random() as u32).to_ne_bytes()
    }

    /// Starts the attempts that are due, within the pending bound.
    fn start_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.clients.len() {
            if self.pending >= self.cfg.max_pending {
                return;
            }
            let c = &self.clients[i];
            if c.conn.is_some() || c.retry_at.is_none_or(|t| t > now) {
                continue;
            }
            self.clients[i].retry_at = None;
            match self.open(i) {
                Ok(conn) => {
                    self.clients[i].conn = Some(conn);
                    self.pending += 1;
                }
                Err(e) => self.attempt_failed(i, format!("connect: {e}")),
            }
        }
    }

    /// The path of an attempt: recovery parameters once the client has an
    /// epoch.
    fn path(c: &Client) -> String {
        match &c.epoch {
            Some(e) => format!(
                "/ws?epoch={}&since_all={}&since_user={}",
                percent_encode(e),
                c.last_all,
                c.last_user
            ),
            None => "/ws".into(),
        }
    }

    fn open(&mut self, i: usize) -> io::Result<Conn> {
        let c = &self.clients[i];
        let target = self.cfg.targets[usize::from(c.node) % self.cfg.targets.len()];
        let tls = match &self.cfg.tls {
            Some(t) => Some(Box::new(t.connect()?)),
            None => None,
        };
        let mut stream = sys::connect_from(c.spec.source, target, None)?;
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let token = &self.cfg.tokens[c.spec.user as usize % self.cfg.tokens.len()];
        let (out, accept) =
            ws::keyed_upgrade_request(&target.to_string(), &Self::path(c), token, false);
        let mut conn = Conn {
            stream,
            tls,
            state: State::Connecting,
            started: Instant::now(),
            accept,
            buf: Vec::new(),
            out,
            frag: None,
            greeted: false,
        };
        // Usually connected at once on loopback; otherwise the writable
        // event takes it from here.
        if let Some(tls) = conn.tls.as_deref_mut() {
            // The request waits in rustls for the end of the handshake.
            let n = tls::send(tls, &conn.out)?;
            conn.out.drain(..n);
            if tls::flush_tls(tls, &mut conn.stream).is_ok() {
                conn.state = State::Handshaking;
            }
            return Ok(conn);
        }
        if let Ok(n) = conn.stream.write(&conn.out) {
            conn.out.drain(..n);
            conn.state = State::Handshaking;
        }
        Ok(conn)
    }

    /// An attempt that gave no `connected`: the next one after a backoff.
    fn attempt_failed(&mut self, i: usize, reason: String) {
        let r = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        let nodes = self.cfg.targets.len();
        let same = self.cfg.same_node;
        let c = &mut self.clients[i];
        c.log.failures.push(reason);
        c.attempt += 1;
        let delay = backoff(c.attempt, r);
        c.backoff_us += delay.as_micros() as u64;
        c.retry_at = Some(Instant::now() + delay);
        if c.epoch.is_some() {
            c.node = next_node(nodes, c.left, c.spec.idx, c.attempt, same);
        }
    }

    /// An open connection ended: log it, then the first attempt after a
    /// backoff, to another node in a cluster.
    fn dropped(&mut self, i: usize, reason: String) {
        let r = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        let nodes = self.cfg.targets.len();
        let same = self.cfg.same_node;
        let shared = self.shared.clone();
        let c = &mut self.clients[i];
        c.log.drops.push(sys::unix_micros());
        c.log.failures.push(format!("ended: {reason}"));
        if std::mem::take(&mut c.counted) {
            shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        if std::mem::take(&mut c.counted_subs) {
            shared.subscribed.fetch_sub(1, Ordering::Relaxed);
        }
        c.left = c.node;
        c.attempt = 0;
        let delay = backoff(0, r);
        c.backoff_us = delay.as_micros() as u64;
        c.retry_at = Some(Instant::now() + delay);
        c.node = next_node(nodes, c.left, c.spec.idx, 0, same);
    }

    /// Ends client `i`'s connection: a failed attempt, or a drop.
    fn end(&mut self, i: usize, reason: String) {
        let Some(mut conn) = self.clients[i].conn.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.greeted {
            self.dropped(i, reason);
        } else {
            self.pending -= 1;
            self.attempt_failed(i, reason);
        }
    }

    fn expire(&mut self) {
        let limit = self.cfg.handshake_timeout;
        for i in 0..self.clients.len() {
            if matches!(&self.clients[i].conn, Some(c) if !c.greeted && c.started.elapsed() > limit)
            {
                self.end(i, "timeout".into());
            }
        }
    }

    fn on_ready(&mut self, i: usize) {
        let Some(conn) = self.clients.get_mut(i).and_then(|c| c.conn.as_mut()) else {
            return;
        };
        if conn.state == State::Connecting {
            match sys::connect_done(&conn.stream) {
                Ok(true) => conn.state = State::Handshaking,
                Ok(false) => return,
                Err(e) => return self.end(i, format!("connect: {e}")),
            }
        }
        if let Err(e) = flush(conn) {
            return self.end(i, format!("write: {e}"));
        }
        self.read(i);
    }

    /// Reads until `WouldBlock` (edge-triggered), handling what came.
    fn read(&mut self, i: usize) {
        loop {
            let Some(conn) = self.clients[i].conn.as_mut() else {
                return;
            };
            let n =
                match tls::read_plain(conn.tls.as_deref_mut(), &mut conn.stream, &mut self.scratch)
                {
                    Ok(0) => return self.end(i, "eof".into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.end(i, e.to_string()),
                };
            conn.buf.extend_from_slice(&self.scratch[..n]);
            if conn.state == State::Handshaking {
                match ws::check_upgrade_response(&conn.buf, &conn.accept) {
                    Ok(None) if conn.buf.len() < MAX_HEAD => continue,
                    Ok(None) => return self.end(i, "upgrade answer head too large".into()),
                    Err(reason) => return self.end(i, format!("upgrade: {reason}")),
                    Ok(Some(head)) => {
                        conn.buf.drain(..head);
                        conn.state = State::Open;
                    }
                }
            }
            if let Err(reason) = self.frames(i) {
                return self.end(i, reason);
            }
        }
    }

    /// Handles every whole frame in client `i`'s buffer.
    fn frames(&mut self, i: usize) -> Result<(), String> {
        let now_us = sys::unix_micros();
        let Some(conn) = self.clients[i].conn.as_mut() else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut conn.buf);
        let mut off = 0;
        let mut result = Ok(());
        loop {
            let h = match ws::parse_frame(&buf[off..], MAX_FRAME) {
                Parsed::Incomplete => break,
                Parsed::Error(e) => {
                    result = Err(format!("protocol error: {e}"));
                    break;
                }
                Parsed::Frame(h) => h,
            };
            let payload = &buf[off + h.header_len..off + h.total_len()];
            off += h.total_len();
            match h.opcode {
                ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
                    let whole = match self.defragment(i, h.opcode, h.fin, payload) {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    };
                    self.message(i, &whole, now_us);
                }
                ws::OP_PING => {
                    let mask = self.mask();
                    if let Some(conn) = self.clients[i].conn.as_mut() {
                        ws::client_frame(ws::OP_PONG, payload, mask, &mut conn.out);
                    }
                }
                ws::OP_PONG => {}
                _ => {
                    let code = ws::close_code(payload);
                    result = Err(format!("close {code}"));
                    break;
                }
            }
        }
        buf.drain(..off);
        let Some(conn) = self.clients[i].conn.as_mut() else {
            return result;
        };
        conn.buf = buf;
        if let Err(e) = flush(conn) {
            result = result.and(Err(format!("write: {e}")));
        }
        result
    }

    /// A data frame: the whole message when it is the last fragment.
    fn defragment(
        &mut self,
        i: usize,
        opcode: u8,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(conn) = self.clients[i].conn.as_mut() else {
            return Ok(None);
        };
        match (opcode, conn.frag.take()) {
            (ws::OP_CONTINUATION, None) => Err("continuation without a first fragment".into()),
            (ws::OP_CONTINUATION, Some(mut f)) => {
                f.extend_from_slice(payload);
                if f.len() > MAX_FRAME {
                    return Err("message larger than the client accepts".into());
                }
                if fin {
                    Ok(Some(f))
                } else {
                    conn.frag = Some(f);
                    Ok(None)
                }
            }
            (_, Some(_)) => Err("new message inside a fragmented one".into()),
            (_, None) if fin => Ok(Some(payload.to_vec())),
            (_, None) => {
                conn.frag = Some(payload.to_vec());
                Ok(None)
            }
        }
    }

    /// One whole message from the server.
    fn message(&mut self, i: usize, text: &[u8], now_us: u64) {
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            self.clients[i].log.unparsed += 1;
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("connected") => self.greeted(i, v.get("payload"), now_us),
            Some("subscribed") => self.subscribed(i, v.get("payload"), now_us),
            Some("error") => {
                let msg = v
                    .pointer("/payload/message")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                self.clients[i].log.failures.push(format!("error: {msg}"));
            }
            _ => self.on_stream(i, &v, now_us),
        }
    }

    /// `connected`: the epoch, the offsets, whether it recovered; then the
    /// client (re)subscribes to its channels.
    fn greeted(&mut self, i: usize, payload: Option<&Value>, now_us: u64) {
        let mask = self.mask();
        let Worker {
            clients,
            pending,
            shared,
            ..
        } = self;
        let c = &mut clients[i];
        let Some(conn) = c.conn.as_mut() else {
            return;
        };
        if conn.greeted {
            return;
        }
        conn.greeted = true;
        *pending -= 1;
        let p = payload.unwrap_or(&Value::Null);
        let recovered = p.get("recovered").and_then(Value::as_bool);
        c.log.connects.push(Connected {
            at_us: now_us,
            recovered,
            node: c.node,
            backoff_us: c.backoff_us,
        });
        if let Some(e) = p.get("epoch").and_then(Value::as_str) {
            c.epoch = Some(e.to_string());
        }
        if recovered != Some(true) {
            // Nothing replayed: live messages start after these.
            let offset = |k: &str| p.pointer(k).and_then(Value::as_u64).unwrap_or(0);
            c.last_all = offset("/offsets/@all");
            c.last_user = offset("/offsets/@user");
        }
        c.attempt = 0;
        c.counted = true;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let mut text = Vec::with_capacity(128);
        for ch in c.chans.iter_mut() {
            ch.acked = false;
            text.clear();
            subscribe_text(ch, &mut text);
            ws::client_frame(ws::OP_TEXT, &text, mask, &mut conn.out);
        }
        if c.chans.is_empty() {
            c.counted_subs = true;
            shared.subscribed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `subscribed` for one of the client's channels.
    fn subscribed(&mut self, i: usize, payload: Option<&Value>, now_us: u64) {
        let shared = self.shared.clone();
        let c = &mut self.clients[i];
        let p = payload.unwrap_or(&Value::Null);
        let Some(channel) = p
            .get("channel")
            .and_then(Value::as_str)
            .and_then(channel_number)
        else {
            c.log.misrouted += 1;
            return;
        };
        let Some(ch) = c.chans.iter_mut().find(|ch| ch.channel == channel) else {
            c.log.misrouted += 1;
            return;
        };
        let recovered = p.get("recovered").and_then(Value::as_bool);
        c.log.subs.push(Subscribed {
            channel,
            at_us: now_us,
            recovered,
        });
        if let Some(e) = p.get("epoch").and_then(Value::as_str) {
            ch.epoch = Some(e.to_string());
        }
        if recovered != Some(true) {
            ch.last = p.get("offset").and_then(Value::as_u64).unwrap_or(0);
        }
        ch.acked = true;
        if !c.counted_subs && c.chans.iter().all(|ch| ch.acked) {
            c.counted_subs = true;
            shared.subscribed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message on a stream: its offset remembered, and when it is one of
    /// ours, logged by the stream and sequence number of its payload.
    fn on_stream(&mut self, i: usize, v: &Value, now_us: u64) {
        let c = &mut self.clients[i];
        let channel = v.get("channel").and_then(Value::as_str);
        if let (Some(name), Some(offset)) = (channel, v.get("offset").and_then(Value::as_u64)) {
            let last = match name {
                "@all" => Some(&mut c.last_all),
                "@user" => Some(&mut c.last_user),
                _ => channel_number(name)
                    .and_then(|n| c.chans.iter_mut().find(|ch| ch.channel == n))
                    .map(|ch| &mut ch.last),
            };
            if let Some(last) = last {
                *last = (*last).max(offset);
            }
        }
        let Some((stream, seq)) = v.get("payload").and_then(ours) else {
            return;
        };
        let envelope_agrees = match (stream, channel) {
            (Stream::All, Some("@all")) | (Stream::User(_), Some("@user")) => true,
            (Stream::Chan(n), Some(name)) => channel_number(name) == Some(n),
            _ => false,
        };
        if !envelope_agrees {
            c.log.misrouted += 1;
        }
        c.log.got.push(Got {
            stream,
            seq,
            at_us: now_us,
        });
        self.shared.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stream and sequence number of a payload the drill published:
/// `{"k":"a","s":N}`, `{"k":"u","u":U,"s":N}`, `{"k":"c","c":C,"s":N}`.
pub fn ours(payload: &Value) -> Option<(Stream, u64)> {
    let seq = payload.get("s")?.as_u64()?;
    let num = |k: &str| payload.get(k)?.as_u64().and_then(|n| u32::try_from(n).ok());
    let stream = match payload.get("k")?.as_str()? {
        "a" => Stream::All,
        "u" => Stream::User(num("u")?),
        "c" => Stream::Chan(num("c")?),
        _ => return None,
    };
    Some((stream, seq))
}

/// `lt:7` → 7.
pub fn channel_number(name: &str) -> Option<u32> {
    name.strip_prefix(channels::PREFIX)?.parse().ok()
}

/// `{"type":"subscribe","payload":{"channel":"lt:7"}}`, with `since` and
/// `epoch` once the channel has an epoch (a resubscribe).
fn subscribe_text(ch: &Chan, out: &mut Vec<u8>) {
    let mut payload = serde_json::json!({ "channel": channels::name(ch.channel) });
    if let Some(e) = &ch.epoch {
        payload["since"] = ch.last.into();
        payload["epoch"] = e.as_str().into();
    }
    let msg = serde_json::json!({ "type": "subscribe", "payload": payload });
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &msg);
}

/// Percent-encodes all but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes what is queued; keeps the rest for the next writable event.
fn flush(conn: &mut Conn) -> io::Result<()> {
    tls::write_plain(conn.tls.as_deref_mut(), &mut conn.stream, &mut conn.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_backoff_is_100_to_500_ms_and_grows_to_5_s() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(0, 0.999_999).as_millis(), 499);
        assert_eq!(backoff(1, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(3, 0.5), Duration::from_millis(2400));
        assert_eq!(backoff(30, 1.0), BACKOFF_CAP);
    }

    #[test]
    fn a_dead_nodes_clients_spread_over_the_others() {
        // Node 2 of 3 died: its clients go to 0 and 1 in turn, never 2.
        let picks: Vec<u16> = (0..6).map(|i| next_node(3, 2, i, 0, false)).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
        // A failed attempt moves on to the next one.
        assert_eq!(next_node(3, 2, 0, 1, false), 1);
        // Node 0 died: 1 and 2.
        assert!((0..10).all(|i| next_node(3, 0, i, 0, false) != 0));
        // One node, or a restart: the same node.
        assert_eq!(next_node(1, 0, 5, 3, false), 0);
        assert_eq!(next_node(3, 2, 5, 3, true), 2);
    }

    #[test]
    fn payloads_of_ours_name_their_stream() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(ours(&v(r#"{"k":"a","s":3,"t":1}"#)), Some((Stream::All, 3)));
        assert_eq!(
            ours(&v(r#"{"k":"u","u":7,"s":1,"t":1}"#)),
            Some((Stream::User(7), 1))
        );
        assert_eq!(
            ours(&v(r#"{"k":"c","c":2,"s":9,"t":1}"#)),
            Some((Stream::Chan(2), 9))
        );
        assert_eq!(ours(&v(r#"{"k":"x","s":1}"#)), None);
        assert_eq!(ours(&v(r#"{"k":"u","s":1}"#)), None);
        assert_eq!(ours(&v(r#"{"title":"Test Notification"}"#)), None);
        assert_eq!(channel_number("lt:12"), Some(12));
        assert_eq!(channel_number("news"), None);
    }

    #[test]
    fn resubscribes_carry_since_and_epoch() {
        let mut ch = Chan {
            channel: 4,
            epoch: None,
            last: 0,
            acked: false,
        };
        let mut out = Vec::new();
        subscribe_text(&ch, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["payload"], serde_json::json!({"channel": "lt:4"}));
        ch.epoch = Some("e1".into());
        ch.last = 17;
        out.clear();
        subscribe_text(&ch, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["payload"],
            serde_json::json!({"channel": "lt:4", "since": 17, "epoch": "e1"})
        );
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
