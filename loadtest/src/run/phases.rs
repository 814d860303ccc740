//! The load phases: the REST driver opened once, then warm-up, throughput
//! (as fast as the window allows), a fixed offered rate, and the rate
//! sweep, each run the same way by `Run::phase`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::sweep::Sweep;
use super::{say, Cpu, Run};
use crate::client::{self, PhaseRecv, Shared};
use crate::rest::{self, Mode, Pace, RestConfig, RestDriver};
use crate::sys;
use crate::Cli;

/// One phase to run.
pub struct Plan {
    pub name: String,
    pub pace: Pace,
    pub secs: f64,
    pub warmup: bool,
    /// Under attack (`--hostile`): the phase this one runs again.
    pub repeats: Option<String>,
}

impl Plan {
    fn warmup(cli: &Cli) -> Option<Plan> {
        Plan::windowed("warmup", cli.warmup_secs, true, cli)
    }

    pub(super) fn throughput(cli: &Cli) -> Option<Plan> {
        Plan::windowed("throughput", cli.duration, false, cli)
    }

    /// A phase as fast as the window allows, held back by `--max-lag`; none
    /// when it has no time.
    fn windowed(name: &str, secs: f64, warmup: bool, cli: &Cli) -> Option<Plan> {
        (secs > 0.0).then(|| Plan {
            name: name.into(),
            pace: Pace::Window {
                max_lag: cli.max_lag,
            },
            secs,
            warmup,
            repeats: None,
        })
    }

    pub(super) fn rate(cli: &Cli) -> Option<Plan> {
        cli.rate.map(|r| Plan {
            name: "rate".into(),
            pace: Pace::Rate(r),
            secs: cli.rate_secs.unwrap_or(if cli.duration > 0.0 {
                cli.duration
            } else {
                10.0
            }),
            warmup: false,
            repeats: None,
        })
    }

    /// Whether the phase runs under attack.
    pub fn hostile(&self) -> bool {
        self.repeats.is_some()
    }
}

/// How many phases run before the sweep (those under attack included).
fn phases_before_sweep(cli: &Cli) -> usize {
    let measured = [Plan::throughput(cli), Plan::rate(cli)]
        .iter()
        .flatten()
        .count();
    let attacked = if cli.hostile > 0 { measured } else { 0 };
    usize::from(Plan::warmup(cli).is_some()) + measured + attacked
}

/// What is known of a phase once it is over.
pub struct Ran {
    pub plan: Plan,
    /// The workers' number for the phase.
    pub index: usize,
    pub sent: rest::Sent,
    pub tally: rest::Tally,
    pub recv: PhaseRecv,
    pub cpu: Cpu,
    /// Busy CPU seconds of the whole machine during the phase.
    pub machine_cpu: Option<f64>,
    /// Sending, waiting for answers and draining.
    pub wall: f64,
}

impl Ran {
    pub fn p99_ms(&self) -> f64 {
        self.recv.hist.value_at_quantile(0.99) as f64 / 1000.0
    }

    pub fn lost(&self) -> u64 {
        self.tally.expected.saturating_sub(self.recv.received)
    }
}

/// Adds what a worker recorded for phase `q` to that phase, if it ran;
/// whether it did.
pub fn merge_into(ran: &mut [Ran], q: usize, recv: &PhaseRecv) -> bool {
    match ran.iter_mut().find(|r| r.index == q) {
        Some(r) => {
            r.recv.merge(recv);
            true
        }
        None => false,
    }
}

/// The REST side of the load.
pub struct Load {
    pub driver: RestDriver,
    /// Phases due past it are skipped.
    deadline: Instant,
    /// Deliveries one request is expected to make, until answers tell.
    fanout_hint: u64,
    /// The next sequence number no phase has used.
    next_seq: u64,
}

impl Load {
    /// Opens phase `plan`: its number and first sequence number, or the
    /// note that says why it is skipped.
    fn begin(&mut self, plan: &Plan, shared: &Shared) -> Result<(usize, u64), String> {
        if Instant::now() >= self.deadline {
            return Err(format!(
                "phase {} skipped: the run's time budget is spent",
                plan.name
            ));
        }
        if let Err(e) = self.driver.revive() {
            return Err(format!("phase {} skipped: REST connection: {e}", plan.name));
        }
        let lanes = self.driver.lanes() as u64;
        let first_seq = self.next_seq.div_ceil(lanes) * lanes;
        let index = shared
            .begin_phase(first_seq)
            .ok_or_else(|| format!("phase {} skipped: too many phases", plan.name))?;
        Ok((index, first_seq))
    }

    /// Sends for the phase, waits for the answers, then up to `drain_secs`
    /// for the deliveries they promised; whether every answer came.
    fn drive(
        &mut self,
        plan: &Plan,
        first_seq: u64,
        shared: &Shared,
        drain_secs: f64,
    ) -> (rest::Sent, bool) {
        let expected_base = self.driver.expected_total();
        let received_base = shared.received_total();
        let recv_fn = || shared.received_total();
        let sent = self.driver.run_phase(
            plan.pace,
            Duration::from_secs_f64(plan.secs),
            first_seq,
            &recv_fn,
            self.fanout_hint,
        );
        self.next_seq = sent.next_seq;
        let answered = self.driver.wait_answers(Duration::from_secs(10));
        let expected = self.driver.expected_total() - expected_base;
        let drain_end = Instant::now() + Duration::from_secs_f64(drain_secs);
        while shared.received_total() - received_base < expected && Instant::now() < drain_end {
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, answered)
    }
}

/// Seconds the phases may take in all, from the flags.
fn phases_budget(cli: &Cli) -> f64 {
    cli.warmup_secs
        + cli.duration
        + cli.rate_secs.unwrap_or(cli.duration.max(10.0))
        + if cli.sweep {
            cli.sweep_steps as f64 * cli.sweep_step_secs
        } else {
            0.0
        }
        + (phases_before_sweep(cli) + cli.sweep_steps + 2) as f64 * (cli.drain_secs + 12.0)
        + super::attack::budget(cli)
}

/// Asks the workers for what they recorded in phase `index` and gathers it
/// (at most 5 s). Records of earlier phases that come along (late
/// messages) join those phases.
fn collect(
    index: usize,
    shared: &Shared,
    collected: &Receiver<(usize, PhaseRecv)>,
    threads: usize,
    ran: &mut [Ran],
) -> PhaseRecv {
    shared.collect(index);
    let mut recv = PhaseRecv::new();
    let mut got = 0;
    let collect_end = Instant::now() + Duration::from_secs(5);
    while got < threads {
        match collected.recv_timeout(collect_end.saturating_duration_since(Instant::now())) {
            Ok((q, ph)) => {
                if q == index {
                    got += 1;
                }
                if !merge_into(ran, q, &ph) && q == index {
                    recv.merge(&ph);
                }
            }
            Err(_) => break,
        }
    }
    recv
}

impl Run {
    /// Opens the REST connection(s), unless no WebSocket opened (then no
    /// phase runs). The phases' time budget starts here.
    pub(super) fn open_rest(&mut self) -> Result<(), String> {
        let cli = &self.cli;
        let deadline = Instant::now() + Duration::from_secs_f64(phases_budget(cli));
        let open = self.clients.open;
        if open == 0 {
            say("no connection opened: skipping the load phases");
            return Ok(());
        }
        let endpoint = &self.server.endpoints[0];
        let driver = RestDriver::connect(RestConfig {
            addr: endpoint.addr,
            tls: endpoint.tls.clone(),
            host_header: endpoint.host_header.clone(),
            bearer: self.creds.bearer.clone(),
            payload_bytes: cli.payload_bytes,
            mode: cli.mode,
            user_ids: Arc::clone(&self.creds.user_ids),
            targets: cli.targets,
            channels: self.sizes.channels.map_or(1, |l| l.channels),
            lanes: self.sizes.rest_conns,
            window: self.sizes.window,
            audience: self.audience(),
        })
        .map_err(|e| format!("cannot open the REST connection: {e}"))?;
        let per_user = self.sizes.per_user;
        let fanout_hint = match cli.mode {
            Mode::Broadcast => open as u64,
            Mode::Send => per_user as u64,
            Mode::Users => (per_user * cli.targets.min(self.sizes.users)) as u64,
            // A channel's share of the subscriptions.
            Mode::Channel => self
                .sizes
                .channels
                .map_or(open as u64, |l| l.subscribers(0, open)),
        };
        self.load = Some(Load {
            driver,
            deadline,
            fanout_hint,
            next_seq: 0,
        });
        Ok(())
    }

    /// With `--hostile`, the measured connections open at each answer: the
    /// hostile WebSockets get broadcasts too, and the server's
    /// `sentToConnections` counts them, but only the measured ones read
    /// what they get.
    fn audience(&self) -> Option<rest::Audience> {
        if self.cli.hostile == 0 {
            return None;
        }
        let shared = Arc::clone(&self.clients.shared);
        Some(Arc::new(move || {
            let open = shared.connected.load(Ordering::Relaxed);
            open.saturating_sub(shared.dropped.load(Ordering::Relaxed)) as u64
        }))
    }

    /// Load before the measured phases, reported apart.
    pub(super) fn warm_up(&mut self) {
        self.run_plan(Plan::warmup(&self.cli));
    }

    /// As fast as the window (and the lag bound) allows: the ceiling.
    pub(super) fn throughput(&mut self) {
        self.run_plan(Plan::throughput(&self.cli));
    }

    /// `--rate`: a fixed offered rate, for latency.
    pub(super) fn fixed_rate(&mut self) {
        self.run_plan(Plan::rate(&self.cli));
    }

    fn run_plan(&mut self, plan: Option<Plan>) {
        if let Some(plan) = plan {
            self.phase(plan);
        }
    }

    /// `--sweep`: steps of fixed rate from 1/16 of the throughput phase's
    /// ceiling, each step's rate chosen by [`Sweep`] from the last one's
    /// latency, losses and pace.
    pub(super) fn sweep(&mut self) {
        if !self.cli.sweep || self.load.is_none() {
            return;
        }
        let (bound, step_secs) = (self.cli.p99_bound_ms, self.cli.sweep_step_secs);
        let ceiling = self
            .ran
            .iter()
            .filter(|r| {
                !r.plan.warmup && !r.plan.hostile() && matches!(r.plan.pace, Pace::Window { .. })
            })
            .map(|r| r.tally.ok as f64 / r.sent.elapsed.as_secs_f64().max(1e-3))
            .fold(0.0, f64::max);
        let steps = self
            .cli
            .sweep_steps
            .clamp(1, client::MAX_PHASES - phases_before_sweep(&self.cli) - 1);
        let (mut sweep, mut rate) =
            Sweep::new(ceiling, self.cli.rate, steps, 5.0 / step_secs.max(0.1));
        loop {
            let plan = Plan {
                name: format!("sweep {}", sweep.done + 1),
                pace: Pace::Rate(rate),
                secs: step_secs,
                warmup: false,
                repeats: None,
            };
            let Some(r) = self.phase(plan) else { break };
            let kept_up = r.tally.ok as f64 >= 0.95 * rate * r.plan.secs;
            let pass = r.recv.received > 0
                && r.p99_ms() <= bound
                && r.lost() == 0
                && r.tally.errors.is_empty()
                && kept_up;
            match sweep.next(rate, pass) {
                Some(next) => rate = next,
                None => break,
            }
        }
        self.sweep = Some(sweep);
    }

    /// Runs one phase and records it; `None` when it could not run (the
    /// note says why) or no connection opened.
    pub(super) fn phase(&mut self, plan: Plan) -> Option<&Ran> {
        let load = self.load.as_mut()?;
        let shared = &self.clients.shared;
        let (index, first_seq) = match load.begin(&plan, shared) {
            Ok(opened) => opened,
            Err(note) => {
                self.notes.push(note);
                return None;
            }
        };
        if !self.cli.quiet {
            let what = match plan.pace {
                Pace::Rate(r) => format!("{r:.0} requests/s"),
                Pace::Window { .. } => format!("window {}", self.sizes.window),
            };
            say(format!("phase {} ({what}, {:.1} s)", plan.name, plan.secs));
        }
        let cpu0 = Cpu::now(&self.server.srv);
        let m0 = sys::machine_busy_secs();
        let wall0 = Instant::now();
        let (sent, answered) = load.drive(&plan, first_seq, shared, self.cli.drain_secs);
        if !answered {
            self.notes
                .push(format!("phase {}: some REST answers never came", plan.name));
        }
        let cpu1 = Cpu::now(&self.server.srv);
        let m1 = sys::machine_busy_secs();
        let tally = load.driver.take_tally();
        let recv = collect(
            index,
            shared,
            &self.clients.collected,
            self.sizes.threads,
            &mut self.ran,
        );
        let r = Ran {
            plan,
            index,
            sent,
            tally,
            recv,
            cpu: cpu1.since(cpu0),
            machine_cpu: super::difference(m1, m0),
            wall: wall0.elapsed().as_secs_f64(),
        };
        if !self.cli.quiet {
            say(format!(
                "  {} requests, {} deliveries expected, {} received, p99 {:.2} ms",
                r.sent.requests,
                r.tally.expected,
                r.recv.received,
                r.p99_ms()
            ));
        }
        self.ran.push(r);
        self.ran.last()
    }
}
