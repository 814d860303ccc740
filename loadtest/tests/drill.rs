//! The failover drill at CI size (300 clients), run whole as a user runs
//! it, with the goal's zero-loss assertions: the tool exits 4 when the
//! goal is missed, and its JSON line (the last line of stdout) is checked
//! here too. Loopback only, bounded by the tool's watchdog and a deadline
//! here. The cluster drill needs `redis-server`: the Redis of
//! `WSEDGE_TEST_REDIS_URL` (scripts/test starts one), or one the tool
//! starts itself.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOOL: &str = env!("CARGO_BIN_EXE_wsedge-loadtest");

/// Runs the tool with `args`; its exit code, JSON line and stderr.
fn run(args: &[&str]) -> (Option<i32>, Value, String) {
    let mut cmd = Command::new(TOOL);
    cmd.args(args)
        .args(["--quiet", "--server-shards", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(url) = std::env::var("WSEDGE_TEST_REDIS_URL") {
        if args.contains(&"--cluster") {
            cmd.args(["--redis-url", &url]);
        }
    }
    let mut child = cmd.spawn().expect("spawn the load tool");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the drill ran over 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line; stdout {stdout}; stderr {stderr}"));
    let report = serde_json::from_str(line).expect("JSON line");
    (out.status.code(), report, format!("{stdout}\n{stderr}"))
}

/// Nothing lost, duplicated, out of order or misrouted, for any client.
fn check_zero(r: &Value, out: &str) {
    for k in ["lost", "duplicated", "out_of_order", "misrouted"] {
        assert_eq!(r[k]["total"], 0, "{k}: {out}");
    }
    for k in ["broadcasts", "sends", "channel"] {
        assert!(r["publishes"][k]["ok"].as_u64() > Some(0), "{k}: {out}");
    }
    assert!(r["expected"].as_u64() > Some(0), "{out}");
    assert_eq!(r["unparsed"], 0, "{out}");
}

/// The kill drill on a 3-node cluster of `n` clients (`extra` flags added),
/// checked for nothing lost, duplicated, out of order or misrouted.
fn kill_node_drill(n: &str, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec![
        "-n",
        n,
        "--cluster",
        "3",
        "--kill-node-after",
        "1.5",
        "--drill-secs",
        "2",
    ];
    args.extend_from_slice(extra);
    let (code, r, out) = run(&args);
    assert_eq!(r["drill"], "kill-node", "{out}");
    check_zero(&r, &out);
    (code, r, out)
}

#[test]
fn killing_a_cluster_node_loses_nothing_and_its_clients_recover_on_the_others() {
    let (code, r, out) = kill_node_drill("300", &[]);
    // The last node's third of the clients, every one back and recovered.
    assert_eq!(r["killed_node"], 2, "{out}");
    assert_eq!(r["on_killed_node"], 100, "{out}");
    assert_eq!(r["dropped"], 100, "{out}");
    assert_eq!(r["reconnected"], 100, "{out}");
    assert_eq!(r["recovered_true"], 100, "{out}");
    assert_eq!(r["recovered_false"], 0, "{out}");
    assert_eq!(r["covered_by_reload"]["total"], 0, "{out}");
    assert_eq!(r["over_budget"], 0, "{out}");
    assert_eq!(r["time_to_recover"]["count"], 100, "{out}");
    // Spread over the two survivors, none back on the dead node.
    let to = r["reconnected_to"].as_object().expect("reconnected_to");
    assert!(to.get("node-2").is_none(), "{out}");
    assert_eq!(to.len(), 2, "{out}");
    assert_eq!(r["pass"], true, "{out}");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_restarted_single_node_makes_every_client_reload_and_lose_nothing_after() {
    let (code, r, out) = run(&["-n", "300", "--restart-after", "1", "--drill-secs", "2"]);
    assert_eq!(r["drill"], "restart", "{out}");
    check_zero(&r, &out);
    // A new epoch: nobody recovers, everybody reloads.
    assert_eq!(r["dropped"], 300, "{out}");
    assert_eq!(r["reconnected"], 300, "{out}");
    assert_eq!(r["recovered_false"], 300, "{out}");
    assert_eq!(r["recovered_true"], 0, "{out}");
    assert_eq!(r["reloaded"], 300, "{out}");
    assert_eq!(r["pass"], true, "{out}");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn killing_a_cluster_node_over_tls_loses_nothing() {
    // The same drill with --server-tls: the nodes serve a throwaway
    // certificate, the clients reconnect over wss:// and the publisher
    // posts over https://.
    let (code, r, out) = kill_node_drill("150", &["--server-tls"]);
    assert_eq!(r["dropped"], 50, "{out}");
    assert_eq!(r["reconnected"], 50, "{out}");
    assert_eq!(r["recovered_true"], 50, "{out}");
    assert_eq!(r["pass"], true, "{out}");
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn the_drill_refuses_what_it_cannot_do() {
    for args in [
        &["--kill-node-after", "1"][..],
        &["--restart-after", "1", "--cluster", "3"],
        &[
            "--cluster",
            "3",
            "--kill-node-after",
            "1",
            "--restart-after",
            "1",
        ],
        &["--cluster", "3", "--kill-node-after", "1", "--mode", "send"],
    ] {
        let out = Command::new(TOOL)
            .args(["-n", "10", "--quiet"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the tool");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).is_empty(),
            "{args:?}: says why"
        );
    }
}
