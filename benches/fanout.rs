//! In-process fan-out of one broadcast to 10,000 connections on 2 shards,
//! with the socket writes replaced by an in-memory sink.
//!
//! Each "shard" is a thread owning 5,000 outbound queues (`conn::Outbound`,
//! the real per-connection queue). One iteration is what a broadcast costs
//! the server: the envelope and frame encoded once (`frame::shared_message`),
//! one command per shard over a crossbeam channel, the shared frame queued
//! on every connection, and every queue written out with `write_vectored`
//! into a sink that keeps only a byte count (a socket that never blocks).
//! The mio poll loop and the kernel are left out on purpose: they are
//! measured by the load-test tool.

use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::value::RawValue;
use wsedge::conn::Outbound;
use wsedge::frame::{self, SharedFrame};

const CONNECTIONS: usize = 10_000;
const SHARDS: usize = 2;

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

/// A shard thread: on each frame, queue it on every connection and flush.
fn shard(rx: Receiver<SharedFrame>, done: Sender<u64>, conns: usize) {
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

fn fanout(c: &mut Criterion) {
    let (done_tx, done_rx) = bounded::<u64>(SHARDS);
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..SHARDS {
        let (tx, rx) = bounded::<SharedFrame>(1);
        let done = done_tx.clone();
        threads.push(thread::spawn(move || shard(rx, done, CONNECTIONS / SHARDS)));
        inboxes.push(tx);
    }
    let payload = RawValue::from_string(
        r#"{"s":1,"t":1732700000000000,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.into(),
    )
    .expect("payload");
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("broadcast_10k_conns_2_shards", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let frame = frame::shared_message("notification", Some(&payload));
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

criterion_group!(benches, fanout);
criterion_main!(benches);
