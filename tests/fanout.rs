//! Fan-out over real sockets: targeted sends reach exactly their targets,
//! broadcasts reach every connection once and in order, exclusions,
//! disconnects, connection-id generations, Handle/REST parity and graceful
//! shutdown.
//!
//! "No others" is proven with a sentinel: after a targeted message, a
//! broadcast to everyone follows through the same shard inboxes (FIFO per
//! shard), so the sentinel must be the very next message of every
//! connection that was not a target, and the second one of every target.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wsedge::Handle;

/// One test client and who it is.
struct Client {
    user: String,
    id: String,
    ws: Ws,
}

/// Opens `n` connections for each `(user, n)`, in order; the acceptor hands
/// them to the shards round-robin.
fn open_clients(srv: &TestServer, users: &[(String, usize)]) -> Vec<Client> {
    let mut out = Vec::new();
    for (user, n) in users {
        for _ in 0..*n {
            let (ws, hello) = connect(srv.addr, &token(user, 600));
            assert_eq!(hello["payload"]["userId"], user.as_str(), "{hello}");
            let id = hello["payload"]["connectionId"]
                .as_str()
                .unwrap_or_else(|| panic!("connectionId is a string: {hello}"))
                .to_string();
            out.push(Client {
                user: user.clone(),
                id,
                ws,
            });
        }
    }
    out
}

/// Connections per user, from the clients' side.
fn counts(clients: &[Client]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in clients {
        *m.entry(c.user.clone()).or_insert(0) += 1;
    }
    m
}

fn connections_of(clients: &[Client], users: &[&str]) -> usize {
    clients
        .iter()
        .filter(|c| users.contains(&c.user.as_str()))
        .count()
}

/// Broadcasts a sentinel to everyone, then checks every client's next
/// messages: targets read `expected` and then the sentinel, the others read
/// the sentinel straight away.
fn assert_only_targets(h: &Handle, clients: &mut [Client], targets: &[&str], expected: &Value) {
    let tag = format!("after-{}", expected["type"].as_str().unwrap_or("?"));
    let sentinel = json!({"type": "sentinel", "payload": {"tag": tag}});
    let n = h.broadcast("sentinel", sentinel["payload"].clone(), None);
    assert_eq!(n, clients.len(), "the sentinel addresses every connection");
    let targets: HashSet<&str> = targets.iter().copied().collect();
    for c in clients.iter_mut() {
        if targets.contains(c.user.as_str()) {
            let m = next_api(&mut c.ws);
            assert_eq!(
                &m, expected,
                "target {} ({}) first reads the targeted message",
                c.user, c.id
            );
        }
        let m = next_api(&mut c.ws);
        assert_eq!(
            m, sentinel,
            "connection {} of {} reads the sentinel next (nothing else was delivered)",
            c.id, c.user
        );
    }
}

/// Waits for the server's close frame, answers it, and returns its code.
fn close_code(ws: &mut Ws) -> u16 {
    let code = expect_close(ws);
    finish_close(ws);
    code
}

/// Lets tungstenite send the close reply and reads until the server ends
/// the TCP connection (bounded by the socket's read timeout).
fn finish_close(ws: &mut Ws) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => continue,
            Err(_) => return,
        }
    }
    panic!("connection not finished within {WAIT:?}");
}

/// A client-initiated close, finished.
fn close_from_client(ws: &mut Ws) {
    ws.close(None).expect("send close");
    finish_close(ws);
}

fn echo_round_trip(ws: &mut Ws, tag: &str) {
    let msg = json!({"type": "ping-test", "payload": {"tag": tag}});
    send_json(ws, &msg);
    let echo = next_json(ws);
    assert_eq!(echo["type"], "echo", "{echo}");
    assert_eq!(echo["payload"]["originalMessage"], msg, "{echo}");
}

fn shards_with_connections(shards: &[(usize, usize)]) -> usize {
    shards.iter().filter(|(_, n)| *n > 0).count()
}

fn stats_rest(srv: &TestServer, query: &str) -> Value {
    let (st, body) = rest(
        srv.addr,
        "GET",
        &format!("/v1/websocket/stats{query}"),
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(st, 200, "{body}");
    body
}

#[test]
fn targeted_sends_reach_exactly_their_targets_across_shards() {
    let srv = start(|cfg| cfg.shards = 4);
    let h = srv.handle();
    let users: Vec<(String, usize)> = (0..40).map(|i| (format!("u{i:02}"), 1 + i % 3)).collect();
    let mut clients = open_clients(&srv, &users);
    let total = clients.len();
    assert_eq!(total, 79);

    // Spread over the shards, seen the same way by the handle and REST.
    let hs: Vec<(usize, usize)> = h
        .stats()
        .shards
        .iter()
        .map(|s| (s.id, s.connections))
        .collect();
    assert_eq!(hs.len(), 4);
    assert!(
        shards_with_connections(&hs) >= 3,
        "connections spread over the shards: {hs:?}"
    );
    assert_eq!(hs.iter().map(|(_, n)| n).sum::<usize>(), total);
    let body = stats_rest(&srv, "");
    let rs: Vec<(usize, usize)> = body["shards"]
        .as_array()
        .expect("shards array")
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().expect("id") as usize,
                s["connections"].as_u64().expect("connections") as usize,
            )
        })
        .collect();
    assert_eq!(rs, hs, "REST and handle agree on the shards");
    assert_eq!(body["totalConnections"], total);
    assert_eq!(body["totalUsers"], 40);

    // 1. REST broadcast with userIds (one unknown id, one duplicate).
    let targets = ["u01", "u02", "u05", "u30"];
    let expected = json!({"type": "rest-targeted", "payload": {"n": 1}});
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "rest-targeted", "payload": {"n": 1},
                     "userIds": ["u01", "u02", "u05", "u30", "ghost", "u01"]})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["message"], "Message broadcasted successfully");
    assert_eq!(
        body["sentToConnections"],
        connections_of(&clients, &targets),
        "{body}"
    );
    assert_eq!(body["targetUsers"], 6, "the number of ids given: {body}");
    assert_only_targets(&h, &mut clients, &targets, &expected);

    // 2. REST send/:userId, a user with three connections.
    let expected = json!({"type": "rest-send", "payload": ["x", 2]});
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/send/u08",
        Some(ADMIN_KEY),
        Some(&json!({"type": "rest-send", "payload": ["x", 2]})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["message"], "Message sent to user u08");
    assert_eq!(body["sentToConnections"], 3, "{body}");
    assert_only_targets(&h, &mut clients, &["u08"], &expected);

    // send/:userId for nobody: 404 and nothing delivered.
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/send/ghost",
        Some(ADMIN_KEY),
        Some(&json!({"type": "lost", "payload": null})),
    );
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["error"], "User ghost is not connected");
    let expected = json!({"type": "never", "payload": null});
    assert_only_targets(&h, &mut clients, &[], &expected);

    // 3. Library broadcast to some users.
    let targets = ["u00", "u13", "u14", "u39"];
    let expected = json!({"type": "lib-targeted", "payload": {"k": "v"}});
    let n = h.broadcast("lib-targeted", json!({"k": "v"}), Some(&targets));
    assert_eq!(n, connections_of(&clients, &targets));
    assert_only_targets(&h, &mut clients, &targets, &expected);

    // An empty list addresses nobody.
    let n = h.broadcast("nobody", json!(1), Some(&[]));
    assert_eq!(n, 0);
    let expected = json!({"type": "nobody", "payload": 1});
    assert_only_targets(&h, &mut clients, &[], &expected);

    // 4. Library send_to_user.
    let expected = json!({"type": "lib-send", "payload": {"to": "u20"}});
    let n = h.send_to_user("u20", "lib-send", json!({"to": "u20"}));
    assert_eq!(n, 3);
    assert_only_targets(&h, &mut clients, &["u20"], &expected);
    assert_eq!(h.send_to_user("ghost", "lost", json!(null)), 0);
    assert_only_targets(
        &h,
        &mut clients,
        &[],
        &json!({"type":"lost","payload":null}),
    );
}

/// Spreads clients over `threads` reader threads; each reads, for each of
/// its connections, `seq` 0..n in order and then the `end` sentinel.
fn read_sequences(clients: &mut [Client], kind: &str, n: u64, threads: usize) {
    let per = clients.len().div_ceil(threads);
    std::thread::scope(|s| {
        for chunk in clients.chunks_mut(per) {
            s.spawn(move || {
                for c in chunk.iter_mut() {
                    for seq in 0..n {
                        let m = next_api(&mut c.ws);
                        assert_eq!(
                            m,
                            json!({"type": kind, "payload": {"seq": seq}}),
                            "connection {} of {}: message {seq} exactly once, in order",
                            c.id,
                            c.user
                        );
                    }
                    let m = next_api(&mut c.ws);
                    assert_eq!(
                        m,
                        json!({"type": "end", "payload": null}),
                        "connection {}: nothing after the last message",
                        c.id
                    );
                }
            });
        }
    });
}

/// Opens connections from several threads at once.
fn open_clients_parallel(
    srv: &TestServer,
    users: &[(String, usize)],
    threads: usize,
) -> Vec<Client> {
    let per = users.len().div_ceil(threads);
    std::thread::scope(|s| {
        let joins: Vec<_> = users
            .chunks(per)
            .map(|chunk| s.spawn(move || open_clients(srv, chunk)))
            .collect();
        joins
            .into_iter()
            .flat_map(|j| j.join().expect("connect thread"))
            .collect()
    })
}

#[test]
fn hundreds_of_connections_get_every_library_broadcast_once_in_order() {
    let srv = start(|cfg| cfg.shards = 2);
    let h = srv.handle();
    let users: Vec<(String, usize)> = (0..100).map(|i| (format!("big{i:03}"), 3)).collect();
    let mut clients = open_clients_parallel(&srv, &users, 4);
    assert_eq!(clients.len(), 300);
    let stats = h.stats();
    assert_eq!(stats.total_connections, 300);
    assert_eq!(stats.total_users, 100);
    assert!(
        stats.shards.iter().all(|s| s.connections > 0),
        "both shards hold connections: {:?}",
        stats.shards
    );

    std::thread::scope(|s| {
        let h = h.clone();
        s.spawn(move || {
            for seq in 0..100u64 {
                assert_eq!(h.broadcast("seq", json!({"seq": seq}), None), 300);
            }
            assert_eq!(h.broadcast("end", Value::Null, None), 300);
        });
        read_sequences(&mut clients, "seq", 100, 4);
    });
}

#[test]
fn rest_broadcasts_reach_every_connection_once_in_order() {
    let srv = start(|cfg| cfg.shards = 2);
    let users: Vec<(String, usize)> = (0..30).map(|i| (format!("r{i:02}"), 2)).collect();
    let mut clients = open_clients(&srv, &users);
    assert_eq!(clients.len(), 60);
    for seq in 0..30u64 {
        let (st, body) = rest(
            srv.addr,
            "POST",
            "/v1/websocket/broadcast",
            Some(ADMIN_KEY),
            Some(&json!({"type": "rseq", "payload": {"seq": seq}})),
        );
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["sentToConnections"], 60, "{body}");
        assert_eq!(body["targetUsers"], "all", "{body}");
    }
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "end"})),
    );
    assert_eq!(st, 200, "{body}");
    read_sequences(&mut clients, "rseq", 30, 3);
}

#[test]
fn exclude_user_ids_skips_excluded_users() {
    let srv = start(|cfg| cfg.shards = 4);
    let h = srv.handle();
    let users: Vec<(String, usize)> = (0..10).map(|i| (format!("e{i}"), 1 + i % 3)).collect();
    let mut clients = open_clients(&srv, &users);
    let total = clients.len();
    let all: Vec<String> = counts(&clients).into_keys().collect();

    // Exclusion from everyone (an unknown id changes nothing).
    let excluded = ["e1", "e2"];
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "ex", "payload": {"a": true},
                     "excludeUserIds": ["e1", "e2", "ghost"]})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["targetUsers"], "all", "{body}");
    assert_eq!(
        body["sentToConnections"],
        total - connections_of(&clients, &excluded),
        "{body}"
    );
    let targets: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|u| !excluded.contains(u))
        .collect();
    let expected = json!({"type": "ex", "payload": {"a": true}});
    assert_only_targets(&h, &mut clients, &targets, &expected);

    // With userIds too: exclusion wins.
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "ex2", "payload": 7,
                     "userIds": ["e4", "e5"], "excludeUserIds": ["e5"]})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["targetUsers"], 2, "{body}");
    assert_eq!(
        body["sentToConnections"],
        connections_of(&clients, &["e4"]),
        "{body}"
    );
    assert_only_targets(
        &h,
        &mut clients,
        &["e4"],
        &json!({"type": "ex2", "payload": 7}),
    );

    // Everyone excluded: nothing is delivered.
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "ex3", "excludeUserIds": all})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sentToConnections"], 0, "{body}");
    assert_eq!(body["targetUsers"], "all", "{body}");
    assert_only_targets(
        &h,
        &mut clients,
        &[],
        &json!({"type": "ex3", "payload": null}),
    );

    // The library path takes the same route.
    let ex = vec!["e0".to_string(), "e9".to_string()];
    let n = h.broadcast_raw("ex4", None, None, &ex);
    assert_eq!(n, total - connections_of(&clients, &["e0", "e9"]));
    let targets: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|u| *u != "e0" && *u != "e9")
        .collect();
    assert_only_targets(
        &h,
        &mut clients,
        &targets,
        &json!({"type": "ex4", "payload": null}),
    );
}

#[test]
fn disconnects_close_every_connection_of_the_user_only() {
    let srv = start(|cfg| cfg.shards = 4);
    let h = srv.handle();
    // 1, 2, 3, 1, 2, 3 connections: d4 and d5 share a shard.
    let users: Vec<(String, usize)> = (0..6).map(|i| (format!("d{i}"), 1 + i % 3)).collect();
    let mut clients = open_clients(&srv, &users);
    assert_eq!(clients.len(), 12);
    for u in ["d0", "d1", "d2", "d3"] {
        assert!(h.is_user_connected(u));
    }

    // REST, reconnect allowed (default) → 4000.
    let (st, body) = rest(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/d0/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["message"],
        "All connections for user d0 have been disconnected"
    );
    assert_eq!(body["disconnectedConnections"], 1, "{body}");
    // REST, reconnect=false → 4500.
    let (st, body) = rest(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/d1/disconnect?reconnect=false",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["disconnectedConnections"], 2, "{body}");
    // Library.
    assert_eq!(h.disconnect_user("d2", true), 3);
    assert_eq!(h.disconnect_user("d3", false), 1);
    assert_eq!(h.disconnect_user("ghost", true), 0);

    let want: BTreeMap<&str, u16> = [("d0", 4000), ("d1", 4500), ("d2", 4000), ("d3", 4500)]
        .into_iter()
        .collect();
    let (gone, mut kept): (Vec<Client>, Vec<Client>) = clients
        .drain(..)
        .partition(|c| want.contains_key(c.user.as_str()));
    assert_eq!(gone.len(), 7);
    for mut c in gone {
        assert_eq!(
            close_code(&mut c.ws),
            want[c.user.as_str()],
            "close code of {} ({})",
            c.id,
            c.user
        );
    }
    for u in want.keys() {
        eventually(&format!("{u} no longer present"), || {
            !h.is_user_connected(u)
        });
        let (st, body) = rest(
            srv.addr,
            "GET",
            &format!("/v1/websocket/user/{u}/status"),
            Some(ADMIN_KEY),
            None,
        );
        assert_eq!(st, 200);
        assert_eq!(
            body,
            json!({"userId": u, "isConnected": false, "connectionCount": 0, "timestamp": body["timestamp"]})
        );
    }
    let (st, body) = rest(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/d0/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["error"], "User d0 has no active connections");

    // The others are untouched: still present, still served.
    eventually("connection count settles", || {
        h.stats().total_connections == 5
    });
    assert_eq!(h.connection_count("d4"), 2);
    assert_eq!(h.connection_count("d5"), 3);
    for c in kept.iter_mut() {
        echo_round_trip(&mut c.ws, &c.id);
    }
    let expected = json!({"type": "still-here", "payload": null});
    assert_eq!(h.send_to_user("d5", "still-here", Value::Null), 3);
    assert_only_targets(&h, &mut kept, &["d5"], &expected);
}

#[test]
fn stale_connection_ids_do_not_close_a_slot_reuser() {
    let srv = start(|cfg| cfg.shards = 1);
    let h = srv.handle();
    let (mut a, hello) = connect(srv.addr, &token("gen-a", 600));
    let a_id = hello["payload"]["connectionId"]
        .as_str()
        .expect("id")
        .to_string();
    close_from_client(&mut a);
    eventually("A is gone", || !h.is_user_connected("gen-a"));

    let (mut b, hello) = connect(srv.addr, &token("gen-b", 600));
    let b_id = hello["payload"]["connectionId"]
        .as_str()
        .expect("id")
        .to_string();
    let (a_slot, a_gen) = a_id.rsplit_once('-').expect("shard-slot-gen");
    let (b_slot, b_gen) = b_id.rsplit_once('-').expect("shard-slot-gen");
    assert_eq!(a_slot, b_slot, "B reuses A's slot ({a_id} / {b_id})");
    assert_ne!(a_gen, b_gen, "with another generation");

    // A stale id: refused, and B survives (the broadcast after it reaching
    // B proves nothing was closed).
    assert!(
        !h.disconnect_connection(&a_id, true),
        "a stale id names no open connection"
    );
    assert_eq!(h.broadcast("after-stale", json!({"x": 1}), None), 1);
    assert_eq!(
        next_api(&mut b),
        json!({"type": "after-stale", "payload": {"x": 1}})
    );
    echo_round_trip(&mut b, "b");
    assert!(h.is_user_connected("gen-b"));

    // Malformed ids are refused.
    assert!(!h.disconnect_connection("not-an-id", true));

    // B's own id closes B with 4000.
    assert!(h.disconnect_connection(&b_id, true));
    assert_eq!(close_code(&mut b), 4000);
    eventually("B is gone", || !h.is_user_connected("gen-b"));
}

#[test]
fn handle_api_agrees_with_rest_routes() {
    let srv = start(|cfg| cfg.shards = 4);
    let h = srv.handle();
    let users: Vec<(String, usize)> = (0..5).map(|i| (format!("p{i}"), 1 + i % 3)).collect();
    let mut clients = open_clients(&srv, &users);
    let total = clients.len();

    // Status / presence.
    for (user, n) in counts(&clients)
        .into_iter()
        .chain([("nobody".to_string(), 0)])
    {
        let (st, body) = rest(
            srv.addr,
            "GET",
            &format!("/v1/websocket/user/{user}/status"),
            Some(ADMIN_KEY),
            None,
        );
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["userId"], user.as_str());
        assert_eq!(body["connectionCount"], h.connection_count(&user));
        assert_eq!(body["isConnected"], h.is_user_connected(&user));
        assert_eq!(h.connection_count(&user), n);
        assert!(body["timestamp"].is_string(), "{body}");
    }

    // Stats (the stable fields; nothing is in flight).
    let hs = h.stats();
    let rs = stats_rest(&srv, "");
    let hv = serde_json::to_value(&hs).expect("stats serialize");
    for k in [
        "totalConnections",
        "totalUsers",
        "users",
        "usersTruncated",
        "shards",
        "messagesIn",
        "messagesOut",
    ] {
        assert_eq!(rs[k], hv[k], "stats field {k}");
    }
    assert!(rs["uptimeSeconds"].as_u64().expect("uptime") <= hs.uptime_seconds + 2);
    assert_eq!(hs.total_connections, total);
    let mut users = hs.users.clone();
    users.sort();
    assert_eq!(users, vec!["p0", "p1", "p2", "p3", "p4"]);
    // `users` has no order; an unchanged table lists the same page.
    let rs = stats_rest(&srv, "?limit=2");
    let hl = serde_json::to_value(h.stats_limited(2)).expect("serialize");
    assert_eq!(rs["users"], hl["users"]);
    let page: Vec<&str> = rs["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(page.len(), 2, "{rs}");
    assert!(page[0] != page[1] && page.iter().all(|u| users.contains(&u.to_string())));
    assert_eq!(rs["usersTruncated"], true);

    // Broadcast to all.
    let n = h.broadcast("lib-all", json!(1), None);
    assert_eq!(n, total);
    let everyone: Vec<String> = counts(&clients).into_keys().collect();
    let everyone: Vec<&str> = everyone.iter().map(String::as_str).collect();
    assert_only_targets(
        &h,
        &mut clients,
        &everyone,
        &json!({"type": "lib-all", "payload": 1}),
    );
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "rest-all", "payload": 2})),
    );
    assert_eq!(st, 200);
    assert_eq!(body["sentToConnections"], n, "{body}");
    assert_only_targets(
        &h,
        &mut clients,
        &everyone,
        &json!({"type": "rest-all", "payload": 2}),
    );

    // Broadcast to some users.
    let some = ["p1", "p2", "ghost"];
    let n = h.broadcast("lib-some", json!(3), Some(&some));
    assert_eq!(n, connections_of(&clients, &some));
    assert_only_targets(
        &h,
        &mut clients,
        &some,
        &json!({"type": "lib-some", "payload": 3}),
    );
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type": "rest-some", "payload": 4, "userIds": some})),
    );
    assert_eq!(st, 200);
    assert_eq!(body["sentToConnections"], n, "{body}");
    assert_only_targets(
        &h,
        &mut clients,
        &some,
        &json!({"type": "rest-some", "payload": 4}),
    );

    // Send to one user.
    let n = h.send_to_user("p2", "lib-one", json!(5));
    assert_eq!(n, 3);
    assert_only_targets(
        &h,
        &mut clients,
        &["p2"],
        &json!({"type": "lib-one", "payload": 5}),
    );
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/send/p2",
        Some(ADMIN_KEY),
        Some(&json!({"type": "rest-one", "payload": 6})),
    );
    assert_eq!(st, 200);
    assert_eq!(body["sentToConnections"], n, "{body}");
    assert_only_targets(
        &h,
        &mut clients,
        &["p2"],
        &json!({"type": "rest-one", "payload": 6}),
    );

    // Messages out grew by what was delivered, seen the same by both.
    let (hs, rs) = (h.stats(), stats_rest(&srv, ""));
    assert_eq!(rs["messagesOut"], hs.messages_out);
    assert!(hs.messages_out >= (total * 8) as u64, "{hs:?}");
}

#[test]
fn shutdown_sends_1001_to_every_client_and_returns() {
    let mut srv = start(|cfg| cfg.shards = 4);
    let addr = srv.addr;
    let users: Vec<(String, usize)> = (0..6).map(|i| (format!("s{i}"), 2)).collect();
    let mut clients = open_clients(&srv, &users);
    let server = srv.server.take().expect("running");
    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    for c in clients.iter_mut() {
        assert_eq!(
            close_code(&mut c.ws),
            1001,
            "connection {} of {}",
            c.id,
            c.user
        );
    }
    rx.recv_timeout(WAIT)
        .expect("shutdown returns once every client closed");
    stopper.join().expect("shutdown thread");
    // Nothing listens any more.
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

#[test]
fn shutdown_closes_clients_that_never_answer_within_the_drain_timeout() {
    let mut srv = start(|cfg| {
        cfg.shards = 2;
        cfg.drain_timeout_secs = 1;
    });
    // These clients never read: shutdown must still return.
    let mut silent = open_clients(&srv, &[("quiet".to_string(), 3)]);
    let server = srv.server.take().expect("running");
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT).expect("shutdown returns");
    assert!(started.elapsed() < WAIT);
    // The close frame was still sent to each of them.
    for c in silent.iter_mut() {
        match c.ws.read() {
            Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}
