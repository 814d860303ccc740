//! Opening the connections: the client threads, the connect ramp (with its
//! progress bar), and settling before the connected figures are taken.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use indicatif::{ProgressBar, ProgressStyle};

use super::setup::{Endpoint, Sizes};
use super::{say, Run};
use crate::client::{self, ClientConfig, ConnSpec, PhaseRecv, Shared, WorkerResult};
use crate::sys;
use crate::{rest, Cli};

/// The client threads and what the connect phase gave.
pub struct Clients {
    pub shared: Arc<Shared>,
    /// Each worker's record of a phase, once the phase is collected.
    pub collected: Receiver<(usize, PhaseRecv)>,
    pub workers: Vec<JoinHandle<WorkerResult>>,
    /// Origin of the timeline (unix micros): when connecting began.
    pub t0_us: u64,
    /// (seconds, connections open) while connecting.
    pub ramp: Vec<(f64, usize)>,
    pub open: usize,
    /// Until the last connection opened.
    pub seconds: f64,
}

impl Clients {
    /// Starts the client threads and waits until every connection opened or
    /// failed, or `--connect-timeout-secs` is over.
    pub fn connect(
        cli: &Cli,
        sizes: &Sizes,
        endpoints: &[Endpoint],
        tokens: &Arc<Vec<String>>,
    ) -> Result<Clients, String> {
        let t0_us = sys::unix_micros();
        let shared = Arc::new(Shared::new(sizes.threads, t0_us));
        let (col_tx, collected) = crossbeam_channel::unbounded::<(usize, PhaseRecv)>();
        let workers = spawn_workers(cli, sizes, endpoints, tokens, &shared, col_tx)?;
        let connect_start = Instant::now();
        let ramp = ramp_up(cli, sizes.n, &shared, connect_start);
        let open = shared.connected.load(Ordering::Relaxed);
        let last_open = shared.last_open_us.load(Ordering::Relaxed);
        let seconds = if last_open > t0_us {
            (last_open - t0_us) as f64 / 1e6
        } else {
            connect_start.elapsed().as_secs_f64()
        };
        let clients = Clients {
            shared,
            collected,
            workers,
            t0_us,
            ramp,
            open,
            seconds,
        };
        say(format!(
            "{open} of {} connections open in {seconds:.2} s ({:.0}/s)",
            sizes.n,
            clients.per_second()
        ));
        Ok(clients)
    }

    /// Connections opened per second.
    pub fn per_second(&self) -> f64 {
        self.open as f64 / self.seconds.max(1e-6)
    }
}

/// One thread per `--threads`, the connections dealt out in turn (and so
/// over the nodes, the users and the source addresses).
fn spawn_workers(
    cli: &Cli,
    sizes: &Sizes,
    endpoints: &[Endpoint],
    tokens: &Arc<Vec<String>>,
    shared: &Arc<Shared>,
    col_tx: Sender<(usize, PhaseRecv)>,
) -> Result<Vec<JoinHandle<WorkerResult>>, String> {
    let threads = sizes.threads;
    let ccfg = Arc::new(ClientConfig {
        targets: endpoints.iter().map(|e| e.addr).collect(),
        tls: endpoints.iter().filter_map(|e| e.tls.clone()).collect(),
        host_header: endpoints[0].host_header.clone(),
        path: endpoints[0].path.clone(),
        token_in_header: cli.token_in_header,
        tokens: tokens.clone(),
        lanes: sizes.rest_conns as u64,
        max_pending: cli.connect_concurrency.div_ceil(threads).max(1),
        handshake_timeout: Duration::from_secs(cli.handshake_timeout_secs.max(1)),
        channels: sizes.channels,
    });
    let mut per_worker: Vec<Vec<ConnSpec>> = vec![Vec::new(); threads];
    for i in 0..sizes.n {
        per_worker[i % threads].push(ConnSpec {
            target: (i % endpoints.len()) as u16,
            user: (i % sizes.users) as u32,
            source: sys::source_addr(i, sizes.source_addrs),
            first_channel: sizes.channels.map_or(0, |l| l.first(i)),
        });
    }
    let mut workers = Vec::new();
    for (id, specs) in per_worker.into_iter().enumerate() {
        workers.push(
            client::spawn(id, ccfg.clone(), specs, shared.clone(), col_tx.clone())
                .map_err(|e| format!("cannot start client thread: {e}"))?,
        );
    }
    Ok(workers)
}

/// Follows the connections as they open, with a progress bar (or a line
/// every 2 s where there is no terminal); the ramp. Past the connect
/// timeout the workers stop connecting, and the handshakes in flight get
/// their own timeout (plus a margin) to finish.
fn ramp_up(cli: &Cli, n: usize, shared: &Shared, connect_start: Instant) -> Vec<(f64, usize)> {
    let bar = progress_bar(cli.quiet, n);
    let plain_progress = !cli.quiet && bar.is_hidden();
    let mut ramp: Vec<(f64, usize)> = vec![(0.0, 0)];
    let connect_deadline = connect_start + Duration::from_secs(cli.connect_timeout_secs);
    let mut last_plain = Instant::now();
    let mut stop_sent = false;
    loop {
        let ok = shared.connected.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        bar.set_position((ok + failed) as u64);
        if failed > 0 {
            bar.set_message(format!("({failed} failed)"));
        }
        ramp.push((connect_start.elapsed().as_secs_f64(), ok));
        if plain_progress && last_plain.elapsed() >= Duration::from_secs(2) {
            say(format!("connecting: {ok} open, {failed} failed of {n}"));
            last_plain = Instant::now();
        }
        if ok + failed >= n {
            break;
        }
        let now = Instant::now();
        if now >= connect_deadline && !stop_sent {
            say(format!(
                "connect phase over after {} s: going on with {ok} connections",
                cli.connect_timeout_secs
            ));
            shared.stop_connecting.store(true, Ordering::Relaxed);
            stop_sent = true;
        }
        if now >= connect_deadline + Duration::from_secs(cli.handshake_timeout_secs + 5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    ramp
}

fn progress_bar(quiet: bool, n: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template("connecting [{bar:40}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

impl Run {
    /// Lets the server settle (welcome messages out) before the connected
    /// figures are taken.
    pub(super) fn settle(&mut self) {
        std::thread::sleep(Duration::from_millis(500));
        if self.server.endpoints.len() > 1 {
            self.await_cluster_presence();
        }
    }

    /// A cluster counts deliveries from its presence, which is a heartbeat
    /// behind: measure only once node 0 sees every connection (at most
    /// 15 s).
    fn await_cluster_presence(&mut self) {
        let open = self.clients.open;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = rest::get_json(
                self.server.endpoints[0].addr,
                self.server.endpoints[0].tls.as_ref(),
                "/v1/websocket/stats?limit=0",
                &self.creds.bearer,
            )
            .ok()
            .and_then(|v| v["totalConnections"].as_u64());
            if seen.is_some_and(|c| c >= open as u64) {
                break;
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "node 0 sees {seen:?} of {open} connections after 15 s; deliveries are counted from what it sees"
                );
                say(&msg);
                self.notes.push(msg);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
