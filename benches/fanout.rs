//! In-process fan-out of one broadcast to 10,000 connections on 2 shards,
//! with the socket writes replaced by an in-memory sink. Two variants of the
//! same iteration, so the cost of the shard's own code shows:
//!
//! - `shard_path_10k_conns_2_shards`: the real path. Two threads each drive
//!   a real `Shard` holding 5,000 open WebSocket connections whose sockets
//!   are sinks (`wsedge::testbed::sink_shards`). One iteration is
//!   `Handle::broadcast_raw`: envelope and frame encoded once, one
//!   `BroadcastAll` per shard over the bus (channel + waker), and in each
//!   shard the turn `run` takes for it: woken from `epoll_wait`, inbox
//!   drained, frame queued on every connection (`Delivery` →
//!   `Conn::push_frame`), every connection written (`flush_dirty` →
//!   `Conn::flush`) into its sink.
//! - `queues_only_10k_conns_2_shards`: the earlier bench. Two threads each
//!   own 5,000 bare `Outbound` queues fed over a crossbeam channel; no
//!   shard, no slab, no connection state, no waker.
//!
//! Left out on purpose in both: the kernel's socket writes and the readiness
//! events of a real poll loop; the load-test tool measures those.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::value::RawValue;
use wsedge::testbed::Outbound;
use wsedge::testbed::{self as frame, SharedFrame};
use wsedge::Config;

const CONNECTIONS: usize = 10_000;
const SHARDS: usize = 2;
const KIND: &str = "notification";
const PAYLOAD: &str = r#"{"s":1,"t":1732700000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn payload() -> Box<RawValue> {
    RawValue::from_string(PAYLOAD.into()).expect("payload is JSON")
}

fn group(c: &mut Criterion) -> BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    g.measurement_time(Duration::from_secs(5));
    g
}

/// The real shards: a broadcast through the handle, each shard's turn on
/// its own thread, the bench thread waiting until both have flushed.
fn shard_path(c: &mut Criterion) {
    let config = Config {
        shards: SHARDS,
        jwt_secret: Some("bench-secret".into()),
        ..Config::default()
    };
    let (handle, shards) =
        wsedge::testbed::sink_shards(config, CONNECTIONS / SHARDS).expect("sink shards");
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = bounded::<u64>(SHARDS);
    let threads: Vec<_> = shards
        .into_iter()
        .map(|mut shard| {
            let done = done_tx.clone();
            let stop = stop.clone();
            thread::spawn(move || loop {
                match shard.turn() {
                    // A wake-up with nothing in the inbox: not a broadcast.
                    Ok(Some((0, _))) => {}
                    Ok(Some((_, written))) => {
                        if stop.load(Ordering::Relaxed) || done.send(written).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            })
        })
        .collect();
    let payload = payload();
    let broadcast = || {
        let addressed = handle.broadcast_raw(KIND, Some(&payload), None, &[]);
        let mut written = 0;
        for _ in 0..SHARDS {
            written += done_rx.recv().expect("shard thread alive");
        }
        (addressed, written)
    };

    // Every connection gets the whole frame, once, before anything is timed.
    // The first broadcast is message 1 of @all.
    let frame_len = frame::stream_message(KIND, "@all", Some(1), Some(&payload)).len() as u64;
    assert_eq!(broadcast(), (CONNECTIONS, CONNECTIONS as u64 * frame_len));

    let mut g = group(c);
    g.bench_function("shard_path_10k_conns_2_shards", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                broadcast();
            }
            start.elapsed()
        })
    });
    g.finish();

    // One more broadcast wakes both threads to see the flag.
    stop.store(true, Ordering::Relaxed);
    handle.broadcast_raw(KIND, Some(&payload), None, &[]);
    for t in threads {
        let _ = t.join();
    }
}

/// A socket that takes every byte at once.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        self.0 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A queues-only "shard" thread: on each frame, queue it on every queue and flush.
fn queue_thread(rx: Receiver<SharedFrame>, done: Sender<u64>, conns: usize) {
    let mut queues: Vec<(Outbound, Sink)> =
        (0..conns).map(|_| (Outbound::default(), Sink(0))).collect();
    while let Ok(frame) = rx.recv() {
        let mut written = 0u64;
        for (q, _) in queues.iter_mut() {
            q.push_shared(frame.clone());
        }
        for (q, sink) in queues.iter_mut() {
            if q.flush_to(sink, &mut written).is_err() {
                return;
            }
        }
        if done.send(written).is_err() {
            return;
        }
    }
}

/// The bare outbound queues, for comparison with the shard path.
fn queues_only(c: &mut Criterion) {
    let (done_tx, done_rx) = bounded::<u64>(SHARDS);
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..SHARDS {
        let (tx, rx) = bounded::<SharedFrame>(1);
        let done = done_tx.clone();
        threads.push(thread::spawn(move || {
            queue_thread(rx, done, CONNECTIONS / SHARDS)
        }));
        inboxes.push(tx);
    }
    let payload = payload();
    let mut g = group(c);
    g.bench_function("queues_only_10k_conns_2_shards", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let frame = frame::shared_message(KIND, Some(&payload));
                for tx in &inboxes {
                    let _ = tx.send(Arc::clone(&frame));
                }
                for _ in 0..SHARDS {
                    let _ = done_rx.recv();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
    drop(inboxes);
    for t in threads {
        let _ = t.join();
    }
}

criterion_group!(benches, shard_path, queues_only);
criterion_main!(benches);
