//! What arrives on the cluster's Redis channel: arbitrary bytes through
//! `cluster::wire::decode`, and every packet that decodes applied to a
//! `cluster::view::View` (presence changes, heartbeats, goodbyes, and a
//! snapshot made of the same users and subscriptions), as the subscriber
//! thread would, and the subscription changes that yields applied to a
//! channel directory. A
//! broadcast's message is framed as the receiving node would frame it.
//!
//! Input: the packet bytes, as published (optionally behind the numbers
//! Redis's sequencing script writes: `S<epoch> <offset>,…\n`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use wsedge::testbed::{cluster_streams, split_numbered};
use wsedge::testbed::{decode_cluster_packet as decode, ClusterBody as Body};
use wsedge::testbed::{split_sub_key, Directory, NodeCounters, View};

pub fn run(data: &[u8]) {
    static VIEW: Mutex<Option<View>> = Mutex::new(None);
    // A numbered packet (the sequencing script's header) or a plain one.
    let Ok((seq, data)) = split_numbered(data) else {
        return;
    };
    let Ok(p) = decode(data) else {
        return;
    };
    if let Some(seq) = &seq {
        // The receiver pairs the numbers with the packet's streams; a
        // mismatch is skipped, never indexed out of bounds.
        let streams = cluster_streams(&p.body);
        let _ = streams.iter().zip(&seq.offsets).count();
        assert!(seq.offsets.iter().all(|o| *o > 0));
    }
    let mut guard = VIEW.lock().unwrap_or_else(|e| e.into_inner());
    let view = guard.get_or_insert_with(|| View::new(Duration::from_secs(3)));
    let now = Instant::now();
    match p.body {
        Body::Broadcast { message, .. } => {
            let frame = wsedge::testbed::text_frame(message.get().as_bytes());
            assert!(frame.len() > message.get().len());
        }
        Body::Publish { message, .. } => {
            let frame = wsedge::testbed::text_frame(message.get().as_bytes());
            assert!(frame.len() > message.get().len());
        }
        Body::Disconnect { .. } | Body::Subscribe { .. } => {}
        Body::Presence { seq, users, subs } => {
            view.on_presence(&p.node, p.inc, seq, &users, &subs, now);
            let snapshot: HashMap<String, u32> = users.into_iter().collect();
            let sub_snapshot: HashMap<String, u32> = subs.into_iter().collect();
            view.on_snapshot(&p.node, p.inc, seq, snapshot, sub_snapshot);
        }
        Body::Heartbeat {
            seq, connections, ..
        } => {
            let counters = NodeCounters {
                connections,
                ..NodeCounters::default()
            };
            view.on_heartbeat(&p.node, p.inc, seq, counters, now);
        }
        Body::Bye => view.on_bye(&p.node),
    }
    let _ = view.user_count("u", now);
    let _ = view.nodes(now);
    view.take_resync();
    view.expire(now + Duration::from_secs(10));
    // What the subscriber thread hands the channel directory: whatever the
    // packets said, counts stay within bounds and every channel a node
    // forgot is gone once all nodes are.
    let directory = DIRECTORY.get_or_init(|| Directory::new(1, true));
    for d in view.take_sub_deltas() {
        if let Some((channel, user)) = split_sub_key(&d.key) {
            let _ = directory.remote_change(channel, user, d.delta);
        }
    }
    if view.nodes(now + Duration::from_secs(10)).is_empty() {
        assert_eq!(
            directory.counts().all_channels,
            0,
            "a forgotten node left channels behind"
        );
    }
}

static DIRECTORY: OnceLock<Directory> = OnceLock::new();
