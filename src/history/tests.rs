//! Unit tests of the history: offsets, recovery, eviction and merging.

use super::*;
use crate::frame::Frame;

fn limits(size: usize, max_bytes: usize) -> Limits {
    Limits {
        size,
        ttl: Duration::from_secs(300),
        max_bytes,
    }
}

fn frame(text: &str) -> impl FnOnce(u64) -> SharedFrame + '_ {
    move |offset| Frame::shared(format!("{text}#{offset}").into_bytes())
}

fn texts(frames: Option<Vec<(u64, SharedFrame)>>) -> Option<Vec<String>> {
    frames.map(|v| {
        v.into_iter()
            .map(|(_, f)| String::from_utf8_lossy(&f).into_owned())
            .collect()
    })
}

#[test]
fn offsets_grow_per_stream_from_one() {
    let h = History::new(limits(10, 1 << 20), true);
    let now = Instant::now();
    let mut w = h.lock();
    assert_eq!(w.append(Stream::All, now, None, frame("a")).0, 1);
    assert_eq!(w.append(Stream::All, now, None, frame("b")).0, 2);
    assert_eq!(w.append(Stream::User("u"), now, None, frame("c")).0, 1);
    assert_eq!(w.append(Stream::User("v"), now, None, frame("d")).0, 1);
    assert_eq!(
        w.append(Stream::Channel("news"), now, None, frame("e")).0,
        1
    );
    assert_eq!(w.last(Stream::All), 2);
    assert_eq!(w.last(Stream::User("u")), 1);
    assert_eq!(w.last(Stream::User("nobody")), 0);
    drop(w);
    assert_eq!(h.epoch().len(), 16);
}

#[test]
fn missed_messages_are_those_after_the_offset_unless_some_are_gone() {
    let h = History::new(limits(3, 1 << 20), true);
    let now = Instant::now();
    let mut w = h.lock();
    for t in ["a", "b", "c", "d"] {
        w.append(Stream::All, now, None, frame(t));
    }
    // Offsets 2..4 are kept (size 3).
    assert_eq!(
        texts(w.missed(since(Stream::All, 2), "u", now)),
        Some(vec!["c#3".into(), "d#4".into()])
    );
    assert_eq!(
        texts(w.missed(since(Stream::All, 1), "u", now)),
        Some(vec!["b#2".into(), "c#3".into(), "d#4".into()])
    );
    assert_eq!(texts(w.missed(since(Stream::All, 0), "u", now)), None);
    assert_eq!(
        texts(w.missed(since(Stream::All, 4), "u", now)),
        Some(vec![])
    );
    // Ahead of this node (another node's offsets not applied yet):
    // nothing to replay here.
    assert_eq!(
        texts(w.missed(since(Stream::All, 5), "u", now)),
        Some(vec![])
    );
    // A stream never written: nothing missed.
    assert_eq!(
        texts(w.missed(since(Stream::User("u"), 0), "u", now)),
        Some(vec![])
    );
}

#[test]
fn excluded_users_do_not_get_the_entries_they_were_left_out_of() {
    let h = History::new(limits(10, 1 << 20), true);
    let now = Instant::now();
    let mut w = h.lock();
    let ex = Some(Arc::new(HashSet::from(["u".to_string()])));
    w.append(Stream::All, now, ex, frame("secret"));
    w.append(Stream::All, now, None, frame("open"));
    assert_eq!(
        texts(w.missed(since(Stream::All, 0), "u", now)),
        Some(vec!["open#2".into()])
    );
    assert_eq!(
        texts(w.missed(since(Stream::All, 0), "v", now)).map(|v| v.len()),
        Some(2)
    );
}

#[test]
fn old_entries_expire_and_size_zero_keeps_offsets_only() {
    let h = History::new(
        Limits {
            size: 10,
            ttl: Duration::from_secs(5),
            max_bytes: 1 << 20,
        },
        true,
    );
    let t = Instant::now();
    let mut w = h.lock();
    w.append(Stream::All, t, None, frame("a"));
    w.append(Stream::All, t + Duration::from_secs(3), None, frame("b"));
    let later = t + Duration::from_secs(6);
    assert_eq!(texts(w.missed(since(Stream::All, 0), "u", later)), None);
    assert_eq!(
        texts(w.missed(since(Stream::All, 1), "u", later)),
        Some(vec!["b#2".into()])
    );
    drop(w);
    assert_eq!(h.usage().0, 1);

    let off = History::new(limits(0, 1 << 20), true);
    let mut w = off.lock();
    assert_eq!(w.append(Stream::All, t, None, frame("a")).0, 1);
    assert_eq!(w.append(Stream::All, t, None, frame("b")).0, 2);
    assert_eq!(texts(w.missed(since(Stream::All, 1), "u", t)), None);
    assert_eq!(texts(w.missed(since(Stream::All, 2), "u", t)), Some(vec![]));
    drop(w);
    assert_eq!(off.usage(), (0, 0));
}

#[test]
fn the_byte_budget_evicts_the_oldest_entries_of_the_whole_node() {
    // Each entry: 4-5 bytes of frame + 64 of bookkeeping; room for 4.
    let h = History::new(limits(100, 4 * 70), true);
    let now = Instant::now();
    let mut w = h.lock();
    w.append(Stream::User("u"), now, None, frame("u1"));
    w.append(Stream::All, now, None, frame("a1"));
    w.append(Stream::Channel("c"), now, None, frame("c1"));
    w.append(Stream::User("u"), now, None, frame("u2"));
    w.append(Stream::All, now, None, frame("a2"));
    // The oldest of the node (u's first) went.
    assert_eq!(texts(w.missed(since(Stream::User("u"), 0), "u", now)), None);
    assert_eq!(
        texts(w.missed(since(Stream::User("u"), 1), "u", now)),
        Some(vec!["u2#2".into()])
    );
    assert_eq!(
        texts(w.missed(since(Stream::All, 0), "u", now)).map(|v| v.len()),
        Some(2)
    );
    w.append(Stream::Channel("c"), now, None, frame("c2"));
    assert_eq!(texts(w.missed(since(Stream::All, 0), "u", now)), None);
    drop(w);
    let (entries, bytes) = h.usage();
    assert_eq!(entries, 4);
    assert!(bytes <= 4 * 70, "{bytes}");
}

#[test]
fn a_connection_recovers_both_streams_or_neither() {
    let h = History::new(limits(2, 1 << 20), true);
    let now = Instant::now();
    {
        let mut w = h.lock();
        w.append(Stream::All, now, None, frame("a"));
        w.append(Stream::User("u"), now, None, frame("u"));
        w.append(Stream::All, now, None, frame("b"));
    }
    let fresh = h.start_connection("u", None, now);
    assert_eq!((fresh.all, fresh.user, fresh.recovered), (2, 1, None));
    let ask = |all, user| Resume {
        epoch: h.epoch().to_string(),
        all,
        user,
    };
    let back = h.start_connection("u", Some(&ask(0, 0)), now);
    assert_eq!(back.recovered, Some(true));
    let order: Vec<String> = back
        .replay
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert_eq!(order, ["a#1", "u#1", "b#2"]);
    h.lock().append(Stream::All, now, None, frame("c"));
    // @all offset 1 is gone (size 2): not recoverable, nothing replayed.
    let lost = h.start_connection("u", Some(&ask(0, 1)), now);
    assert_eq!((lost.recovered, lost.replay.len()), (Some(false), 0));
    let other_epoch = Resume {
        epoch: "elsewhere".into(),
        ..ask(3, 1)
    };
    let other = h.start_connection("u", Some(&other_epoch), now);
    assert_eq!(other.recovered, Some(false));
    let sub = h.start_subscription("news", "u", Some((&h.epoch(), 0)), now);
    assert_eq!((sub.offset, sub.recovered), (0, Some(true)));
}

#[test]
fn streams_merge_in_append_order() {
    let h = History::new(limits(10, 1 << 20), true);
    let now = Instant::now();
    let mut w = h.lock();
    w.append(Stream::All, now, None, frame("a1"));
    w.append(Stream::User("u"), now, None, frame("u1"));
    w.append(Stream::All, now, None, frame("a2"));
    let mut all = w
        .missed(since(Stream::All, 0), "u", now)
        .unwrap_or_default();
    all.extend(
        w.missed(since(Stream::User("u"), 0), "u", now)
            .unwrap_or_default(),
    );
    all.sort_by_key(|(seq, _)| *seq);
    let order: Vec<String> = all
        .into_iter()
        .map(|(_, f)| String::from_utf8_lossy(&f).into_owned())
        .collect();
    assert_eq!(order, ["a1#1", "u1#1", "a2#2"]);
}
