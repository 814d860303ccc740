//! Who is connected: per user, how many WebSocket connections and on which
//! shards.
//!
//! Shards write it when a connection opens or closes; the REST API reads it
//! to answer the status route, to count `sentToConnections`, and to route a
//! user-targeted message only to the shards that hold that user. It is split
//! into stripes so that shards opening connections for different users rarely
//! meet on one lock, and every lock is held for a map operation only: no I/O
//! and no channel send happen under it.
//!
//! In cluster mode it also remembers which users changed since the cluster
//! link last asked ([`Presence::take_changes`]), so that only those are sent
//! to the other nodes. A single node does not track changes.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 32;

#[derive(Debug, Default, Clone)]
struct Entry {
    total: usize,
    /// Connections of this user per shard, indexed by shard id.
    per_shard: Vec<u32>,
}

#[derive(Debug, Default)]
struct Stripe {
    users: HashMap<String, Entry>,
    /// Users whose count changed since the last `take_changes` (cluster mode).
    changed: HashSet<String>,
}

/// The presence table.
#[derive(Debug)]
pub struct Presence {
    stripes: Vec<Mutex<Stripe>>,
    hasher: std::collections::hash_map::RandomState,
    shards: usize,
    track_changes: bool,
}

impl Presence {
    /// A table for `shards` shards; with `track_changes` it also records
    /// which users changed (for cluster mode).
    pub fn new(shards: usize, track_changes: bool) -> Presence {
        Presence {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            hasher: Default::default(),
            shards,
            track_changes,
        }
    }

    fn lock(stripe: &Mutex<Stripe>) -> MutexGuard<'_, Stripe> {
        // A poisoned stripe only means another thread panicked mid-update of
        // plain counters; the data is still usable.
        stripe.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, user: &str) -> MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(user) as usize) % STRIPES;
        Self::lock(&self.stripes[i])
    }

    fn note_change(&self, stripe: &mut Stripe, user: &str) {
        if self.track_changes && !stripe.changed.contains(user) {
            stripe.changed.insert(user.to_string());
        }
    }

    /// Adds a connection of `user` on `shard` unless the user already holds
    /// `max_per_user`; the check and the add are one step.
    pub fn try_add(&self, user: &str, shard: usize, max_per_user: usize) -> bool {
        let mut stripe = self.stripe(user);
        let map = &mut stripe.users;
        let entry = map.entry(user.to_string()).or_insert_with(|| Entry {
            total: 0,
            per_shard: vec![0; self.shards],
        });
        if entry.total >= max_per_user {
            if entry.total == 0 {
                map.remove(user);
            }
            return false;
        }
        entry.total += 1;
        entry.per_shard[shard] += 1;
        self.note_change(&mut stripe, user);
        true
    }

    /// Removes one connection of `user` on `shard`.
    pub fn remove(&self, user: &str, shard: usize) {
        let mut stripe = self.stripe(user);
        let map = &mut stripe.users;
        if let Some(entry) = map.get_mut(user) {
            entry.total = entry.total.saturating_sub(1);
            if let Some(n) = entry.per_shard.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            if entry.total == 0 {
                map.remove(user);
            }
            self.note_change(&mut stripe, user);
        }
    }

    /// The users that changed since the last call, each with its count now
    /// (0: gone). Empty unless change tracking is on.
    pub fn take_changes(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in &self.stripes {
            let mut stripe = Self::lock(s);
            let changed = std::mem::take(&mut stripe.changed);
            out.extend(changed.into_iter().map(|u| {
                let n = stripe.users.get(&u).map_or(0, |e| e.total);
                (u, n)
            }));
        }
        out
    }

    /// Every connected user with its count, and forgets pending changes
    /// (the snapshot supersedes them).
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in &self.stripes {
            let mut stripe = Self::lock(s);
            stripe.changed.clear();
            out.extend(stripe.users.iter().map(|(u, e)| (u.clone(), e.total)));
        }
        out
    }

    /// Connections `user` holds now.
    pub fn count(&self, user: &str) -> usize {
        self.stripe(user).users.get(user).map_or(0, |e| e.total)
    }

    /// Per shard connection counts of `user` (empty when not connected).
    pub fn shards_of(&self, user: &str) -> Vec<(usize, u32)> {
        self.stripe(user)
            .users
            .get(user)
            .map(|e| {
                e.per_shard
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| (i, *n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of distinct connected users.
    pub fn user_count(&self) -> usize {
        self.stripes.iter().map(|s| Self::lock(s).users.len()).sum()
    }

    /// Up to `limit` connected user ids (sorted), and whether more exist.
    pub fn users(&self, limit: usize) -> (Vec<String>, bool) {
        let mut all = self.all_users();
        all.sort_unstable();
        let truncated = all.len() > limit;
        all.truncate(limit);
        (all, truncated)
    }

    /// Every connected user id, unordered.
    pub fn all_users(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for s in &self.stripes {
            all.extend(Self::lock(s).users.keys().cloned());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_limits() {
        let p = Presence::new(4, false);
        assert!(p.try_add("a", 0, 2));
        assert!(p.try_add("a", 3, 2));
        assert!(!p.try_add("a", 1, 2));
        assert!(p.try_add("b", 1, 2));
        assert_eq!(p.count("a"), 2);
        assert_eq!(p.shards_of("a"), vec![(0, 1), (3, 1)]);
        assert_eq!(p.user_count(), 2);
        assert_eq!(p.users(1), (vec!["a".to_string()], true));
        p.remove("a", 0);
        p.remove("a", 3);
        assert_eq!(p.count("a"), 0);
        assert!(p.shards_of("a").is_empty());
        assert_eq!(p.users(10), (vec!["b".to_string()], false));
        // Without tracking, nothing is recorded.
        assert!(p.take_changes().is_empty());
    }

    #[test]
    fn tracks_changes_once_per_user_with_current_counts() {
        let p = Presence::new(2, true);
        assert!(p.try_add("a", 0, 5));
        assert!(p.try_add("a", 1, 5));
        assert!(p.try_add("b", 0, 5));
        p.remove("b", 0);
        let mut c = p.take_changes();
        c.sort();
        assert_eq!(c, vec![("a".to_string(), 2), ("b".to_string(), 0)]);
        assert!(p.take_changes().is_empty());
        // A refused add changes nothing.
        assert!(!p.try_add("a", 0, 2));
        assert!(p.take_changes().is_empty());
        p.remove("a", 0);
        assert_eq!(p.snapshot(), vec![("a".to_string(), 1)]);
        assert!(
            p.take_changes().is_empty(),
            "a snapshot supersedes pending changes"
        );
    }
}
