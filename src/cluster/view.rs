//! This node's copy of what every other node holds: its connected users,
//! its counters, and when it was last heard from.
//!
//! Filled from the cluster channel (presence changes, heartbeats, goodbyes)
//! and from snapshots read from Redis when a copy is found behind. Pure
//! state: no I/O, no clock of its own (callers pass `now`), so each
//! transition is unit-tested here. A node not heard from for `ttl` does not
//! count anywhere, whatever its copy says.
//!
//! Every count of connections it gives comes from the per-user counts: a
//! node's total is the sum of its copy (kept as the copy changes), never
//! the number in its last heartbeat, so a total is as fresh as the
//! per-user counts (~20–50 ms behind) and agrees with them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The counters a node reports in its heartbeat. Read back from the view,
/// `connections` is the sum of the node's per-user counts instead.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounters {
    pub connections: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
}

#[derive(Debug)]
struct NodeCopy {
    inc: u64,
    /// The last presence change applied.
    seq: u64,
    /// False until a snapshot has been applied, and again after a gap.
    synced: bool,
    users: HashMap<String, u32>,
    /// The sum of `users`' counts.
    total: u64,
    counters: NodeCounters,
    last_seen: Instant,
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
        }
    }

    fn apply(&mut self, users: &[(String, u32)]) {
        for (u, n) in users {
            let old = if *n == 0 {
                self.users.remove(u)
            } else {
                self.users.insert(u.clone(), *n)
            };
            // Saturating: the counts come from another process.
            self.total = self
                .total
                .saturating_sub(u64::from(old.unwrap_or(0)))
                .saturating_add(u64::from(*n));
        }
    }

    fn replace(&mut self, users: HashMap<String, u32>) {
        self.total = users
            .values()
            .map(|n| u64::from(*n))
            .fold(0, u64::saturating_add);
        self.users = users;
    }

    fn forget(&mut self, user: &str) {
        if let Some(n) = self.users.remove(user) {
            self.total = self.total.saturating_sub(u64::from(n));
        }
    }
}

/// Every other node, as last heard.
#[derive(Debug)]
pub struct View {
    nodes: HashMap<String, NodeCopy>,
    ttl: Duration,
    /// Nodes whose copy must be re-read from Redis.
    resync: HashSet<String>,
}

impl View {
    pub fn new(ttl: Duration) -> View {
        View {
            nodes: HashMap::new(),
            ttl,
            resync: HashSet::new(),
        }
    }

    /// The copy of `node`, restarted when `inc` says the node restarted.
    fn copy(&mut self, node: &str, inc: u64, now: Instant) -> &mut NodeCopy {
        let fresh = self.nodes.get(node).is_none_or(|c| c.inc != inc);
        if fresh {
            self.nodes.insert(node.to_string(), NodeCopy::new(inc, now));
            self.resync.insert(node.to_string());
        }
        let Some(copy) = self.nodes.get_mut(node) else {
            unreachable!("inserted above")
        };
        copy.last_seen = now;
        copy
    }

    /// Presence change `seq` of `node`.
    pub fn on_presence(
        &mut self,
        node: &str,
        inc: u64,
        seq: u64,
        users: &[(String, u32)],
        now: Instant,
    ) {
        let copy = self.copy(node, inc, now);
        if copy.synced && seq <= copy.seq {
            return; // already in the snapshot
        }
        // Counts are absolute, so applying is right even out of sync; a
        // gap only means other users may be stale until the next snapshot.
        let gap = copy.synced && seq != copy.seq + 1;
        copy.apply(users);
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
        let copy = self.copy(node, inc, now);
        copy.counters = counters;
        if !copy.synced || copy.seq != seq {
            copy.synced = false;
            self.resync.insert(node.to_string());
        }
    }

    /// A snapshot read from Redis: the whole user table of `node` as of
    /// change `seq`.
    pub fn on_snapshot(&mut self, node: &str, inc: u64, seq: u64, users: HashMap<String, u32>) {
        let Some(copy) = self.nodes.get_mut(node) else {
            return; // gone (bye) while it was being read
        };
        if copy.inc != inc {
            // The snapshot is of an older or newer run of the node than the
            // one we hear: read again after the next heartbeat.
            self.resync.insert(node.to_string());
            return;
        }
        if seq < copy.seq {
            self.resync.insert(node.to_string());
            return;
        }
        copy.replace(users);
        copy.seq = seq;
        copy.synced = true;
    }

    pub fn on_bye(&mut self, node: &str) {
        self.nodes.remove(node);
        self.resync.remove(node);
    }

    /// Stops counting `user` on every node until a change or a snapshot of
    /// that node says otherwise (a disconnect was just sent to them).
    pub fn forget_user(&mut self, user: &str) {
        for c in self.nodes.values_mut() {
            c.forget(user);
        }
    }

    /// Forgets nodes not heard from for `ttl`.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.nodes
            .retain(|_, c| now.saturating_duration_since(c.last_seen) < ttl);
        let nodes = &self.nodes;
        self.resync.retain(|n| nodes.contains_key(n));
    }

    /// Nodes whose snapshot should be read now (each asked once).
    pub fn take_resync(&mut self) -> Vec<String> {
        self.resync.drain().collect()
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = (&String, &NodeCopy)> {
        let ttl = self.ttl;
        self.nodes
            .iter()
            .filter(move |(_, c)| now.saturating_duration_since(c.last_seen) < ttl)
    }

    /// Connections `user` holds on live other nodes.
    pub fn user_count(&self, user: &str, now: Instant) -> usize {
        self.live(now)
            .map(|(_, c)| c.users.get(user).copied().unwrap_or(0) as usize)
            .sum()
    }

    /// Connections on live other nodes of every user but those in
    /// `exclude` (each counted once), from one reading of the copies.
    pub fn count_all_except(&self, exclude: &HashSet<&str>, now: Instant) -> usize {
        self.live(now)
            .map(|(_, c)| {
                let excluded: u64 = exclude
                    .iter()
                    .map(|u| u64::from(c.users.get(*u).copied().unwrap_or(0)))
                    .sum();
                c.total.saturating_sub(excluded) as usize
            })
            .sum()
    }

    /// Live other nodes and their counters, sorted by id; `connections`
    /// is the sum of the node's per-user counts.
    pub fn nodes(&self, now: Instant) -> Vec<(String, NodeCounters)> {
        let mut v: Vec<_> = self
            .live(now)
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

    /// Adds the user ids connected to live other nodes to `out`.
    pub fn collect_users(&self, out: &mut HashSet<String>, now: Instant) {
        for (_, c) in self.live(now) {
            out.extend(c.users.keys().cloned());
        }
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
        v.on_presence("b", 1, 5, &users(&[("u", 2)]), t);
        assert_eq!(v.user_count("u", t), 2, "absolute counts apply at once");
        assert_eq!(v.take_resync(), vec!["b".to_string()]);
        v.on_snapshot("b", 1, 5, map(&[("u", 2), ("w", 1)]));
        assert_eq!(v.user_count("w", t), 1);
        v.on_presence("b", 1, 6, &users(&[("u", 0)]), t);
        assert_eq!(v.user_count("u", t), 0);
        assert!(v.take_resync().is_empty());
        // A duplicate (already in the copy) changes nothing.
        v.on_presence("b", 1, 6, &users(&[("u", 9)]), t);
        assert_eq!(v.user_count("u", t), 0);
    }

    #[test]
    fn a_gap_or_a_heartbeat_ahead_asks_again() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_heartbeat("b", 1, 0, NodeCounters::default(), t);
        v.take_resync();
        v.on_snapshot("b", 1, 0, HashMap::new());
        v.on_presence("b", 1, 3, &users(&[("u", 1)]), t);
        assert_eq!(v.take_resync(), vec!["b".to_string()], "seq 1-2 missed");
        v.on_snapshot("b", 1, 3, map(&[("u", 1), ("x", 4)]));
        v.on_heartbeat("b", 1, 3, NodeCounters::default(), t);
        assert!(v.take_resync().is_empty(), "in step with the heartbeat");
        v.on_heartbeat("b", 1, 4, NodeCounters::default(), t);
        assert_eq!(v.take_resync(), vec!["b".to_string()]);
    }

    #[test]
    fn a_restarted_node_starts_a_fresh_copy() {
        let t = Instant::now();
        let mut v = View::new(Duration::from_secs(3));
        v.on_snapshot("b", 1, 0, HashMap::new()); // unknown node: ignored
        v.on_presence("b", 1, 1, &users(&[("u", 1)]), t);
        v.on_snapshot("b", 1, 50, map(&[("u", 1)]));
        v.on_heartbeat("b", 2, 1, NodeCounters::default(), t);
        assert_eq!(v.user_count("u", t), 0, "the old run's users are gone");
        v.on_snapshot("b", 1, 60, map(&[("u", 1)]));
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
        v.on_presence("b", 1, 1, &users(&[("u", 2), ("w", 1)]), t);
        v.on_presence("c", 1, 1, &users(&[("u", 1)]), t);
        v.forget_user("u");
        assert_eq!((v.user_count("u", t), v.user_count("w", t)), (0, 1));
        // c's answer to the disconnect: u is gone there too.
        v.on_presence("c", 1, 2, &users(&[("u", 0)]), t);
        // b's user opened a new connection after the disconnect.
        v.on_presence("b", 1, 2, &users(&[("u", 1)]), t);
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
        v.on_presence("b", 1, 1, &users(&[("u", 2), ("w", 1)]), t);
        v.on_presence("c", 1, 1, &users(&[("u", 1), ("x", 3)]), t);
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
        v.on_presence("b", 1, 2, &users(&[("u", 0)]), t);
        v.on_snapshot("c", 1, 2, map(&[("x", 1)]));
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
        v.on_presence("b", 1, 1, &users(&[("u", 1)]), t);
        let later = t + Duration::from_secs(4);
        assert_eq!(v.user_count("u", later), 0);
        assert_eq!(v.nodes(later).len(), 1);
        let with_u = NodeCounters {
            connections: 1,
            ..c
        };
        assert_eq!(v.nodes(t)[0], ("b".to_string(), with_u));
        v.expire(later);
        assert_eq!(v.nodes(t).len(), 1, "b was dropped");
        v.on_bye("c");
        assert!(v.nodes(later).is_empty());
    }
}
