//! Callbacks by event type: registration, subscriptions, dispatch.
//!
//! The registry is shared by the [`Client`](super::Client) (which adds and
//! removes callbacks from any thread) and its I/O thread (which dispatches).
//! Dispatch copies the callbacks out of the lock before calling them, so a
//! callback may itself call `on`, `off`, `send` or `disconnect`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde_json::Value;

/// The wildcard type: its callbacks receive every event, after the callbacks
/// of the event's own type.
pub const ANY: &str = "*";

/// One event: a message from the server (`synthetic == false`) or one the
/// client made up (`connected` without a server hello, `disconnected`,
/// `error`, `reconnecting`, `recovered`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The message `type`, e.g. `"echo"`, `"notification"`, `"disconnected"`.
    pub kind: String,
    /// The message `payload` (`null` when the server sent none).
    pub payload: Value,
    /// `true` when the client made the event up.
    pub synthetic: bool,
    /// The stream of a message sent on behalf of the API: `@all`, `@user`
    /// or a channel's name (docs/PROTOCOL.md §11.1); the channel of a
    /// `join`/`leave`. `None` for the server's own answers and synthetic
    /// events.
    pub channel: Option<String>,
    /// The message's offset on its stream (`None` when it has none).
    pub offset: Option<u64>,
}

impl Event {
    /// The close code of a `disconnected` event.
    pub fn close_code(&self) -> Option<u16> {
        self.payload.get("code")?.as_u64()?.try_into().ok()
    }
    /// The close reason of a `disconnected` event.
    pub fn close_reason(&self) -> Option<&str> {
        self.payload.get("reason")?.as_str()
    }
    /// The `message` of an `error` event.
    pub fn error_message(&self) -> Option<&str> {
        self.payload.get("message")?.as_str()
    }
}

pub(crate) type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Default)]
struct Listeners {
    next_id: u64,
    by_kind: HashMap<String, Vec<(u64, Callback)>>,
}

#[derive(Default)]
pub(crate) struct Registry {
    listeners: Mutex<Listeners>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Listeners> {
        // Callbacks never run under this lock, so a poisoned lock only means
        // a panic in our own bookkeeping; the map is still consistent.
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(self: &Arc<Self>, kind: &str, cb: Callback) -> Subscription {
        let mut l = self.lock();
        l.next_id += 1;
        let id = l.next_id;
        l.by_kind
            .entry(kind.to_string())
            .or_default()
            .push((id, cb));
        Subscription {
            registry: Arc::downgrade(self),
            kind: kind.to_string(),
            id,
            active: true,
        }
    }

    fn remove(&self, kind: &str, id: u64) {
        let mut l = self.lock();
        if let Some(v) = l.by_kind.get_mut(kind) {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                l.by_kind.remove(kind);
            }
        }
    }

    pub fn remove_kind(&self, kind: &str) {
        self.lock().by_kind.remove(kind);
    }

    pub fn clear(&self) {
        self.lock().by_kind.clear();
    }

    /// Calls the callbacks of `event.kind`, then the wildcard ones, in the
    /// order they were added. A panicking callback is caught and logged; the
    /// others still run. Returns how many callbacks panicked.
    pub fn dispatch(&self, event: &Event) -> usize {
        let targets: Vec<Callback> = {
            let l = self.lock();
            let own = l.by_kind.get(&event.kind).into_iter().flatten();
            let any = if event.kind == ANY {
                None
            } else {
                l.by_kind.get(ANY)
            };
            own.chain(any.into_iter().flatten())
                .map(|(_, cb)| cb.clone())
                .collect()
        };
        let mut panics = 0;
        for cb in targets {
            if catch_unwind(AssertUnwindSafe(|| cb(event))).is_err() {
                panics += 1;
                log::error!(
                    "wsedge client: a callback for {:?} panicked; the client goes on",
                    event.kind
                );
            }
        }
        panics
    }
}

/// A registered callback. Dropping it (or calling [`unsubscribe`]) removes
/// the callback; [`detach`] keeps it for the client's lifetime (or until
/// [`Client::off`]).
///
/// An event already being dispatched on the client thread when the
/// subscription is dropped may still reach the callback once; events
/// dispatched afterwards do not.
///
/// [`unsubscribe`]: Subscription::unsubscribe
/// [`detach`]: Subscription::detach
/// [`Client::off`]: super::Client::off
#[must_use = "dropping a Subscription unsubscribes at once; keep it, or call .detach()"]
pub struct Subscription {
    registry: Weak<Registry>,
    kind: String,
    id: u64,
    active: bool,
}

impl Subscription {
    /// Removes the callback now.
    pub fn unsubscribe(mut self) {
        self.remove();
    }

    /// Keeps the callback registered without holding this value.
    pub fn detach(mut self) {
        self.active = false;
    }

    /// The event type this subscription listens to.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn remove(&mut self) {
        if std::mem::take(&mut self.active) {
            if let Some(r) = self.registry.upgrade() {
                r.remove(&self.kind, self.id);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.remove();
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("active", &self.active)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ev(kind: &str) -> Event {
        Event {
            kind: kind.into(),
            payload: Value::Null,
            synthetic: false,
            channel: None,
            offset: None,
        }
    }

    fn counter(r: &Arc<Registry>, kind: &str) -> (Subscription, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let s = r.add(
            kind,
            Arc::new(move |_: &Event| {
                n2.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (s, n)
    }

    #[test]
    fn dispatch_reaches_the_type_and_the_wildcard() {
        let r = Arc::new(Registry::default());
        let (_a, a) = counter(&r, "echo");
        let (_b, b) = counter(&r, ANY);
        let (_c, c) = counter(&r, "other");
        r.dispatch(&ev("echo"));
        assert_eq!(
            (
                a.load(Ordering::SeqCst),
                b.load(Ordering::SeqCst),
                c.load(Ordering::SeqCst)
            ),
            (1, 1, 0)
        );
    }

    #[test]
    fn drop_unsubscribe_detach_and_off() {
        let r = Arc::new(Registry::default());
        let (s1, n1) = counter(&r, "x");
        let (s2, n2) = counter(&r, "x");
        let (s3, n3) = counter(&r, "x");
        drop(s1);
        s2.unsubscribe();
        s3.detach();
        r.dispatch(&ev("x"));
        assert_eq!(n1.load(Ordering::SeqCst), 0);
        assert_eq!(n2.load(Ordering::SeqCst), 0);
        assert_eq!(n3.load(Ordering::SeqCst), 1);
        r.remove_kind("x");
        r.dispatch(&ev("x"));
        assert_eq!(n3.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others() {
        let r = Arc::new(Registry::default());
        r.add("x", Arc::new(|_: &Event| panic!("boom"))).detach();
        let (_s, n) = counter(&r, "x");
        assert_eq!(r.dispatch(&ev("x")), 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_callback_may_subscribe_during_dispatch() {
        let r = Arc::new(Registry::default());
        let r2 = r.clone();
        r.add(
            "x",
            Arc::new(move |_: &Event| r2.add("y", Arc::new(|_: &Event| {})).detach()),
        )
        .detach();
        r.dispatch(&ev("x"));
    }

    #[test]
    fn close_helpers() {
        let e = Event {
            kind: "disconnected".into(),
            payload: serde_json::json!({"code": 4000, "reason": "bye"}),
            synthetic: true,
            channel: None,
            offset: None,
        };
        assert_eq!(e.close_code(), Some(4000));
        assert_eq!(e.close_reason(), Some("bye"));
    }
}
