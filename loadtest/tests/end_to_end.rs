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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {}; stdout {stdout}; stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"));
    serde_json::from_str(line).expect("JSON line")
}

fn check_delivery(report: &Value, connections: u64) {
    assert_eq!(report["connect"]["open"], connections, "{report}");
    let phase = &report["phases"][0];
    assert_eq!(phase["name"], "throughput");
    let expected = phase["expected"].as_u64().unwrap_or(0);
    let requests = phase["requests_ok"].as_u64().unwrap_or(0);
    assert!(requests > 0, "{phase}");
    // Every broadcast addressed every connection (in a cluster: on every node).
    assert_eq!(expected, requests * connections, "{phase}");
    assert_eq!(phase["received"], expected, "{phase}");
    assert_eq!(phase["lost"], 0);
    assert_eq!(phase["out_of_order"], 0);
    assert_eq!(phase["extra"], 0);
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
}

#[test]
fn a_three_node_cluster_delivers_every_broadcast_sent_to_node_0_everywhere() {
    // The tool starts redis-server itself (scripts/test installs it).
    let r = run(&["--cluster", "3", "-n", "300", "--duration", "1"]);
    assert_eq!(r["server"]["kind"], "cluster");
    assert_eq!(r["server"]["nodes"], 3);
    check_delivery(&r, 300);
}
