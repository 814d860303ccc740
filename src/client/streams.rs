//! What the client remembers to recover after a reconnect
//! (docs/PROTOCOL.md §11): the history epoch, and the last offset received
//! on each stream — `@all`, `@user` and every channel it is subscribed to.
//!
//! Owned by the client thread and kept across connections. It answers three
//! questions: which query parameters a reconnect passes (`epoch`,
//! `since_all`, `since_user`), which `since`/`epoch` a resubscribe carries,
//! and whether a message with an offset is new (dispatched) or one already
//! seen (dropped and counted: the duplicate guard).
//!
//! The rules, per stream: the last offset is the highest one seen. A
//! `connected` (or `subscribed`) that recovered in the same epoch keeps it
//! (the replay that follows brings it up to date); one that did not recover
//! moves it up to the server's offset, or resets it to that offset when the
//! epoch changed (a restarted server counts from 1 again).

use std::collections::HashMap;

use serde_json::Value;

/// The stream of broadcasts to everyone.
pub(crate) const ALL: &str = "@all";
/// The stream of messages to this user.
pub(crate) const USER: &str = "@user";

/// The position on one channel: its epoch (from `subscribed`) and last offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Position {
    epoch: Option<String>,
    last: u64,
}

impl Position {
    /// Takes the server's answer: `epoch`, its current `offset`, and whether
    /// it replays what followed `self.last`.
    fn answer(&mut self, epoch: Option<&str>, offset: u64, recovered: bool) {
        let same_epoch = epoch.is_some() && self.epoch.as_deref() == epoch;
        if same_epoch && recovered {
            // The replay follows and brings `last` up to `offset`.
        } else if same_epoch {
            self.last = self.last.max(offset);
        } else {
            self.epoch = epoch.map(str::to_string);
            self.last = offset;
        }
    }

    /// Whether `offset` is new; records it when it is.
    fn accept(&mut self, offset: u64) -> bool {
        if offset <= self.last {
            return false;
        }
        self.last = offset;
        true
    }
}

/// Epoch and offsets of every stream; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    all: Position,
    user: Position,
    channels: HashMap<String, Position>,
    duplicates: u64,
}

impl Streams {
    /// The query parameters of a reconnect: `epoch`, `since_all`,
    /// `since_user`; empty while no `connected` has told the epoch.
    pub fn resume_query(&self) -> Vec<(&'static str, String)> {
        match &self.all.epoch {
            Some(epoch) => vec![
                ("epoch", epoch.clone()),
                ("since_all", self.all.last.to_string()),
                ("since_user", self.user.last.to_string()),
            ],
            None => Vec::new(),
        }
    }

    /// Takes the payload of the server's `connected`; returns its
    /// `recovered` (`false` when absent).
    pub fn on_connected(&mut self, payload: &Value) -> bool {
        let recovered = payload.get("recovered") == Some(&Value::Bool(true));
        let Some(epoch) = payload.get("epoch").and_then(Value::as_str) else {
            // A server without history: nothing to recover from next time.
            self.all = Position::default();
            self.user = Position::default();
            return recovered;
        };
        let offsets = payload.get("offsets");
        let head = |stream: &str| {
            offsets
                .and_then(|o| o.get(stream))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        self.all.answer(Some(epoch), head(ALL), recovered);
        self.user.answer(Some(epoch), head(USER), recovered);
        recovered
    }

    /// `since` and `epoch` for resubscribing to `channel`, when known.
    pub fn resume_channel(&self, channel: &str) -> Option<(u64, &str)> {
        let p = self.channels.get(channel)?;
        Some((p.last, p.epoch.as_deref()?))
    }

    /// Takes the payload of a `subscribed` answer.
    pub fn on_subscribed(&mut self, payload: &Value) {
        let Some(channel) = payload.get("channel").and_then(Value::as_str) else {
            return;
        };
        let Some(offset) = payload.get("offset").and_then(Value::as_u64) else {
            return;
        };
        let epoch = payload.get("epoch").and_then(Value::as_str);
        let recovered = payload.get("recovered") == Some(&Value::Bool(true));
        self.channels
            .entry(channel.to_string())
            .or_default()
            .answer(epoch, offset, recovered);
    }

    /// Takes the payload of an `unsubscribed` answer: the channel is forgotten.
    pub fn on_unsubscribed(&mut self, payload: &Value) {
        if let Some(channel) = payload.get("channel").and_then(Value::as_str) {
            self.channels.remove(channel);
        }
    }

    /// Forgets the channels not in `keep` (a new connection is subscribed
    /// to those only).
    pub fn retain_channels<'a>(&mut self, keep: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = keep.into_iter().collect();
        self.channels.retain(|c, _| keep.contains(c.as_str()));
    }

    /// Whether a message at `offset` on `stream` is new (then recorded) or a
    /// duplicate (then counted).
    pub fn accept(&mut self, stream: &str, offset: u64) -> bool {
        let position = match stream {
            ALL => &mut self.all,
            USER => &mut self.user,
            channel => self.channels.entry(channel.to_string()).or_default(),
        };
        let new = position.accept(offset);
        if !new {
            self.duplicates += 1;
        }
        new
    }

    /// Messages dropped as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The last offset seen on `stream` (0 when none).
    #[cfg(test)]
    fn last(&self, stream: &str) -> u64 {
        match stream {
            ALL => self.all.last,
            USER => self.user.last,
            c => self.channels.get(c).map_or(0, |p| p.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hello(epoch: &str, all: u64, user: u64, recovered: Option<bool>) -> Value {
        let mut p = json!({"epoch": epoch, "offsets": {"@all": all, "@user": user}});
        if let Some(r) = recovered {
            p["recovered"] = json!(r);
        }
        p
    }

    fn query(s: &Streams) -> Vec<(&'static str, String)> {
        s.resume_query()
    }

    #[test]
    fn nothing_to_resume_before_the_first_connected() {
        let s = Streams::default();
        assert!(query(&s).is_empty());
        assert_eq!(s.resume_channel("news"), None);
    }

    #[test]
    fn a_fresh_connection_starts_at_the_servers_offsets() {
        let mut s = Streams::default();
        assert!(!s.on_connected(&hello("e1", 7, 3, None)));
        assert_eq!(
            query(&s),
            vec![
                ("epoch", "e1".to_string()),
                ("since_all", "7".to_string()),
                ("since_user", "3".to_string()),
            ]
        );
        // Live messages after those offsets are new; older ones are not.
        assert!(s.accept(ALL, 8));
        assert!(!s.accept(ALL, 7));
        assert!(s.accept(USER, 4));
        assert_eq!((s.last(ALL), s.last(USER)), (8, 4));
    }

    #[test]
    fn the_duplicate_guard_tracks_the_highest_offset_per_stream() {
        let mut s = Streams::default();
        s.on_connected(&hello("e", 0, 0, None));
        assert!(s.accept(ALL, 1));
        assert!(s.accept(ALL, 3), "gaps (excluded broadcasts) are fine");
        assert!(!s.accept(ALL, 3), "the same offset twice");
        assert!(!s.accept(ALL, 2), "an older one");
        assert!(s.accept(USER, 1), "streams count apart");
        assert!(s.accept("news", 1));
        assert!(!s.accept("news", 1));
        assert_eq!(s.duplicates(), 3);
        assert_eq!((s.last(ALL), s.last(USER), s.last("news")), (3, 1, 1));
    }

    #[test]
    fn a_recovered_connected_keeps_the_offsets_for_the_replay() {
        let mut s = Streams::default();
        s.on_connected(&hello("e", 0, 0, None));
        assert!(s.accept(ALL, 1));
        // Reconnected with since_all=1; the server replays 2..=4.
        assert!(s.on_connected(&hello("e", 4, 0, Some(true))));
        assert_eq!(s.last(ALL), 1);
        for o in 2..=4 {
            assert!(s.accept(ALL, o), "replayed {o}");
        }
        assert!(!s.accept(ALL, 4));
        assert_eq!(s.duplicates(), 1);
    }

    #[test]
    fn not_recovered_in_the_same_epoch_moves_up_to_the_servers_offsets() {
        let mut s = Streams::default();
        s.on_connected(&hello("e", 2, 2, None));
        assert!(!s.on_connected(&hello("e", 9, 2, Some(false))));
        assert_eq!((s.last(ALL), s.last(USER)), (9, 2));
        assert!(!s.accept(ALL, 9));
        assert!(s.accept(ALL, 10));
    }

    #[test]
    fn a_new_epoch_resets_the_offsets_to_the_servers() {
        let mut s = Streams::default();
        s.on_connected(&hello("old", 50, 20, None));
        assert!(!s.on_connected(&hello("new", 1, 0, Some(false))));
        assert_eq!((s.last(ALL), s.last(USER)), (1, 0));
        assert_eq!(query(&s)[0], ("epoch", "new".to_string()));
        assert!(s.accept(ALL, 2), "the restarted server counts from 1 again");
        assert!(s.accept(USER, 1));
    }

    #[test]
    fn a_server_without_history_leaves_nothing_to_resume() {
        let mut s = Streams::default();
        s.on_connected(&hello("e", 5, 5, None));
        s.on_connected(&json!({"userId": "u"}));
        assert!(query(&s).is_empty());
        assert!(s.accept(ALL, 1));
    }

    #[test]
    fn channels_follow_their_subscribed_answers() {
        let mut s = Streams::default();
        s.on_subscribed(&json!({"channel": "news", "offset": 4, "epoch": "e"}));
        assert_eq!(s.resume_channel("news"), Some((4, "e")));
        assert!(!s.accept("news", 4));
        assert!(s.accept("news", 5));
        // Resubscribed with since=5: recovered, the replay follows.
        s.on_subscribed(&json!({"channel": "news", "offset": 8, "epoch": "e", "recovered": true}));
        assert_eq!(s.resume_channel("news"), Some((5, "e")));
        for o in 6..=8 {
            assert!(s.accept("news", o));
        }
        // Not recovered in the same epoch: up to the server's offset.
        s.on_subscribed(
            &json!({"channel": "news", "offset": 20, "epoch": "e", "recovered": false}),
        );
        assert_eq!(s.resume_channel("news"), Some((20, "e")));
        // Another epoch: reset.
        s.on_subscribed(&json!({"channel": "news", "offset": 0, "epoch": "f", "recovered": false}));
        assert_eq!(s.resume_channel("news"), Some((0, "f")));
        assert!(s.accept("news", 1));
        // An answer without an offset (a server without history) changes nothing.
        s.on_subscribed(&json!({"channel": "news"}));
        assert_eq!(s.resume_channel("news"), Some((1, "f")));
    }

    #[test]
    fn unsubscribed_and_dropped_channels_are_forgotten() {
        let mut s = Streams::default();
        for c in ["a", "b", "c"] {
            s.on_subscribed(&json!({"channel": c, "offset": 3, "epoch": "e"}));
        }
        s.on_unsubscribed(&json!({"channel": "a"}));
        assert_eq!(s.resume_channel("a"), None);
        s.retain_channels(["c"]);
        assert_eq!(s.resume_channel("b"), None);
        assert_eq!(s.resume_channel("c"), Some((3, "e")));
        // A channel without an epoch yet has no `since` to send.
        assert!(s.accept("d", 1));
        assert_eq!(s.resume_channel("d"), None);
    }
}
