//! What the cluster link may ask of this node ([`LocalNode`]), answered by
//! the handle: deliver numbered messages with the single-node path, keep the
//! history in step with the cluster's (its epoch, every stream's last
//! offset, the log a starting node reads), and tell the link this node's
//! presence, subscriptions and counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{Handle, Numbering};
use crate::cluster::sequence::{self, Seq};
use crate::cluster::subs::SubDelta;
use crate::cluster::wire::{decode, Body};
use crate::cluster::{LocalNode, NodeCounters};
use crate::error::CloseCode;
use crate::frame;
use crate::history::{targets, Stream};

/// How a packet read from the cluster channel is numbered.
fn numbering(seq: Option<&Seq>) -> Numbering<'_> {
    match seq {
        Some(seq) => Numbering::Cluster(seq),
        // Another node's packet that Redis did not number (it could not
        // reach Redis when it queued it, then could).
        None => Numbering::Unnumbered,
    }
}

/// What the cluster link may do to this node: deliver what the cluster
/// numbered (or another node sent), keep its history in step with the
/// cluster's, and read this node's presence and counters to tell them.
impl LocalNode for Handle {
    // A refusal (a full inbox) is counted in wsedge_commands_refused_total;
    // no caller is waiting on this node to tell.
    fn deliver(
        &self,
        envelope: &[u8],
        users: Option<&[String]>,
        exclude: &[String],
        seq: Option<&Seq>,
    ) {
        if let Some(m) = frame::parse_envelope(envelope) {
            let _ = self.deliver_local(&m.kind, m.payload, users, exclude, numbering(seq));
        }
    }

    fn publish(&self, channel: &str, envelope: &[u8], seq: Option<&Seq>) {
        if let Some(m) = frame::parse_envelope(envelope) {
            let _ = self.publish_local(channel, &m.kind, m.payload, numbering(seq));
        }
    }

    fn remember(&self, seq: &Seq, body: &Body<'_>, age: Duration) {
        let mut history = self.shared.history.lock();
        self.follow_epoch(&mut history, &seq.epoch);
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        let (envelope, streams): (&RawValue, Vec<(Stream<'_>, &str)>) = match body {
            Body::Broadcast {
                message,
                users: None,
                ..
            } => (message, vec![(Stream::All, "@all")]),
            Body::Broadcast {
                message,
                users: Some(users),
                exclude,
            } => (
                message,
                targets(users, exclude)
                    .map(|u| (Stream::User(u), "@user"))
                    .collect(),
            ),
            Body::Publish { channel, message } => {
                (message, vec![(Stream::Channel(channel), channel.as_str())])
            }
            _ => return,
        };
        let Some(m) = frame::parse_envelope(envelope.get().as_bytes()) else {
            return;
        };
        let exclude = match body {
            Body::Broadcast {
                users: None,
                exclude,
                ..
            } if !exclude.is_empty() => Some(Arc::new(exclude.iter().cloned().collect())),
            _ => None,
        };
        for ((stream, name), offset) in streams.into_iter().zip(&seq.offsets) {
            history.append_at(stream, *offset, at, now, exclude.clone(), |o| {
                frame::stream_message(&m.kind, name, Some(o), m.payload)
            });
        }
    }

    fn fall_back(&self, packet: &[u8]) {
        let Ok(p) = decode(packet) else {
            return;
        };
        match p.body {
            Body::Broadcast {
                message,
                users,
                exclude,
            } => self.deliver(message.get().as_bytes(), users.as_deref(), &exclude, None),
            Body::Publish { channel, message } => {
                if let Some(m) = frame::parse_envelope(message.get().as_bytes()) {
                    let _ = self.publish_local(&channel, &m.kind, m.payload, Numbering::Unnumbered);
                }
            }
            _ => {}
        }
    }

    fn epoch(&self) -> String {
        self.shared.history.epoch().to_string()
    }

    fn adopt_epoch(&self, epoch: &str) {
        let mut history = self.shared.history.lock();
        self.follow_epoch(&mut history, epoch);
    }

    fn raise_offsets(&self, offsets: &[(String, u64)]) {
        let mut history = self.shared.history.lock();
        for (name, offset) in offsets {
            if let Some(stream) = sequence::stream_of(name) {
                history.raise_last(stream, *offset);
            }
        }
    }

    fn history_complete(&self, complete: bool) {
        self.shared.history.lock().set_complete(complete);
    }

    fn subscribe_users(&self, channel: &str, users: &[String], subscribe: bool) {
        let _ = self.subscribe_local(channel, users, subscribe);
    }

    fn disconnect(&self, user: &str, code: CloseCode) {
        let _ = self.disconnect_local(user, code);
    }

    fn presence_snapshot(&self) -> Vec<(String, usize)> {
        self.shared.presence.snapshot()
    }

    fn presence_changes(&self) -> Vec<(String, usize)> {
        self.shared.presence.take_changes()
    }

    fn subs_snapshot(&self) -> Vec<(String, u32)> {
        self.shared.channels.snapshot()
    }

    fn subs_changes(&self) -> Vec<(String, u32)> {
        self.shared.channels.take_changes()
    }

    fn remote_subs(&self, deltas: Vec<SubDelta>) {
        self.apply_remote_subs(deltas);
    }

    fn counters(&self) -> NodeCounters {
        let m = &self.shared.metrics;
        NodeCounters {
            connections: self.shared.presence.total() as u64,
            messages_in: m.sum(|s| &s.messages_in),
            messages_out: m.sum(|s| &s.messages_out),
            bytes_out: m.sum(|s| &s.bytes_out),
        }
    }
}
