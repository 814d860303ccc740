//! A wsedge server whose WebSocket handler echoes every message unchanged:
//! the same shards, connection state machine and tungstenite settings as the
//! real server, with the JSON layer replaced by a raw echo. Used to run the
//! Autobahn conformance cases (`scripts/autobahn`).
//!
//! `cargo run --release --example echo_server -- 127.0.0.1:9001`
//! prints `ws://ADDR/ws?token=…` on stdout once it listens.

use serde_json::json;
use wsedge::{mint_hs256, now_secs};
use wsedge::{Config, RawEchoHandler, Server};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let secret = "autobahn-echo";
    let server = Server::builder()
        .bind(&bind)
        .jwt_secret(secret)
        .handler(RawEchoHandler)
        .with(|c: &mut Config| {
            // Autobahn's case 9 sends messages of up to 16 MiB.
            c.max_message_bytes = 64 << 20;
            c.outbound_buffer_bytes = 256 << 20;
            c.max_connections_per_user = 100_000;
            // Every echo compressed on a connection that negotiated
            // permessage-deflate, even small or incompressible ones, so
            // that Autobahn's cases 12 and 13 check every message through
            // both directions of the extension (and kosoku, their runner,
            // fails on an uncompressed message there).
            c.compression_min_bytes = 0;
        })
        .start()
        .unwrap_or_else(|e| {
            eprintln!("echo_server: {e}");
            std::process::exit(1)
        });
    let token = mint_hs256(
        secret,
        &json!({"sub": "autobahn", "exp": now_secs() + 24 * 3600}),
    );
    println!("ws://{}/ws?token={token}", server.local_addr());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .unwrap_or_else(|e| {
        eprintln!("echo_server: {e}");
        std::process::exit(1)
    });
    signals.forever().next();
    server.shutdown();
}
