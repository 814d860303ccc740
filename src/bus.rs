//! Commands to shards: every broadcast, send and disconnect reaches the
//! shard that owns its connections through that shard's inbox (a bounded
//! crossbeam channel) plus a `mio::Waker` to end its poll.
//!
//! Sending never blocks: an operation first reserves room in the inbox of
//! every shard it targets ([`Bus::reserve`]), all or none, and is refused
//! with [`Busy`] when one of them is full, before anything is queued. So a
//! command is never half delivered, and a caller is never told a message
//! went out that some shard dropped. The bus holds no lock: the room is an
//! atomic count per inbox, which the shard lowers as it takes commands.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::channels::Directory;
use crate::error::CloseCode;
use crate::frame::SharedFrame;

/// A connection's address inside the server: its shard, its slab slot, and
/// the generation that slot had when the connection opened. A command whose
/// generation does not match the slot's current one is for a connection that
/// is gone, and is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

impl ConnRef {
    /// The public `connectionId` string: `shard-slot-generation`.
    pub fn to_id(self) -> String {
        format!("{}-{}-{}", self.shard, self.slot, self.gen)
    }

    pub fn parse(id: &str) -> Option<ConnRef> {
        let mut it = id.split('-');
        let r = ConnRef {
            shard: it.next()?.parse().ok()?,
            slot: it.next()?.parse().ok()?,
            gen: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(r)
    }
}

/// What a shard is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Queue `frame` (message `offset` of `@all`) to every open WebSocket
    /// connection whose user is not in `exclude`.
    BroadcastAll {
        frame: SharedFrame,
        offset: Option<u64>,
        exclude: Option<Arc<HashSet<String>>>,
    },
    /// Queue to every open connection of each user on this shard that
    /// user's frame (message `offset` of its `@user` stream).
    SendUsers { items: Vec<UserMessage> },
    /// Close these connections of this shard (each only if it is still
    /// that connection). Presence no longer counts them: the operation that
    /// sent this took them out.
    Close {
        conns: Vec<ConnRef>,
        code: CloseCode,
    },
    /// Queue `frame` (message `offset` of `channel`) to this shard's
    /// subscribers of `channel`; with `presence_only`, a `join`/`leave`
    /// (on no stream, no offset) to those that asked for them.
    Publish {
        channel: Arc<str>,
        frame: SharedFrame,
        offset: Option<u64>,
        presence_only: bool,
    },
    /// The history took another epoch: every connection and subscription
    /// here starts again at offset 0.
    ResetFloors,
    /// Subscribe (or unsubscribe) every connection of these users on this
    /// shard to `channel`, for the management API.
    SubscribeUsers {
        channel: Arc<str>,
        users: Vec<String>,
        subscribe: bool,
    },
    /// Close every WebSocket with 1001, finish REST answers, then stop.
    Shutdown,
}

/// One user's message of a send: its frame and its `@user` offset.
#[derive(Debug)]
pub struct UserMessage {
    pub user: String,
    pub frame: SharedFrame,
    /// `None`: unnumbered (a cluster node cut off from Redis).
    pub offset: Option<u64>,
}

/// A shard's inbox was full: the operation was refused before anything
/// was queued (`503` on the REST API, `wsedge_commands_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The sending side of every shard's inbox.
#[derive(Debug, Clone)]
pub struct Bus {
    shards: Arc<[ShardInbox]>,
    capacity: usize,
}

#[derive(Debug)]
struct ShardInbox {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
    /// Commands reserved or queued and not yet taken by the shard.
    held: Arc<AtomicUsize>,
}

/// The receiving side of one shard's inbox.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Command>,
    held: Arc<AtomicUsize>,
}

impl Inbox {
    /// The next command, if one is queued; its room is free again.
    pub fn try_recv(&self) -> Result<Command, TryRecvError> {
        let r = self.rx.try_recv();
        if r.is_ok() {
            self.held.fetch_sub(1, Relaxed);
        }
        r
    }
}

/// The sending side of one shard's inbox, before the bus is assembled.
#[derive(Debug)]
pub struct InboxTx {
    tx: Sender<Command>,
    held: Arc<AtomicUsize>,
}

/// A channel for one shard's inbox holding `capacity` commands, plus one
/// slot kept for [`Bus::shutdown_all`] so that a stop is never refused.
pub fn inbox(capacity: usize) -> (InboxTx, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.saturating_add(1));
    let held = Arc::new(AtomicUsize::new(0));
    (
        InboxTx {
            tx,
            held: held.clone(),
        },
        Inbox { rx, held },
    )
}

impl Bus {
    /// Builds the bus from each shard's sender and waker, in shard order;
    /// `capacity` is what each inbox was built with.
    pub fn new(parts: Vec<(InboxTx, Arc<mio::Waker>)>, capacity: usize) -> Bus {
        Bus {
            shards: parts
                .into_iter()
                .map(|(tx, waker)| ShardInbox {
                    tx: tx.tx,
                    waker,
                    held: tx.held,
                })
                .collect(),
            capacity,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends a `join`/`leave` of `user` to the presence subscribers of
    /// `channel` on every shard that holds subscribers. Refused whole when
    /// an inbox is full: a presence event never waits.
    pub fn presence_event(
        &self,
        channels: &Directory,
        kind: &str,
        channel: &str,
        user: &str,
    ) -> Result<(), Busy> {
        let shards = channels.shards_of(channel);
        if shards.is_empty() {
            return Ok(());
        }
        let room = self.reserve(shards.iter().map(|(s, _)| *s))?;
        let frame = crate::frame::presence_event(kind, channel, user);
        let channel: Arc<str> = Arc::from(channel);
        room.send_all(|| Command::Publish {
            channel: channel.clone(),
            frame: frame.clone(),
            offset: None,
            presence_only: true,
        });
        Ok(())
    }

    /// Room for one command in each of `shards` (each named once), or
    /// [`Busy`] and nothing reserved when one inbox is full.
    pub fn reserve(&self, shards: impl IntoIterator<Item = usize>) -> Result<Reserved<'_>, Busy> {
        let mut r = Reserved {
            bus: self,
            held: Vec::new(),
        };
        for shard in shards {
            let inbox = self.shards.get(shard).ok_or(Busy)?;
            let cap = self.capacity;
            inbox
                .held
                .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
                .map_err(|_| Busy)?;
            // Dropping `r` on an error above gives back what it holds.
            r.held.push(shard);
        }
        Ok(r)
    }

    /// Asks every shard to stop, in the slot kept for it (counted like
    /// any command, so the inbox may hold one over its capacity).
    pub fn shutdown_all(&self) {
        for inbox in self.shards.iter() {
            inbox.held.fetch_add(1, Relaxed);
            if inbox.tx.try_send(Command::Shutdown).is_ok() {
                let _ = inbox.waker.wake();
            } else {
                inbox.held.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Room reserved in some shards' inboxes; what is not used is given back
/// on drop.
#[derive(Debug)]
pub struct Reserved<'a> {
    bus: &'a Bus,
    held: Vec<usize>,
}

impl Reserved<'_> {
    /// Sends on a reserved shard, using its room. False when the shard was
    /// not reserved or has stopped.
    pub fn send(&mut self, shard: usize, cmd: Command) -> bool {
        let Some(i) = self.held.iter().position(|s| *s == shard) else {
            return false;
        };
        self.held.swap_remove(i);
        let inbox = &self.bus.shards[shard];
        // Never full: the room was counted before, and is given back only
        // when the shard takes a command.
        if inbox.tx.try_send(cmd).is_err() {
            inbox.held.fetch_sub(1, Relaxed);
            return false;
        }
        if let Err(e) = inbox.waker.wake() {
            log::warn!("waking shard {shard} failed: {e}");
        }
        true
    }

    /// Sends one command built per shard to every reserved shard.
    pub fn send_all(mut self, mut make: impl FnMut() -> Command) {
        for shard in std::mem::take(&mut self.held) {
            self.held.push(shard);
            self.send(shard, make());
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        for shard in self.held.drain(..) {
            self.bus.shards[shard].held.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(shards: usize, capacity: usize) -> (Bus, Vec<Inbox>, Vec<mio::Poll>) {
        let mut parts = Vec::new();
        let mut inboxes = Vec::new();
        let mut polls = Vec::new();
        for _ in 0..shards {
            // One waker per poll.
            let poll = mio::Poll::new().expect("poll");
            let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
            let (tx, rx) = inbox(capacity);
            parts.push((tx, Arc::new(waker)));
            inboxes.push(rx);
            polls.push(poll);
        }
        (Bus::new(parts, capacity), inboxes, polls)
    }

    fn shutdown() -> Command {
        Command::Shutdown
    }

    fn held(bus: &Bus) -> Vec<usize> {
        bus.shards.iter().map(|s| s.held.load(Relaxed)).collect()
    }

    #[test]
    fn room_is_reserved_in_every_target_or_in_none() {
        let (bus, inboxes, _polls) = bus(2, 2);
        bus.reserve(0..2).expect("room").send_all(shutdown);
        let mut one = bus.reserve([0]).expect("room");
        assert!(!one.send(1, shutdown()), "shard 1 was not reserved");
        assert!(one.send(0, shutdown()));
        drop(one);
        assert_eq!(held(&bus), vec![2, 1]);
        // Shard 0 is full: nothing is reserved anywhere.
        assert_eq!(bus.reserve(0..2).err(), Some(Busy));
        assert_eq!(bus.reserve([1, 0]).err(), Some(Busy));
        assert_eq!(held(&bus), vec![2, 1]);
        assert!(bus.reserve([1]).is_ok(), "shard 1 alone has room");
        // Taking a command frees its room; a reservation not used is given back.
        assert!(inboxes[0].try_recv().is_ok());
        assert!(bus.reserve(0..2).is_ok());
        assert_eq!(held(&bus), vec![1, 1]);
        // A stop is never refused, even by a full inbox.
        bus.reserve([0]).expect("room").send(0, shutdown());
        bus.shutdown_all();
        let mut n = 0;
        while inboxes[0].try_recv().is_ok() {
            n += 1;
        }
        assert_eq!((n, held(&bus)[0]), (3, 0));
    }

    #[test]
    fn conn_ids_round_trip() {
        let r = ConnRef {
            shard: 3,
            slot: 17,
            gen: 9,
        };
        assert_eq!(ConnRef::parse(&r.to_id()), Some(r));
        assert_eq!(ConnRef::parse("1-2"), None);
        assert_eq!(ConnRef::parse("1-2-3-4"), None);
        assert_eq!(ConnRef::parse("a-b-c"), None);
    }
}
