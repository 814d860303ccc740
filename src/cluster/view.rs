//! This node's copy of what every other node holds: its connected users,
//! its counters, and when it was last heard from.
//!
//! Filled from the cluster channel (presence changes, heartbeats, goodbyes)
//! and from snapshots read from Redis when a copy is found behind. Pure
//! state: no I/O, no clock of its own (callers pass `now`), so each
//! transition is unit-tested here. A node not heard from for `ttl` does not
//! count anywhere, whatever its copy says: every reading first forgets such
//! nodes.
//!
//! Every count of connections it gives comes from the per-user counts: a
//! node's total is the sum of its copy (kept as the copy changes), never
//! the number in its last heartbeat, so a total is as fresh as the
//! per-user counts (~20–50 ms behind) and agrees with them. A tally of
//! every remote user (its connections summed over the nodes) is kept the
//! same way, so that a user's count or the number of distinct remote users
//! costs one lookup, never a walk over every copy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::subs::{NodeSubs, SubDelta};

/// The counters a node reports in its heartbeat. Read back from the view,
/// `connections` is the sum of the node's per-user counts instead.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounters {
    pub connections: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

/// What the view is told of this node's own users, to count the users of
/// the cluster without copying them.
pub trait LocalUsers {
    /// Distinct users connected here.
    fn user_count(&self) -> usize;
    /// Whether `user` is connected here.
    fn holds(&self, user: &str) -> bool;
    /// How many users connected here `f` says yes to.
    fn count_where(&self, f: &dyn Fn(&str) -> bool) -> usize;
}

/// Every user of the copies, with its connections summed over them.
#[derive(Debug, Default)]
struct Tally {
    users: HashMap<Arc<str>, u64>,
}

impl Tally {
    /// The key to store `user` under, shared with the tally's.
    fn key(&self, user: &str) -> Arc<str> {
        self.users
            .get_key_value(user)
            .map_or_else(|| Arc::from(user), |(k, _)| k.clone())
    }

    fn change(&mut self, user: &Arc<str>, old: u32, new: u32) {
        if old == new {
            return;
        }
        let n = self.users.entry(user.clone()).or_insert(0);
        *n = n
            .saturating_sub(u64::from(old))
            .saturating_add(u64::from(new));
        if *n == 0 {
            self.users.remove(user);
        }
    }
}

#[derive(Debug)]
struct NodeCopy {
    inc: u64,
    /// The last presence change applied.
    seq: u64,
    /// False until a snapshot has been applied, and again after a gap.
    synced: bool,
    users: HashMap<Arc<str>, u32>,
    /// The sum of `users`' counts.
    total: u64,
    counters: NodeCounters,
    last_seen: Instant,
    /// Its channel subscriptions.
    subs: NodeSubs,
}

impl NodeCopy {
    fn new(inc: u64, now: Instant) -> NodeCopy {
        NodeCopy {
            inc,
            seq: 0,
            synced: false,
            users: HashMap::new(),
            total: 0,
            counters: NodeCounters::default(),
            last_seen: now,
            subs: NodeSubs::default(),
        }
    }

    /// Sets `user`'s count on this node, keeping the total and the tally.
    /// Saturating: the counts come from another process.
    fn set(&mut self, tally: &mut Tally, user: &str, n: u32) {
        let (key, old) = match self.users.get_key_value(user) {
            Some((k, old)) => (k.clone(), *old),
            None if n == 0 => return,
            None => (tally.key(user), 0),
        };
        if n == 0 {
            self.users.remove(user);
        } else {
            self.users.insert(key.clone(), n);
        }
        self.total = self
            .total
            .saturating_sub(u64::from(old))
            .saturating_add(u64::from(n));
        tally.change(&key, old, n);
    }

    /// Empties the copy, taking its users out of the tally and its
    /// subscriptions out of the directory (through `subs`).
    fn clear(&mut self, tally: &mut Tally, subs: &mut Vec<SubDelta>) {
        for (u, n) in self.users.drain() {
            tally.change(&u, n, 0);
        }
        self.total = 0;
        self.subs.clear(subs);
    }
}

/// Every other node, as last heard.
#[derive(Debug)]
pub struct View {
    nodes: HashMap<String, NodeCopy>,
    ttl: Duration,
    /// Nodes whose copy must be re-read from Redis.
    resync: HashSet<String>,
    tally: Tally,
    /// Changes of the copies' subscriptions not yet taken by the link.
    sub_deltas: Vec<SubDelta>,
}

impl View {
    pub fn new(ttl: Duration) -> View {
        View {
            nodes: HashMap::new(),
            ttl,
            resync: HashSet::new(),
            tally: Tally::default(),
            sub_deltas: Vec::new(),
        }
    }

    /// Marks `node` as heard from now; starts a fresh copy when it is new
    /// or `inc` says it restarted.
    fn touch(&mut self, node: &str, inc: u64, now: Instant) {
        let fresh = self.nodes.get(node).is_none_or(|c| c.inc != inc);
        if fresh {
            if let Some(mut old) = self.nodes.remove(node) {
                old.clear(&mut self.tally, &mut self.sub_deltas);
            }
            self.nodes.insert(node.to_string(), NodeCopy::new(inc, now));
            self.resync.insert(node.to_string());
        }
        if let Some(copy) = self.nodes.get_mut(node) {
            copy.last_seen = now;
        }
    }

    /// Presence change `seq` of `node`: users' connection counts and
    /// channel subscriptions (`"<channel> <user>"` → connections).
    pub fn on_presence(
        &mut self,
        node: &str,
        inc: u64,
        seq: u64,
        users: &[(String, u32)],
        subs: &[(String, u32)],
        now: Instant,
    ) {
        self.touch(node, inc, now);
        let Some(copy) = self.nodes.get_mut(node) else {
            return;
        };
        if copy.synced && seq <= copy.seq {
            return; // already in the snapshot
        }
        // Counts are absolute, so applying is right even out of sync; a
        // gap only means other users may be stale until the next snapshot.
        let gap = copy.synced && seq != copy.seq + 1;
        for (u, n) in users {
            copy.set(&mut self.tally, u, *n);
        }
        for (key, n) in subs {
            copy.subs.set(key, *n, &mut self.sub_deltas);
        }
        copy.seq = copy.seq.max(seq);
        if gap {
            copy.synced = false;
            self.resync.insert(node.to_string());
        }
    }

    /// A heartbeat: `node` is alive, and its latest change is `seq`.
    pub fn on_heartbeat(
        &mut self,
        node: &str,
        inc: u64,
        seq: u64,
        counters: NodeCounters,
        now: Instant,
    ) {
        self.touch(node, inc, now);
        let Some(copy) = self.nodes.get_mut(node) else {
            return;
        };
        copy.counters = counters;
        if !copy.synced || copy.seq != seq {
            copy.synced = false;
            self.resync.insert(node.to_string());
        }
    }

    /// A snapshot read from Redis: the whole user and subscription tables
    /// of `node` as of change `seq`.
    pub fn on_snapshot(
        &mut self,
        node: &str,
        inc: u64,
        seq: u64,
        users: HashMap<String, u32>,
        subs: HashMap<String, u32>,
    ) {
        let Some(copy) = self.nodes.get_mut(node) else {
            return; // gone (bye) while it was being read
        };
        if copy.inc != inc || seq < copy.seq {
            // Of another run of the node than the one we hear, or older
            // than the copy: read again after the next heartbeat.
            self.resync.insert(node.to_string());
            return;
        }
        for (u, n) in copy.users.drain() {
            self.tally.change(&u, n, 0);
        }
        copy.total = 0;
        for (u, n) in &users {
            copy.set(&mut self.tally, u, *n);
        }
        copy.subs.replace(subs, &mut self.sub_deltas);
        copy.seq = seq;
        copy.synced = true;
    }

    pub fn on_bye(&mut self, node: &str) {
        if let Some(mut copy) = self.nodes.remove(node) {
            copy.clear(&mut self.tally, &mut self.sub_deltas);
        }
        self.resync.remove(node);
    }

    /// Stops counting `user` on every node until a change or a snapshot of
    /// that node says otherwise (a disconnect was just sent to them).
    pub fn forget_user(&mut self, user: &str) {
        for c in self.nodes.values_mut() {
            c.set(&mut self.tally, user, 0);
        }
    }

    /// Forgets nodes not heard from for `ttl`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for node in dead {
            self.on_bye(&node);
        }
    }

    /// The changes of the other nodes' subscriptions since the last call,
    /// for the channel directory.
    pub fn take_sub_deltas(&mut self) -> Vec<SubDelta> {
        std::mem::take(&mut self.sub_deltas)
    }

    /// Nodes whose snapshot should be read now (each asked once).
    pub fn take_resync(&mut self) -> Vec<String> {
        self.resync.drain().collect()
    }

    /// Connections `user` holds on live other nodes.
    pub fn user_count(&mut self, user: &str, now: Instant) -> usize {
        self.expire(now);
        self.tally.users.get(user).map_or(0, |n| *n as usize)
    }

    /// Connections on live other nodes of every user but those in
    /// `exclude` (each counted once), from one reading of the copies.
    pub fn count_all_except(&mut self, exclude: &HashSet<&str>, now: Instant) -> usize {
        self.expire(now);
        let all = self
            .nodes
            .values()
            .map(|c| c.total)
            .fold(0, u64::saturating_add);
        let excluded = exclude
            .iter()
            .filter_map(|u| self.tally.users.get(*u))
            .fold(0u64, |a, n| a.saturating_add(*n));
        all.saturating_sub(excluded) as usize
    }

    /// Live other nodes and their counters, sorted by id; `connections`
    /// is the sum of the node's per-user counts.
    pub fn nodes(&mut self, now: Instant) -> Vec<(String, NodeCounters)> {
        self.expire(now);
        let mut v: Vec<_> = self
            .nodes
            .iter()
            .map(|(id, c)| {
                let counters = NodeCounters {
                    connections: c.total,
                    ..c.counters
                };
                (id.clone(), counters)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The users of live other nodes that `local` does not hold: how many
    /// (exact), and up to `limit` of them in no particular order. Only the
    /// ids returned are copied; counting walks the smaller of the two
    /// tables without copying.
    pub fn users_not_local(
        &mut self,
        local: &dyn LocalUsers,
        limit: usize,
        now: Instant,
    ) -> (usize, Vec<String>) {
        self.expire(now);
        let remote = &self.tally.users;
        let both = if remote.len() <= local.user_count() {
            remote.keys().filter(|u| local.holds(u)).count()
        } else {
            local.count_where(&|u| remote.contains_key(u))
        };
        let page = remote
            .keys()
            .filter(|u| !local.holds(u))
            .take(limit)
            .map(|u| u.to_string())
            .collect();
        (remote.len().saturating_sub(both), page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    }

    fn map(list: &[(&str, u32)]) -> HashMap<String, u32> {
        users(list).into_iter().collect()
    }

    #[test]
    fn first_sight_asks_for_a_snapshot_and_the_snapshot_wins() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_presence("b", 1, 5, &users(&[("u", 2)]), &[], t);
        assert_eq!(v.user_count("u", t), 2, "absolute counts apply at once");
        assert_eq!(v.take_resync(), vec!["b".to_string()]);
        v.on_snapshot("b", 1, 5, map(&[("u", 2), ("w", 1)]), HashMap::new());
        assert_eq!(v.user_count("w", t), 1);
        v.on_presence("b", 1, 6, &users(&[("u", 0)]), &[], t);
        assert_eq!(v.user_count("u", t), 0);
        assert!(v.take_resync().is_empty());
        // A duplicate (already in the copy) changes nothing.
        v.on_presence("b", 1, 6, &users(&[("u", 9)]), &[], t);
        assert_eq!(v.user_count("u", t), 0);
    }

    #[test]
    fn a_gap_or_a_heartbeat_ahead_asks_again() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_heartbeat("b", 1, 0, NodeCounters::default(), t);
        v.take_resync();
        v.on_snapshot("b", 1, 0, HashMap::new(), HashMap::new());
        v.on_presence("b", 1, 3, &users(&[("u", 1)]), &[], t);
        assert_eq!(v.take_resync(), vec!["b".to_string()], "seq 1-2 missed");
        v.on_snapshot("b", 1, 3, map(&[("u", 1), ("x", 4)]), HashMap::new());
        v.on_heartbeat("b", 1, 3, NodeCounters::default(), t);
        assert!(v.take_resync().is_empty(), "in step with the heartbeat");
        v.on_heartbeat("b", 1, 4, NodeCounters::default(), t);
        assert_eq!(v.take_resync(), vec!["b".to_string()]);
    }

    #[test]
    fn a_restarted_node_starts_a_fresh_copy() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_snapshot("b", 1, 0, HashMap::new(), HashMap::new()); // unknown node: ignored
        v.on_presence("b", 1, 1, &users(&[("u", 1)]), &[], t);
        v.on_snapshot("b", 1, 50, map(&[("u", 1)]), HashMap::new());
        v.on_heartbeat("b", 2, 1, NodeCounters::default(), t);
        assert_eq!(v.user_count("u", t), 0, "the old run's users are gone");
        v.on_snapshot("b", 1, 60, map(&[("u", 1)]), HashMap::new());
        assert_eq!(
            v.user_count("u", t),
            0,
            "a snapshot of the old run is refused"
        );
    }

    #[test]
    fn a_forgotten_user_counts_again_only_when_its_node_says_so() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_presence("b", 1, 1, &users(&[("u", 2), ("w", 1)]), &[], t);
        v.on_presence("c", 1, 1, &users(&[("u", 1)]), &[], t);
        v.forget_user("u");
        assert_eq!((v.user_count("u", t), v.user_count("w", t)), (0, 1));
        // c's answer to the disconnect: u is gone there too.
        v.on_presence("c", 1, 2, &users(&[("u", 0)]), &[], t);
        // b's user opened a new connection after the disconnect.
        v.on_presence("b", 1, 2, &users(&[("u", 1)]), &[], t);
        assert_eq!(v.user_count("u", t), 1);
    }

    #[test]
    fn node_totals_come_from_the_user_counts_not_the_heartbeat() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        let beat = NodeCounters {
            connections: 1,
            messages_out: 9,
            ..Default::default()
        };
        v.on_heartbeat("b", 1, 0, beat, t);
        v.on_heartbeat("c", 1, 0, beat, t);
        v.on_presence("b", 1, 1, &users(&[("u", 2), ("w", 1)]), &[], t);
        v.on_presence("c", 1, 1, &users(&[("u", 1), ("x", 3)]), &[], t);
        let totals: Vec<(String, u64, u64)> = v
            .nodes(t)
            .into_iter()
            .map(|(id, c)| (id, c.connections, c.messages_out))
            .collect();
        assert_eq!(
            totals,
            vec![("b".to_string(), 3, 9), ("c".to_string(), 4, 9)]
        );
        let none = HashSet::new();
        assert_eq!(v.count_all_except(&none, t), 7);
        assert_eq!(v.count_all_except(&HashSet::from(["u", "x"]), t), 1);
        v.on_presence("b", 1, 2, &users(&[("u", 0)]), &[], t);
        v.on_snapshot("c", 1, 2, map(&[("x", 1)]), HashMap::new());
        assert_eq!(v.count_all_except(&none, t), 2);
        v.forget_user("x");
        assert_eq!(v.count_all_except(&none, t), 1);
        assert_eq!(v.nodes(t)[1].1.connections, 0);
    }

    #[test]
    fn silent_nodes_stop_counting_and_bye_forgets_at_once() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        let c = NodeCounters {
            messages_in: 7,
            ..Default::default()
        };
        v.on_heartbeat("b", 1, 0, c, t);
        v.on_heartbeat("c", 1, 0, c, t + Duration::from_secs(2));
        v.on_presence("b", 1, 1, &users(&[("u", 1)]), &[], t);
        let with_u = NodeCounters {
            connections: 1,
            ..c
        };
        assert_eq!(v.nodes(t)[0], ("b".to_string(), with_u));
        let later = t + Duration::from_secs(4);
        assert_eq!(v.user_count("u", later), 0, "b is silent since t");
        assert_eq!(v.nodes(later).len(), 1);
        assert_eq!(v.nodes(t).len(), 1, "b was forgotten, not only hidden");
        v.on_bye("c");
        assert!(v.nodes(later).is_empty());
    }

    struct Local(HashSet<&'static str>);

    impl LocalUsers for Local {
        fn user_count(&self) -> usize {
            self.0.len()
        }
        fn holds(&self, user: &str) -> bool {
            self.0.contains(user)
        }
        fn count_where(&self, f: &dyn Fn(&str) -> bool) -> usize {
            self.0.iter().filter(|u| f(u)).count()
        }
    }

    #[test]
    fn remote_users_are_counted_once_across_nodes_and_beside_local_ones() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_presence("b", 1, 1, &users(&[("u", 2), ("w", 1), ("x", 1)]), &[], t);
        v.on_presence("c", 1, 1, &users(&[("u", 1), ("y", 1)]), &[], t);
        assert_eq!(v.user_count("u", t), 3);
        // Remote users u, w, x, y; x and z are also (or only) local.
        for local in [Local(HashSet::from(["x", "z"])), Local(HashSet::new())] {
            let (n, page) = v.users_not_local(&local, 10, t);
            let mut page: Vec<String> = page;
            page.sort();
            let expected: Vec<&str> = ["u", "w", "x", "y"]
                .into_iter()
                .filter(|u| !local.holds(u))
                .collect();
            assert_eq!(
                (n, page),
                (
                    expected.len(),
                    expected.iter().map(|u| u.to_string()).collect()
                )
            );
        }
        // A larger local table is walked the other way round.
        let big = Local(HashSet::from(["x", "z", "a", "b", "c", "d"]));
        assert_eq!(v.users_not_local(&big, 10, t).0, 3);
        assert_eq!(
            v.users_not_local(&big, 2, t).1.len(),
            2,
            "the page stops at the limit"
        );
        // A restart, a snapshot and a goodbye keep the tally exact.
        v.on_heartbeat("c", 2, 0, NodeCounters::default(), t);
        assert_eq!((v.user_count("u", t), v.user_count("y", t)), (2, 0));
        v.on_snapshot("b", 1, 1, map(&[("w", 5)]), HashMap::new());
        assert_eq!((v.user_count("u", t), v.user_count("w", t)), (0, 5));
        v.on_bye("b");
        let none = Local(HashSet::new());
        assert_eq!(v.users_not_local(&none, 10, t), (0, Vec::new()));
        assert_eq!(v.count_all_except(&HashSet::new(), t), 0);
    }
}
