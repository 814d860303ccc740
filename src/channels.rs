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

use std::collections::{HashMap, HashSet};
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

/// One user's subscribed connections in a channel: here, and on the other
/// live nodes together (cluster mode).
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    local: u32,
    remote: u32,
}

impl Count {
    fn total(self) -> u32 {
        self.local.saturating_add(self.remote)
    }
}

/// One channel's subscribers.
#[derive(Debug, Default)]
struct Entry {
    /// Subscribed connections per shard of this node.
    per_shard: Vec<u32>,
    /// Subscribed connections on this node.
    connections: usize,
    /// Subscribed connections on the other live nodes.
    remote: usize,
    users: HashMap<Arc<str>, Count>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.remote == 0
    }
}

/// One stripe: its channels, and (cluster mode) the `(channel, user)`
/// pairs whose local count changed since the cluster link last looked.
#[derive(Debug, Default)]
struct Stripe {
    map: HashMap<Arc<str>, Entry>,
    changed: HashSet<(Arc<str>, Arc<str>)>,
}

/// A user's subscribed connections in a channel, with the key the cluster
/// uses for it: `"<channel> <user>"` (a channel name has no space, so the
/// first space splits it).
pub fn sub_key(channel: &str, user: &str) -> String {
    format!("{channel} {user}")
}

/// The channel and user of a [`sub_key`]; `None` when the channel part is
/// not a valid name (a packet from a confused peer).
pub fn split_sub_key(key: &str) -> Option<(&str, &str)> {
    let (channel, user) = key.split_once(' ')?;
    check_name(channel).ok()?;
    Some((channel, user))
}

/// The node-wide directory of channels. In cluster mode it also holds how
/// many connections each user has subscribed on the other live nodes
/// (kept by the cluster link), so that counts, member lists and presence
/// events are cluster-wide while routing stays local.
#[derive(Debug)]
pub struct Directory {
    stripes: Vec<Mutex<Stripe>>,
    hasher: std::collections::hash_map::RandomState,
    shards: usize,
    /// Record local changes for the cluster link (cluster mode only).
    track: bool,
}

impl Directory {
    pub fn new(shards: usize, track: bool) -> Directory {
        Directory {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            shards,
            track,
        }
    }

    fn stripe(&self, channel: &str) -> MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(channel) as usize) % STRIPES;
        lock(&self.stripes[i])
    }

    /// A connection of `user` on `shard` subscribed; true when it is the
    /// user's first in this channel anywhere in the cluster (a `join`).
    pub fn join(&self, channel: &Arc<str>, user: &Arc<str>, shard: usize) -> bool {
        let mut stripe = self.stripe(channel);
        let Stripe { map, changed } = &mut *stripe;
        let e = map.entry(channel.clone()).or_default();
        if e.per_shard.len() < self.shards {
            e.per_shard.resize(self.shards, 0);
        }
        e.per_shard[shard] += 1;
        e.connections += 1;
        let (key, n) = match e.users.get_key_value(user) {
            Some((k, n)) => (k.clone(), *n),
            None => (user.clone(), Count::default()),
        };
        let first = n.total() == 0;
        e.users.insert(
            key.clone(),
            Count {
                local: n.local + 1,
                ..n
            },
        );
        if self.track {
            changed.insert((channel.clone(), key));
        }
        first
    }

    /// A subscribed connection of `user` on `shard` left; true when it was
    /// the user's last in this channel anywhere in the cluster (a `leave`).
    pub fn leave(&self, channel: &str, user: &str, shard: usize) -> bool {
        let mut stripe = self.stripe(channel);
        let Stripe { map, changed } = &mut *stripe;
        let Some(e) = map.get_mut(channel) else {
            return false;
        };
        let Some((key, n)) = e.users.get_key_value(user).map(|(k, n)| (k.clone(), *n)) else {
            return false;
        };
        if n.local == 0 {
            return false;
        }
        if let Some(s) = e.per_shard.get_mut(shard) {
            *s = s.saturating_sub(1);
        }
        e.connections = e.connections.saturating_sub(1);
        let left = Count {
            local: n.local - 1,
            ..n
        };
        if left.total() == 0 {
            e.users.remove(user);
        } else {
            e.users.insert(key.clone(), left);
        }
        let empty = e.is_empty();
        if self.track {
            if let Some((name, _)) = map.get_key_value(channel) {
                changed.insert((name.clone(), key));
            }
        }
        if empty {
            map.remove(channel);
        }
        left.total() == 0
    }

    /// `user` has `delta` more (or fewer) subscribed connections in
    /// `channel` on the other nodes. `Some(true)` when that makes it join
    /// the channel cluster-wide, `Some(false)` when it leaves.
    pub fn remote_change(&self, channel: &str, user: &str, delta: i64) -> Option<bool> {
        let mut stripe = self.stripe(channel);
        let map = &mut stripe.map;
        if !map.contains_key(channel) {
            if delta <= 0 {
                return None;
            }
            map.insert(Arc::from(channel), Entry::default());
        }
        let e = map.get_mut(channel)?;
        let n = e.users.get(user).copied().unwrap_or_default();
        let remote = (i64::from(n.remote) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        let applied = i64::from(remote) - i64::from(n.remote);
        e.remote = (e.remote as i64 + applied).max(0) as usize;
        let after = Count { remote, ..n };
        if after.total() == 0 {
            e.users.remove(user);
        } else {
            e.users.insert(Arc::from(user), after);
        }
        let crossed = (n.total() == 0) != (after.total() == 0);
        if e.is_empty() {
            map.remove(channel);
        }
        crossed.then_some(after.total() > 0)
    }

    /// The local counts changed since the last call, as
    /// `("<channel> <user>", connections here)` (0: none left here).
    pub fn take_changes(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            let mut s = lock(stripe);
            let Stripe { map, changed } = &mut *s;
            out.extend(changed.drain().map(|(channel, user)| {
                let n = map
                    .get(&channel)
                    .and_then(|e| e.users.get(&user))
                    .map_or(0, |n| n.local);
                (sub_key(&channel, &user), n)
            }));
        }
        out
    }

    /// Every local count above zero, keyed as in [`Directory::take_changes`].
    pub fn snapshot(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for stripe in &self.stripes {
            let s = lock(stripe);
            for (channel, e) in &s.map {
                out.extend(
                    e.users
                        .iter()
                        .filter(|(_, n)| n.local > 0)
                        .map(|(u, n)| (sub_key(channel, u), n.local)),
                );
            }
        }
        out
    }

    /// The shards of this node holding subscribers of `channel`, with
    /// their counts.
    pub fn shards_of(&self, channel: &str) -> Vec<(usize, u32)> {
        let stripe = self.stripe(channel);
        stripe.map.get(channel).map_or_else(Vec::new, |e| {
            e.per_shard
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i, *n))
                .collect()
        })
    }

    /// Subscribed connections on the other nodes.
    pub fn remote_connections(&self, channel: &str) -> usize {
        self.stripe(channel)
            .map
            .get(channel)
            .map_or(0, |e| e.remote)
    }

    /// Subscribed connections (every live node), and up to `limit`
    /// subscribed users (with whether there were more); `None` when the
    /// channel has no subscriber.
    pub fn members(&self, channel: &str, limit: usize) -> Option<(usize, Vec<String>, bool)> {
        let stripe = self.stripe(channel);
        let e = stripe.map.get(channel)?;
        let users = e.users.keys().take(limit).map(|u| u.to_string()).collect();
        Some((e.connections + e.remote, users, e.users.len() > limit))
    }

    /// Up to `limit` channels with their subscribed connections (every
    /// live node), and the number of channels in all.
    pub fn list(&self, limit: usize) -> (Vec<(String, usize)>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        for stripe in &self.stripes {
            let s = lock(stripe);
            total += s.map.len();
            let room = limit.saturating_sub(out.len());
            out.extend(
                s.map
                    .iter()
                    .take(room)
                    .map(|(c, e)| (c.to_string(), e.connections + e.remote)),
            );
        }
        (out, total)
    }

    /// Channels with a subscriber on this node, subscriptions of this
    /// node's connections, and channels with a subscriber anywhere.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for stripe in &self.stripes {
            let s = lock(stripe);
            c.all_channels += s.map.len();
            for e in s.map.values().filter(|e| e.connections > 0) {
                c.channels += 1;
                c.subscriptions += e.connections;
            }
        }
        c
    }
}

/// What [`Directory::counts`] tells.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Channels with a subscriber on this node.
    pub channels: usize,
    /// Subscriptions of this node's connections.
    pub subscriptions: usize,
    /// Channels with a subscriber on any live node.
    pub all_channels: usize,
}

fn lock(stripe: &Mutex<Stripe>) -> MutexGuard<'_, Stripe> {
    // A poisoned stripe holds plain counters, still usable.
    stripe.lock().unwrap_or_else(|p| p.into_inner())
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
        let d = Directory::new(2, false);
        let (c, u, v): (Arc<str>, Arc<str>, Arc<str>) = ("news".into(), "u".into(), "v".into());
        assert!(d.join(&c, &u, 0));
        assert!(!d.join(&c, &u, 1), "second connection of u: no join");
        assert!(d.join(&c, &v, 1));
        assert_eq!(d.shards_of("news"), vec![(0, 1), (1, 2)]);
        let counts = |d: &Directory| {
            let c = d.counts();
            (c.channels, c.subscriptions, c.all_channels)
        };
        assert_eq!(counts(&d), (1, 3, 1));
        assert!(!d.leave("news", "u", 0), "u still has one");
        assert!(d.leave("news", "u", 1));
        assert!(d.leave("news", "v", 1));
        assert_eq!(counts(&d), (0, 0, 0), "an empty channel is gone");
        assert!(d.members("news", 10).is_none());
        assert!(d.take_changes().is_empty(), "untracked on a single node");
    }

    #[test]
    fn remote_subscribers_count_and_join_or_leave_cluster_wide() {
        let d = Directory::new(1, true);
        let (c, u): (Arc<str>, Arc<str>) = ("room".into(), "u".into());
        assert_eq!(d.remote_change("room", "u", 2), Some(true), "u joins on B");
        assert_eq!(d.members("room", 10), Some((2, vec!["u".into()], false)));
        assert!(d.shards_of("room").is_empty(), "nothing to route here");
        assert!(!d.join(&c, &u, 0), "u is already in the channel on B");
        assert_eq!(d.remote_change("room", "u", -2), None, "u still here");
        assert_eq!(d.remote_change("room", "w", 1), Some(true));
        assert!(d.leave("room", "u", 0), "u's last connection anywhere");
        assert_eq!(d.members("room", 10), Some((1, vec!["w".into()], false)));
        let c = d.counts();
        assert_eq!((c.channels, c.subscriptions, c.all_channels), (0, 0, 1));
        assert_eq!(d.list(10), (vec![("room".to_string(), 1)], 1));
        assert_eq!(d.remote_change("room", "w", -5), Some(false), "clamped");
        assert!(d.members("room", 10).is_none());
        assert_eq!(d.remote_change("gone", "x", -1), None);
        assert!(d.members("gone", 10).is_none());
    }

    #[test]
    fn local_changes_are_tracked_for_the_cluster_as_absolute_counts() {
        let d = Directory::new(2, true);
        let (c, u): (Arc<str>, Arc<str>) = ("news".into(), "u u".into());
        d.join(&c, &u, 0);
        d.join(&c, &u, 1);
        assert_eq!(d.take_changes(), vec![("news u u".to_string(), 2)]);
        assert!(d.take_changes().is_empty());
        assert_eq!(d.snapshot(), vec![("news u u".to_string(), 2)]);
        d.leave("news", "u u", 0);
        d.leave("news", "u u", 1);
        assert_eq!(d.take_changes(), vec![("news u u".to_string(), 0)]);
        assert!(d.snapshot().is_empty());
        assert_eq!(split_sub_key("news u u"), Some(("news", "u u")));
        assert_eq!(split_sub_key("bad*name u"), None);
        assert_eq!(split_sub_key("nospace"), None);
    }
}
