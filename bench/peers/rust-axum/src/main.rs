//! rust-axum-peer: wsedge's API served the way a Rust team would usually
//! write it — axum (its `ws` feature, i.e. tokio-tungstenite) on the tokio
//! multi-threaded runtime, one task pair per WebSocket, and a registry of
//! per-connection unbounded mpsc senders behind a `RwLock`.
//!
//! It exists only as a yardstick for `scripts/compare`; it is not part of
//! wsedge and is not meant for production.
//!
//! Environment:
//!   JWT_SECRET   HS256 secret for user and admin tokens (required)
//!   PORT         listen port (default 3101)
//!   HOST         listen address, an IP (default 127.0.0.1)
//!   BACKLOG      listen backlog; unset: whatever `TcpListener::bind` does
//!   WS_READ_BUF  per-connection WebSocket read buffer in bytes; unset:
//!                tungstenite's default (128 KiB)

mod api;
mod hub;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::api::App;
use crate::hub::Hub;

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("rust-axum-peer: ignoring {name}={raw:?} (not a number)");
            None
        }
    }
}

#[tokio::main]
async fn main() {
    let Ok(secret) = std::env::var("JWT_SECRET") else {
        eprintln!("rust-axum-peer: JWT_SECRET is required");
        std::process::exit(2);
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = env_num("PORT").unwrap_or(3101);
    let backlog: Option<u32> = env_num("BACKLOG");
    let read_buf: Option<usize> = env_num("WS_READ_BUF");

    let ip: IpAddr = match host.parse() {
        Ok(ip) => ip,
        Err(_) => {
            eprintln!("rust-axum-peer: HOST must be an IP address, got {host:?}");
            std::process::exit(2);
        }
    };
    let addr = SocketAddr::new(ip, port);

    let app = Arc::new(App::new(secret.as_bytes(), Hub::new(), read_buf));
    let router = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/ws", get(api::upgrade))
        .route("/v1/websocket/broadcast", post(api::broadcast))
        .route("/v1/websocket/send/{user}", post(api::send_to_user))
        .route("/v1/websocket/stats", get(api::stats))
        .route("/v1/websocket/user/{user}/status", get(api::user_status))
        .route("/v1/websocket/user/{user}/disconnect", delete(api::disconnect_user))
        .with_state(app);

    let listener = match bind(addr, backlog).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rust-axum-peer: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "rust-axum-peer: listening on {addr} (backlog {}, ws read buffer {})",
        backlog.map_or("default".to_string(), |b| b.to_string()),
        read_buf.map_or("default".to_string(), |b| format!("{b} B")),
    );

    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Nothing to hand over: open sockets just close with the process.
        std::process::exit(0);
    });

    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("rust-axum-peer: server error: {e}");
        std::process::exit(1);
    }
}

/// The listening socket: tokio's plain `bind` out of the box, or a socket
/// set up by hand when an explicit backlog is asked for.
async fn bind(addr: SocketAddr, backlog: Option<u32>) -> std::io::Result<tokio::net::TcpListener> {
    let Some(backlog) = backlog else {
        return tokio::net::TcpListener::bind(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
