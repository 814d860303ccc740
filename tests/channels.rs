//! Channels (docs/PROTOCOL.md §10) on one node, through real clients:
//! permission from the `channels` claim, subscribe/unsubscribe, channel
//! messages, presence events, the per-connection limit and the REST routes.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn a_subscriber_gets_channel_messages_with_their_channel() {
    let srv = start(|_| {});
    let (mut a, _) = connect(srv.addr, &token_with("alice", &["news", "room:*"]));
    let (mut b, _) = connect(srv.addr, &token_with("bob", &["news"]));
    for (who, ch) in [(0, "news"), (0, "room:7"), (1, "news")] {
        let ws = if who == 0 { &mut a } else { &mut b };
        let ack = subscribe(ws, ch, false);
        assert_eq!(ack["type"], "subscribed", "{ack}");
        assert_eq!(ack["payload"]["channel"], ch);
        assert!(ack["payload"]["timestamp"].is_string());
    }
    let (status, body) = publish(srv.addr, "news", "headline", json!({"n": 1}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sentToConnections"], 2);
    assert_eq!(body["channel"], "news");
    assert_eq!(body["message"], "Message published to channel news");
    for ws in [&mut a, &mut b] {
        let m = next_json(ws);
        assert_eq!(
            m,
            json!({"type": "headline", "channel": "news", "offset": 1, "payload": {"n": 1}})
        );
    }
    let (_, body) = publish(srv.addr, "room:7", "t", json!(null));
    assert_eq!(body["sentToConnections"], 1);
    assert_eq!(next_json(&mut a)["channel"], "room:7");
    // Bob got nothing from room:7: the next thing he sees is his echo.
    send_json(&mut b, &json!({"type": "probe"}));
    assert_eq!(next_json(&mut b)["type"], "echo");

    // Subscribing twice is not an error, and counts once.
    assert_eq!(subscribe(&mut b, "news", false)["type"], "subscribed");
    let (_, body) = publish(srv.addr, "news", "t", json!(2));
    assert_eq!(body["sentToConnections"], 2);
    for ws in [&mut a, &mut b] {
        assert_eq!(next_json(ws)["payload"], 2, "once each");
    }

    // Unsubscribed: no more messages.
    send_json(
        &mut b,
        &json!({"type": "unsubscribe", "payload": {"channel": "news"}}),
    );
    let ack = next_json(&mut b);
    assert_eq!(
        (ack["type"].as_str(), ack["payload"]["channel"].as_str()),
        (Some("unsubscribed"), Some("news"))
    );
    let (_, body) = publish(srv.addr, "news", "t", json!(3));
    assert_eq!(body["sentToConnections"], 1);
}

#[test]
fn what_the_claim_does_not_allow_or_the_name_rules_refuse_is_an_error_naming_the_channel() {
    let srv = start(|c| c.max_channels_per_connection = 2);
    let (mut ws, _) = connect(srv.addr, &token_with("carol", &["a", "b", "c", "p:*"]));
    let err = subscribe(&mut ws, "secret", false);
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(
        err["payload"]["message"],
        "not allowed to subscribe to secret"
    );
    assert_eq!(err["payload"]["channel"], "secret");
    for bad in ["@all", "sp ace", ""] {
        let err = subscribe(&mut ws, bad, false);
        assert_eq!(err["type"], "error", "{bad:?}: {err}");
        assert_eq!(err["payload"]["channel"], bad);
    }
    assert_eq!(
        subscribe(&mut ws, "p", false)["type"],
        "error",
        "p:* is not p"
    );
    // The per-connection limit.
    assert_eq!(subscribe(&mut ws, "a", false)["type"], "subscribed");
    assert_eq!(subscribe(&mut ws, "p:1", false)["type"], "subscribed");
    let err = subscribe(&mut ws, "b", false);
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["payload"]["channel"], "b");
    // The connection stays open and usable.
    send_json(&mut ws, &json!({"type": "still"}));
    assert_eq!(next_json(&mut ws)["type"], "echo");
    // A token without the claim may subscribe to nothing.
    let (mut plain, _) = connect(srv.addr, &token("dave", 60));
    assert_eq!(subscribe(&mut plain, "a", false)["type"], "error");
}

#[test]
fn presence_subscribers_see_users_join_and_leave() {
    let srv = start(|_| {});
    let (mut watcher, _) = connect(srv.addr, &token_with("watcher", &["room"]));
    assert_eq!(subscribe(&mut watcher, "room", true)["type"], "subscribed");
    let join = next_json(&mut watcher);
    assert_eq!(
        join,
        json!({"type": "join", "channel": "room", "payload": {"userId": "watcher"}})
    );

    let (mut e1, _) = connect(srv.addr, &token_with("erin", &["room"]));
    let (mut e2, _) = connect(srv.addr, &token_with("erin", &["room"]));
    assert_eq!(subscribe(&mut e1, "room", false)["type"], "subscribed");
    assert_eq!(
        next_json(&mut watcher),
        json!({"type": "join", "channel": "room", "payload": {"userId": "erin"}})
    );
    // Erin's second connection: no second join.
    assert_eq!(subscribe(&mut e2, "room", false)["type"], "subscribed");
    // Her first leaves by unsubscribing, her last by closing: one leave.
    send_json(
        &mut e1,
        &json!({"type": "unsubscribe", "payload": {"channel": "room"}}),
    );
    assert_eq!(next_json(&mut e1)["type"], "unsubscribed");
    e2.close(None).expect("close");
    let _ = expect_close(&mut e2);
    assert_eq!(
        next_json(&mut watcher),
        json!({"type": "leave", "channel": "room", "payload": {"userId": "erin"}})
    );
    // Non-presence subscribers get no events: erin's e1 sees only its echo.
    send_json(&mut e1, &json!({"type": "probe"}));
    assert_eq!(next_json(&mut e1)["type"], "echo");
}

#[test]
fn the_management_api_lists_subscribes_and_unsubscribes() {
    let srv = start(|_| {});
    let (mut f1, _) = connect(srv.addr, &token("frank", 60));
    let (mut f2, _) = connect(srv.addr, &token("frank", 60));
    let (mut g, _) = connect(srv.addr, &token_with("gina", &["ops/*"]));
    assert_eq!(subscribe(&mut g, "ops/alerts", false)["type"], "subscribed");

    // The API subscribes whatever the token allows.
    let (status, body) = admin(
        srv.addr,
        "POST",
        "/v1/websocket/channels/ops%2Falerts/subscribe",
        Some(&json!({"userIds": ["frank", "nobody"]})),
    );
    assert_eq!(
        (status, &body["subscribedConnections"]),
        (200, &json!(2)),
        "{body}"
    );
    for ws in [&mut f1, &mut f2] {
        let ack = next_json(ws);
        assert_eq!(
            (ack["type"].as_str(), ack["payload"]["channel"].as_str()),
            (Some("subscribed"), Some("ops/alerts"))
        );
    }
    let (status, info) = admin(srv.addr, "GET", "/v1/websocket/channels/ops%2Falerts", None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["channel"], "ops/alerts");
    assert_eq!(info["connections"], 3);
    let mut users: Vec<&str> = info["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["frank", "gina"]);
    assert_eq!(info["usersTruncated"], false);
    let (_, info) = admin(
        srv.addr,
        "GET",
        "/v1/websocket/channels/ops%2Falerts?limit=1",
        None,
    );
    assert_eq!(
        (
            info["users"].as_array().map(Vec::len),
            &info["usersTruncated"]
        ),
        (Some(1), &json!(true))
    );

    let (_, list) = admin(srv.addr, "GET", "/v1/websocket/channels", None);
    assert_eq!(
        list,
        json!({"channels": [{"channel": "ops/alerts", "connections": 3}], "totalChannels": 1, "timestamp": list["timestamp"]})
    );
    let (_, stats) = admin(srv.addr, "GET", "/v1/websocket/stats", None);
    assert_eq!(stats["totalChannels"], 1);
    let metrics = srv.handle().metrics_text();
    assert!(metrics.contains("wsedge_channels 1\n"), "{metrics}");
    assert!(
        metrics.contains("wsedge_channel_subscriptions 3\n"),
        "{metrics}"
    );

    let (status, body) = admin(
        srv.addr,
        "POST",
        "/v1/websocket/channels/ops%2Falerts/unsubscribe",
        Some(&json!({"userIds": ["frank"]})),
    );
    assert_eq!(
        (status, &body["unsubscribedConnections"]),
        (200, &json!(2)),
        "{body}"
    );
    for ws in [&mut f1, &mut f2] {
        assert_eq!(next_json(ws)["type"], "unsubscribed");
    }
    let (_, body) = publish(srv.addr, "ops/alerts", "t", json!(1));
    assert_eq!(body["sentToConnections"], 1);

    // An empty channel publishes to nobody; a bad name is a 400.
    let (status, body) = publish(srv.addr, "empty", "t", json!(1));
    assert_eq!((status, &body["sentToConnections"]), (200, &json!(0)));
    let (status, body) = publish(srv.addr, "%40all", "t", json!(1));
    assert_eq!(status, 400, "{body}");
    let (status, _) = admin(srv.addr, "GET", "/v1/websocket/channels/nobody-here", None);
    assert_eq!(status, 200);
}
