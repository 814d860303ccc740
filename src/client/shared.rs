//! The state a [`Client`](super::Client) and its thread share: the
//! callback registry and the [`Status`] (state, last error, counts), with a
//! condition variable so that callers can wait for a state.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::events::Registry;
use super::Status;

/// State shared by the client and its thread.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    /// The channels the application subscribed to, with whether it asked
    /// for presence events: sent again on every (re)connect.
    pub channels: Mutex<BTreeMap<String, bool>>,
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            registry: Arc::new(Registry::default()),
            channels: Mutex::default(),
            status: Mutex::new(Status::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        // No user code runs under this lock.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channels to keep subscribed to, with their `presence`.
    pub fn channel_list(&self) -> Vec<(String, bool)> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.iter().map(|(c, p)| (c.clone(), *p)).collect()
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `pred(status)` holds or `timeout` passes.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Status) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if pred(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
