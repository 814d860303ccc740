//! The fan-out test bed, never used by the server: real [`Shard`]s whose
//! WebSocket connections write into in-memory sinks, driven by their
//! caller one turn at a time instead of by [`Shard::run`].
//!
//! It exists so the fan-out bench and tests measure the code a broadcast
//! really takes (`on_command` → `Delivery` → `Conn::push_frame` →
//! `write_dirty` → `Conn::write_turn`) with only the kernel's socket writes
//! left out. Connections open through the same path as real ones (the
//! shard's `adopt`, the registry's `register`, `Conn::open_ws`), minus the
//! `101` and the greeting, so that a sink's count is exactly what was sent
//! to it later. Timers never fire here: a sink never answers a ping, so
//! the first pong timeout would close every connection in the middle of a
//! measurement.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use mio::Events;

use super::{Opening, Registry, Shard, ShardCtx};
use crate::bus::Command;
use crate::config::Config;
use crate::conn::{Sink, Sock};
use crate::frame::SharedFrame;
use crate::handler::EchoHandler;
use crate::ops::Handle;
use crate::server::{assemble, StartError};

/// A shard of the test bed.
pub struct SinkShard {
    shard: Shard,
    events: Events,
}

/// A handle on `config.shards` shards that each hold `conns_per_shard` open
/// WebSocket connections writing into in-memory sinks, and those shards,
/// which the caller drives (one per thread, [`SinkShard::turn`]).
/// Broadcasts through the handle take the real path: encode once, the bus,
/// each shard's inbox and waker, delivery and write. There is no listener
/// and no cluster link (`redis_url` is ignored).
pub fn sink_shards(
    mut config: Config,
    conns_per_shard: usize,
) -> Result<(Handle, Vec<SinkShard>), StartError> {
    config.redis_url = None;
    config.validate()?;
    let parts = assemble(config, Arc::new(EchoHandler), None)?;
    let handle = parts.handle;
    let shards = parts
        .shards
        .into_iter()
        .enumerate()
        .map(|(id, (poll, inbox))| {
            let registry = Registry::new(id, &handle);
            let shard = Shard::new(id, poll, inbox, None, registry, ShardCtx::new(&handle));
            SinkShard::new(shard, conns_per_shard)
        })
        .collect();
    Ok((handle, shards))
}

impl SinkShard {
    /// Wraps a shard with no listener and opens `conns` sink connections on it.
    fn new(shard: Shard, conns: usize) -> SinkShard {
        let mut s = SinkShard {
            shard,
            events: Events::with_capacity(8),
        };
        let now = Instant::now();
        let shards = s.shard.ctx.config.shards;
        for i in 0..conns {
            // Numbered across shards as an accept loop would spread them,
            // ten connections per user as in the load test.
            let user = format!("user-{}", (i * shards + s.shard.id) / 10);
            s.open_sink(&user, now);
        }
        s
    }

    /// Opens one WebSocket of `user` on a sink.
    fn open_sink(&mut self, user: &str, now: Instant) {
        let sh = &mut self.shard;
        let Some(key) = sh.adopt(Sock::Sink(Sink::default()), now) else {
            return;
        };
        let user: Arc<str> = Arc::from(user);
        let gen = sh.conns[key].gen;
        if sh.registry.register(key, gen, &user).is_ok() {
            let opening = Opening {
                exp: u64::MAX,
                user,
                grants: Default::default(),
                greet: false,
                resume: None,
                deflate: None,
            };
            sh.become_ws(key, opening, now);
        }
    }

    /// One broadcast to every connection straight through the shard, with
    /// no channel: `on_command(BroadcastAll)` then `write_dirty`. Returns
    /// the bytes written.
    pub fn broadcast(&mut self, frame: SharedFrame) -> u64 {
        let now = Instant::now();
        self.shard.on_command(
            Command::BroadcastAll {
                frame,
                offset: None,
                exclude: None,
            },
            now,
        );
        self.shard.write_dirty(now)
    }

    /// One turn of the loop as [`Shard::run`] takes it, minus sockets and
    /// timers: waits on the shard's poll until the bus wakes it, takes the
    /// commands, and writes what was queued. Returns the commands handled
    /// and the bytes written; `None` once every sender of the bus is gone
    /// (the shard has then started its drain, as a running one would).
    pub fn turn(&mut self) -> io::Result<Option<(u64, u64)>> {
        match self.shard.poll.poll(&mut self.events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some((0, 0))),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let before = self.shard.metrics().commands.load(Relaxed);
        // `run` polls again without waiting when the budget runs out; here
        // the waker will not fire again for commands already queued, so
        // this turn takes them all.
        while self.shard.take_commands(now) {}
        let commands = self.shard.metrics().commands.load(Relaxed) - before;
        let written = self.shard.write_dirty(now);
        if self.shard.drain_deadline.is_some() {
            return Ok(None);
        }
        Ok(Some((commands, written)))
    }

    /// The shard's connections (open WebSockets and those closing).
    pub fn connections(&self) -> usize {
        self.shard.conns.len()
    }

    /// What each connection's sink took so far, modulo 2³².
    pub fn sink_bytes(&self) -> Vec<u32> {
        self.shard
            .conns
            .iter()
            .filter_map(|(_, c)| c.sock.sink().map(Sink::written))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CloseCode;
    use crate::frame;

    const PER_SHARD: usize = 50;

    fn config(outbound_buffer_bytes: usize) -> Config {
        Config {
            shards: 2,
            jwt_secret: Some("sink-test-secret".into()),
            outbound_buffer_bytes,
            ..Config::default()
        }
    }

    fn message(n: u64) -> SharedFrame {
        let json = format!(r#"{{"s":{n},"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#);
        let payload = serde_json::value::RawValue::from_string(json).expect("valid JSON");
        frame::shared_message("notification", Some(&payload))
    }

    /// The bytes of message `offset` of `stream`, as a sink gets it.
    fn stream_len(kind: &str, stream: &str, offset: u64, payload: &serde_json::Value) -> u64 {
        let raw = frame::raw_payload(payload);
        frame::stream_message(kind, stream, Some(offset), raw.as_deref()).len() as u64
    }

    #[test]
    fn broadcast_writes_each_frame_once_to_every_sink() {
        let (handle, mut shards) = sink_shards(config(1 << 20), PER_SHARD).expect("test bed");
        assert_eq!(handle.stats().total_connections, 2 * PER_SHARD);
        assert_eq!(handle.stats().total_users, 2 * PER_SHARD / 10);

        // Straight through the shard.
        let frame = message(1);
        let len = frame.len() as u64;
        for s in &mut shards {
            assert_eq!(s.broadcast(frame.clone()), PER_SHARD as u64 * len);
            assert_eq!(s.sink_bytes(), vec![len as u32; PER_SHARD]);
        }

        // Through the handle, the bus and each shard's waker and inbox.
        let kind = "notification";
        let payload = serde_json::json!({"s": 2});
        assert_eq!(handle.broadcast(kind, payload.clone(), None), 2 * PER_SHARD);
        let len2 = stream_len(kind, "@all", 1, &payload);
        for s in &mut shards {
            let turn = s.turn().expect("poll").expect("bus open");
            assert_eq!(turn, (1, PER_SHARD as u64 * len2));
            assert_eq!(s.sink_bytes(), vec![(len + len2) as u32; PER_SHARD]);
        }
        let stats = handle.stats();
        assert_eq!(stats.messages_out, 4 * PER_SHARD as u64);
        assert_eq!(stats.bytes_out, 2 * PER_SHARD as u64 * (len + len2));
    }

    #[test]
    fn a_connection_registered_between_a_disconnect_and_its_shard_stays_counted_and_open() {
        let (handle, mut shards) = sink_shards(config(1 << 20), 0).expect("test bed");
        let now = Instant::now();
        shards[0].open_sink("u", now);
        shards[0].open_sink("u", now);
        assert_eq!(handle.disconnect_user("u", true), 2);
        // Out of every count at once, before the shard has run.
        assert_eq!(handle.connection_count("u"), 0);
        assert_eq!(handle.stats().total_connections, 0);
        assert_eq!(handle.disconnect_user("u", true), 0);
        // A connection of the same user opened now, before the shard takes
        // the close command.
        shards[0].open_sink("u", now);
        assert_eq!(handle.connection_count("u"), 1);
        let turn = shards[0].turn().expect("poll").expect("bus open");
        let close_len = 4 + CloseCode::Disconnected.reason().len() as u64;
        assert_eq!(turn, (1, 2 * close_len), "only the two old ones close");
        assert_eq!(shards[0].connections(), 3, "two closing, one open");
        assert_eq!(handle.stats().total_connections, 1);
        // The new one is open: the broadcast reaches it, and only it.
        let payload = serde_json::json!({"s": 7});
        assert_eq!(handle.broadcast("notification", payload.clone(), None), 1);
        let len = stream_len("notification", "@all", 1, &payload);
        let turn = shards[0].turn().expect("poll").expect("bus open");
        assert_eq!(turn, (1, len));
        assert_eq!(handle.stats().total_connections, 1);
        assert_eq!(handle.connection_count("u"), 1);
    }

    #[test]
    fn a_full_inbox_refuses_the_whole_operation_before_anything_is_queued() {
        let cfg = Config {
            shard_inbox_capacity: 2,
            ..config(1 << 20)
        };
        let (handle, mut shards) = sink_shards(cfg, 0).expect("test bed");
        let now = Instant::now();
        shards[0].open_sink("a", now);
        shards[1].open_sink("b", now);
        let refused = || handle.shared.metrics.commands_refused.load(Relaxed);
        let one = serde_json::json!(1);
        assert_eq!(handle.broadcast("t", one.clone(), None), 2);
        assert_eq!(handle.broadcast("t", one.clone(), None), 2);
        assert_eq!(handle.broadcast("t", one.clone(), None), 0, "both full");
        assert_eq!(refused(), 1);
        // Shard 0 takes its two; shard 1 is still full.
        assert_eq!(shards[0].turn().expect("poll").expect("open").0, 2);
        assert_eq!(handle.broadcast("t", one.clone(), None), 0, "all or none");
        assert_eq!(
            handle.send_to_user("a", "t", one.clone()),
            1,
            "shard 0 only"
        );
        assert_eq!(handle.send_to_user("b", "t", one.clone()), 0);
        assert_eq!(handle.disconnect_user("b", true), 0);
        assert_eq!(
            handle.connection_count("b"),
            1,
            "a refused disconnect takes nothing"
        );
        assert_eq!(refused(), 4);
        // Each shard got exactly what was accepted for it.
        let frame_len = stream_len("t", "@all", 1, &one);
        assert_eq!(
            shards[1].turn().expect("poll").expect("open"),
            (2, 2 * frame_len)
        );
        assert_eq!(
            shards[0].turn().expect("poll").expect("open"),
            (1, stream_len("t", "@user", 1, &one))
        );
        assert_eq!(handle.broadcast("t", one, None), 2);
    }

    #[test]
    fn sink_over_its_outbound_cap_is_dropped_as_a_slow_consumer() {
        let frame = message(1);
        let len = frame.len() as u64;
        // Room for exactly one frame.
        let (handle, mut shards) = sink_shards(config(frame.len()), PER_SHARD).expect("test bed");
        let bus = &handle.shared.bus;
        for shard in 0..2 {
            // Two frames in one turn: a sink never blocks, so only a burst
            // between two flushes can overrun its queue.
            for _ in 0..2 {
                let mut room = bus.reserve([shard]).expect("room");
                room.send(
                    shard,
                    Command::BroadcastAll {
                        frame: frame.clone(),
                        offset: None,
                        exclude: None,
                    },
                );
            }
        }
        // 1008 "slow consumer", unmasked: 2 header bytes, 2 code bytes, reason.
        let close_len = 4 + CloseCode::Policy.reason().len() as u64;
        for s in &mut shards {
            let turn = s.turn().expect("poll").expect("bus open");
            // The first frame was dropped unsent along with the second:
            // only the close frame went out, and the connection is gone.
            assert_eq!(turn, (2, PER_SHARD as u64 * close_len));
            assert!(close_len < len);
            assert_eq!(s.connections(), 0);
        }
        let stats = handle.stats();
        assert_eq!(stats.total_connections, 0);
        assert_eq!(stats.total_users, 0);
        let drops: u64 = (0..2)
            .map(|i| {
                handle.shared.metrics.shards[i]
                    .slow_consumer_drops
                    .load(Relaxed)
            })
            .sum();
        assert_eq!(drops, 2 * PER_SHARD as u64);
        assert_eq!(handle.shared.ws_slots.load(Relaxed), 0);
    }
}
