//! The two threads that talk to Redis, so that no shard ever does.
//!
//! - The publisher owns one connection. It sends queued packets (pipelined,
//!   in queue order, so one node's messages keep their order; a message to
//!   number goes through the sequencing script of `sequence.rs`, and one
//!   Redis does not take is delivered to this node's connections
//!   unnumbered), writes this
//!   node's presence changes to Redis every [`PRESENCE_FLUSH`] and a
//!   heartbeat every [`HEARTBEAT`]. After any error it drops the connection,
//!   counts what it could not send, and reconnects with back-off; on
//!   reconnecting it rewrites this node's whole presence snapshot, so that
//!   Redis restarted empty is healed. On stop it writes out what is still
//!   queued (for at most [`FLUSH_ON_STOP`]) before its goodbye.
//! - The subscriber (`subscriber.rs`) owns a pub/sub connection on the
//!   cluster channel and a second connection for reads.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use redis::{Connection, RedisResult};

use super::outbox::Outgoing;
use super::sequence::SCRIPT;
use super::wire::{self, Body, Packet};
use super::{subscriber, Cluster, LocalNode, HEARTBEAT, PRESENCE_FLUSH};

/// Keys of a node live this long past its last heartbeat.
const KEY_TTL_MS: u64 = 10_000;
/// Packets sent in one pipelined round trip at most.
const BATCH: usize = 512;
/// Bytes of packets a batch stops growing at (it takes at least one packet).
const BATCH_BYTES: usize = 1 << 20;
/// How long a stopping publisher goes on writing what is queued before its
/// goodbye: a graceful stop loses nothing while Redis keeps up, and never
/// waits long on a Redis that does not.
const FLUSH_ON_STOP: Duration = Duration::from_secs(1);
/// Hash fields written per `HSET` in a snapshot.
const SNAPSHOT_CHUNK: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A Redis that answers nothing for this long is treated as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the subscriber waits for a packet before checking for shutdown.
pub(super) const SUBSCRIBER_POLL: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Starts both threads. The publisher's handle is returned so shutdown can
/// wait for its goodbye; the subscriber stops by itself within
/// [`SUBSCRIBER_POLL`] of [`Cluster::stop`].
pub(crate) fn spawn(
    cluster: &Arc<Cluster>,
    local: Arc<dyn LocalNode>,
) -> std::io::Result<JoinHandle<()>> {
    let (c, l) = (cluster.clone(), local.clone());
    std::thread::Builder::new()
        .name("wsedge-cluster-sub".into())
        .spawn(move || subscriber::run(&c, &*l))?;
    let c = cluster.clone();
    std::thread::Builder::new()
        .name("wsedge-cluster-pub".into())
        .spawn(move || run_publisher(&c, &*local))
}

pub(super) fn connect(c: &Cluster) -> RedisResult<Connection> {
    let con = c.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Doubling back-off between reconnects, logging only state changes.
pub(super) struct Reconnect {
    delay: Duration,
    pub(super) next: Instant,
    down_since: Option<Instant>,
}

impl Reconnect {
    pub(super) fn new() -> Reconnect {
        Reconnect {
            delay: Duration::from_millis(100),
            next: Instant::now(),
            down_since: None,
        }
    }
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next
    }
    pub(super) fn failed(&mut self, who: &str, c: &Cluster, e: &redis::RedisError) {
        if self.down_since.is_none() {
            log::warn!(
                "cluster {who}: redis at {} unreachable ({e}); delivering locally until it is back",
                c.redis_addr
            );
            self.down_since = Some(Instant::now());
        }
        self.next = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }
    pub(super) fn succeeded(&mut self, who: &str, c: &Cluster) {
        if let Some(t) = self.down_since.take() {
            log::info!(
                "cluster {who}: redis at {} is back after {:.1} s",
                c.redis_addr,
                t.elapsed().as_secs_f64()
            );
        }
        self.delay = Duration::from_millis(100);
    }
}

struct Publisher<'a> {
    local: &'a dyn LocalNode,
    c: &'a Cluster,
    con: Option<Connection>,
    /// The sequencing script's SHA1, loaded on each connection.
    script: String,
    seq: u64,
    reconnect: Reconnect,
}

fn run_publisher(c: &Cluster, local: &dyn LocalNode) {
    let mut p = Publisher {
        local,
        c,
        con: None,
        script: String::new(),
        seq: 0,
        reconnect: Reconnect::new(),
    };
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let mut next_flush = Instant::now();
    let mut next_heartbeat = Instant::now();
    loop {
        let stopping = c.stop.load(Relaxed);
        let wait = next_flush
            .min(next_heartbeat)
            .saturating_duration_since(Instant::now());
        match c.outbox.recv_timeout(wait) {
            Ok(b) => batch.push(b),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let bytes = fill_batch(c, &mut batch);
        if p.con.is_none() && p.reconnect.due() {
            p.open();
            next_heartbeat = Instant::now();
        }
        let now = Instant::now();
        let flush = now >= next_flush;
        let heartbeat = now >= next_heartbeat;
        if flush {
            next_flush = now + PRESENCE_FLUSH;
        }
        if heartbeat {
            next_heartbeat = now + HEARTBEAT;
        }
        p.send(&mut batch, flush, heartbeat);
        c.outbox.release(bytes);
        if stopping {
            // What the node accepted before it stopped goes out before the
            // goodbye (which makes the others forget it).
            p.flush_outbox(&mut batch, Instant::now() + FLUSH_ON_STOP);
            p.goodbye();
            return;
        }
    }
}

/// Adds queued packets to `batch` up to [`BATCH`] packets or
/// [`BATCH_BYTES`]; returns the bytes of the whole batch.
fn fill_batch(c: &Cluster, batch: &mut Vec<Outgoing>) -> usize {
    let mut bytes: usize = batch.iter().map(Outgoing::size).sum();
    while batch.len() < BATCH && bytes < BATCH_BYTES {
        let Some(b) = c.outbox.try_recv() else {
            break;
        };
        bytes += b.size();
        batch.push(b);
    }
    bytes
}

impl Publisher<'_> {
    /// Connects and rewrites this node's presence snapshot.
    fn open(&mut self) {
        let r = connect(self.c).and_then(|mut con| {
            self.seq += 1;
            let users = self.local.presence_snapshot();
            let subs = self.local.subs_snapshot();
            let names = &self.c.names;
            let (n, s) = (
                names.presence_key(&self.c.node_id),
                names.subs_key(&self.c.node_id),
            );
            let mut pipe = redis::pipe();
            pipe.atomic().del(&n).ignore().del(&s).ignore();
            for chunk in users.chunks(SNAPSHOT_CHUNK) {
                pipe.hset_multiple(&n, chunk).ignore();
            }
            for chunk in subs.chunks(SNAPSHOT_CHUNK) {
                pipe.hset_multiple(&s, chunk).ignore();
            }
            self.write_seq(&mut pipe);
            pipe.exec(&mut con)?;
            // The script, and the cluster's epoch (this node's own when
            // the cluster has none yet).
            let (script, epoch): (String, String) = redis::pipe()
                .cmd("SCRIPT")
                .arg("LOAD")
                .arg(SCRIPT)
                .cmd("SET")
                .arg(names.epoch())
                .arg(self.local.epoch())
                .arg("NX")
                .ignore()
                .get(names.epoch())
                .query(&mut con)?;
            self.script = script;
            self.local.adopt_epoch(&epoch);
            Ok(con)
        });
        match r {
            Ok(con) => {
                self.con = Some(con);
                self.c.stats.publisher_up.store(true, Relaxed);
                self.reconnect.succeeded("publisher", self.c);
            }
            Err(e) => {
                self.c.stats.publisher_up.store(false, Relaxed);
                self.reconnect.failed("publisher", self.c, &e);
            }
        }
    }

    fn write_seq(&self, pipe: &mut redis::Pipeline) {
        let c = self.c;
        pipe.cmd("SET")
            .arg(c.names.seq_key(&c.node_id))
            .arg(format!("{} {}", c.inc, self.seq))
            .arg("PX")
            .arg(KEY_TTL_MS)
            .ignore();
        pipe.pexpire(c.names.presence_key(&c.node_id), KEY_TTL_MS as i64)
            .ignore();
        pipe.pexpire(c.names.subs_key(&c.node_id), KEY_TTL_MS as i64)
            .ignore();
    }

    fn packet(&self, body: Body<'_>) -> Vec<u8> {
        wire::encode(&Packet {
            node: self.c.node_id.as_str().into(),
            inc: self.c.inc,
            body,
        })
    }

    /// Sends the queued packets, then presence changes and the heartbeat
    /// when due. Without a connection the packets are dropped and counted
    /// (presence changes wait: the snapshot on reconnect covers them).
    fn send(&mut self, batch: &mut Vec<Outgoing>, flush: bool, heartbeat: bool) {
        let Some(mut con) = self.con.take() else {
            self.give_up(batch);
            return;
        };
        let channel = self.c.names.channel();
        let sent = batch.len() as u64;
        let r = (|| -> RedisResult<()> {
            if !batch.is_empty() {
                // Read once a batch: it takes the history's lock.
                let epoch = self.local.epoch();
                let mut pipe = redis::pipe();
                for b in batch.iter() {
                    self.queue(&mut pipe, b, &channel, &epoch);
                }
                pipe.exec(&mut con)?;
                self.c.stats.published.fetch_add(sent, Relaxed);
                batch.clear();
            }
            if flush {
                self.flush_presence(&mut con, &channel)?;
            }
            if heartbeat {
                self.heartbeat(&mut con, &channel)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => self.con = Some(con),
            Err(e) => {
                self.give_up(batch);
                self.c.stats.publisher_up.store(false, Relaxed);
                self.reconnect.failed("publisher", self.c, &e);
            }
        }
    }

    /// One packet into the pipeline: published as it is, or numbered and
    /// published by the sequencing script (`epoch`: this node's, proposed
    /// when the cluster has none).
    fn queue(&self, pipe: &mut redis::Pipeline, b: &Outgoing, channel: &str, epoch: &str) {
        if b.streams.is_empty() {
            pipe.publish(channel, b.packet.as_slice()).ignore();
            return;
        }
        let n = &self.c.names;
        pipe.cmd("EVALSHA")
            .arg(&self.script)
            .arg(4)
            .arg(n.offsets())
            .arg(n.history())
            .arg(n.epoch())
            .arg(channel)
            .arg(epoch)
            .arg(b.packet.as_slice())
            .arg(self.c.history_log)
            .arg(&b.streams)
            .ignore();
    }

    /// The packets of a batch Redis did not take: counted as dropped (the
    /// other nodes will not get them), and the messages this node meant to
    /// number delivered to its own connections, unnumbered, as while Redis
    /// is down. A batch that failed half way may have reached Redis in
    /// part: those messages then reach this node's connections twice.
    fn give_up(&self, batch: &mut Vec<Outgoing>) {
        self.c.stats.dropped.fetch_add(batch.len() as u64, Relaxed);
        for b in batch.drain(..) {
            if !b.streams.is_empty() {
                self.local.fall_back(&b.packet);
            }
        }
    }

    fn flush_presence(&mut self, con: &mut Connection, channel: &str) -> RedisResult<()> {
        let users: Vec<(String, u32)> = self
            .local
            .presence_changes()
            .into_iter()
            .map(|(u, n)| (u, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        let subs = self.local.subs_changes();
        if users.is_empty() && subs.is_empty() {
            return Ok(());
        }
        self.seq += 1;
        let names = &self.c.names;
        let mut pipe = redis::pipe();
        pipe.atomic();
        hash_changes(&mut pipe, &names.presence_key(&self.c.node_id), &users);
        hash_changes(&mut pipe, &names.subs_key(&self.c.node_id), &subs);
        self.write_seq(&mut pipe);
        let packet = self.packet(Body::Presence {
            seq: self.seq,
            users,
            subs,
        });
        pipe.publish(channel, packet).ignore();
        pipe.exec(con)
    }

    fn heartbeat(&self, con: &mut Connection, channel: &str) -> RedisResult<()> {
        let n = self.local.counters();
        let packet = self.packet(Body::Heartbeat {
            seq: self.seq,
            connections: n.connections,
            messages_in: n.messages_in,
            messages_out: n.messages_out,
            bytes_out: n.bytes_out,
        });
        let mut pipe = redis::pipe();
        pipe.publish(channel, packet).ignore();
        self.write_seq(&mut pipe);
        pipe.exec(con)
    }

    /// On stop: writes out what is still queued until the queue is empty
    /// or `deadline` passes; then what is queued at that moment is dropped
    /// and counted (so the loop ends even if callers keep publishing).
    /// Without a connection, `send` drops each batch at once.
    fn flush_outbox(&mut self, batch: &mut Vec<Outgoing>, deadline: Instant) {
        loop {
            let bytes = fill_batch(self.c, batch);
            if batch.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            self.send(batch, false, false);
            self.c.outbox.release(bytes);
        }
        let mut dropped = batch.len();
        let mut bytes: usize = batch.drain(..).map(|b| b.size()).sum();
        for _ in 0..self.c.outbox.len() {
            let Some(b) = self.c.outbox.try_recv() else {
                break;
            };
            dropped += 1;
            bytes += b.size();
        }
        self.c.stats.dropped.fetch_add(dropped as u64, Relaxed);
        self.c.outbox.release(bytes);
        log::warn!("cluster: {dropped} packets still queued at shutdown were not published");
    }

    /// Tells the others to forget this node now, and removes its keys.
    fn goodbye(&mut self) {
        let Some(mut con) = self.con.take() else {
            return;
        };
        let c = self.c;
        let mut pipe = redis::pipe();
        pipe.publish(c.names.channel(), self.packet(Body::Bye))
            .ignore()
            .del(c.names.presence_key(&c.node_id))
            .ignore()
            .del(c.names.subs_key(&c.node_id))
            .ignore()
            .del(c.names.seq_key(&c.node_id))
            .ignore();
        if let Err(e) = pipe.exec(&mut con) {
            log::warn!("cluster: goodbye to redis failed: {e}");
        }
    }
}

/// Writes absolute counts into a Redis hash: a count sets its field, 0
/// deletes it.
fn hash_changes(pipe: &mut redis::Pipeline, key: &str, changes: &[(String, u32)]) {
    let (present, gone): (Vec<_>, Vec<_>) = changes.iter().partition(|(_, n)| *n > 0);
    for chunk in present.chunks(SNAPSHOT_CHUNK) {
        let fields: Vec<(&str, u32)> = chunk.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        pipe.hset_multiple(key, &fields).ignore();
    }
    for chunk in gone.chunks(SNAPSHOT_CHUNK) {
        let fields: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        pipe.hdel(key, fields).ignore();
    }
}
