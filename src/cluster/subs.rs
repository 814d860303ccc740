//! One other node's channel subscriptions as last heard, and the changes of
//! them that this node's channel directory must take in.
//!
//! A copy maps `"<channel> <user>"` (see [`crate::channels::sub_key`]) to
//! the user's subscribed connections on that node. Every change of a copy
//! (a presence packet, a snapshot, the node expiring or saying goodbye)
//! yields [`SubDelta`]s; the cluster link hands them to the directory,
//! which turns a user's cluster-wide count crossing zero into a `join` or
//! `leave` event. Pure state, unit-tested here.

use std::collections::HashMap;

/// `key`'s subscribed connections on the other nodes changed by `delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubDelta {
    pub key: Box<str>,
    pub delta: i64,
}

/// One node's subscriptions.
#[derive(Debug, Default)]
pub struct NodeSubs {
    map: HashMap<Box<str>, u32>,
}

impl NodeSubs {
    /// Sets `key`'s count (0 removes it).
    pub fn set(&mut self, key: &str, n: u32, out: &mut Vec<SubDelta>) {
        let old = match n {
            0 => self.map.remove(key).unwrap_or(0),
            n => self.map.insert(key.into(), n).unwrap_or(0),
        };
        if old != n {
            out.push(SubDelta {
                key: key.into(),
                delta: i64::from(n) - i64::from(old),
            });
        }
    }

    /// Forgets every subscription (the node is gone or restarted).
    pub fn clear(&mut self, out: &mut Vec<SubDelta>) {
        out.extend(self.map.drain().map(|(key, n)| SubDelta {
            key,
            delta: -i64::from(n),
        }));
    }

    /// Replaces the copy with a snapshot, yielding only what differs.
    pub fn replace(&mut self, snapshot: HashMap<String, u32>, out: &mut Vec<SubDelta>) {
        let old = std::mem::take(&mut self.map);
        for (key, n) in &old {
            if !snapshot.contains_key(key.as_ref()) {
                out.push(SubDelta {
                    key: key.clone(),
                    delta: -i64::from(*n),
                });
            }
        }
        for (key, n) in snapshot {
            if n == 0 {
                continue;
            }
            let before = old.get(key.as_str()).copied().unwrap_or(0);
            if before != n {
                out.push(SubDelta {
                    key: key.as_str().into(),
                    delta: i64::from(n) - i64::from(before),
                });
            }
            self.map.insert(key.into(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<SubDelta>) -> Vec<(String, i64)> {
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v.into_iter().map(|d| (d.key.into(), d.delta)).collect()
    }

    #[test]
    fn sets_snapshots_and_clears_yield_the_differences() {
        let mut s = NodeSubs::default();
        let mut out = Vec::new();
        s.set("news u", 2, &mut out);
        s.set("news u", 2, &mut out);
        s.set("room v", 1, &mut out);
        s.set("room x", 0, &mut out);
        assert_eq!(
            sorted(std::mem::take(&mut out)),
            vec![("news u".into(), 2), ("room v".into(), 1)]
        );
        let snap = HashMap::from([("news u".to_string(), 3), ("new w".to_string(), 1)]);
        s.replace(snap, &mut out);
        assert_eq!(
            sorted(std::mem::take(&mut out)),
            vec![
                ("new w".into(), 1),
                ("news u".into(), 1),
                ("room v".into(), -1)
            ]
        );
        s.clear(&mut out);
        assert_eq!(
            sorted(out),
            vec![("new w".into(), -1), ("news u".into(), -3)]
        );
        assert!(s.map.is_empty());
    }
}
