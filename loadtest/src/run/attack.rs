//! The attack (`--hostile N`), after the phases without it: the hostile
//! connections start beside the measured ones; once every slot's first
//! connect has finished (at most [`RAMP_WAIT`]), each measured phase
//! (throughput, fixed rate) runs again under attack, named `hostile` and
//! `hostile rate`, while a thread samples the server's RSS every 50 ms;
//! then the attack stops, before the sweep. Also its part of the report:
//! each phase beside its repeat under attack, the RSS, and per kind what
//! the connections did and how the server ended them.
//!
//! The measured clients are the only ones counted as deliveries: the REST
//! answers' `sentToConnections` is capped at the measured connections open
//! (see `Run::audience`), since the hostile WebSockets get broadcasts too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::phases::Plan;
use super::{say, Run};
use crate::hostile::{self, Attack, KindStats};
use crate::report::{Compared, HostileInfo, PhaseInfo};
use crate::server::{Kind, ServerUnderTest};
use crate::{sys, Cli};

/// Longest wait for the hostile connections' first connects.
const RAMP_WAIT: Duration = Duration::from_secs(10);
/// Interval of the RSS samples.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// The phases run again under attack, as their plans.
fn attacked(cli: &Cli) -> Vec<Plan> {
    [
        (Plan::throughput(cli), "hostile"),
        (Plan::rate(cli), "hostile rate"),
    ]
    .into_iter()
    .filter_map(|(p, name)| p.map(|p| (p, name)))
    .map(|(p, name)| Plan {
        name: name.into(),
        secs: cli.hostile_secs.unwrap_or(p.secs),
        repeats: Some(p.name.clone()),
        ..p
    })
    .collect()
}

/// Seconds the attack may take: the ramp, its phases, their drains.
pub fn budget(cli: &Cli) -> f64 {
    if cli.hostile == 0 {
        return 0.0;
    }
    RAMP_WAIT.as_secs_f64()
        + attacked(cli)
            .iter()
            .map(|p| p.secs + cli.drain_secs + 12.0)
            .sum::<f64>()
}

/// What the attack left for the report.
pub struct Attacked {
    kinds: Vec<KindStats>,
    seconds: f64,
    /// (seconds since the attack started, server RSS bytes).
    rss: Vec<(f64, u64)>,
}

/// The server's RSS every [`RSS_EVERY`] on a thread of its own, from the
/// start of the attack to its stop (or `limit`).
struct RssWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(f64, u64)>>>,
}

impl RssWatch {
    fn start(srv: &ServerUnderTest, limit: Duration) -> RssWatch {
        let pids = srv.pids();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lt-rss".into())
            .spawn(move || {
                let start = Instant::now();
                let mut curve = Vec::new();
                while !flag.load(Ordering::Relaxed) && start.elapsed() < limit {
                    if let Some(rss) = sys::rss_sum(&pids) {
                        curve.push((start.elapsed().as_secs_f64(), rss));
                    }
                    std::thread::sleep(RSS_EVERY);
                }
                curve
            })
            .ok();
        RssWatch { stop, thread }
    }

    fn stop(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Run {
    /// `--hostile N`: the measured phases again, under attack.
    pub(super) fn attack(&mut self) {
        if self.cli.hostile == 0 || self.load.is_none() {
            return;
        }
        let limit = Duration::from_secs_f64(budget(&self.cli) + 5.0);
        let started = Instant::now();
        let rss = RssWatch::start(&self.server.srv, limit);
        let attack = match Attack::start(
            self.hostile_config(started + limit),
            &self.cli.hostile_kinds,
            self.sizes.threads,
        ) {
            Ok(a) => a,
            Err(e) => {
                self.notes
                    .push(format!("the hostile connections could not start: {e}"));
                rss.stop();
                return;
            }
        };
        while !attack.ramped() && started.elapsed() < RAMP_WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        say(format!(
            "{} hostile connections started in {:.1} s",
            self.cli.hostile,
            started.elapsed().as_secs_f64()
        ));
        for plan in attacked(&self.cli) {
            self.phase(plan);
        }
        let kinds = attack.stop();
        self.attacked = Some(Attacked {
            kinds,
            seconds: started.elapsed().as_secs_f64(),
            rss: rss.stop(),
        });
    }

    /// Where the hostile connections go (the run's endpoints) and their
    /// users' tokens (`lt-h0`, `lt-h1`, …: valid, like the measured
    /// clients', under another prefix).
    fn hostile_config(&self, deadline: Instant) -> hostile::Config {
        let eps = &self.server.endpoints;
        let (_, tokens) =
            self.server
                .signer
                .users("lt-h", self.cli.hostile, &serde_json::json!({}));
        hostile::Config {
            targets: eps.iter().map(|e| e.addr).collect(),
            host_header: eps[0].host_header.clone(),
            path: eps[0].path.clone(),
            token_in_header: self.cli.token_in_header,
            tokens,
            source_addrs: self.sizes.source_addrs,
            deadline,
        }
    }

    /// The report's `hostile` part, when an attack ran.
    pub(super) fn hostile_info(&mut self, phases: &[PhaseInfo]) -> Option<HostileInfo> {
        let a = self.attacked.take()?;
        let compared: Vec<Compared> = self
            .ran
            .iter()
            .zip(phases)
            .filter_map(|(r, with)| {
                let base = r.plan.repeats.as_ref()?;
                let without = phases.iter().find(|p| &p.name == base)?;
                Some(Compared::of(without, with))
            })
            .collect();
        if self.server.srv.kind == Kind::InProcess {
            self.notes
                .push("hostile: in-process, the server RSS under attack is the tool's too".into());
        }
        let attacked = phases.iter().filter(|p| p.hostile);
        Some(HostileInfo {
            connections: self.cli.hostile,
            seconds: a.seconds,
            lost: attacked.clone().map(|p| p.lost).sum(),
            out_of_order: attacked.map(|p| p.out_of_order).sum(),
            compared,
            server_rss_start_bytes: a.rss.first().map(|s| s.1),
            server_rss_peak_bytes: a.rss.iter().map(|s| s.1).max(),
            server_rss_end_bytes: a.rss.last().map(|s| s.1),
            kinds: a.kinds,
            rss_curve: a.rss,
        })
    }
}
