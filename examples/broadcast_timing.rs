//! Times one broadcast to N connections of an in-process server, end to end:
//! from the library call until every client has read the message.
//!
//! `cargo run --release --example broadcast_timing -- 1000`
//!
//! A rough first figure; the load-test tool (`loadtest/`) is the real
//! measurement. Loopback only; bounded by N and a 10 s read timeout.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;
use wsedge::{mint_hs256, now_secs};
use wsedge::{Config, Server};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let cfg = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        shards: 2,
        jwt_secret: Some("timing".into()),
        ..Config::default()
    };
    let server = Server::start(cfg).expect("start");
    let addr = server.local_addr();
    let handle = server.handle();

    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let token = mint_hs256(
            "timing",
            &json!({"sub": format!("u{}", i % (n / 10).max(1)), "exp": now_secs() + 600}),
        );
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}/ws?token={token}"), stream).expect("upgrade");
        let _connected = ws.read().expect("connected message");
        clients.push(ws);
    }
    let connect_time = t0.elapsed();
    println!(
        "connected {n} clients in {:.1} ms ({:.0}/s)",
        connect_time.as_secs_f64() * 1e3,
        n as f64 / connect_time.as_secs_f64()
    );

    for round in 0..rounds {
        let start = Instant::now();
        let sent = handle.broadcast("timing", json!({"round": round}), None);
        let queued = start.elapsed();
        for ws in clients.iter_mut() {
            match ws.read().expect("broadcast arrives") {
                Message::Text(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let all = start.elapsed();
        println!(
            "round {round}: broadcast to {sent} connections: call returned in {:.1} µs, all {n} clients had it after {:.2} ms ({:.0} deliveries/s)",
            queued.as_secs_f64() * 1e6,
            all.as_secs_f64() * 1e3,
            n as f64 / all.as_secs_f64()
        );
    }
    server.shutdown();
}
