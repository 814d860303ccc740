//! Who is connected: per user, how many WebSocket connections and on which
//! shards.
//!
//! Shards write it when a connection opens or closes; the REST API reads it
//! to answer the status route, to count `sentToConnections`, and to route a
//! user-targeted message only to the shards that hold that user. It is split
//! into stripes so that shards opening connections for different users rarely
//! meet on one lock, and every lock is held for a map operation only: no I/O
//! and no channel send happen under it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 32;

#[derive(Debug, Default, Clone)]
struct Entry {
    total: usize,
    /// Connections of this user per shard, indexed by shard id.
    per_shard: Vec<u32>,
}

/// The presence table.
#[derive(Debug)]
pub struct Presence {
    stripes: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    shards: usize,
}

impl Presence {
    pub fn new(shards: usize) -> Presence {
        Presence {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            shards,
        }
    }

    fn stripe(&self, user: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let i = (self.hasher.hash_one(user) as usize) % STRIPES;
        // A poisoned stripe only means another thread panicked mid-update of
        // plain counters; the data is still usable.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection of `user` on `shard` unless the user already holds
    /// `max_per_user`; the check and the add are one step.
    pub fn try_add(&self, user: &str, shard: usize, max_per_user: usize) -> bool {
        let mut map = self.stripe(user);
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
        true
    }

    /// Removes one connection of `user` on `shard`.
    pub fn remove(&self, user: &str, shard: usize) {
        let mut map = self.stripe(user);
        if let Some(entry) = map.get_mut(user) {
            entry.total = entry.total.saturating_sub(1);
            if let Some(n) = entry.per_shard.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
            if entry.total == 0 {
                map.remove(user);
            }
        }
    }

    /// Connections `user` holds now.
    pub fn count(&self, user: &str) -> usize {
        self.stripe(user).get(user).map_or(0, |e| e.total)
    }

    /// Per shard connection counts of `user` (empty when not connected).
    pub fn shards_of(&self, user: &str) -> Vec<(usize, u32)> {
        self.stripe(user)
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
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Up to `limit` connected user ids (sorted), and whether more exist.
    pub fn users(&self, limit: usize) -> (Vec<String>, bool) {
        let mut all: Vec<String> = Vec::new();
        for s in &self.stripes {
            let map = s.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(map.keys().cloned());
        }
        all.sort_unstable();
        let truncated = all.len() > limit;
        all.truncate(limit);
        (all, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_limits() {
        let p = Presence::new(4);
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
    }
}
