//! Who is connected: every open WebSocket's outbox (an unbounded mpsc
//! sender drained by that connection's writer task), indexed by connection
//! id and by user. One `RwLock` around both maps: fan-outs take it shared,
//! joins and leaves take it exclusively.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use tokio::sync::mpsc::UnboundedSender;

pub type Outbox = UnboundedSender<Message>;

struct Member {
    user: String,
    outbox: Outbox,
    joined: SystemTime,
}

#[derive(Default)]
struct Members {
    by_id: HashMap<u64, Member>,
    by_user: HashMap<String, HashSet<u64>>,
}

pub struct Hub {
    members: RwLock<Members>,
    last_id: AtomicU64,
    /// Messages handed to outboxes by the REST routes.
    handed_out: AtomicU64,
    started: Instant,
}

/// What `GET /v1/websocket/stats` reports.
pub struct Snapshot {
    pub connections: usize,
    pub users: Vec<String>,
    pub user_count: usize,
    pub handed_out: u64,
    pub uptime_secs: u64,
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            members: RwLock::new(Members::default()),
            last_id: AtomicU64::new(0),
            handed_out: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Registers a connection of `user`; returns its id.
    pub fn join(&self, user: &str, outbox: Outbox) -> u64 {
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        m.by_id.insert(
            id,
            Member {
                user: user.to_owned(),
                outbox,
                joined: SystemTime::now(),
            },
        );
        m.by_user.entry(user.to_owned()).or_default().insert(id);
        id
    }

    pub fn leave(&self, id: u64) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        let Some(gone) = m.by_id.remove(&id) else {
            return;
        };
        if let Some(ids) = m.by_user.get_mut(&gone.user) {
            ids.remove(&id);
            if ids.is_empty() {
                m.by_user.remove(&gone.user);
            }
        }
    }

    /// Queues `text` for every connection (of `only` users when given),
    /// except those of `except` users. Returns how many were queued.
    pub fn broadcast(&self, text: &Utf8Bytes, only: Option<&[String]>, except: &[String]) -> usize {
        let skip: HashSet<&str> = except.iter().map(String::as_str).collect();
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut queued = 0;
        match only {
            None => {
                for member in m.by_id.values() {
                    if !skip.contains(member.user.as_str())
                        && member.outbox.send(Message::Text(text.clone())).is_ok()
                    {
                        queued += 1;
                    }
                }
            }
            Some(users) => {
                let wanted: HashSet<&str> = users.iter().map(String::as_str).collect();
                for user in wanted.difference(&skip) {
                    queued += Self::queue_user(&m, user, || Message::Text(text.clone()));
                }
            }
        }
        self.handed_out.fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    /// Queues `text` for every connection of `user`.
    pub fn send_to(&self, user: &str, text: &Utf8Bytes) -> usize {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let queued = Self::queue_user(&m, user, || Message::Text(text.clone()));
        self.handed_out.fetch_add(queued as u64, Ordering::Relaxed);
        queued
    }

    /// Asks every connection of `user` to close (1000); returns how many.
    pub fn disconnect(&self, user: &str) -> usize {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        Self::queue_user(&m, user, || {
            Message::Close(Some(CloseFrame {
                code: 1000,
                reason: Utf8Bytes::from_static("Disconnected by an administrator"),
            }))
        })
    }

    fn queue_user(m: &Members, user: &str, msg: impl Fn() -> Message) -> usize {
        let Some(ids) = m.by_user.get(user) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| m.by_id.get(id))
            .filter(|member| member.outbox.send(msg()).is_ok())
            .count()
    }

    /// Open connections of `user` and when the oldest one opened.
    pub fn presence(&self, user: &str) -> (usize, Option<SystemTime>) {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let Some(ids) = m.by_user.get(user) else {
            return (0, None);
        };
        let oldest = ids.iter().filter_map(|id| m.by_id.get(id)).map(|x| x.joined).min();
        (ids.len(), oldest)
    }

    /// Counters, and at most `limit` user ids (sorted).
    pub fn snapshot(&self, limit: usize) -> Snapshot {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut users: Vec<String> = Vec::new();
        if limit > 0 {
            users = m.by_user.keys().cloned().collect();
            users.sort_unstable();
            users.truncate(limit);
        }
        Snapshot {
            connections: m.by_id.len(),
            user_count: m.by_user.len(),
            users,
            handed_out: self.handed_out.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}
