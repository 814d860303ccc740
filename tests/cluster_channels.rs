//! Channels across a cluster (docs/PROTOCOL.md §9, §10): three nodes joined
//! through a real `redis-server`. A publish on any node reaches every
//! subscriber once and in the publisher's order, the management API's
//! subscribe reaches users on every node, and counts, member lists and
//! presence events include every live node, a killed one dropping out
//! within 5 s. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

fn channel_info(addr: SocketAddr, channel: &str) -> Value {
    let (status, body) = admin(
        addr,
        "GET",
        &format!("/v1/websocket/channels/{channel}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn sorted_users(info: &Value) -> Vec<String> {
    let mut users: Vec<String> = info["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    users.sort();
    users
}

/// Waits until every node in `addrs` counts `n` subscribed connections
/// in `channel`.
fn wait_subscribers(addrs: &[SocketAddr], channel: &str, n: u64) {
    for &addr in addrs {
        eventually(&format!("{addr} counts {n} in {channel}"), || {
            channel_info(addr, channel)["connections"] == n
        });
    }
}

#[test]
fn a_publish_on_b_reaches_subscribers_on_a_b_and_c_once_each_and_in_order() {
    let t = three("ch-order");
    let mut subs: Vec<Ws> = Vec::new();
    for (i, n) in [&t.a, &t.b, &t.c].iter().enumerate() {
        for j in 0..2 {
            let (mut ws, _) = connect(n.addr, &token_with(&format!("u{i}{j}"), &["news"]));
            assert_eq!(subscribe(&mut ws, "news", false)["type"], "subscribed");
            subs.push(ws);
        }
    }
    // A connection on every node that is not subscribed sees no publish.
    let (mut outsider, _) = connect(t.c.addr, &token_with("outsider", &["news"]));
    wait_subscribers(&[t.a.addr, t.b.addr, t.c.addr], "news", 6);

    // Publishes and broadcasts from one publisher keep their order.
    const N: u64 = 60;
    for seq in 0..N {
        if seq % 3 == 2 {
            let r = broadcast(t.b.addr, json!({"type":"all","payload":{"seq":seq}}));
            assert_eq!(r["sentToConnections"], 7, "{r}");
        } else {
            let (status, r) = publish(t.b.addr, "news", "tick", json!({ "seq": seq }));
            assert_eq!((status, &r["sentToConnections"]), (200, &json!(6)), "{r}");
        }
    }
    publish(t.b.addr, "news", "end", json!(null));
    for ws in &mut subs {
        for seq in 0..N {
            let m = next_json(ws);
            assert_eq!(m["payload"]["seq"], seq, "out of order: {m}");
            if seq % 3 == 2 {
                assert_eq!(m["type"], "all", "{m}");
            } else {
                assert_eq!(m["channel"], "news", "{m}");
            }
        }
        // Exactly once: the next message after the last one is the end mark.
        assert_eq!(next_json(ws)["type"], "end");
    }
    for seq in (2..N).step_by(3) {
        let m = next_json(&mut outsider);
        assert_eq!(
            (&m["type"], &m["payload"]["seq"]),
            (&json!("all"), &json!(seq))
        );
    }
    send_json(&mut outsider, &json!({"type": "probe"}));
    assert_eq!(
        next_json(&mut outsider)["type"],
        "echo",
        "no channel message"
    );
}

#[test]
fn counts_members_and_presence_events_include_every_node() {
    let t = three("ch-presence");
    let (mut watcher, _) = connect(t.a.addr, &token_with("watcher", &["room:*"]));
    assert_eq!(
        subscribe(&mut watcher, "room:1", true)["type"],
        "subscribed"
    );
    assert_eq!(next_json(&mut watcher)["payload"]["userId"], "watcher");
    let (mut on_c, _) = connect(t.c.addr, &token_with("u", &["room:*"]));
    let (mut on_b, _) = connect(t.b.addr, &token_with("u", &["room:*"]));
    assert_eq!(subscribe(&mut on_c, "room:1", false)["type"], "subscribed");
    let join = next_json(&mut watcher);
    assert_eq!(
        join,
        json!({"type":"join","channel":"room:1","payload":{"userId":"u"}})
    );
    // u's second connection, on another node, is no second join.
    assert_eq!(subscribe(&mut on_b, "room:1", false)["type"], "subscribed");
    wait_subscribers(&[t.a.addr, t.b.addr, t.c.addr], "room:1", 3);
    for n in [&t.a, &t.b, &t.c] {
        let info = channel_info(n.addr, "room:1");
        assert_eq!(sorted_users(&info), ["u", "watcher"], "{info}");
        assert_eq!(info["usersTruncated"], false);
        let (_, list) = admin(n.addr, "GET", "/v1/websocket/channels", None);
        assert_eq!(
            list["channels"],
            json!([{"channel":"room:1","connections":3}])
        );
        assert_eq!(list["totalChannels"], 1);
        assert_eq!(stats(n.addr)["totalChannels"], 1);
    }

    // u leaves on c but is still in the channel on b: no leave yet.
    send_json(
        &mut on_c,
        &json!({"type":"unsubscribe","payload":{"channel":"room:1"}}),
    );
    assert_eq!(next_json(&mut on_c)["type"], "unsubscribed");
    wait_subscribers(&[t.a.addr], "room:1", 2);
    // Its last subscribed connection closes on b: now u leaves.
    drop(on_b);
    let leave = next_json(&mut watcher);
    assert_eq!(
        leave,
        json!({"type":"leave","channel":"room:1","payload":{"userId":"u"}})
    );
    wait_subscribers(&[t.a.addr, t.b.addr, t.c.addr], "room:1", 1);
    assert_eq!(sorted_users(&channel_info(t.c.addr, "room:1")), ["watcher"]);
}

#[test]
fn the_management_api_on_a_subscribes_and_unsubscribes_users_on_every_node() {
    let t = three("ch-rest");
    // v's token allows no channel: the management API does not ask.
    let (mut v_b, _) = connect(t.b.addr, &token("v", 600));
    let (mut v_c, _) = connect(t.c.addr, &token("v", 600));
    wait_cluster(t.a.addr, &["a", "b", "c"], 2);
    eventually("a sees both of v's connections", || {
        user_status(t.a.addr, "v")["connectionCount"] == 2
    });
    let path = "/v1/websocket/channels/ops/subscribe";
    let (status, body) = admin(t.a.addr, "POST", path, Some(&json!({"userIds":["v"]})));
    assert_eq!((status, &body["subscribedConnections"]), (200, &json!(2)));
    for ws in [&mut v_b, &mut v_c] {
        let ack = next_json(ws);
        assert_eq!(
            (&ack["type"], &ack["payload"]["channel"]),
            (&json!("subscribed"), &json!("ops"))
        );
    }
    wait_subscribers(&[t.a.addr], "ops", 2);
    let (_, r) = publish(t.a.addr, "ops", "alert", json!({"level": 3}));
    assert_eq!(r["sentToConnections"], 2, "{r}");
    for ws in [&mut v_b, &mut v_c] {
        assert_eq!(
            next_api(ws),
            json!({"type":"alert","channel":"ops","payload":{"level":3}})
        );
    }
    let path = "/v1/websocket/channels/ops/unsubscribe";
    let (status, body) = admin(t.a.addr, "POST", path, Some(&json!({"userIds":["v"]})));
    assert_eq!((status, &body["unsubscribedConnections"]), (200, &json!(2)));
    for ws in [&mut v_b, &mut v_c] {
        assert_eq!(next_json(ws)["type"], "unsubscribed");
    }
    eventually("ops is gone everywhere", || {
        [t.a.addr, t.b.addr, t.c.addr].iter().all(|&n| {
            let (status, _) = admin(n, "GET", "/v1/websocket/channels/ops", None);
            status == 200 && channel_info(n, "ops")["connections"] == 0
        })
    });
}

#[test]
fn a_killed_node_drops_its_subscribers_from_channels_within_5_s() {
    let (url, _redis) = shared_redis();
    let name = cluster_name("ch-kill");
    let a = node(&url, &name, "a");
    let b = node(&url, &name, "b");
    let mut c = spawn_node(&url, &name, "c");
    let (mut watcher, _) = connect(a.addr, &token_with("watcher", &["room"]));
    assert_eq!(subscribe(&mut watcher, "room", true)["type"], "subscribed");
    assert_eq!(next_json(&mut watcher)["payload"]["userId"], "watcher");
    let (mut on_b, _) = connect(b.addr, &token_with("ub", &["room"]));
    assert_eq!(subscribe(&mut on_b, "room", false)["type"], "subscribed");
    let (mut on_c, _) = connect(c.addr, &token_with("uc", &["room"]));
    assert_eq!(subscribe(&mut on_c, "room", false)["type"], "subscribed");
    let mut joined: Vec<String> = (0..2)
        .map(|_| {
            next_json(&mut watcher)["payload"]["userId"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    joined.sort();
    assert_eq!(joined, ["ub", "uc"]);
    wait_subscribers(&[a.addr, b.addr], "room", 3);

    c.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = c.child.wait();
    let leave = next_json(&mut watcher);
    assert_eq!(
        leave,
        json!({"type":"leave","channel":"room","payload":{"userId":"uc"}})
    );
    wait_subscribers(&[a.addr, b.addr], "room", 2);
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        sorted_users(&channel_info(b.addr, "room")),
        ["ub", "watcher"]
    );
    // The survivors still publish to each other.
    let (_, r) = publish(a.addr, "room", "still-here", json!(null));
    assert_eq!(r["sentToConnections"], 2, "{r}");
    assert_eq!(next_json(&mut on_b)["type"], "still-here");
    assert_eq!(next_json(&mut watcher)["type"], "still-here");
}
