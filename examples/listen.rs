//! A command-line listener: connects with the Rust client, prints every
//! event (server messages and the client's own `connected`, `disconnected`,
//! `error`, `reconnecting`), reconnects with backoff, and sends each line
//! typed on stdin as `{"type":"message","payload":{"text":LINE}}`.
//!
//! ```sh
//! cargo run --example listen -- ws://127.0.0.1:3000/ws <user token>
//! WSEDGE_TOKEN=<jwt> cargo run --example listen                   # default URL
//! cargo run --example listen -- --token-file /run/secrets/jwt     # re-read on every reconnect
//! ```
//!
//! Ctrl-C closes the connection (code 1000) and exits. It exits with status
//! 1 when the client gives up (all reconnect attempts failed) or the server
//! closed with a 4500–4999 code (must not reconnect).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;
use wsedge::client::{Client, ClientConfig, State};

#[derive(Parser)]
#[command(about = "Print every message of a wsedge WebSocket, reconnecting as needed")]
struct Args {
    /// WebSocket URL.
    #[arg(env = "WSEDGE_URL", default_value = "ws://127.0.0.1:3000/ws")]
    url: String,
    /// User JWT (sent as ?token=).
    #[arg(env = "WSEDGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file before every (re)connect instead.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Reconnect attempts in a row before giving up.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();

    let mut config = ClientConfig::new(&args.url).max_attempts(args.max_attempts);
    config = match (args.token, args.token_file) {
        (Some(t), _) => config.token(t),
        (None, Some(path)) => config.token_provider(move || {
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("{}: {e}", path.display()))
        }),
        (None, None) => {
            eprintln!("listen: no token (give it as an argument, WSEDGE_TOKEN or --token-file)");
            std::process::exit(2);
        }
    };
    let client = Client::new(config).unwrap_or_else(|e| {
        eprintln!("listen: {e}");
        std::process::exit(2)
    });

    // Why main should stop: Ctrl-C (Ok) or the client giving up for good (Err).
    let (stop_tx, stop) = crossbeam_channel::bounded::<Result<(), String>>(4);
    let tx = stop_tx.clone();
    client
        .on("*", move |ev| {
            let tag = if ev.synthetic { "client" } else { "server" };
            println!("{} {tag} {:<14} {}", clock(), ev.kind, ev.payload);
            if ev.kind == "error" && ev.synthetic {
                let kind = ev.payload["kind"].as_str().unwrap_or_default();
                if kind == "gave_up" || kind == "terminal_close" {
                    let _ = tx.try_send(Err(ev.error_message().unwrap_or(kind).to_string()));
                }
            }
        })
        .detach();

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .expect("signal handlers");
    let tx = stop_tx;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.try_send(Ok(()));
        }
    });

    println!("{} connecting to {}", clock(), args.url);
    client.connect();

    // Lines typed on stdin go out as messages; the server's echo is printed
    // by the callback above. EOF (e.g. stdin not a terminal) just ends this
    // thread.
    let client = Arc::new(client);
    let sender = client.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = sender.send("message", json!({"text": line})) {
                eprintln!("{} not sent: {e}", clock());
            }
        }
    });

    let outcome = stop.recv().unwrap_or(Ok(()));
    // Close with 1000 and wait (bounded) until the client thread has done it.
    client.disconnect();
    client.wait_for(State::Disconnected, Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(why) => {
            eprintln!("listen: {why}");
            std::process::exit(1)
        }
    }
}

/// `HH:MM:SS.mmm` (UTC), for the log lines.
fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        now.subsec_millis()
    )
}
