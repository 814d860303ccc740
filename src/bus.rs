//! Commands to shards: every broadcast, send and disconnect reaches the
//! shard that owns its connections through that shard's inbox (a crossbeam
//! channel) plus a `mio::Waker` to end its poll.
//!
//! Sending never blocks (the channels are unbounded and the waker is a
//! write to an eventfd); the bus holds no lock.

use std::collections::HashSet;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

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
    /// Queue `frame` to every open WebSocket connection whose user is not in `exclude`.
    BroadcastAll {
        frame: SharedFrame,
        exclude: Option<Arc<HashSet<String>>>,
    },
    /// Queue `frame` to every open connection of these users on this shard.
    SendUsers {
        frame: SharedFrame,
        users: Vec<String>,
    },
    /// Close these connections of this shard (each only if it is still
    /// that connection). Presence no longer counts them: the operation that
    /// sent this took them out.
    Close {
        conns: Vec<ConnRef>,
        code: CloseCode,
    },
    /// Close every WebSocket with 1001, finish REST answers, then stop.
    Shutdown,
}

/// The sending side of every shard's inbox.
#[derive(Debug, Clone)]
pub struct Bus {
    shards: Arc<[ShardInbox]>,
}

#[derive(Debug)]
struct ShardInbox {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
}

impl Bus {
    /// Builds the bus from each shard's sender and waker, in shard order.
    pub fn new(parts: Vec<(Sender<Command>, Arc<mio::Waker>)>) -> Bus {
        Bus {
            shards: parts
                .into_iter()
                .map(|(tx, waker)| ShardInbox { tx, waker })
                .collect(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sends to one shard; false when that shard has stopped.
    pub fn send(&self, shard: usize, cmd: Command) -> bool {
        let Some(inbox) = self.shards.get(shard) else {
            return false;
        };
        if inbox.tx.send(cmd).is_err() {
            return false;
        }
        if let Err(e) = inbox.waker.wake() {
            log::warn!("waking shard {shard} failed: {e}");
        }
        true
    }

    /// Sends one command built per shard to every shard.
    pub fn send_all(&self, mut make: impl FnMut() -> Command) {
        for i in 0..self.shards.len() {
            self.send(i, make());
        }
    }
}

/// A channel for one shard's inbox.
pub fn inbox() -> (Sender<Command>, Receiver<Command>) {
    crossbeam_channel::unbounded()
}

#[cfg(test)]
mod tests {
    use super::*;

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
