//! The load tool run whole, as a user runs it: it starts its own server (or
//! a cluster of nodes and a Redis), connects, broadcasts, and prints one JSON
//! line whose figures are checked here. Small and short, bounded by the
//! tool's own timeouts plus a watchdog here.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOOL: &str = env!("CARGO_BIN_EXE_wsedge-loadtest");

/// Runs the tool with `args`; returns its JSON line.
fn run(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run_raw(args);
    assert!(ok, "stdout {stdout}; stderr {stderr}");
    json_line(&stdout)
}

/// The JSON line of the tool's output.
fn json_line(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
    serde_json::from_str(line).expect("JSON line")
}

/// Runs the tool with `args`: whether it exited 0, stdout, stderr.
fn run_raw(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(TOOL)
        .args(args)
        .args(["--quiet", "--warmup-secs", "0", "--server-shards", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the load tool");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the load tool ran over 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_delivery(report: &Value, connections: u64) {
    assert_eq!(report["connect"]["open"], connections, "{report}");
    let phase = &report["phases"][0];
    assert_eq!(phase["name"], "throughput");
    check_phase(phase, connections);
}

/// Every broadcast of the phase reached every measured connection, in order.
fn check_phase(phase: &Value, connections: u64) {
    let expected = phase["expected"].as_u64().unwrap_or(0);
    let requests = phase["requests_ok"].as_u64().unwrap_or(0);
    assert!(requests > 0, "{phase}");
    // Every broadcast addressed every connection (in a cluster: on every node).
    assert_eq!(expected, requests * connections, "{phase}");
    assert_eq!(phase["received"], expected, "{phase}");
    assert_eq!(phase["lost"], 0, "{phase}");
    assert_eq!(phase["out_of_order"], 0, "{phase}");
    assert_eq!(phase["extra"], 0, "{phase}");
}

#[test]
fn one_node_delivers_every_broadcast_to_every_connection() {
    let r = run(&["-n", "300", "--duration", "1"]);
    assert_eq!(r["server"]["kind"], "child");
    assert_eq!(r["server"]["nodes"], 1);
    check_delivery(&r, 300);
    assert!(r["memory"]["server_bytes_per_connection"]
        .as_f64()
        .is_some());
    // Without --hostile: no attack, and no phase under one.
    assert!(r["hostile"].is_null(), "{}", r["hostile"]);
    assert_eq!(r["phases"][0]["hostile"], false);
}

/// `--compression` with realistic 2 KiB JSON: every broadcast arrives and
/// inflates, the server negotiates permessage-deflate on every connection,
/// and the frames on the wire are well under 0.6× the same run's without it.
#[test]
fn compression_delivers_everything_inflated_and_shrinks_the_wire_bytes() {
    let args = [
        "--payload-kind",
        "json",
        "--payload-bytes",
        "2048",
        "-n",
        "200",
        "--duration",
        "1",
    ];
    let z = run(&[&args[..], &["--compression"]].concat());
    check_delivery(&z, 200);
    assert_eq!(z["config"]["compression"], true, "{}", z["config"]);
    assert_eq!(z["config"]["payload_kind"], "json", "{}", z["config"]);
    assert_eq!(z["connect"]["compression_offered"], true);
    assert_eq!(z["inflate_errors"], 0, "{z}");
    let plain = run(&args);
    check_delivery(&plain, 200);
    assert_eq!(plain["connect"]["compression_offered"], false);
    assert_eq!(plain["connect"]["compression_negotiated"], 0);
    assert_eq!(plain["phases"][0]["compressed"], 0);
    let wire = |r: &Value| {
        let p = &r["phases"][0];
        let per = p["wire_bytes_per_delivery"].as_f64().unwrap_or(0.0);
        assert!(per > 0.0, "{p}");
        assert_eq!(
            p["wire_bytes"].as_u64(),
            Some((per * p["received"].as_f64().unwrap_or(0.0)).round() as u64),
            "{p}"
        );
        per
    };
    let (wz, wp) = (wire(&z), wire(&plain));
    // A 2048-byte payload in the broadcast envelope, 4 bytes of header.
    assert!((2048.0..2300.0).contains(&wp), "plain wire bytes {wp}");
    // The server negotiates on every connection and compresses every
    // broadcast (2 KiB ≥ its --compression-min-bytes of 256).
    assert_eq!(z["connect"]["compression_negotiated"], 200, "{z}");
    let phase = &z["phases"][0];
    assert_eq!(phase["compressed"], phase["received"], "{phase}");
    // The same compressed bytes to every connection: each client thread
    // inflates a broadcast about once, not once per connection.
    let inflations = z["inflations"].as_u64().unwrap_or(0);
    let received = phase["received"].as_u64().unwrap_or(0);
    assert!(
        inflations > 0 && inflations * 10 <= received,
        "{inflations} inflations for {received} deliveries"
    );
    assert!(
        wz < 0.6 * wp,
        "compressed {wz} B vs plain {wp} B per delivery"
    );
}

#[test]
fn channel_mode_delivers_each_publish_to_its_channels_subscribers_only() {
    // 301 connections over 7 channels, 3 each: 903 subscriptions, 129 per
    // channel; the JSON line has no channel section in the other modes.
    let r = run(&[
        "-n",
        "301",
        "--mode",
        "channel",
        "--channels",
        "7",
        "--subs-per-conn",
        "3",
        "--duration",
        "1",
        "--rate",
        "70",
        "--rate-secs",
        "1",
    ]);
    assert_eq!(r["config"]["mode"], "channel");
    let c = &r["channels"];
    assert_eq!(c["subscriptions_requested"], 903, "{c}");
    assert_eq!(c["subscriptions_acknowledged"], 903, "{c}");
    assert_eq!(c["subscriptions_refused"], 0, "{c}");
    assert_eq!(c["misrouted"], 0, "{c}");
    assert_eq!(c["stray_acks"], 0, "{c}");
    assert!(c["server_bytes_per_subscription"].as_f64().is_some(), "{c}");
    // Three channels each: the first, then the other two, measured apart.
    assert!(
        c["server_rss_first_subscribed_bytes"].as_u64().is_some(),
        "{c}"
    );
    assert!(
        c["server_bytes_per_further_subscription"]
            .as_f64()
            .is_some(),
        "{c}"
    );
    for phase in r["phases"].as_array().expect("phases") {
        let requests = phase["requests_ok"].as_u64().unwrap_or(0);
        assert!(requests > 0, "{phase}");
        assert_eq!(phase["expected"], requests * 129, "{phase}");
        assert_eq!(phase["received"], phase["expected"], "{phase}");
        assert_eq!(phase["lost"], 0, "{phase}");
        assert_eq!(phase["out_of_order"], 0, "{phase}");
        assert_eq!(phase["extra"], 0, "{phase}");
    }
    let plain = run(&["-n", "50", "--duration", "0.2"]);
    assert!(plain.get("channels").is_none(), "{plain}");
}

/// Over TLS the figures are the same: every broadcast reaches every
/// connection, no REST error, and the TLS handshake is timed per connection.
fn check_tls(r: &Value, connections: u64) {
    check_delivery(r, connections);
    assert_eq!(r["connect"]["failed"], 0, "{r}");
    assert_eq!(r["connect"]["tls"], true, "{r}");
    assert_eq!(
        r["connect"]["tls_handshake_ms"]["count"], connections,
        "{r}"
    );
    let phase = &r["phases"][0];
    assert_eq!(phase["rest_errors"], serde_json::json!({}), "{phase}");
    assert!(phase["received"].as_u64().unwrap_or(0) > 0, "{phase}");
}

#[test]
fn server_tls_delivers_every_broadcast_over_wss_and_https() {
    let r = run(&["-n", "200", "--duration", "1", "--server-tls"]);
    check_tls(&r, 200);
}

/// A CA and a leaf for localhost / 127.0.0.1 it signed, as PEM files.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = std::env::temp_dir().join(format!("wsedge-lt-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf")
            .signed_by(&key, &issuer)
            .expect("leaf cert");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
        Pki { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A wsedge serving WSS and HTTPS with `pki`'s leaf, in this process.
fn tls_server(pki: &Pki, secret: &str) -> wsedge::Server {
    let cfg = wsedge::Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        shards: 2,
        jwt_secret: Some(secret.into()),
        serve_web: false,
        tls_cert: Some(pki.dir.join("cert.pem")),
        tls_key: Some(pki.dir.join("key.pem")),
        ..wsedge::Config::default()
    };
    wsedge::Server::start(cfg).expect("TLS server")
}

#[test]
fn a_wss_target_is_loaded_trusting_the_ca_file_and_refused_without_it() {
    let pki = Pki::new("target");
    let secret = "loadtest-tls-secret";
    let srv = tls_server(&pki, secret);
    let target = format!("wss://localhost:{}/ws", srv.local_addr().port());
    let ca = pki.path("ca.pem");
    let r = run(&[
        "-n",
        "100",
        "--duration",
        "1",
        "--target",
        &target,
        "--secret",
        secret,
        "--ca-file",
        &ca,
    ]);
    check_tls(&r, 100);
    // Without the CA file the certificate is not trusted: every connection
    // fails, with the TLS reason, and the tool says none opened.
    let (ok, stdout, stderr) = run_raw(&[
        "-n",
        "20",
        "--duration",
        "1",
        "--target",
        &target,
        "--secret",
        secret,
        "--connect-timeout-secs",
        "10",
    ]);
    assert!(!ok, "no connection should open; stderr {stderr}");
    let r = json_line(&stdout);
    assert_eq!(r["connect"]["open"], 0, "{r}");
    let reasons = r["connect"]["failures"].to_string();
    assert!(
        reasons.contains("TLS") && reasons.contains("certificate"),
        "{reasons}"
    );
    srv.shutdown();
}

#[test]
fn hostile_refuses_tls_and_a_ca_file_needs_a_wss_target() {
    let (ok, _, stderr) = run_raw(&["-n", "10", "--hostile", "5", "--server-tls"]);
    assert!(!ok, "--hostile accepted over TLS");
    assert!(stderr.contains("plaintext only"), "{stderr}");
    let (ok, _, stderr) = run_raw(&["-n", "10", "--ca-file", "ca.pem"]);
    assert!(!ok, "--ca-file accepted without a wss:// target");
    assert!(stderr.contains("--ca-file is for a wss://"), "{stderr}");
}

#[test]
fn a_three_node_cluster_delivers_every_broadcast_sent_to_node_0_everywhere() {
    // The tool starts redis-server itself (scripts/test installs it).
    let r = run(&["--cluster", "3", "-n", "300", "--duration", "1"]);
    assert_eq!(r["server"]["kind"], "cluster");
    assert_eq!(r["server"]["nodes"], 3);
    check_delivery(&r, 300);
}

#[test]
fn hostile_connections_of_every_kind_are_ended_by_the_server_while_the_measured_lose_nothing() {
    // 40 hostile connections, 8 of each kind, beside 200 measured ones. The
    // attack lasts past the server's 10 s request deadline, so that bodies
    // and slowloris heads are ended too; 8 KiB payloads fill a
    // never-reader's outbound cap (1 MiB) within a few seconds.
    let r = run(&[
        "-n",
        "200",
        "--hostile",
        "40",
        "--duration",
        "1",
        "--hostile-secs",
        "12",
        "--payload-bytes",
        "8192",
    ]);
    let phases = r["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["throughput", "hostile"]);
    assert_eq!(phases[0]["hostile"], false);
    assert_eq!(phases[1]["hostile"], true);
    // Only the measured connections count as deliveries, though the hostile
    // WebSockets get the broadcasts too.
    for phase in phases {
        check_phase(phase, 200);
    }

    let h = &r["hostile"];
    assert_eq!(h["connections"], 40, "{h}");
    assert_eq!(h["lost"], 0, "{h}");
    assert_eq!(h["out_of_order"], 0, "{h}");
    let c = &h["compared"][0];
    assert_eq!(
        (&c["without"], &c["with"]),
        (&"throughput".into(), &"hostile".into())
    );
    for f in ["p99_ms_without", "p99_ms_with"] {
        assert!(c[f].as_f64().is_some_and(|v| v > 0.0), "{f}: {c}");
    }
    let peak = h["server_rss_peak_bytes"].as_u64().expect("peak RSS");
    assert!(peak >= h["server_rss_start_bytes"].as_u64().expect("start RSS"));

    let kinds = h["kinds"].as_array().expect("kinds");
    let names: Vec<&str> = kinds.iter().filter_map(|k| k["kind"].as_str()).collect();
    assert_eq!(
        names,
        ["bodies", "slowloris", "oversized", "garbage", "nonreader"]
    );
    for k in kinds {
        assert_eq!(k["slots"], 8, "{k}");
        assert!(k["opened"].as_u64().unwrap_or(0) >= 8, "{k}");
        assert!(k["bytes_sent"].as_u64().unwrap_or(0) > 0, "{k}");
        assert!(k["ended_by_server"].as_u64().unwrap_or(0) > 0, "{k}");
    }
    let ended = |kind: usize| kinds[kind]["ended"].as_object().expect("ended").clone();
    assert!(ended(2).contains_key("close 1009"), "{}", kinds[2]);
    assert!(
        ended(3)
            .keys()
            .any(|k| k == "close 1002" || k == "close 1007"),
        "{}",
        kinds[3]
    );
}

#[test]
fn asymmetric_tokens_sign_every_connection_and_the_admin_calls() {
    // ES256 tokens from the test key pair; the server started here checks
    // them with the public key, REST calls included (an admin ES256 token).
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys");
    let private = format!("{keys}/ec256_private.pem");
    let public = format!("{keys}/ec256_public.pem");
    let r = run(&[
        "-n",
        "200",
        "--duration",
        "1",
        "--jwt-algorithm",
        "ES256",
        "--jwt-private-key",
        &private,
        "--jwt-public-key",
        &public,
    ]);
    check_delivery(&r, 200);
    assert_eq!(r["connect"]["failed"], 0, "{r}");
}
