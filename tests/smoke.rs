mod common;
use common::*;
use serde_json::json;

#[test]
fn connect_echo_broadcast() {
    let srv = start(|_| {});
    let (mut ws, hello) = connect(srv.addr, &token("alice", 60));
    assert_eq!(hello["payload"]["userId"], "alice");
    send_json(&mut ws, &json!({"type":"hi","payload":1}));
    let echo = next_json(&mut ws);
    assert_eq!(echo["type"], "echo");
    let (st, body) = rest(
        srv.addr,
        "POST",
        "/v1/websocket/broadcast",
        Some(ADMIN_KEY),
        Some(&json!({"type":"n","payload":{"a":1}})),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sentToConnections"], 1);
    let m = next_json(&mut ws);
    assert_eq!(
        m,
        json!({"type":"n","channel":"@all","offset":1,"payload":{"a":1}})
    );
}
