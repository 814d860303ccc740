//! The library side of wsedge, as a backend uses it: start a server, then
//! push to everyone, to some users, to one user, and read the counts — the
//! Rust version of the original service's usage section.
//!
//! ```sh
//! cargo run --example backend                                  # demo, then exit
//! cargo run --example backend -- --serve --bind 127.0.0.1:3000 # and keep running
//! ```
//!
//! It runs standalone: with no key it starts in dev mode (random secret) and
//! prints a user and an admin token. Three in-process [`wsedge::client`]
//! clients (alice, bob, carol) connect so that the pushes have somewhere to
//! go. With `--serve` it then stays up, broadcasting a `tick` every 5 s, for
//! `cargo run --example listen -- ws://ADDR/ws <user token>` or the test
//! page; Ctrl-C stops it gracefully (close `1001` to every client).

use std::time::Duration;

use clap::Parser;
use crossbeam_channel::Receiver;
use serde_json::json;
use wsedge::client::{Client, ClientConfig, Event, State};
use wsedge::Server;
use wsedge::{mint_hs256, now_secs};

#[derive(Parser)]
#[command(about = "wsedge library demo: broadcast, targeted broadcast, send to a user")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
    /// Keep running after the demo (tick broadcast every 5 s) until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

const WAIT: Duration = Duration::from_secs(5);

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();

    // --- the server: as in the original usage section
    let server = Server::builder()
        .bind(&args.bind)
        .shards(2)
        .start()
        .unwrap_or_else(|e| {
            eprintln!("backend: {e}");
            std::process::exit(1)
        });
    let addr = server.local_addr();
    let dev = server.dev_mode().expect("no key configured: dev mode");
    println!("wsedge listening on {addr} (dev mode, random secret)");
    println!("  test page:   http://{addr}/");
    println!("  user token:  {}", dev.user_token);
    println!("  admin token: {}", dev.admin_token);

    // --- three users connected through the Rust client
    let secret = dev.secret.clone();
    let (tx, inbox) = crossbeam_channel::unbounded::<(String, Event)>();
    let clients: Vec<Client> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|user| {
            let token = mint_hs256(&secret, &json!({"sub": user, "exp": now_secs() + 3600}));
            let client = Client::new(ClientConfig::new(format!("ws://{addr}/ws")).token(token))
                .expect("client");
            let tx = tx.clone();
            client
                .on("*", move |ev| {
                    if !ev.synthetic && ev.kind != "connected" {
                        let _ = tx.send((user.to_string(), ev.clone()));
                    }
                })
                .detach();
            client.connect();
            client
        })
        .collect();
    for c in &clients {
        if !c.wait_for(State::Connected, WAIT) {
            eprintln!("backend: a client did not connect: {:?}", c.last_error());
            std::process::exit(1);
        }
    }

    let rt = server.handle(); // Clone + Send + Sync
    for user in ["alice", "bob", "carol"] {
        // The connection is registered before its hello is sent; wait for it
        // anyway, so the counts below are exact.
        while !rt.is_user_connected(user) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // --- everyone
    let n = rt.broadcast(
        "notification",
        json!({"title": "Deploy at 5pm", "level": "info"}),
        None,
    );
    println!("\nbroadcast to all            -> sentToConnections {n}");
    show(&inbox, n);

    // --- some users
    let n = rt.broadcast(
        "direct_message",
        json!({"from": "support", "text": "Your ticket was answered"}),
        Some(&["alice", "bob"]),
    );
    println!("broadcast to alice, bob     -> sentToConnections {n}");
    show(&inbox, n);

    // --- one user
    let n = rt.send_to_user("carol", "personal_update", json!({"balance": 42}));
    println!("send to carol               -> sentToConnections {n}");
    show(&inbox, n);
    let n = rt.send_to_user("mallory", "personal_update", json!({}));
    println!("send to mallory (offline)   -> sentToConnections {n}");

    // --- queries
    println!(
        "\nis_user_connected(alice) = {}, connection_count(alice) = {}",
        rt.is_user_connected("alice"),
        rt.connection_count("alice")
    );
    let stats = rt.stats();
    println!(
        "stats: {}",
        serde_json::to_string(&stats).unwrap_or_else(|e| e.to_string())
    );

    // --- disconnect one user (4000: the client comes back on its own)
    let n = rt.disconnect_user("bob", true);
    println!("\ndisconnect_user(bob, reconnect=true) -> {n} connection(s)");
    if clients[1].wait_for_connects(2, WAIT) {
        println!("bob reconnected (connects: {})", clients[1].connect_count());
    }

    if args.serve {
        println!(
            "\nserving; try: cargo run --example listen -- ws://{addr}/ws {}",
            dev.user_token
        );
        let stop = ctrl_c();
        let mut tick = 0u64;
        while stop.recv_timeout(Duration::from_secs(5)).is_err() {
            tick += 1;
            let n = rt.broadcast("tick", json!({"n": tick}), None);
            println!("tick {tick} -> {n} connection(s)");
            while let Ok((user, ev)) = inbox.try_recv() {
                println!("  {user:<6} got {} {}", ev.kind, ev.payload);
            }
        }
    }

    drop(clients);
    server.shutdown();
}

/// Prints the `n` deliveries of the last push as the clients saw them.
fn show(inbox: &Receiver<(String, Event)>, n: usize) {
    for _ in 0..n {
        match inbox.recv_timeout(WAIT) {
            Ok((user, ev)) => println!("  {user:<6} got {:<16} {}", ev.kind, ev.payload),
            Err(_) => {
                println!("  (a delivery did not arrive within {WAIT:?})");
                return;
            }
        }
    }
}

/// A channel that receives once on SIGINT or SIGTERM.
fn ctrl_c() -> Receiver<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .expect("signal handlers");
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    rx
}
