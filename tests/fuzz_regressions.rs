//! Inputs the fuzz targets (fuzz/, `scripts/fuzz`) found crashing, replayed
//! byte for byte through the same harness code (`fuzz/src/`, included here
//! as a module, without libFuzzer), plus the committed seeds, plus a plain
//! test of each bug it found.
//!
//! A new crasher: copy it from `fuzz/artifacts/<target>/` to
//! `tests/fuzz_regressions/<target>/<what-it-is>` and add a test below.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;
use std::time::Instant;

use wsedge::mint_hs256;
use wsedge::testbed::{feed, Outbound, ShardMetrics, WsRead, WsState};

/// A `refresh` whose token (validly signed) has `exp` near `u64::MAX`
/// overflowed `SystemTime` in `conn::ws::expiry_instant` and panicked the
/// shard. Found by `ws_inbound` in its first minute.
#[test]
fn ws_inbound_refresh_exp_overflow() {
    harness::ws_inbound::run(include_bytes!(
        "fuzz_regressions/ws_inbound/refresh-exp-overflow"
    ));
}

/// The same bug on the upgrade path (`WsState::new`) and on refresh, with
/// the largest `exp` there is: the session stays open, nothing panics.
#[test]
fn token_with_largest_exp_opens_and_refreshes() {
    let cfg = harness::config();
    let now = Instant::now();
    for exp in [u64::MAX, u64::MAX - 30, 1 << 63, i64::MAX as u64] {
        let user = harness::USER.into();
        let mut ws = WsState::new(user, exp, "0-1-1".into(), Vec::new(), None, &cfg, 30, now);
        assert!(ws.next_deadline(&cfg) > now);

        let token = mint_hs256(
            harness::SECRET,
            &serde_json::json!({"sub": harness::USER, "exp": exp}),
        );
        let msg = serde_json::json!({"type": "refresh", "payload": {"token": token}}).to_string();
        let mut frame = vec![0x81, 0xfe];
        frame.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0; 4]); // zero mask: payload as is
        frame.extend_from_slice(msg.as_bytes());
        let metrics = ShardMetrics::default();
        let handle = harness::handle(false);
        let env = wsedge::testbed::ws_env(&handle, &metrics, now);
        let mut out = Outbound::default();
        let mut input = Drained(&frame);
        let (read, end) = feed(&mut ws, &mut input, &mut out, &env);
        assert_eq!((read, end), (WsRead::Empty, None));
        let mut bytes = Vec::new();
        out.flush_to(&mut bytes, &mut 0)
            .expect("a Vec takes everything");
        let reply = String::from_utf8_lossy(&bytes);
        assert!(reply.contains(r#""type":"refreshed""#), "{reply}");
    }
}

/// A compressed message left unfinished at EOF kept its collected payload
/// in the filter (until the connection went). Found by `permessage_deflate`
/// in its first seconds.
#[test]
fn permessage_deflate_eof_mid_message() {
    harness::permessage_deflate::run(include_bytes!(
        "fuzz_regressions/permessage_deflate/eof-mid-compressed-message"
    ));
}

/// A socket with these bytes, then `WouldBlock`.
struct Drained<'a>(&'a [u8]);

impl std::io::Read for Drained<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A fuzz target's name and its body.
type Target = (&'static str, fn(&[u8]));

/// Every committed seed and saved crasher still runs clean through its target.
#[test]
fn seeds_and_crashers_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets: [Target; 6] = [
        ("chunked_cost", harness::chunked_cost::run),
        ("http_request", harness::http_request::run),
        ("upgrade", harness::upgrade::run),
        ("ws_inbound", harness::ws_inbound::run),
        ("cluster_packet", harness::cluster_packet::run),
        ("permessage_deflate", harness::permessage_deflate::run),
    ];
    let mut ran = 0;
    for (name, run) in targets {
        for dir in [
            root.join("fuzz/seeds").join(name),
            root.join("tests/fuzz_regressions").join(name),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("dir entry").path();
                let data = std::fs::read(&path).expect("input file");
                eprintln!("{name}: {}", path.display());
                run(&data);
                ran += 1;
            }
        }
    }
    assert!(ran >= 10, "only {ran} inputs found");
}
