//! The Rust client (`wsedge::client`) against a real wsedge server over
//! loopback sockets: events, subscriptions, send, token provider, backoff,
//! reconnect rules, server restart, panicking callbacks.
//!
//! Every wait is bounded (`recv_timeout` on channels fed by callbacks, or
//! `common::eventually`); the few negative checks ("no reconnect") watch for
//! one bounded second with a reconnect delay of 50–100 ms, so a reconnect
//! would have shown up many times over.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::json;
use wsedge::client::{Client, ClientConfig, ClientError, Event, State, Subscription};

use common::{admin_token, eventually, rest, start, token, user_status, ADMIN_KEY, WAIT};

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// Small reconnect delays (50–100 ms first, capped at 500 ms) so that the
/// real backoff code runs in test time.
fn fast(addr: SocketAddr) -> ClientConfig {
    ClientConfig::new(url(addr))
        .base_delay(Duration::from_millis(50))
        .jitter(Duration::from_millis(50))
        .max_delay(Duration::from_millis(500))
        .max_attempts(50)
}

/// The events of type `kind`, as a channel.
fn events(client: &Client, kind: &str) -> (Subscription, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sub = client.on(kind, move |ev| {
        let _ = tx.send(ev.clone());
    });
    (sub, rx)
}

/// The events of type `kind` with the instant they were dispatched.
fn timed_events(client: &Client, kind: &str) -> (Subscription, Receiver<(Instant, Event)>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sub = client.on(kind, move |ev| {
        let _ = tx.send((Instant::now(), ev.clone()));
    });
    (sub, rx)
}

fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(WAIT) {
        Ok(v) => v,
        Err(e) => panic!("no {what} within {WAIT:?}: {e}"),
    }
}

/// Asserts that nothing arrives on `rx` for `d` (a bounded negative check).
fn quiet_for<T: std::fmt::Debug>(rx: &Receiver<T>, d: Duration, what: &str) {
    match rx.recv_timeout(d) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(v) => panic!("unexpected {what}: {v:?}"),
        Err(e) => panic!("channel closed: {e}"),
    }
}

/// A token provider for `user` handing out tokens valid `secs` seconds,
/// counting its calls.
fn counting_provider(
    user: &'static str,
    secs: i64,
) -> (
    Arc<AtomicUsize>,
    impl Fn() -> Result<String, String> + Send + Sync + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    (calls, move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(token(user, secs))
    })
}

#[test]
fn connected_event_is_the_server_hello_and_send_is_echoed() {
    let srv = start(|_| {});
    let client = Client::new(fast(srv.addr).token(token("alice", 600))).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_e, echoes) = events(&client, "echo");
    assert_eq!(client.state(), State::Disconnected);
    client.connect();

    let hello = recv(&connected, "connected event");
    assert!(
        !hello.synthetic,
        "the server's hello is the event: {hello:?}"
    );
    assert_eq!(hello.payload["userId"], "alice");
    assert!(hello.payload["connectionId"].is_string(), "{hello:?}");
    assert_eq!(client.state(), State::Connected);
    assert_eq!(client.connect_count(), 1);
    assert!(client.last_error().is_none());

    client.send("test", json!({"n": 1})).expect("send");
    let echo = recv(&echoes, "echo");
    assert_eq!(echo.payload["originalMessage"]["type"], "test");
    assert_eq!(echo.payload["originalMessage"]["payload"]["n"], 1);
    // Exactly one connected event for this connection.
    assert!(connected.try_recv().is_err());
}

#[test]
fn subscriptions_end_when_dropped_or_unsubscribed_and_off_removes_a_type() {
    let srv = start(|_| {});
    let client = Client::new(fast(srv.addr).token(token("bob", 600))).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (first, rx1) = events(&client, "echo");
    let (kept, rx2) = events(&client, "echo");
    kept.detach();
    let (third, rx3) = events(&client, "echo");
    let (_all, every) = events(&client, "*");
    client.connect();
    recv(&connected, "connected event");

    client.send("m", 1).expect("send 1");
    assert_eq!(
        recv(&rx1, "echo on 1").payload["originalMessage"]["payload"],
        1
    );
    assert_eq!(
        recv(&rx2, "echo on 2").payload["originalMessage"]["payload"],
        1
    );
    assert_eq!(
        recv(&rx3, "echo on 3").payload["originalMessage"]["payload"],
        1
    );

    drop(first);
    third.unsubscribe();
    client.send("m", 2).expect("send 2");
    // Callbacks of one event run in order on the client thread: once the
    // detached one (registered between them) has seen echo 2, the removed
    // ones would have been called already.
    assert_eq!(
        recv(&rx2, "echo on 2").payload["originalMessage"]["payload"],
        2
    );
    assert!(rx1.try_recv().is_err(), "a dropped subscription was called");

    client.off("echo");
    client.send("m", 3).expect("send 3");
    // The wildcard runs after the type's callbacks.
    loop {
        let ev = recv(&every, "echo 3 on the wildcard");
        if ev.kind == "echo" && ev.payload["originalMessage"]["payload"] == 3 {
            break;
        }
    }
    assert!(rx2.try_recv().is_err(), "off() left a callback");
    assert!(
        rx3.try_recv().is_err(),
        "an unsubscribed callback was called"
    );
}

#[test]
fn send_while_disconnected_is_an_error_and_an_error_event() {
    let srv = start(|_| {});
    let client = Client::new(fast(srv.addr).token(token("carol", 600))).expect("client");
    let (_e, errors) = events(&client, "error");

    let err = client
        .send("test", json!({}))
        .expect_err("not connected yet");
    assert!(matches!(err, ClientError::NotConnected), "{err:?}");
    let ev = recv(&errors, "error event");
    assert!(ev.synthetic);
    assert_eq!(ev.payload["kind"], "not_connected");
    assert_eq!(ev.error_message(), Some("not connected"));
    assert!(matches!(
        client.last_error(),
        Some(ClientError::NotConnected)
    ));

    // After a disconnect(), the same.
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    client.connect();
    recv(&connected, "connected event");
    client.disconnect();
    let ev = recv(&disconnected, "disconnected event");
    assert_eq!(ev.close_code(), Some(1000));
    assert!(matches!(
        client.send("test", 1),
        Err(ClientError::NotConnected)
    ));
    assert_eq!(
        recv(&errors, "error event").payload["kind"],
        "not_connected"
    );
}

#[test]
fn the_token_provider_is_called_on_every_reconnect() {
    let srv = start(|_| {});
    let (calls, provider) = counting_provider("dave", 600);
    let client = Client::new(fast(srv.addr).token_provider(provider)).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_r, reconnecting) = events(&client, "reconnecting");
    client.connect();
    recv(&connected, "first connected event");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    for round in 2..=3 {
        // The management API disconnects the user with 4000: may come back.
        let (status, body) = rest(
            srv.addr,
            "DELETE",
            "/v1/websocket/user/dave/disconnect",
            Some(ADMIN_KEY),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let ev = recv(&disconnected, "disconnected event");
        assert_eq!(ev.close_code(), Some(4000), "{ev:?}");
        let r = recv(&reconnecting, "reconnecting event");
        assert_eq!(
            r.payload["attempt"], 1,
            "the count restarts after each success"
        );
        let hello = recv(&connected, "connected again");
        assert_eq!(hello.payload["userId"], "dave");
        assert_eq!(calls.load(Ordering::SeqCst), round, "provider calls");
        assert_eq!(client.connect_count(), round as u64);
    }
    assert_eq!(client.state(), State::Connected);
}

#[test]
fn a_failing_token_provider_is_an_error_and_a_retry() {
    let srv = start(|_| {});
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let client = Client::new(fast(srv.addr).token_provider(move || {
        // Fails once, then works.
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Err("identity service down".into())
        } else {
            Ok(token("erin", 600))
        }
    }))
    .expect("client");
    let (_e, errors) = events(&client, "error");
    let (_c, connected) = events(&client, "connected");
    client.connect();
    let ev = recv(&errors, "token error");
    assert_eq!(ev.payload["kind"], "token");
    assert!(ev
        .error_message()
        .unwrap_or("")
        .contains("identity service down"));
    recv(&connected, "connected after the retry");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn a_refused_token_is_a_handshake_error_with_its_status() {
    let srv = start(|_| {});
    let client = Client::new(fast(srv.addr).token("not-a-jwt").max_attempts(1)).expect("client");
    let (_e, errors) = events(&client, "error");
    client.connect();
    let first = recv(&errors, "handshake error");
    assert_eq!(first.payload["kind"], "handshake", "{first:?}");
    assert!(first.error_message().unwrap_or("").contains("401"));
    let second = recv(&errors, "second handshake error");
    assert_eq!(second.payload["kind"], "handshake");
    let last = recv(&errors, "give-up error");
    assert_eq!(last.payload["kind"], "gave_up");
    assert!(matches!(client.last_error(), Some(ClientError::GaveUp(1))));
    assert_eq!(client.connect_count(), 0);
}

/// An address where connections are refused: a socket bound to a loopback
/// port but not listening (it holds the port, so nobody else can take it).
fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = s.local_addr().expect("addr").as_socket().expect("inet");
    (s, addr)
}

#[test]
fn backoff_delays_grow_are_jittered_and_capped_then_the_client_gives_up() {
    let (_hold, addr) = refusing_addr();
    let base = 50.0;
    let jitter = 50.0;
    let cap = 400.0;
    let max_attempts = 6;
    let client = Client::new(
        ClientConfig::new(url(addr))
            .token("t")
            .base_delay(Duration::from_millis(50))
            .jitter(Duration::from_millis(50))
            .max_delay(Duration::from_millis(400))
            .max_attempts(max_attempts),
    )
    .expect("client");
    let (_e, errors) = timed_events(&client, "error");
    let (_r, reconnecting) = timed_events(&client, "reconnecting");
    let started = Instant::now();
    client.connect();

    // One failed attempt (an io error) per try: the first and 6 retries,
    // then the give-up.
    let mut attempts = Vec::new();
    loop {
        let (at, ev) = recv(&errors, "error event");
        match ev.payload["kind"].as_str() {
            Some("io") => attempts.push(at),
            Some("gave_up") => break,
            other => panic!("unexpected error {other:?}: {ev:?}"),
        }
    }
    assert_eq!(attempts.len(), 1 + max_attempts as usize);
    let delays: Vec<f64> = reconnecting
        .try_iter()
        .enumerate()
        .map(|(i, (_, ev))| {
            assert_eq!(ev.payload["attempt"], i + 1);
            assert_eq!(ev.payload["maxAttempts"], max_attempts);
            ev.payload["delayMs"].as_f64().expect("delayMs")
        })
        .collect();
    assert_eq!(delays.len(), max_attempts as usize, "{delays:?}");

    // min(base·2^attempt + jitter, cap): [50,100) [100,150) [200,250) then 400 (capped).
    for (i, d) in delays.iter().enumerate() {
        let bare = base * f64::from(1u32 << i);
        if bare + jitter <= cap {
            assert!(*d >= bare && *d < bare + jitter, "attempt {i}: {d} ms");
        } else {
            assert_eq!(*d, cap, "attempt {i}: {d} ms not capped");
        }
    }
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]),
        "delays do not grow: {delays:?}"
    );
    let jitters: Vec<f64> = (0..3)
        .map(|i| delays[i] - base * f64::from(1u32 << i))
        .collect();
    // Jitter samples are drawn in nanoseconds: three equal ones mean none.
    assert!(
        jitters[0] != jitters[1] || jitters[1] != jitters[2],
        "no jitter: {jitters:?}"
    );

    // The observed gaps between attempts follow the announced delays.
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect();
    for (i, (gap, d)) in gaps.iter().zip(&delays).enumerate() {
        assert!(
            *gap >= d - 1.0,
            "attempt {i}: retried after {gap} ms < {d} ms"
        );
        assert!(
            *gap < d + 1000.0,
            "attempt {i}: retried after {gap} ms, delay {d} ms"
        );
    }
    println!("announced delays (ms): {delays:.1?}");
    println!("observed gaps (ms):    {gaps:.1?}");
    println!("total: {:?}", started.elapsed());

    assert_eq!(client.state(), State::Disconnected);
    let status = client.status();
    assert!(matches!(status.last_error, Some(ClientError::GaveUp(6))));
    assert_eq!(status.reconnect_attempt, max_attempts);
    assert_eq!(status.connects, 0);

    // A connect() after giving up starts counting afresh.
    client.connect();
    let (_, ev) = recv(&reconnecting, "reconnecting after connect()");
    assert_eq!(ev.payload["attempt"], 1);
    client.disconnect();
}

/// Waits until the server has no connection of `user`, then checks that it
/// stays so for one second (a reconnect takes 50–100 ms here).
fn assert_stays_disconnected(addr: SocketAddr, user: &str, client: &Client) {
    eventually("the server forgets the connection", || {
        user_status(addr, user)["connectionCount"] == 0
    });
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let st = user_status(addr, user);
        assert_eq!(st["isConnected"], false, "reconnected: {st}");
        assert_eq!(st["connectionCount"], 0, "reconnected: {st}");
        assert_eq!(client.state(), State::Disconnected);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_reconnect_after_disconnect() {
    let srv = start(|_| {});
    let (calls, provider) = counting_provider("frank", 600);
    let client = Client::new(fast(srv.addr).token_provider(provider)).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_r, reconnecting) = events(&client, "reconnecting");
    client.connect();
    recv(&connected, "connected event");
    assert_eq!(user_status(srv.addr, "frank")["connectionCount"], 1);

    client.disconnect();
    let ev = recv(&disconnected, "disconnected event");
    assert_eq!(ev.close_code(), Some(1000));
    assert_eq!(ev.close_reason(), Some("Client disconnect"));
    assert_stays_disconnected(srv.addr, "frank", &client);
    assert!(
        reconnecting.try_recv().is_err(),
        "a reconnect was scheduled"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.connect_count(), 1);

    // connect() brings it back.
    client.connect();
    recv(&connected, "connected again");
    assert_eq!(client.connect_count(), 2);
}

#[test]
fn no_reconnect_after_a_4500_close() {
    let srv = start(|_| {});
    let (calls, provider) = counting_provider("grace", 600);
    let client = Client::new(fast(srv.addr).token_provider(provider)).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_e, errors) = events(&client, "error");
    let (_r, reconnecting) = events(&client, "reconnecting");
    client.connect();
    recv(&connected, "connected event");

    let (status, body) = rest(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/grace/disconnect?reconnect=false",
        Some(&admin_token()),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let ev = recv(&disconnected, "disconnected event");
    assert_eq!(ev.close_code(), Some(4500), "{ev:?}");
    let err = recv(&errors, "terminal error event");
    assert_eq!(err.payload["kind"], "terminal_close", "{err:?}");
    assert!(matches!(
        client.last_error(),
        Some(ClientError::Terminal { code: 4500, .. })
    ));

    assert_stays_disconnected(srv.addr, "grace", &client);
    quiet_for(&reconnecting, Duration::ZERO, "reconnecting event");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the provider was asked again"
    );
    assert_eq!(client.connect_count(), 1);
}

#[test]
fn reconnects_after_the_server_restarts_on_the_same_port() {
    let mut first = start(|_| {});
    let addr = first.addr;
    let client = Client::new(fast(addr).token(token("heidi", 600))).expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_n, notes) = events(&client, "notification");
    client.connect();
    recv(&connected, "connected event");

    first.stop();
    let ev = recv(&disconnected, "disconnected event");
    assert_eq!(ev.close_code(), Some(1001), "server shutdown: {ev:?}");

    let second = start(|c| c.bind = addr);
    assert_eq!(second.addr, addr);
    let hello = recv(&connected, "connected to the new server");
    assert_eq!(hello.payload["userId"], "heidi");
    assert_eq!(client.connect_count(), 2);

    let handle = second.handle();
    eventually("the new server sees heidi", || {
        handle.is_user_connected("heidi")
    });
    let sent = handle.broadcast("notification", json!({"title": "back"}), None);
    assert_eq!(sent, 1);
    let note = recv(&notes, "broadcast after the restart");
    assert_eq!(note.payload["title"], "back");
}

#[test]
fn a_panicking_callback_does_not_kill_the_client() {
    let srv = start(|_| {});
    let client = Client::new(fast(srv.addr).token(token("ivan", 600))).expect("client");
    let (_c, connected) = events(&client, "connected");
    let panics = Arc::new(AtomicUsize::new(0));
    let p = panics.clone();
    client
        .on("echo", move |_| {
            p.fetch_add(1, Ordering::SeqCst);
            panic!("a buggy callback");
        })
        .detach();
    let (_e, echoes) = events(&client, "echo");
    client.connect();
    recv(&connected, "connected event");

    for n in 0..3 {
        client.send("m", n).expect("send");
        let ev = recv(&echoes, "echo after a panic");
        assert_eq!(ev.payload["originalMessage"]["payload"], n);
    }
    assert_eq!(panics.load(Ordering::SeqCst), 3);
    assert_eq!(client.state(), State::Connected);
    assert_eq!(client.connect_count(), 1);
}

/// Buckets of 50 ms over the first reconnect delay of `n` clients.
fn histogram(delays: &[Duration]) -> Vec<usize> {
    let mut buckets = vec![0usize; 20];
    for d in delays {
        let ms = d.as_millis() as usize;
        assert!((1000..2000).contains(&ms), "delay {d:?} outside 1–2 s");
        buckets[(ms - 1000) / 50] += 1;
    }
    buckets
}

fn print_histogram(title: &str, delays: &[Duration], buckets: &[usize]) {
    let min = delays.iter().min().copied().unwrap_or_default();
    let max = delays.iter().max().copied().unwrap_or_default();
    println!(
        "{title}: n={} min={min:?} max={max:?} spread={:?} fullest 50 ms bucket={}",
        delays.len(),
        max - min,
        buckets.iter().max().copied().unwrap_or(0)
    );
    for (i, n) in buckets.iter().enumerate() {
        println!(
            "  {:>4}-{:<4} ms {:>4} {}",
            1000 + i * 50,
            1050 + i * 50,
            n,
            "#".repeat(n / 2)
        );
    }
}

/// A thousand clients that lost the same server at the same instant: their
/// first reconnect delays (the real function, the real RNG, the default
/// policy) spread over the whole second of jitter instead of arriving
/// together. Uniform over 20 buckets of 50 ms gives ~50 per bucket (5 %);
/// no bucket may hold more than 10 %.
#[test]
fn a_thousand_clients_spread_their_first_reconnect_over_a_second() {
    let cfg = ClientConfig::new("ws://127.0.0.1:3000/ws");
    let delays: Vec<Duration> = (0..1000).map(|_| cfg.backoff(0)).collect();
    let buckets = histogram(&delays);
    print_histogram("1000 clients, attempt 0", &delays, &buckets);
    let min = delays.iter().min().copied().unwrap_or_default();
    let max = delays.iter().max().copied().unwrap_or_default();
    assert!(
        max - min > Duration::from_millis(900),
        "spread {:?}",
        max - min
    );
    assert!(
        buckets.iter().all(|n| *n <= 100),
        "a 50 ms bucket holds more than 10 %: {buckets:?}"
    );
    assert!(
        buckets.iter().filter(|n| **n > 0).count() == 20,
        "empty buckets: {buckets:?}"
    );
}

/// The same, end to end: real clients with the default policy lose a server
/// that restarts on the same port; the server sees them come back spread
/// over a second (1–2 s after the restart), not in one burst.
#[test]
fn real_clients_come_back_spread_out_after_a_server_restart() {
    const N: usize = 100;
    let mut first = start(|_| {});
    let addr = first.addr;
    let (tx, back) = crossbeam_channel::unbounded();
    let mut clients = Vec::new();
    for i in 0..N {
        let client =
            Client::new(ClientConfig::new(url(addr)).token(token(&format!("spread{i}"), 600)))
                .expect("client");
        let tx = tx.clone();
        client
            .on("connected", move |_| {
                let _ = tx.send(Instant::now());
            })
            .detach();
        client.connect();
        clients.push(client);
    }
    for _ in 0..N {
        recv(&back, "first connect");
    }

    let lost = Instant::now();
    first.stop();
    let _second = start(|c| c.bind = addr);
    let delays: Vec<Duration> = (0..N).map(|_| recv(&back, "reconnect") - lost).collect();
    let min = delays.iter().min().copied().unwrap_or_default();
    let max = delays.iter().max().copied().unwrap_or_default();
    let mut buckets = vec![0usize; 60];
    for d in &delays {
        buckets[(d.as_millis() as usize / 50).min(59)] += 1;
    }
    println!(
        "{N} real clients after a restart: first back after {min:?}, last after {max:?}, fullest 50 ms bucket {}",
        buckets.iter().max().copied().unwrap_or(0)
    );
    assert!(min >= Duration::from_millis(990), "back too early: {min:?}");
    assert!(
        max - min > Duration::from_millis(500),
        "not spread: {:?}",
        max - min
    );
    assert!(buckets.iter().all(|n| *n <= N / 4), "a burst: {buckets:?}");
    for c in &clients {
        assert_eq!(c.connect_count(), 2);
    }
    drop(clients);
}

/// Tokens of 3 s on a server without leeway: the client asks its provider
/// for a new token before each `exp` and sends it in-band, so one
/// connection outlives several tokens without a `4001`.
#[test]
fn the_token_provider_refreshes_in_band_so_the_connection_outlives_its_tokens() {
    let srv = start(|c| c.jwt_leeway_secs = 0);
    let (issued, provider) = counting_provider("refresher", 3);
    let client = Client::new(
        fast(srv.addr)
            .refresh_before(Some(Duration::from_secs(1)))
            .token_provider(provider),
    )
    .expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_r, refreshed) = events(&client, "refreshed");
    let (_e, errors) = events(&client, "error");
    let (_x, echoes) = events(&client, "echo");
    client.connect();
    recv(&connected, "connected");
    let opened = Instant::now();

    // Three refreshes carry the connection past the third token's exp.
    for n in 1..=3 {
        let ev = recv(&refreshed, &format!("refreshed #{n}"));
        assert!(ev.payload["expiresAt"].is_u64(), "{ev:?}");
    }
    client.send("still-here", json!(null)).expect("send");
    recv(&echoes, "echo after the refreshes");
    assert!(
        opened.elapsed() > Duration::from_secs(4),
        "connected for {:?}, past the first token's exp",
        opened.elapsed()
    );
    assert!(
        disconnected.try_recv().is_err(),
        "the connection was closed"
    );
    assert!(
        errors.try_recv().is_err(),
        "an error event (refused refresh?)"
    );
    assert_eq!(client.connect_count(), 1);
    assert!(issued.load(Ordering::SeqCst) >= 4, "connect + 3 refreshes");
}

/// The control of the test above: the same tokens without the refresh end
/// with `4001` at `exp`.
#[test]
fn without_the_refresh_a_short_token_ends_with_4001() {
    let srv = start(|c| c.jwt_leeway_secs = 0);
    let (_issued, provider) = counting_provider("expiring", 3);
    let client = Client::new(
        fast(srv.addr)
            .refresh_before(None)
            .max_attempts(0)
            .token_provider(provider),
    )
    .expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_r, refreshed) = events(&client, "refreshed");
    client.connect();
    recv(&connected, "connected");
    let closed = recv(&disconnected, "disconnected at exp");
    assert_eq!(closed.close_code(), Some(4001), "{closed:?}");
    assert!(refreshed.try_recv().is_err());
}

/// A token with a `channels` claim.
fn channel_token(sub: &str, channels: &[&str]) -> String {
    wsedge::mint_hs256(
        common::SECRET,
        &json!({"sub": sub, "exp": wsedge::now_secs() + 600, "channels": channels}),
    )
}

#[test]
fn subscriptions_are_restored_after_a_reconnect() {
    let srv = start(|_| {});
    let client =
        Client::new(fast(srv.addr).token(channel_token("hana", &["news"]))).expect("client");
    let (_s1, subscribed) = events(&client, "subscribed");
    let (_s2, headlines) = events(&client, "headline");
    let (_s3, errors) = events(&client, "error");
    // Asked before the connection exists: sent once it does.
    client.subscribe("news", false);
    client.subscribe("forbidden", false);
    client.connect();
    let ack = recv(&subscribed, "subscribed");
    assert_eq!(ack.payload["channel"], "news");
    let err = recv(&errors, "error for a channel the token does not allow");
    assert_eq!(err.payload["channel"], "forbidden");
    client.unsubscribe("forbidden");

    let publish = |n: u64| {
        let (status, body) = rest(
            srv.addr,
            "POST",
            "/v1/websocket/channels/news/publish",
            Some(ADMIN_KEY),
            Some(&json!({"type": "headline", "payload": {"n": n}})),
        );
        assert_eq!(status, 200, "{body}");
        body["sentToConnections"].as_u64()
    };
    assert_eq!(publish(1), Some(1));
    let m = recv(&headlines, "headline 1");
    assert_eq!(
        (m.channel.as_deref(), &m.payload["n"]),
        (Some("news"), &json!(1))
    );

    // The server drops the connection (4000: the client may reconnect).
    let (status, _) = rest(
        srv.addr,
        "DELETE",
        "/v1/websocket/user/hana/disconnect",
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(status, 200);
    assert!(client.wait_for_connects(2, WAIT), "reconnected");
    let ack = recv(&subscribed, "subscribed again after the reconnect");
    assert_eq!(ack.payload["channel"], "news");
    assert_eq!(publish(2), Some(1));
    assert_eq!(recv(&headlines, "headline 2").payload["n"], 2);
    // `forbidden` was dropped: no second error after the reconnect.
    quiet_for(&errors, Duration::from_millis(300), "error");

    // Unsubscribed: not restored and not delivered.
    let (_s4, unsubscribed) = events(&client, "unsubscribed");
    client.unsubscribe("news");
    let _ = recv(&unsubscribed, "unsubscribed");
    assert_eq!(publish(3), Some(0));
}

// History and recovery (docs/PROTOCOL.md §11): the client remembers its
// epoch and offsets and recovers by itself.

/// `(stream, offset, type, payload)` of an event on a stream.
type OnStream = (String, u64, String, serde_json::Value);

fn on_stream(ev: &Event) -> Option<OnStream> {
    Some((
        ev.channel.clone()?,
        ev.offset?,
        ev.kind.clone(),
        ev.payload.clone(),
    ))
}

fn expected(list: &[(&str, u64, &str, i64)]) -> Vec<OnStream> {
    list.iter()
        .map(|(c, o, k, p)| (c.to_string(), *o, k.to_string(), json!(p)))
        .collect()
}

/// Every event of `client`, in order, minus the reconnect chatter
/// (`reconnecting`, and the `error` of an attempt that met no server).
fn all_events(client: &Client) -> (Subscription, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sub = client.on("*", move |ev| {
        let attempt_failed = ev.kind == "error" && ev.payload["kind"] == "io";
        if ev.kind != "reconnecting" && !attempt_failed {
            let _ = tx.send(ev.clone());
        }
    });
    (sub, rx)
}

/// Reads events until `n` of them carry a stream offset; returns all read.
fn until_on_stream(rx: &Receiver<Event>, n: usize, what: &str) -> Vec<Event> {
    let mut got = Vec::new();
    while got.iter().filter(|e: &&Event| e.offset.is_some()).count() < n {
        got.push(recv(rx, what));
    }
    got
}

/// Sends a probe and reads up to its echo: everything that came before it.
fn until_echo(client: &Client, rx: &Receiver<Event>) -> Vec<Event> {
    client.send("probe", json!(null)).expect("send");
    let mut got = Vec::new();
    loop {
        let ev = recv(rx, "echo of the probe");
        if ev.kind == "echo" {
            return got;
        }
        got.push(ev);
    }
}

fn streams_of(events: &[Event], keep: impl Fn(&str) -> bool) -> Vec<OnStream> {
    events
        .iter()
        .filter_map(on_stream)
        .filter(|(c, ..)| keep(c))
        .collect()
}

/// A client cut off by the server (`4000`) while broadcasts, sends and
/// channel publishes go on: its token provider holds the reconnect until
/// they are all sent. After it, `connected` says `recovered: true`, a
/// `recovered` event follows, then exactly the messages missed — @all and
/// @user merged in the order sent, the channel's after its `subscribed` —
/// then the live ones, each once.
#[test]
fn a_reconnecting_client_recovers_exactly_what_it_missed_then_gets_live_messages() {
    let srv = start(|_| {});
    let handle = srv.handle();
    let (go, gate) = crossbeam_channel::unbounded::<()>();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let provider = move || {
        // The first connect goes at once; every reconnect waits for `go`.
        if c.fetch_add(1, Ordering::SeqCst) > 0 {
            gate.recv_timeout(WAIT).map_err(|e| e.to_string())?;
        }
        Ok(channel_token("alice", &["news"]))
    };
    let client = Client::new(fast(srv.addr).token_provider(provider)).expect("client");
    let (_a, events) = all_events(&client);
    client.subscribe("news", false);
    client.connect();

    let hello = recv(&events, "connected");
    assert_eq!(hello.kind, "connected", "{hello:?}");
    assert!(hello.payload["epoch"].is_string(), "{hello:?}");
    assert!(
        hello.payload.get("recovered").is_none(),
        "first connect asked nothing"
    );
    let ack = recv(&events, "subscribed");
    assert_eq!(
        (ack.kind.as_str(), &ack.payload["offset"]),
        ("subscribed", &json!(0))
    );
    assert_eq!(handle.broadcast("b", json!(1), None), 1);
    assert_eq!(handle.send_to_user("alice", "d", json!(1)), 1);
    assert_eq!(handle.publish("news", "n", json!(1)), 1);
    let before = until_on_stream(&events, 3, "messages before the cut");
    let before_echo = until_echo(&client, &events);
    assert!(
        before
            .iter()
            .chain(&before_echo)
            .all(|e| e.kind != "recovered"),
        "no recovered event on the first connection: {before:?}"
    );

    // The cut: 4000, the client may come back (once `go` is sent).
    assert_eq!(handle.disconnect_user("alice", true), 1);
    let gone = recv(&events, "disconnected");
    assert_eq!(
        (gone.kind.as_str(), gone.close_code()),
        ("disconnected", Some(4000))
    );
    assert!(!handle.is_user_connected("alice"));
    assert_eq!(handle.broadcast("b", json!(2), None), 0);
    assert_eq!(
        handle.send_to_user("alice", "d", json!(2)),
        0,
        "kept in history"
    );
    assert_eq!(handle.broadcast("u", json!(3), Some(&["alice"])), 0);
    // (A publish may still count the closing connection: not asserted.)
    handle.publish("news", "n", json!(2));
    assert_eq!(handle.broadcast("b", json!(3), None), 0);
    handle.publish("news", "n", json!(3));
    go.send(()).expect("go");

    let hello = recv(&events, "connected again");
    assert_eq!(hello.kind, "connected", "{hello:?}");
    assert_eq!(hello.payload["recovered"], true, "{hello:?}");
    let recovered = recv(&events, "recovered");
    assert_eq!(recovered.kind, "recovered", "{recovered:?}");
    assert_eq!(recovered.payload, json!({"recovered": true}));
    assert!(recovered.synthetic);
    let missed = until_on_stream(&events, 6, "the missed messages");
    let ack = missed
        .iter()
        .find(|e| e.kind == "subscribed")
        .expect("subscribed again before the channel's replay");
    assert_eq!(ack.payload["recovered"], true, "{ack:?}");

    // Live ones after the replay.
    assert_eq!(handle.broadcast("b", json!(4), None), 1);
    assert_eq!(handle.send_to_user("alice", "d", json!(4)), 1);
    assert_eq!(handle.publish("news", "n", json!(4)), 1);
    let live = until_on_stream(&events, 3, "live messages");
    let rest = until_echo(&client, &events);
    let after: Vec<Event> = missed.into_iter().chain(live).chain(rest).collect();
    assert_eq!(
        streams_of(&after, |c| c.starts_with('@')),
        expected(&[
            ("@all", 2, "b", 2),
            ("@user", 2, "d", 2),
            ("@user", 3, "u", 3),
            ("@all", 3, "b", 3),
            ("@all", 4, "b", 4),
            ("@user", 4, "d", 4),
        ]),
        "the missed messages in the order sent, then the live ones"
    );
    assert_eq!(
        streams_of(&after, |c| c == "news"),
        expected(&[
            ("news", 2, "n", 2),
            ("news", 3, "n", 3),
            ("news", 4, "n", 4)
        ])
    );
    let subscribed_at = after.iter().position(|e| e.kind == "subscribed");
    let first_news = after
        .iter()
        .position(|e| e.channel.as_deref() == Some("news"));
    assert!(subscribed_at < first_news, "{after:?}");
    assert_eq!(
        after.iter().filter(|e| e.kind == "recovered").count(),
        0,
        "one recovered event per reconnect"
    );
    assert_eq!(client.status().duplicates_dropped, 0);
    assert_eq!(client.connect_count(), 2);
}

/// A server restarted on the same port has a new epoch: the client is told
/// it did not recover (on the connection and on its channel), and takes
/// the new server's offsets, which count from 1 again, without dropping
/// them as duplicates.
#[test]
fn after_a_server_restart_the_client_gets_recovered_false_and_the_new_offsets() {
    let mut first = start(|_| {});
    let addr = first.addr;
    let client = Client::new(fast(addr).token(channel_token("ivy", &["news"]))).expect("client");
    let (_a, events) = all_events(&client);
    client.subscribe("news", false);
    client.connect();
    let old_epoch = recv(&events, "connected").payload["epoch"].clone();
    assert_eq!(recv(&events, "subscribed").kind, "subscribed");
    let handle = first.handle();
    for i in 1..=3 {
        assert_eq!(handle.broadcast("b", json!(i), None), 1);
        assert_eq!(handle.publish("news", "n", json!(i)), 1);
    }
    let before = until_on_stream(&events, 6, "messages on the first server");
    assert_eq!(before.last().and_then(|e| e.offset), Some(3));

    first.stop();
    let gone = recv(&events, "disconnected");
    assert_eq!(gone.close_code(), Some(1001), "{gone:?}");
    let second = start(|c| c.bind = addr);

    let hello = recv(&events, "connected to the new server");
    assert_eq!(hello.kind, "connected", "{hello:?}");
    assert_eq!(hello.payload["recovered"], false, "{hello:?}");
    assert_ne!(hello.payload["epoch"], old_epoch);
    let recovered = recv(&events, "recovered");
    assert_eq!(
        (recovered.kind.as_str(), &recovered.payload),
        ("recovered", &json!({"recovered": false}))
    );
    let ack = recv(&events, "subscribed on the new server");
    assert_eq!(ack.kind, "subscribed", "{ack:?}");
    assert_eq!(ack.payload["recovered"], false, "{ack:?}");

    let handle = second.handle();
    assert_eq!(handle.broadcast("b", json!(10), None), 1);
    assert_eq!(handle.publish("news", "n", json!(10)), 1);
    let live = until_on_stream(&events, 2, "messages on the new server");
    let rest = until_echo(&client, &events);
    let after: Vec<Event> = live.into_iter().chain(rest).collect();
    let mut got = streams_of(&after, |_| true);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        expected(&[("@all", 1, "b", 10), ("news", 1, "n", 10)]),
        "offset 1 again is new in the new epoch"
    );
    assert_eq!(client.status().duplicates_dropped, 0);
}
