//! The Rust client over `wss://` (docs/PROTOCOL.md §6.2, §12.2): TLS with
//! certificates made at test time (`common::tls::TestPki`), trusted through
//! the extra CA file; an untrusted CA or a certificate for another name is
//! a `tls` error, retried like any failed attempt.
//!
//! The server is a real wsedge with `--tls-cert`/`--tls-key` (docs/PROTOCOL.md
//! §12.1) on an ephemeral port.

mod common;

use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::json;
use wsedge::client::{Client, ClientConfig, ClientError, Event, State, Subscription};

use common::tls::TestPki;
use common::{start, token, TestServer, WAIT};

fn events(client: &Client, kind: &str) -> (Subscription, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sub = client.on(kind, move |ev| {
        let _ = tx.send(ev.clone());
    });
    (sub, rx)
}

fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(WAIT) {
        Ok(v) => v,
        Err(e) => panic!("no {what} within {WAIT:?}: {e}"),
    }
}

fn fast(url: String) -> ClientConfig {
    ClientConfig::new(url)
        .base_delay(Duration::from_millis(50))
        .jitter(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
        .max_attempts(3)
}

/// A wsedge serving HTTPS and WSS on `ip`:0 with `pki`'s certificate.
fn start_tls_on(pki: &TestPki, ip: &str) -> TestServer {
    start(|c| {
        c.bind = format!("{ip}:0").parse().expect("addr");
        c.tls_cert = Some(pki.cert_path.clone());
        c.tls_key = Some(pki.key_path.clone());
    })
}

fn start_tls(pki: &TestPki) -> TestServer {
    start_tls_on(pki, "127.0.0.1")
}

#[test]
fn wss_to_a_tls_server_trusting_the_ca_file() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let front = srv.addr;
    // By name (SNI "localhost") and by IP address (127.0.0.1 SAN).
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("wss://{host}:{}/ws", front.port());
        let client = Client::new(fast(url).token(token("alice", 600)).ca_file(&pki.ca_path))
            .expect("client");
        let (_c, connected) = events(&client, "connected");
        let (_e, echoes) = events(&client, "echo");
        client.connect();
        let hello = recv(&connected, "connected event over TLS");
        assert_eq!(hello.payload["userId"], "alice", "{hello:?}");
        assert_eq!(client.state(), State::Connected);
        for n in 0..3 {
            client.send("test", json!({"n": n})).expect("send");
            let echo = recv(&echoes, "echo over TLS");
            assert_eq!(echo.payload["originalMessage"]["payload"]["n"], n);
        }
        client.disconnect();
        assert!(client.wait_for(State::Disconnected, WAIT));
    }
}

#[test]
fn an_untrusted_ca_is_a_tls_error_and_is_retried() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let srv = start_tls(&pki);
    let front = srv.addr;
    let url = format!("wss://localhost:{}/ws", front.port());
    let client =
        Client::new(fast(url).token(token("bob", 600)).ca_file(&other.ca_path)).expect("client");
    let (_e, errors) = events(&client, "error");
    let (_r, retries) = events(&client, "reconnecting");
    client.connect();
    let err = recv(&errors, "tls error");
    assert_eq!(err.payload["kind"], "tls", "{err:?}");
    let msg = err.payload["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(matches!(client.last_error(), Some(ClientError::Tls(_))));
    // Counted as a failed attempt: the backoff schedules another.
    let r = recv(&retries, "reconnecting after a tls error");
    assert_eq!(r.payload["attempt"], 1);
    assert_ne!(client.state(), State::Connected);
}

#[test]
fn a_certificate_for_another_name_is_a_tls_error() {
    let pki = TestPki::new();
    // 127.0.0.2 is a loopback address the certificate does not name.
    let srv = start_tls_on(&pki, "127.0.0.2");
    let front = srv.addr;
    let url = format!("wss://127.0.0.2:{}/ws", front.port());
    let client = Client::new(fast(url).max_attempts(0).ca_file(&pki.ca_path)).expect("client");
    let (_e, errors) = events(&client, "error");
    client.connect();
    let err = recv(&errors, "tls error");
    assert_eq!(err.payload["kind"], "tls", "{err:?}");
    assert!(
        err.payload["message"]
            .as_str()
            .is_some_and(|m| m.contains("certificate")),
        "{err:?}"
    );
}

#[test]
fn without_the_ca_file_the_system_roots_do_not_trust_a_test_ca() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    let client = match Client::new(fast(url).max_attempts(0)) {
        Ok(c) => c,
        // A machine without any system root: also a TLS error, at once.
        Err(e) => {
            assert!(matches!(e, ClientError::Tls(_)), "{e}");
            return;
        }
    };
    let (_e, errors) = events(&client, "error");
    client.connect();
    assert_eq!(recv(&errors, "tls error").payload["kind"], "tls");
}

#[test]
fn an_unreadable_ca_file_fails_client_new() {
    let missing = std::env::temp_dir().join("wsedge-no-such-ca-file.pem");
    let Err(err) = Client::new(ClientConfig::new("wss://localhost:1/ws").ca_file(&missing)) else {
        panic!("a missing CA file was accepted");
    };
    assert_eq!(err.kind(), "tls", "{err}");
}

#[test]
fn a_whole_rustls_config_is_used_as_given() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    // Trusts the test CA only (no system roots, no CA file).
    let client = Client::new(
        fast(url)
            .token(token("carol", 600))
            .tls_config(pki.client()),
    )
    .expect("client");
    let (_c, connected) = events(&client, "connected");
    client.connect();
    assert_eq!(recv(&connected, "connected").payload["userId"], "carol");
}

#[test]
fn a_ws_url_to_a_tls_port_fails_and_retries() {
    let pki = TestPki::new();
    let srv = start_tls(&pki);
    let url = format!("ws://127.0.0.1:{}/ws", srv.addr.port());
    let client = Client::new(fast(url).token(token("dave", 600))).expect("client");
    let (_e, errors) = events(&client, "error");
    let (_r, retries) = events(&client, "reconnecting");
    client.connect();
    let err = recv(&errors, "error");
    assert_ne!(err.payload["kind"], "tls", "{err:?}");
    recv(&retries, "reconnecting");
    assert_ne!(client.state(), State::Connected);
}

#[test]
fn over_tls_the_client_gets_the_close_code_reconnects_after_a_restart_and_receives_broadcasts() {
    let pki = TestPki::new();
    let mut first = start_tls(&pki);
    let addr = first.addr;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let client = Client::new(
        fast(url)
            .max_attempts(50)
            .token(token("heidi", 600))
            .ca_file(&pki.ca_path),
    )
    .expect("client");
    let (_c, connected) = events(&client, "connected");
    let (_d, disconnected) = events(&client, "disconnected");
    let (_n, notes) = events(&client, "notification");
    client.connect();
    recv(&connected, "connected event");

    // The close frame comes through TLS like any message.
    first.stop();
    let ev = recv(&disconnected, "disconnected event");
    assert_eq!(ev.close_code(), Some(1001), "server shutdown: {ev:?}");

    let second = start(|c| {
        c.bind = addr;
        c.tls_cert = Some(pki.cert_path.clone());
        c.tls_key = Some(pki.key_path.clone());
    });
    let hello = recv(&connected, "connected to the new server");
    assert_eq!(hello.payload["userId"], "heidi");
    assert_eq!(client.connect_count(), 2);
    let handle = second.handle();
    common::eventually("the new server sees heidi", || {
        handle.is_user_connected("heidi")
    });
    // Messages that arrive while the client thread sits in its timed-out
    // reads (poll_interval) are read whole: a read timeout in the middle of
    // a TLS record loses nothing.
    for i in 0..20 {
        let big = "x".repeat(20_000 * (i % 3));
        assert_eq!(
            handle.broadcast("notification", json!({"i": i, "pad": big}), None),
            1
        );
    }
    for i in 0..20 {
        let note = recv(&notes, "broadcast over TLS");
        assert_eq!(note.payload["i"], i);
    }
}
