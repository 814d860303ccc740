//! Channels (docs/PROTOCOL.md §10): what a name may be, what a token allows,
//! and the node-wide directory of who is subscribed where.
//!
//! The directory answers the REST routes (counts, members, the channel
//! list) and routes a publish only to the shards that hold subscribers, as
//! presence does for users. It also decides presence events: a user joins a
//! channel with its first subscribed connection on this node and leaves
//! with its last. Like presence it is striped, and every lock is held for
//! one map operation: no I/O and no channel send under it. Each shard keeps
//! the membership of its own connections (`shard::members`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest channel name, in bytes.
pub const MAX_NAME: usize = 128;

const STRIPES: usize = 32;

/// Why a channel name is refused, for the `error` message naming it.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("a channel name is 1 to 128 bytes");
    }
    if name.starts_with('@') {
        return Err("channel names starting with @ are reserved");
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_-:.@/".contains(&b);
    if !name.bytes().all(ok) {
        return Err("a channel name is made of A-Z a-z 0-9 _ - : . @ /");
    }
    Ok(())
}

/// The channels a token's `channels` claim allows: exact names, and
/// prefixes written with a trailing `*` (`"modpack:*"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Box<[String]>);

impl Grants {
    pub fn new(patterns: Vec<String>) -> Grants {
        Grants(patterns.into_boxed_slice())
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => p == channel,
        })
    }
}

/// One channel's subscribers on this node.
#[derive(Debug, Default)]
struct Entry {
    /// Subscribed connections per shard.
    per_shard: Vec<u32>,
    connections: usize,
    /// Subscribed connections per user.
    users: HashMap<Arc<str>, u32>,
}

/// The node-wide directory of channels.
#[derive(Debug)]
pub struct Directory {
    stripes: Vec<Mutex<HashMap<Arc<str>, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    shards: usize,
}

impl Directory {
    pub fn new(shards: usize) -> Directory {
        Directory {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            shards,
        }
    }

    fn stripe(&self, channel: &str) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        let i = (self.hasher.hash_one(channel) as usize) % STRIPES;
        // A poisoned stripe holds plain counters, still usable.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of `user` on `shard` subscribed; true when it is the
    /// user's first in this channel (a `join`).
    pub fn join(&self, channel: &Arc<str>, user: &Arc<str>, shard: usize) -> bool {
        let mut map = self.stripe(channel);
        let e = map.entry(channel.clone()).or_default();
        if e.per_shard.len() < self.shards {
            e.per_shard.resize(self.shards, 0);
        }
        e.per_shard[shard] += 1;
        e.connections += 1;
        let n = e.users.entry(user.clone()).or_default();
        *n += 1;
        *n == 1
    }

    /// A subscribed connection of `user` on `shard` left; true when it was
    /// the user's last in this channel (a `leave`).
    pub fn leave(&self, channel: &str, user: &str, shard: usize) -> bool {
        let mut map = self.stripe(channel);
        let Some(e) = map.get_mut(channel) else {
            return false;
        };
        if let Some(n) = e.per_shard.get_mut(shard) {
            *n = n.saturating_sub(1);
        }
        e.connections = e.connections.saturating_sub(1);
        let last = match e.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                e.users.remove(user);
                true
            }
            None => false,
        };
        if e.connections == 0 {
            map.remove(channel);
        }
        last
    }

    /// The shards holding subscribers of `channel`, with their counts.
    pub fn shards_of(&self, channel: &str) -> Vec<(usize, u32)> {
        let map = self.stripe(channel);
        map.get(channel).map_or_else(Vec::new, |e| {
            e.per_shard
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i, *n))
                .collect()
        })
    }

    /// Subscribed connections, and up to `limit` subscribed users (with
    /// whether there were more); `None` when the channel has no subscriber.
    pub fn members(&self, channel: &str, limit: usize) -> Option<(usize, Vec<String>, bool)> {
        let map = self.stripe(channel);
        let e = map.get(channel)?;
        let users = e.users.keys().take(limit).map(|u| u.to_string()).collect();
        Some((e.connections, users, e.users.len() > limit))
    }

    /// Up to `limit` channels with their subscribed connections, and the
    /// number of channels in all.
    pub fn list(&self, limit: usize) -> (Vec<(String, usize)>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        for stripe in &self.stripes {
            let map = stripe.lock().unwrap_or_else(|p| p.into_inner());
            total += map.len();
            let room = limit.saturating_sub(out.len());
            out.extend(
                map.iter()
                    .take(room)
                    .map(|(c, e)| (c.to_string(), e.connections)),
            );
        }
        (out, total)
    }

    /// Channels with a subscriber, and subscriptions in all.
    pub fn counts(&self) -> (usize, usize) {
        self.stripes.iter().fold((0, 0), |(c, s), stripe| {
            let map = stripe.lock().unwrap_or_else(|p| p.into_inner());
            (
                c + map.len(),
                s + map.values().map(|e| e.connections).sum::<usize>(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "news",
            "modpack:42",
            "room/a.b-c_d",
            "a@b",
            &"x".repeat(128),
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "@all", "sp ace", "é", "a*", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn grants_are_exact_names_or_prefixes() {
        let g = Grants::new(vec!["news".into(), "modpack:*".into()]);
        assert!(g.allows("news"));
        assert!(!g.allows("news2"));
        assert!(g.allows("modpack:1"));
        assert!(g.allows("modpack:"));
        assert!(!g.allows("modpack"));
        assert!(!Grants::default().allows("news"));
        assert!(Grants::new(vec!["*".into()]).allows("anything"));
    }

    #[test]
    fn joins_and_leaves_count_users_once_across_shards() {
        let d = Directory::new(2);
        let (c, u, v): (Arc<str>, Arc<str>, Arc<str>) = ("news".into(), "u".into(), "v".into());
        assert!(d.join(&c, &u, 0));
        assert!(!d.join(&c, &u, 1), "second connection of u: no join");
        assert!(d.join(&c, &v, 1));
        assert_eq!(d.shards_of("news"), vec![(0, 1), (1, 2)]);
        assert_eq!(d.counts(), (1, 3));
        assert!(!d.leave("news", "u", 0), "u still has one");
        assert!(d.leave("news", "u", 1));
        assert!(d.leave("news", "v", 1));
        assert_eq!(d.counts(), (0, 0), "an empty channel is gone");
        assert!(d.members("news", 10).is_none());
    }
}
