//! History and recovery on one node (docs/PROTOCOL.md §11), through real
//! clients: streams and offsets on every API message, recovery on connect
//! and on subscribe (exactly the missed messages, in order, then live ones),
//! the refusals (another epoch, history gone), history off, and the byte
//! bound measured on a real process's RSS. Every wait is bounded.

mod common;

use std::net::SocketAddr;

use common::process::spawn;
use common::*;
use serde_json::{json, Value};

fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    admin(addr, "POST", path, Some(&body))
}

fn broadcast(addr: SocketAddr, body: Value) {
    let (status, r) = post(addr, "/v1/websocket/broadcast", body);
    assert_eq!(status, 200, "{r}");
}

fn send(addr: SocketAddr, user: &str, body: Value) -> u16 {
    post(addr, &format!("/v1/websocket/send/{user}"), body).0
}

/// `(channel, offset, type)` of a message on a stream.
fn on_stream(m: &Value) -> (String, u64, String) {
    (
        m["channel"].as_str().unwrap_or("?").to_string(),
        m["offset"].as_u64().unwrap_or(0),
        m["type"].as_str().unwrap_or("?").to_string(),
    )
}

fn expect(list: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    list.iter()
        .map(|(c, o, t)| (c.to_string(), *o, t.to_string()))
        .collect()
}

/// Reconnects with `token`, asking to recover after `all` and `own` in
/// `epoch`; returns the socket and its `connected`.
fn reconnect(addr: SocketAddr, token: &str, epoch: &str, all: u64, own: u64) -> (Ws, Value) {
    let path = format!("/ws?token={token}&epoch={epoch}&since_all={all}&since_user={own}");
    let mut ws = try_connect(addr, &path, &[]).expect("upgrade accepted");
    let hello = next_json(&mut ws);
    assert_eq!(hello["type"], "connected", "{hello}");
    (ws, hello)
}

#[test]
fn every_api_message_carries_its_stream_and_offset() {
    let srv = start(|_| {});
    let (mut a, first) = connect(srv.addr, &token("alice", 600));
    assert_eq!(first["payload"]["offsets"], json!({"@all": 0, "@user": 0}));
    let (mut b, _) = connect(srv.addr, &token("bob", 600));
    broadcast(srv.addr, json!({"type": "b1"}));
    assert_eq!(send(srv.addr, "alice", json!({"type": "s1"})), 200);
    broadcast(srv.addr, json!({"type": "b2", "userIds": ["alice", "bob"]}));
    broadcast(srv.addr, json!({"type": "b3", "excludeUserIds": ["bob"]}));
    let got_a: Vec<_> = (0..4).map(|_| on_stream(&next_json(&mut a))).collect();
    assert_eq!(
        got_a,
        expect(&[
            ("@all", 1, "b1"),
            ("@user", 1, "s1"),
            ("@user", 2, "b2"),
            ("@all", 2, "b3"),
        ])
    );
    let got_b: Vec<_> = (0..2).map(|_| on_stream(&next_json(&mut b))).collect();
    assert_eq!(got_b, expect(&[("@all", 1, "b1"), ("@user", 1, "b2")]));
    // A new connection starts after what was sent before it.
    let (_, hello) = connect(srv.addr, &token("alice", 600));
    assert_eq!(hello["payload"]["offsets"], json!({"@all": 2, "@user": 2}));
    assert_eq!(hello["payload"]["epoch"], first["payload"]["epoch"]);
    assert!(hello["payload"].get("recovered").is_none());
}

#[test]
fn a_client_that_reconnects_gets_exactly_what_it_missed_then_live_messages() {
    let srv = start(|_| {});
    let (mut a, hello) = connect(srv.addr, &token("alice", 600));
    let epoch = hello["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let (mut bob, _) = connect(srv.addr, &token("bob", 600));
    broadcast(srv.addr, json!({"type": "seen", "payload": 1}));
    assert_eq!(next_json(&mut a)["offset"], 1);
    assert_eq!(next_json(&mut bob)["offset"], 1);
    a.close(None).expect("close");
    let _ = expect_close(&mut a);
    eventually("alice is gone", || {
        user_status(srv.addr, "alice")["connectionCount"] == 0
    });

    // While alice is away: broadcasts, one that leaves her out, and sends
    // to her (404: not connected, but kept in her history).
    broadcast(srv.addr, json!({"type": "m1"}));
    assert_eq!(send(srv.addr, "alice", json!({"type": "d1"})), 404);
    broadcast(
        srv.addr,
        json!({"type": "hidden", "excludeUserIds": ["alice"]}),
    );
    broadcast(srv.addr, json!({"type": "m2", "userIds": ["alice", "bob"]}));
    broadcast(srv.addr, json!({"type": "m3"}));
    for _ in 0..4 {
        next_json(&mut bob);
    }

    let (mut a, hello) = reconnect(srv.addr, &token("alice", 600), &epoch, 1, 0);
    assert_eq!(hello["payload"]["recovered"], true, "{hello}");
    assert_eq!(
        hello["payload"]["offsets"],
        json!({"@all": 4, "@user": 2}),
        "{hello}"
    );
    let missed: Vec<_> = (0..4).map(|_| on_stream(&next_json(&mut a))).collect();
    assert_eq!(
        missed,
        expect(&[
            ("@all", 2, "m1"),
            ("@user", 1, "d1"),
            ("@user", 2, "m2"),
            ("@all", 4, "m3"),
        ]),
        "in the order sent, without the broadcast that left her out"
    );
    // Then live messages, with no duplicate in between.
    broadcast(srv.addr, json!({"type": "live"}));
    assert_eq!(
        on_stream(&next_json(&mut a)),
        expect(&[("@all", 5, "live")])[0]
    );

    // Nothing missed is recovered too, with nothing replayed.
    let (mut again, hello) = reconnect(srv.addr, &token("alice", 600), &epoch, 5, 2);
    assert_eq!(hello["payload"]["recovered"], true);
    send_json(&mut again, &json!({"type": "probe"}));
    assert_eq!(next_json(&mut again)["type"], "echo");
}

#[test]
fn another_epoch_or_lost_history_gives_recovered_false_and_no_replay() {
    let srv = start(|c| c.history_size = 2);
    let (mut a, hello) = connect(srv.addr, &token("alice", 600));
    let epoch = hello["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for i in 0..3 {
        broadcast(srv.addr, json!({"type": "m", "payload": i}));
        next_json(&mut a);
    }
    // Offsets 2 and 3 are kept; 1 is gone.
    for (epoch, all, recovered) in [
        (epoch.as_str(), 0, false),
        ("not-the-epoch", 3, false),
        (epoch.as_str(), 1, true),
    ] {
        let (mut ws, hello) = reconnect(srv.addr, &token("alice", 600), epoch, all, 0);
        assert_eq!(hello["payload"]["recovered"], recovered, "{hello}");
        assert_eq!(hello["payload"]["offsets"]["@all"], 3);
        if recovered {
            assert_eq!(next_json(&mut ws)["offset"], 2);
            assert_eq!(next_json(&mut ws)["offset"], 3);
        }
        send_json(&mut ws, &json!({"type": "probe"}));
        assert_eq!(next_json(&mut ws)["type"], "echo", "nothing else replayed");
    }
    // A malformed offset is a clear 400.
    let path = format!("/ws?token={}&since_all=x", token("alice", 600));
    assert_eq!(try_connect(srv.addr, &path, &[]).err(), Some(400));
}

#[test]
fn a_subscribe_with_since_recovers_the_channel_messages_missed() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token_with("alice", &["news"]));
    let ack = subscribe(&mut a, "news", false);
    assert_eq!(ack["payload"]["offset"], 0, "{ack}");
    let epoch = ack["payload"]["epoch"].as_str().expect("epoch").to_string();
    assert!(ack["payload"].get("recovered").is_none());
    publish(srv.addr, "news", "n", json!(1));
    assert_eq!(next_json(&mut a)["offset"], 1);
    drop(a);
    for i in 2..=4 {
        publish(srv.addr, "news", "n", json!(i));
    }
    let (mut a, _) = connect(srv.addr, &token_with("alice", &["news"]));
    let payload = json!({"channel": "news", "since": 1, "epoch": epoch});
    send_json(&mut a, &json!({"type": "subscribe", "payload": payload}));
    let ack = next_json(&mut a);
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(
        (&ack["payload"]["offset"], &ack["payload"]["recovered"]),
        (&json!(4), &json!(true)),
        "{ack}"
    );
    for i in 2..=4 {
        let m = next_json(&mut a);
        assert_eq!(
            (&m["channel"], &m["offset"], &m["payload"]),
            (&json!("news"), &json!(i), &json!(i))
        );
    }
    publish(srv.addr, "news", "n", json!(5));
    assert_eq!(next_json(&mut a)["offset"], 5, "then live, no duplicate");
    // Another epoch: not recovered, nothing replayed.
    let (mut b, _) = connect(srv.addr, &token_with("bob", &["news"]));
    let payload = json!({"channel": "news", "since": 1, "epoch": "other"});
    send_json(&mut b, &json!({"type": "subscribe", "payload": payload}));
    let ack = next_json(&mut b);
    assert_eq!(ack["payload"]["recovered"], false, "{ack}");
    send_json(&mut b, &json!({"type": "probe"}));
    assert_eq!(next_json(&mut b)["type"], "echo");
    // A bad `since` is an error naming the channel.
    let payload = json!({"channel": "news", "since": -1});
    send_json(&mut b, &json!({"type": "subscribe", "payload": payload}));
    let err = next_json(&mut b);
    assert_eq!(
        (&err["type"], &err["payload"]["channel"]),
        (&json!("error"), &json!("news"))
    );
}

#[test]
fn with_history_off_offsets_still_count_and_only_nothing_missed_recovers() {
    let srv = start(|c| c.history_size = 0);
    let (mut a, hello) = connect(srv.addr, &token("alice", 600));
    let epoch = hello["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    broadcast(srv.addr, json!({"type": "m"}));
    assert_eq!(next_json(&mut a)["offset"], 1);
    let (_, hello) = reconnect(srv.addr, &token("alice", 600), &epoch, 1, 0);
    assert_eq!(hello["payload"]["recovered"], true);
    broadcast(srv.addr, json!({"type": "m"}));
    let (_, hello) = reconnect(srv.addr, &token("alice", 600), &epoch, 1, 0);
    assert_eq!(hello["payload"]["recovered"], false);
    let metrics = http_raw(
        srv.addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&metrics.2);
    assert!(text.contains("wsedge_history_entries 0"), "{text}");
}

#[test]
fn history_memory_stays_within_its_byte_bound() {
    const MAX: u64 = 4 << 20;
    let max = MAX.to_string();
    let srv = spawn(
        &["--admin-key", ADMIN_KEY, "--history-max-bytes", &max],
        &[("JWT_SECRET", SECRET)],
    );
    let pid = srv.child.id();
    let before = rss_kib_of(pid);
    // 32 MiB of sends to 1,000 users who are not connected: all of it
    // would be kept but for the bound (100 per user, 5 minutes).
    let chunk = "x".repeat(32 * 1024);
    for i in 0..1000 {
        let status = send(
            srv.addr,
            &format!("u{i}"),
            json!({"type": "big", "payload": chunk}),
        );
        assert_eq!(status, 404);
    }
    let kept = metric_value(srv.addr, "wsedge_history_bytes");
    assert!(kept <= MAX, "{kept} bytes kept, bound {MAX}");
    assert!(kept >= MAX / 2, "the newest messages are kept: {kept}");
    let grown_kib = rss_kib_of(pid).saturating_sub(before);
    // The bound plus allocator slack; 32 MiB went through.
    assert!(
        grown_kib < 3 * MAX / 1024,
        "RSS grew {grown_kib} KiB for a {} KiB bound",
        MAX / 1024
    );
}

#[test]
fn a_client_that_left_node_a_recovers_on_node_c_what_node_b_published() {
    use common::cluster::{stats, three};
    let t = three("history");
    let (mut a, hello) = connect(t.a.addr, &token_with("alice", &["news"]));
    let epoch = hello["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let ack = subscribe(&mut a, "news", false);
    assert_eq!(
        ack["payload"]["epoch"],
        epoch.as_str(),
        "one epoch per cluster"
    );
    // A watcher on C, to know when C has every message.
    let (mut watcher, hello_c) = connect(t.c.addr, &token("watcher", 600));
    assert_eq!(hello_c["payload"]["epoch"], epoch.as_str());
    eventually("b counts alice and the watcher", || {
        stats(t.b.addr)["totalConnections"] == 2
    });
    broadcast(t.b.addr, json!({"type": "seen"}));
    let seen = next_json(&mut a);
    let seen_all = seen["offset"].as_u64().expect("offset");
    assert_eq!(next_json(&mut watcher)["offset"], seen_all);
    drop(a);
    eventually("alice is gone everywhere", || {
        user_status(t.b.addr, "alice")["connectionCount"] == 0
    });

    // While alice is away, B publishes on every stream of hers.
    broadcast(t.b.addr, json!({"type": "m1"}));
    assert_eq!(send(t.b.addr, "alice", json!({"type": "d1"})), 404);
    let (status, _) = publish(t.b.addr, "news", "n1", json!(1));
    assert_eq!(status, 200);
    broadcast(t.b.addr, json!({"type": "m2", "excludeUserIds": ["alice"]}));
    broadcast(t.b.addr, json!({"type": "m3"}));
    for _ in 0..3 {
        next_json(&mut watcher);
    }

    let tok = token_with("alice", &["news"]);
    let (mut a, hello) = reconnect(t.c.addr, &tok, &epoch, seen_all, 0);
    assert_eq!(hello["payload"]["recovered"], true, "{hello}");
    let missed: Vec<_> = (0..3).map(|_| on_stream(&next_json(&mut a))).collect();
    assert_eq!(
        missed,
        expect(&[
            ("@all", seen_all + 1, "m1"),
            ("@user", 1, "d1"),
            ("@all", seen_all + 3, "m3"),
        ]),
        "exactly what she missed on her own streams, in order"
    );
    let payload = json!({"channel": "news", "since": 0, "epoch": epoch});
    send_json(&mut a, &json!({"type": "subscribe", "payload": payload}));
    let ack = next_json(&mut a);
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    assert_eq!(
        on_stream(&next_json(&mut a)),
        expect(&[("news", 1, "n1")])[0]
    );
    // Then live messages, from any node, with no duplicate.
    broadcast(t.a.addr, json!({"type": "live"}));
    assert_eq!(
        on_stream(&next_json(&mut a)),
        expect(&[("@all", seen_all + 4, "live")])[0]
    );
}
