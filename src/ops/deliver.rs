//! The fan-out of one message to this node's connections, on its streams
//! (docs/PROTOCOL.md §11): `@all` for a broadcast to everyone, each
//! target's `@user` otherwise. The single-node path of every broadcast and
//! send, and the path of every numbered message a cluster node reads back
//! from Redis.
//!
//! The history stays locked from the numbering of a message until it is in
//! every target shard's inbox: offsets reach each connection in order, and
//! a connection opening meanwhile (which reads its offsets under the same
//! lock) is either routed to or starts after it. Nothing here waits for a
//! shard.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;

use super::Handle;
use crate::bus::{Busy, Command, UserMessage};
use crate::cluster::sequence::Seq;
use crate::frame::{self, SharedFrame};
use crate::history::{targets, Stream, Writer};

/// Where a message delivered here gets its offsets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Numbering<'a> {
    /// From this node's history (a single node).
    Here,
    /// From Redis, for the whole cluster: one offset per stream, in the
    /// order of `cluster::sequence::streams`.
    Cluster(&'a Seq),
    /// None: Redis is out of reach. Delivered without an offset and not
    /// kept for recovery.
    Unnumbered,
}

impl Handle {
    /// Fans a message out to this node's connections only, on `@all` or on
    /// each target's `@user` stream. Returns the connections addressed here.
    pub(crate) fn deliver_local(
        &self,
        kind: &str,
        payload: Option<&RawValue>,
        user_ids: Option<&[String]>,
        exclude: &[String],
        numbering: Numbering<'_>,
    ) -> Result<usize, Busy> {
        let shared = &self.shared;
        let now = Instant::now();
        let mut history = shared.history.lock();
        if let Numbering::Cluster(seq) = numbering {
            self.follow_epoch(&mut history, &seq.epoch);
        }
        let total = match user_ids {
            Some(ids) => {
                let users: Vec<&String> = targets(ids, exclude).collect();
                self.send_to_users(&mut history, kind, payload, &users, numbering, now)?
            }
            None => {
                let exclude: HashSet<String> = exclude.iter().cloned().collect();
                let total = self.count_all_but(exclude.iter().map(String::as_str));
                let exclude = (!exclude.is_empty()).then(|| Arc::new(exclude));
                let room = self.room(0..shared.bus.shard_count(), numbering)?;
                let numbered = number(
                    &mut history,
                    Stream::All,
                    0,
                    numbering,
                    now,
                    exclude.clone(),
                    |offset| frame::stream_message(kind, "@all", offset, payload),
                );
                let (Some((offset, frame)), Ok(room)) = (numbered, room) else {
                    return Err(Busy);
                };
                room.send_all(|| Command::BroadcastAll {
                    frame: frame.clone(),
                    offset,
                    exclude: exclude.clone(),
                });
                total
            }
        };
        shared.metrics.broadcasts.fetch_add(1, Relaxed);
        Ok(total)
    }

    /// This node's connections of every user but `excluded` (each named
    /// once): what a broadcast to everyone addresses here.
    pub(super) fn count_all_but<'a>(&self, excluded: impl IntoIterator<Item = &'a str>) -> usize {
        let presence = &self.shared.presence;
        let excluded: usize = excluded.into_iter().map(|u| presence.count(u)).sum();
        presence.total().saturating_sub(excluded)
    }

    /// Room in `shards`' inboxes. A message the cluster numbered is kept
    /// in the history even when there is none (a client that recovers
    /// gets it), so its refusal comes after the numbering: the caller
    /// gets `Ok(Err(Busy))` then, and `Err(Busy)` otherwise.
    pub(super) fn room(
        &self,
        shards: impl IntoIterator<Item = usize>,
        numbering: Numbering<'_>,
    ) -> Result<Result<crate::bus::Reserved<'_>, Busy>, Busy> {
        let room = self.shared.bus.reserve(shards).inspect_err(|_| {
            self.shared.metrics.commands_refused.fetch_add(1, Relaxed);
        });
        match (room, numbering) {
            (Err(busy), Numbering::Here | Numbering::Unnumbered) => Err(busy),
            (room, _) => Ok(room),
        }
    }

    /// Numbers a message on each user's `@user` stream (connected or not:
    /// one away for a moment recovers it) and routes each user's frame to
    /// the shards holding the user. Returns the connections addressed.
    fn send_to_users(
        &self,
        history: &mut Writer<'_>,
        kind: &str,
        payload: Option<&RawValue>,
        users: &[&String],
        numbering: Numbering<'_>,
        now: Instant,
    ) -> Result<usize, Busy> {
        let shared = &self.shared;
        let routes: Vec<Vec<(usize, u32)>> =
            users.iter().map(|u| shared.presence.shards_of(u)).collect();
        let shards: HashSet<usize> = routes.iter().flatten().map(|(s, _)| *s).collect();
        let room = self.room(shards, numbering)?;
        let mut per_shard: Vec<Vec<UserMessage>> = Vec::new();
        per_shard.resize_with(shared.bus.shard_count(), Vec::new);
        let mut total = 0usize;
        for (i, (user, shards)) in users.iter().zip(routes).enumerate() {
            let numbered = number(history, Stream::User(user), i, numbering, now, None, |o| {
                frame::stream_message(kind, "@user", o, payload)
            });
            let Some((offset, frame)) = numbered else {
                continue;
            };
            for (shard, n) in shards {
                total += n as usize;
                if let Some(list) = per_shard.get_mut(shard) {
                    list.push(UserMessage {
                        user: user.to_string(),
                        frame: frame.clone(),
                        offset,
                    });
                }
            }
        }
        let mut room = room?;
        for (shard, items) in per_shard.into_iter().enumerate() {
            if !items.is_empty() {
                room.send(shard, Command::SendUsers { items });
            }
        }
        Ok(total)
    }

    /// Takes the cluster's epoch when it is not this node's any more (Redis
    /// lost its data, or this node just learnt it): the history starts
    /// anew, and so do the offsets every connection started at.
    pub(crate) fn follow_epoch(&self, history: &mut Writer<'_>, epoch: &str) {
        if !history.adopt_epoch(epoch) {
            return;
        }
        log::info!("history epoch is now {epoch}");
        let bus = &self.shared.bus;
        match bus.reserve(0..bus.shard_count()) {
            Ok(room) => room.send_all(|| Command::ResetFloors),
            Err(Busy) => {
                log::warn!("a shard inbox is full: its connections keep their old offsets")
            }
        }
    }
}

/// Numbers message `index` of a delivery on `stream` as `numbering` says
/// and builds its frame; `None` when the cluster's numbers do not cover it
/// (a malformed packet).
pub(crate) fn number(
    history: &mut Writer<'_>,
    stream: Stream<'_>,
    index: usize,
    numbering: Numbering<'_>,
    now: Instant,
    exclude: Option<Arc<HashSet<String>>>,
    build: impl Fn(Option<u64>) -> SharedFrame,
) -> Option<(Option<u64>, SharedFrame)> {
    match numbering {
        Numbering::Here => {
            let (offset, frame) = history.append(stream, now, exclude, |o| build(Some(o)));
            Some((Some(offset), frame))
        }
        Numbering::Cluster(seq) => {
            let offset = *seq.offsets.get(index)?;
            let frame = history.append_at(stream, offset, now, now, exclude, |o| build(Some(o)));
            Some((Some(offset), frame))
        }
        Numbering::Unnumbered => Some((None, build(None))),
    }
}
