//! Who is connected: per user, which WebSocket connections count for them
//! (and so on which shards), and per shard how many connections count.
//!
//! A connection counts from the moment its shard registers it until its
//! shard removes it, or until a management call takes it out to close it
//! ([`Presence::take_user`], [`Presence::take_conn`]): from that call on the
//! closing connection counts nowhere (the status route, `send`, stats,
//! `/metrics`, the per-user limit), although its shard may take up to the
//! close handshake's 3 s to remove it. The removal of a connection already
//! taken changes nothing here.
//!
//! Shards write it when a connection opens or closes; the REST API reads it
//! to answer the status route, to count `sentToConnections`, and to route a
//! user-targeted message only to the shards that hold that user. It is split
//! into stripes so that shards opening connections for different users rarely
//! meet on one lock, and every lock is held for a map operation only: no I/O
//! and no channel send happen under it. It never touches a connection.
//!
//! In cluster mode it also remembers which users changed since the cluster
//! link last asked ([`Presence::take_changes`]), so that only those are sent
//! to the other nodes. A single node does not track changes.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bus::ConnRef;

const STRIPES: usize = 32;

#[derive(Debug, Default)]
struct Stripe {
    /// Each connected user's counted connections.
    users: HashMap<Arc<str>, Vec<ConnRef>>,
    /// Users whose count changed since the last `take_changes` (cluster mode).
    changed: HashSet<Arc<str>>,
}

/// One shard's slab slots → the generation and user of the WebSocket
/// registered there, so that a connection id finds its user.
type Slots = Vec<Option<(u32, Arc<str>)>>;

/// The presence table.
#[derive(Debug)]
pub struct Presence {
    stripes: Vec<Mutex<Stripe>>,
    hasher: std::collections::hash_map::RandomState,
    /// Counted connections per shard, changed under the user's stripe lock
    /// together with the user's entry.
    per_shard: Vec<AtomicUsize>,
    /// Per shard, written by that shard only (read by `take_conn`).
    slots: Vec<Mutex<Slots>>,
    track_changes: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of
    // plain maps and counters; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            per_shard: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            slots: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            track_changes,
        }
    }

    fn stripe(&self, user: &str) -> MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(user) as usize) % STRIPES;
        lock(&self.stripes[i])
    }

    fn note_change(&self, stripe: &mut Stripe, user: &Arc<str>) {
        if self.track_changes && !stripe.changed.contains(user) {
            stripe.changed.insert(user.clone());
        }
    }

    fn shard_count(&self, shard: u16) -> Option<&AtomicUsize> {
        self.per_shard.get(usize::from(shard))
    }

    /// Counts the connection `conn` of `user` unless the user already holds
    /// `max_per_user` counted connections; the check and the add are one
    /// step.
    pub fn try_add(&self, user: &Arc<str>, conn: ConnRef, max_per_user: usize) -> bool {
        {
            let mut stripe = self.stripe(user);
            let held = stripe.users.get(&**user).map_or(0, Vec::len);
            if held >= max_per_user {
                return false;
            }
            stripe.users.entry(user.clone()).or_default().push(conn);
            if let Some(n) = self.shard_count(conn.shard) {
                n.fetch_add(1, Relaxed);
            }
            self.note_change(&mut stripe, user);
        }
        if let Some(slots) = self.slots.get(usize::from(conn.shard)) {
            let mut slots = lock(slots);
            let i = conn.slot as usize;
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            slots[i] = Some((conn.gen, user.clone()));
        }
        true
    }

    /// Forgets the connection `conn` of `user`, which its shard removed.
    /// True when it still counted (it was not taken by a disconnect).
    pub fn remove(&self, user: &Arc<str>, conn: ConnRef) -> bool {
        if let Some(slots) = self.slots.get(usize::from(conn.shard)) {
            let mut slots = lock(slots);
            if let Some(s) = slots.get_mut(conn.slot as usize) {
                if s.as_ref().is_some_and(|(gen, _)| *gen == conn.gen) {
                    *s = None;
                }
            }
        }
        self.uncount(user, conn)
    }

    /// Stops counting `conn`; true when it counted.
    fn uncount(&self, user: &Arc<str>, conn: ConnRef) -> bool {
        let mut stripe = self.stripe(user);
        let Some(conns) = stripe.users.get_mut(&**user) else {
            return false;
        };
        let Some(i) = conns.iter().position(|c| *c == conn) else {
            return false;
        };
        conns.swap_remove(i);
        if conns.is_empty() {
            stripe.users.remove(&**user);
        }
        if let Some(n) = self.shard_count(conn.shard) {
            n.fetch_sub(1, Relaxed);
        }
        self.note_change(&mut stripe, user);
        true
    }

    /// Takes every counted connection of `user` out, to be closed: from now
    /// on they count nowhere, and their later removal changes nothing. A
    /// connection registered after this call counts as usual.
    pub fn take_user(&self, user: &str) -> Vec<ConnRef> {
        let mut stripe = self.stripe(user);
        let Some((key, conns)) = stripe.users.remove_entry(user) else {
            return Vec::new();
        };
        for c in &conns {
            if let Some(n) = self.shard_count(c.shard) {
                n.fetch_sub(1, Relaxed);
            }
        }
        self.note_change(&mut stripe, &key);
        conns
    }

    /// Takes the one connection `conn` out, as [`Presence::take_user`]
    /// does. False when no counted connection has that id (a stale or
    /// malformed id, or a connection already taken or gone).
    pub fn take_conn(&self, conn: ConnRef) -> bool {
        let user = self.slots.get(usize::from(conn.shard)).and_then(|slots| {
            match lock(slots).get(conn.slot as usize) {
                Some(Some((gen, user))) if *gen == conn.gen => Some(user.clone()),
                _ => None,
            }
        });
        user.is_some_and(|u| self.uncount(&u, conn))
    }

    /// The users that changed since the last call, each with its count now
    /// (0: gone). Empty unless change tracking is on.
    pub fn take_changes(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in &self.stripes {
            let mut stripe = lock(s);
            let changed = std::mem::take(&mut stripe.changed);
            out.extend(changed.into_iter().map(|u| {
                let n = stripe.users.get(&u).map_or(0, Vec::len);
                (u.to_string(), n)
            }));
        }
        out
    }

    /// Every connected user with its count, and forgets pending changes
    /// (the snapshot supersedes them).
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in &self.stripes {
            let mut stripe = lock(s);
            stripe.changed.clear();
            out.extend(stripe.users.iter().map(|(u, c)| (u.to_string(), c.len())));
        }
        out
    }

    /// Counted connections of `user`.
    pub fn count(&self, user: &str) -> usize {
        self.stripe(user).users.get(user).map_or(0, Vec::len)
    }

    /// Per shard counted connections of `user`, by shard (empty when not
    /// connected).
    pub fn shards_of(&self, user: &str) -> Vec<(usize, u32)> {
        let mut out: Vec<(usize, u32)> = Vec::new();
        if let Some(conns) = self.stripe(user).users.get(user) {
            for c in conns {
                let shard = usize::from(c.shard);
                match out.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, n)) => *n += 1,
                    None => out.push((shard, 1)),
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Number of distinct connected users.
    pub fn user_count(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).users.len()).sum()
    }

    /// Counted connections on the whole node.
    pub fn total(&self) -> usize {
        self.per_shard.iter().map(|n| n.load(Relaxed)).sum()
    }

    /// Counted connections of each shard, in shard order.
    pub fn per_shard(&self) -> Vec<usize> {
        self.per_shard.iter().map(|n| n.load(Relaxed)).collect()
    }

    /// Up to `limit` connected user ids, in no particular order, and the
    /// number of distinct connected users. Only the ids returned are copied.
    pub fn users(&self, limit: usize) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        for s in &self.stripes {
            let stripe = lock(s);
            total += stripe.users.len();
            let room = limit.saturating_sub(out.len());
            out.extend(stripe.users.keys().take(room).map(|u| u.to_string()));
        }
        (out, total)
    }
}

/// What the cluster view needs to count the cluster's distinct users.
impl crate::cluster::LocalUsers for Presence {
    fn user_count(&self) -> usize {
        Presence::user_count(self)
    }

    fn holds(&self, user: &str) -> bool {
        self.count(user) > 0
    }

    fn count_where(&self, f: &dyn Fn(&str) -> bool) -> usize {
        self.stripes
            .iter()
            .map(|s| lock(s).users.keys().filter(|u| f(u)).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(shard: u16, slot: u32) -> ConnRef {
        ConnRef {
            shard,
            slot,
            gen: 1,
        }
    }

    fn u(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn add_remove_and_limits() {
        let p = Presence::new(4, false);
        let (a, b) = (u("a"), u("b"));
        assert!(p.try_add(&a, c(0, 0), 2));
        assert!(p.try_add(&a, c(3, 0), 2));
        assert!(!p.try_add(&a, c(1, 0), 2));
        assert!(p.try_add(&b, c(1, 1), 2));
        assert_eq!(p.count("a"), 2);
        assert_eq!(p.shards_of("a"), vec![(0, 1), (3, 1)]);
        assert_eq!(p.user_count(), 2);
        assert_eq!((p.total(), p.per_shard()), (3, vec![1, 1, 0, 1]));
        assert_eq!(p.users(1).1, 2);
        assert_eq!(p.users(1).0.len(), 1);
        assert!(p.remove(&a, c(0, 0)));
        assert!(p.remove(&a, c(3, 0)));
        assert!(!p.remove(&a, c(3, 0)), "already gone");
        assert_eq!(p.count("a"), 0);
        assert!(p.shards_of("a").is_empty());
        assert_eq!(p.users(10), (vec!["b".to_string()], 1));
        assert_eq!(p.total(), 1);
        // Without tracking, nothing is recorded.
        assert!(p.take_changes().is_empty());
    }

    #[test]
    fn taken_connections_count_nowhere_and_their_removal_changes_nothing() {
        let p = Presence::new(2, true);
        let a = u("a");
        assert!(p.try_add(&a, c(0, 0), 2));
        assert!(p.try_add(&a, c(1, 0), 2));
        p.take_changes();
        let mut taken = p.take_user("a");
        taken.sort_by_key(|r| r.shard);
        assert_eq!(taken, vec![c(0, 0), c(1, 0)]);
        assert_eq!((p.count("a"), p.total(), p.user_count()), (0, 0, 0));
        assert_eq!(p.take_changes(), vec![("a".to_string(), 0)]);
        assert!(p.take_user("a").is_empty(), "a second take finds nothing");
        // The limit admits new connections as if the old ones were gone.
        assert!(p.try_add(&a, c(0, 1), 2));
        assert!(p.try_add(&a, c(0, 2), 2));
        // The taken ones' removal leaves the new ones counted.
        assert!(!p.remove(&a, c(0, 0)));
        assert!(!p.remove(&a, c(1, 0)));
        assert_eq!((p.count("a"), p.per_shard()), (2, vec![2, 0]));
    }

    #[test]
    fn one_connection_is_taken_by_its_id_only_while_it_counts() {
        let p = Presence::new(2, false);
        let a = u("a");
        assert!(p.try_add(&a, c(1, 4), 5));
        assert!(p.try_add(&a, c(1, 5), 5));
        let stale = ConnRef { gen: 2, ..c(1, 4) };
        assert!(!p.take_conn(stale), "another generation of the slot");
        assert!(!p.take_conn(c(0, 4)), "another shard");
        assert!(!p.take_conn(c(1, 9)), "a slot never used");
        assert!(p.take_conn(c(1, 4)));
        assert!(!p.take_conn(c(1, 4)), "already taken");
        assert_eq!((p.count("a"), p.total()), (1, 1));
        assert!(!p.remove(&a, c(1, 4)));
        assert!(p.remove(&a, c(1, 5)));
        assert!(!p.take_conn(c(1, 5)), "removed");
        assert_eq!(p.total(), 0);
    }

    #[test]
    fn tracks_changes_once_per_user_with_current_counts() {
        let p = Presence::new(2, true);
        let (a, b) = (u("a"), u("b"));
        assert!(p.try_add(&a, c(0, 0), 5));
        assert!(p.try_add(&a, c(1, 0), 5));
        assert!(p.try_add(&b, c(0, 1), 5));
        assert!(p.remove(&b, c(0, 1)));
        let mut ch = p.take_changes();
        ch.sort();
        assert_eq!(ch, vec![("a".to_string(), 2), ("b".to_string(), 0)]);
        assert!(p.take_changes().is_empty());
        // A refused add changes nothing.
        assert!(!p.try_add(&a, c(0, 2), 2));
        assert!(p.take_changes().is_empty());
        assert!(p.remove(&a, c(0, 0)));
        assert_eq!(p.snapshot(), vec![("a".to_string(), 1)]);
        assert!(
            p.take_changes().is_empty(),
            "a snapshot supersedes pending changes"
        );
    }
}
