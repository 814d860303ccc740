//! Cluster mode (docs/PROTOCOL.md §9): three nodes on one machine, joined through a real
//! `redis-server`, behave as one service.
//!
//! Nodes are in-process servers unless a test must kill one without warning,
//! which takes a child process. Each test gets its own cluster name, so
//! tests share a Redis (`WSEDGE_TEST_REDIS_URL`, started by `scripts/test`)
//! without seeing each other; without that variable, and for the outage
//! test, a test starts a private `redis-server` on an ephemeral port.
//! Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tungstenite::Message;

/// A TCP proxy in front of Redis for one node. Once frozen it stops
/// forwarding what the node writes: it takes 256 KiB of it every 100 ms and
/// throws it away, like a Redis that stopped reading but whose socket still
/// drains a little (enough that the node's blocked write keeps making
/// progress and never hits its send timeout). What Redis sends to the node
/// still flows. `cut` (also on drop) closes every proxied connection and
/// stops accepting.
struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    paused: Arc<Gate>,
    cut: Arc<AtomicBool>,
    socks: Arc<Mutex<Vec<TcpStream>>>,
}

/// Holds the node → Redis pumps back while closed (`Proxy::pause`).
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = closed;
        self.opened.notify_all();
    }

    /// Waits while closed, at most `WAIT`.
    fn pass(&self) {
        let guard = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .opened
            .wait_timeout_while(guard, WAIT, |closed| *closed);
    }
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let p = Proxy {
            addr: listener.local_addr().expect("proxy addr"),
            frozen: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(Gate::default()),
            cut: Arc::new(AtomicBool::new(false)),
            socks: Arc::new(Mutex::new(Vec::new())),
        };
        let (frozen, paused) = (p.frozen.clone(), p.paused.clone());
        let (cut, socks) = (p.cut.clone(), p.socks.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for node in listener.incoming() {
                if cut.load(Ordering::Acquire) {
                    return; // woken by `cut`
                }
                let (Ok(node), Ok(redis)) = (node, TcpStream::connect(&upstream)) else {
                    continue;
                };
                let clones = [node.try_clone(), redis.try_clone()];
                let mut list = socks.lock().unwrap_or_else(|p| p.into_inner());
                list.extend(clones.into_iter().flatten());
                if let (Ok(mut from), Ok(mut to)) = (redis.try_clone(), node.try_clone()) {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                let (frozen, paused) = (frozen.clone(), paused.clone());
                std::thread::spawn(move || pump_to_redis(node, redis, &frozen, &paused));
            }
        });
        p
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Stops reading what the node writes (nothing is lost: it waits in the
    /// sockets) until `resume`, for at most `WAIT`.
    fn pause(&self) {
        self.paused.set(true);
    }

    fn resume(&self) {
        self.paused.set(false);
    }

    fn cut(&self) {
        if self.cut.swap(true, Ordering::AcqRel) {
            return;
        }
        self.resume();
        for s in self.socks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Node → Redis: forwarded, held back while paused, or once frozen,
/// drained slowly into nothing. Ends when either side closes.
fn pump_to_redis(mut node: TcpStream, mut redis: TcpStream, frozen: &AtomicBool, paused: &Gate) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        paused.pass();
        let n = match node.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::Acquire) {
            // The pace of a peer that barely reads, not a wait for anything.
            std::thread::sleep(Duration::from_millis(100));
        } else if redis.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = redis.shutdown(Shutdown::Both);
}

/// A cluster name no other test (or run) uses.
fn connection_count(addr: SocketAddr, user: &str) -> u64 {
    user_status(addr, user)["connectionCount"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn healthz(addr: SocketAddr) -> String {
    let (status, _, body) = http_raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn a_broadcast_on_a_reaches_every_node_exactly_once_and_in_order() {
    let t = three("order");
    let mut clients: Vec<Ws> = Vec::new();
    for (i, n) in [&t.a, &t.b, &t.c].iter().enumerate() {
        for j in 0..2 {
            clients.push(connect(n.addr, &token(&format!("u{i}{j}"), 600)).0);
        }
    }
    for n in [&t.a, &t.b, &t.c] {
        wait_cluster(n.addr, &["a", "b", "c"], 6);
    }
    const N: u64 = 100;
    for seq in 0..N {
        let r = broadcast(t.a.addr, json!({"type":"tick","payload":{"seq":seq}}));
        assert_eq!(r["sentToConnections"], 6, "{r}");
    }
    broadcast(t.a.addr, json!({"type":"end"}));
    for ws in &mut clients {
        for seq in 0..N {
            let m = next_json(ws);
            assert_eq!(m["type"], "tick", "{m}");
            assert_eq!(m["payload"]["seq"], seq, "out of order: {m}");
        }
        // Exactly once: the next message after the last tick is the end mark.
        assert_eq!(next_json(ws)["type"], "end");
    }
}

#[test]
fn all_users_except_some_right_after_connects_counts_and_reaches_exactly_the_others() {
    let t = three("except");
    // (node, user) per connection: kept users k*, excluded users x*, some
    // with two connections, on every node.
    let plan = [
        (&t.a, "k0"),
        (&t.a, "x0"),
        (&t.b, "k1"),
        (&t.b, "k1"),
        (&t.b, "x1"),
        (&t.c, "k2"),
        (&t.c, "x2"),
        (&t.c, "x2"),
    ];
    // `connect` returns once the client got its `connected` message.
    let mut clients: Vec<(&str, Ws)> = plan
        .iter()
        .map(|(n, u)| (*u, connect(n.addr, &token(u, 600)).0))
        .collect();
    // Only the presence propagation (~20–50 ms) is waited for, through the
    // per-user counts a sees; node totals are not waited for.
    for (user, n) in [("k1", 2), ("x1", 1), ("k2", 1), ("x2", 2)] {
        eventually(&format!("a counts {n} of {user}"), || {
            connection_count(t.a.addr, user) == n
        });
    }
    let r = broadcast(
        t.a.addr,
        json!({"type":"except","payload":1,"excludeUserIds":["x0","x1","x2"]}),
    );
    assert_eq!(r["sentToConnections"], 4, "{r}");
    assert_eq!(r["targetUsers"], "all");
    assert_eq!(stats(t.a.addr)["totalConnections"], 8);
    broadcast(t.a.addr, json!({"type":"end"}));
    for (user, ws) in &mut clients {
        let first = next_json(ws);
        if user.starts_with('k') {
            assert_eq!(first["type"], "except", "{user}: {first}");
            assert_eq!(next_json(ws)["type"], "end", "{user}");
        } else {
            assert_eq!(first["type"], "end", "{user} was excluded: {first}");
        }
    }
}

#[test]
fn user_targeting_send_and_status_work_across_nodes() {
    let t = three("targeting");
    let (mut on_a, _) = connect(t.a.addr, &token("ann", 600));
    let (mut on_b, _) = connect(t.b.addr, &token("bob", 600));
    let (mut on_c, _) = connect(t.c.addr, &token("cid", 600));
    eventually("a sees cid on c", || connection_count(t.a.addr, "cid") == 1);
    eventually("a sees bob on b", || connection_count(t.a.addr, "bob") == 1);

    // userIds across nodes, with an exclusion that wins.
    let r = broadcast(
        t.a.addr,
        json!({"type":"only","payload":1,"userIds":["bob","cid","ann"],"excludeUserIds":["ann"]}),
    );
    assert_eq!(r["sentToConnections"], 2, "{r}");
    assert_eq!(r["targetUsers"], 3);
    assert_eq!(next_json(&mut on_b)["type"], "only");
    assert_eq!(next_json(&mut on_c)["type"], "only");

    // send to a user connected only to c, called on a.
    let (status, body) = rest(
        t.a.addr,
        "POST",
        "/v1/websocket/send/cid",
        Some(ADMIN_KEY),
        Some(&json!({"type":"direct","payload":{"x":1}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sentToConnections"], 1);
    let m = next_json(&mut on_c);
    assert_eq!(
        (m["type"].as_str(), m["payload"]["x"].as_i64()),
        (Some("direct"), Some(1))
    );
    // A user connected nowhere is still a 404.
    let (status, _) = rest(
        t.a.addr,
        "POST",
        "/v1/websocket/send/nobody",
        Some(ADMIN_KEY),
        Some(&json!({"type":"direct"})),
    );
    assert_eq!(status, 404);

    // ann was excluded and got nothing else: her next message is this one.
    broadcast(t.b.addr, json!({"type":"everyone"}));
    assert_eq!(next_json(&mut on_a)["type"], "everyone");
    assert_eq!(next_json(&mut on_b)["type"], "everyone");
    assert_eq!(next_json(&mut on_c)["type"], "everyone");
}

#[test]
fn stats_on_b_count_the_connections_of_all_three() {
    let t = three("stats");
    let _c1 = connect(t.a.addr, &token("x", 600));
    let _c2 = connect(t.c.addr, &token("x", 600));
    let _c3 = connect(t.c.addr, &token("y", 600));
    wait_cluster(t.b.addr, &["a", "b", "c"], 3);
    let s = stats(t.b.addr);
    assert_eq!(
        s["nodes"],
        json!([{"id":"a","connections":1},{"id":"b","connections":0},{"id":"c","connections":2}])
    );
    let sorted_users = |s: &Value| {
        let mut u: Vec<String> = s["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        u.sort();
        u
    };
    eventually("b counts users x and y", || {
        let s = stats(t.b.addr);
        s["totalUsers"] == 2 && sorted_users(&s) == ["x", "y"]
    });
    // x is on a and c: a counts it once, beside its own.
    eventually("a counts users x and y", || {
        let s = stats(t.a.addr);
        s["totalUsers"] == 2 && sorted_users(&s) == ["x", "y"] && s["usersTruncated"] == false
    });
    // A page of the list, still with the exact total.
    for n in [&t.a, &t.b, &t.c] {
        let (status, s) = rest(
            n.addr,
            "GET",
            "/v1/websocket/stats?limit=1",
            Some(ADMIN_KEY),
            None,
        );
        assert_eq!(status, 200, "{s}");
        assert_eq!(
            (
                s["users"].as_array().map(Vec::len),
                &s["usersTruncated"],
                &s["totalUsers"]
            ),
            (Some(1), &json!(true), &json!(2)),
            "{s}"
        );
    }
    assert_eq!(connection_count(t.b.addr, "x"), 2);
    // The shard list stays this node's own.
    let shards: u64 = s["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["connections"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shards, 0);
    let metrics = http_raw(
        t.b.addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&metrics.2).into_owned();
    assert!(text.contains("wsedge_cluster_nodes 3"), "{text}");
    assert!(text.contains("wsedge_cluster_redis_up 1"), "{text}");
    assert_eq!(healthz(t.b.addr), "ok");
}

#[test]
fn disconnect_on_a_closes_the_users_connections_on_c() {
    let t = three("disconnect");
    let (mut on_c, _) = connect(t.c.addr, &token("dora", 600));
    let (mut on_c2, _) = connect(t.c.addr, &token("eve", 600));
    eventually("a sees dora", || connection_count(t.a.addr, "dora") == 1);
    eventually("a sees eve", || connection_count(t.a.addr, "eve") == 1);
    let (status, body) = rest(
        t.a.addr,
        "DELETE",
        "/v1/websocket/user/dora/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnectedConnections"], 1);
    assert_eq!(expect_close(&mut on_c), 4000);
    let (status, _) = rest(
        t.b.addr,
        "DELETE",
        "/v1/websocket/user/eve/disconnect?reconnect=false",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(expect_close(&mut on_c2), 4500);
    eventually("dora gone everywhere", || {
        connection_count(t.a.addr, "dora") == 0 && connection_count(t.b.addr, "dora") == 0
    });
}

#[test]
fn a_disconnect_stops_counting_at_once_here_and_promptly_on_the_other_nodes() {
    let t = three("honest-disconnect");
    // Neither client reads: b and c wait up to 3 s for their close replies
    // before they remove the connections.
    let (mut on_b, _) = connect(t.b.addr, &token("hana", 600));
    let (mut on_c, _) = connect(t.c.addr, &token("hana", 600));
    eventually("a sees both", || connection_count(t.a.addr, "hana") == 2);
    let asked = Instant::now();
    let (status, body) = rest(
        t.a.addr,
        "DELETE",
        "/v1/websocket/user/hana/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnectedConnections"], 2);
    // On the calling node: at once.
    assert_eq!(connection_count(t.a.addr, "hana"), 0);
    let s = stats(t.a.addr);
    assert_eq!((&s["totalUsers"], &s["users"]), (&json!(0), &json!([])));
    let (status, body) = rest(
        t.a.addr,
        "DELETE",
        "/v1/websocket/user/hana/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 404, "{body}");
    // On the others: as soon as the packet and their presence changes
    // travel, well before the close handshake's 3 s could remove them.
    eventually("b and c count hana nowhere", || {
        connection_count(t.b.addr, "hana") == 0 && connection_count(t.c.addr, "hana") == 0
    });
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(expect_close(&mut on_b), 4000);
    assert_eq!(expect_close(&mut on_c), 4000);
}

#[test]
fn the_per_user_limit_holds_across_nodes() {
    let (url, _redis) = shared_redis();
    let name = cluster_name("limit");
    let limited = |id: &str| {
        start(|c| {
            c.redis_url = Some(url.clone());
            c.cluster_name = name.clone();
            c.node_id = Some(id.to_string());
            c.max_connections_per_user = 2;
        })
    };
    let a = limited("a");
    let b = limited("b");
    let _one = connect(a.addr, &token("lim", 600));
    let _two = connect(a.addr, &token("lim", 600));
    eventually("b sees both", || connection_count(b.addr, "lim") == 2);
    let refused = try_connect(b.addr, &format!("/ws?token={}", token("lim", 600)), &[]);
    assert_eq!(refused.err(), Some(429));
}

#[test]
fn a_killed_node_leaves_presence_within_5_s_while_the_others_deliver() {
    let (url, _redis) = shared_redis();
    let name = cluster_name("kill");
    let a = node(&url, &name, "a");
    let b = node(&url, &name, "b");
    let mut c = spawn_node(&url, &name, "c");
    let (mut on_a, _) = connect(a.addr, &token("ua", 600));
    let (mut on_b, _) = connect(b.addr, &token("ub", 600));
    let _on_c = connect(c.addr, &token("uc", 600));
    wait_cluster(a.addr, &["a", "b", "c"], 3);
    eventually("a sees uc", || connection_count(a.addr, "uc") == 1);

    c.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = c.child.wait();
    // Each survivor times c out on its own clock (its last packet from c).
    eventually("c drops out of a's and b's presence and stats", || {
        node_ids(&stats(a.addr)) == ["a", "b"]
            && connection_count(a.addr, "uc") == 0
            && connection_count(b.addr, "uc") == 0
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The survivors never stopped delivering to each other.
    let r = broadcast(a.addr, json!({"type":"still-here"}));
    assert_eq!(r["sentToConnections"], 2, "{r}");
    assert_eq!(next_json(&mut on_a)["type"], "still-here");
    assert_eq!(next_json(&mut on_b)["type"], "still-here");
    let (status, _) = rest(
        b.addr,
        "POST",
        "/v1/websocket/send/uc",
        Some(ADMIN_KEY),
        Some(&json!({"type":"x"})),
    );
    assert_eq!(status, 404);
}

/// `host:port` of the Redis behind `url`.
fn redis_addr(url: &str) -> String {
    redis::Client::open(url)
        .expect("redis url")
        .get_connection_info()
        .addr()
        .to_string()
}

#[test]
fn a_redis_that_stops_reading_holds_at_most_64_mib_then_publishes_drop_uncounted() {
    let (url, _redis) = shared_redis();
    let upstream = redis_addr(&url);
    let name = cluster_name("outbox");
    // Declared first so that it is dropped last, after the proxy is cut.
    let a: TestServer;
    let proxy = Proxy::start(&upstream);
    a = start(|c| {
        c.redis_url = Some(format!("redis://{}", proxy.addr));
        c.cluster_name = name.clone();
        c.node_id = Some("a".into());
        // a's client reads nothing either: its queue holds every broadcast.
        c.outbound_buffer_bytes = 1 << 30;
        c.max_body_bytes = 4 << 20;
    });
    let b = node(&url, &name, "b");
    let _on_a = connect(a.addr, &token("here", 600));
    let _on_b = connect(b.addr, &token("there", 600));
    eventually("a counts the client on b", || {
        connection_count(a.addr, "there") == 1
    });

    proxy.freeze();
    let h = a.handle();
    let string = |len: usize| {
        RawValue::from_string(format!("\"{}\"", "x".repeat(len))).expect("a JSON string")
    };
    // More than the sockets between a and Redis hold: the publisher stays
    // in the middle of writing it for the rest of the test.
    let big = string(32 << 20);
    assert_eq!(h.broadcast_raw("big", Some(&big), None, &[]), 2);
    let mib = string(1 << 20);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..64 {
        match h.broadcast_raw("mib", Some(&mib), None, &[]) {
            2 => accepted += 1,
            1 => refused += 1,
            n => panic!("sentToConnections {n}"),
        }
        if refused == 3 {
            break;
        }
    }
    // 32 MiB and 31 packets of 1 MiB (each with ~100 bytes of envelope)
    // stay under 64 MiB; a 32nd would pass it. Once full, only a's own
    // connection is counted.
    assert_eq!((accepted, refused), (31, 3));
    let r = broadcast(a.addr, json!({"type":"rest","payload":"y".repeat(2 << 20)}));
    assert_eq!(r["sentToConnections"], 1, "{r}");
    assert_eq!(metric_value(a.addr, "wsedge_cluster_dropped_total"), 4);
    proxy.cut();
}

#[test]
fn a_node_stopped_right_after_publishing_still_delivers_everything_it_queued() {
    let (url, _redis) = shared_redis();
    let upstream = redis_addr(&url);
    let name = cluster_name("flush");
    let mut a: TestServer;
    let proxy = Proxy::start(&upstream);
    a = start(|c| {
        c.redis_url = Some(format!("redis://{}", proxy.addr));
        c.cluster_name = name.clone();
        c.node_id = Some("a".into());
    });
    let b = node(&url, &name, "b");
    let (mut on_b, _) = connect(b.addr, &token("reader", 600));
    eventually("a counts b's client", || {
        connection_count(a.addr, "reader") == 1
    });
    // Redis does not get a's packets for now: they pile up in a's queue
    // (its publisher waits for the answer to what it last wrote).
    proxy.pause();
    let h = a.handle();
    const N: u64 = 1500; // about three batches
    for seq in 0..N {
        assert_eq!(h.broadcast("tick", json!({"seq": seq}), None), 1);
    }
    let server = a.server.take().expect("running");
    let stopper = std::thread::spawn(move || server.shutdown());
    // The shards stop (their listeners close) before the publisher is told.
    eventually("a stops accepting", || TcpStream::connect(a.addr).is_err());
    proxy.resume();
    for seq in 0..N {
        let m = next_json(&mut on_b);
        assert_eq!(
            (&m["type"], &m["payload"]["seq"]),
            (&json!("tick"), &json!(seq))
        );
    }
    stopper.join().expect("shutdown");
    // The goodbye came after them: b forgets a at once.
    eventually("b forgets a", || node_ids(&stats(b.addr)) == ["b"]);
}

/// Reads the next text message, or `None` when none comes within `within`.
fn next_text_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    let stream: &TcpStream = ws.get_ref();
    stream.set_read_timeout(Some(within)).expect("timeout");
    let r = loop {
        match ws.read() {
            Ok(Message::Text(t)) => break serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(c)) => panic!("closed: {c:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    ws.get_ref().set_read_timeout(Some(WAIT)).expect("timeout");
    r
}

#[test]
fn a_redis_outage_keeps_local_delivery_and_the_cluster_heals() {
    let mut redis = Redis::start();
    let url = redis.url();
    let name = cluster_name("outage");
    let a = node(&url, &name, "a");
    let b = node(&url, &name, "b");
    let (mut on_a, _) = connect(a.addr, &token("ua", 600));
    let (mut on_b, _) = connect(b.addr, &token("ub", 600));
    wait_cluster(a.addr, &["a", "b"], 2);
    wait_cluster(b.addr, &["a", "b"], 2);

    redis.stop();
    eventually("a reports degraded", || {
        healthz(a.addr).starts_with("degraded: ")
    });
    // Local delivery never stops: every broadcast during the outage reaches
    // a's own client, in order.
    for seq in 0..20 {
        broadcast(a.addr, json!({"type":"during","payload":seq}));
    }
    for seq in 0..20 {
        let m = next_json(&mut on_a);
        assert_eq!(
            (m["type"].as_str(), m["payload"].as_i64()),
            (Some("during"), Some(seq))
        );
    }
    // b is out of a's presence once its heartbeats stop.
    eventually("b leaves a's view", || node_ids(&stats(a.addr)) == ["a"]);

    redis.restart();
    for n in [&a, &b] {
        eventually("healthz ok again", || healthz(n.addr) == "ok");
    }
    wait_cluster(a.addr, &["a", "b"], 2);
    wait_cluster(b.addr, &["a", "b"], 2);
    eventually("b sees ua again", || connection_count(b.addr, "ua") == 1);
    let r = broadcast(a.addr, json!({"type":"after"}));
    assert_eq!(r["sentToConnections"], 2, "{r}");
    assert_eq!(next_json(&mut on_a)["type"], "after");
    // b's client got nothing sent during the outage (those were local to a),
    // and gets the first broadcast after it.
    let m = next_text_within(&mut on_b, WAIT).expect("cluster delivery resumed");
    assert_eq!(m["type"], "after", "{m}");
}

#[test]
fn garbage_on_the_cluster_channel_is_counted_and_skipped() {
    let t = three("garbage");
    let (mut ws, _) = connect(t.b.addr, &token("g", 600));
    wait_cluster(t.a.addr, &["a", "b", "c"], 1);
    let mut con = redis::Client::open(t.url.as_str())
        .and_then(|c| c.get_connection())
        .expect("redis");
    let channel = format!("{}:bus", t.name);
    for junk in [
        &b"not json"[..],
        b"{\"node\":1}",
        b"\xff",
        b"{\"node\":\"x\",\"inc\":1,\"body\":{\"disconnect\":{\"user\":\"g\",\"code\":\"no\"}}}",
    ] {
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(junk)
            .query::<i64>(&mut con)
            .expect("publish");
    }
    broadcast(t.a.addr, json!({"type":"fine"}));
    assert_eq!(next_json(&mut ws)["type"], "fine");
    let text = String::from_utf8_lossy(
        &http_raw(
            t.b.addr,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .2,
    )
    .into_owned();
    assert!(text.contains("wsedge_cluster_malformed_total 4"), "{text}");
}

#[test]
fn a_node_starts_and_serves_locally_while_redis_is_not_there_yet() {
    // A port nobody listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut redis = Redis { child: None, port };
    let a = node(&redis.url(), &cluster_name("late"), "a");
    assert!(healthz(a.addr).starts_with("degraded: redis at 127.0.0.1:"));
    let (mut ws, _) = connect(a.addr, &token("early", 600));
    let r = broadcast(a.addr, json!({"type":"local"}));
    assert_eq!(r["sentToConnections"], 1);
    assert_eq!(next_json(&mut ws)["type"], "local");
    redis.restart();
    eventually("joined once redis is up", || healthz(a.addr) == "ok");
}
