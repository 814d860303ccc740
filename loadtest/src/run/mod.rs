//! One load test, stage by stage. [`run`] lists the stages in order; they
//! share one context, `Run`, from the moment the connections are open
//! (before that, each stage hands the next what it built).
//!
//! ```text
//! setup.rs    flags checked, watchdog, sizes under the open-file limit, the server(s), tokens
//! connect.rs  the client threads and the connect ramp, then settling (a cluster's presence)
//! subscribe.rs  --mode channel: every connection subscribes, the answers awaited, RSS again
//! phases.rs   the REST driver and the load phases: warm-up, throughput, fixed rate, sweep
//! attack.rs   --hostile: the measured phases again beside hostile connections, server RSS
//! sweep.rs    how the sweep picks its next rate
//! finish.rs   stopping clients and server(s), the figures, the report
//! ```

mod attack;
mod connect;
mod finish;
mod phases;
mod setup;
mod subscribe;
mod sweep;

use std::time::{Duration, Instant};

use crate::report::Report;
use crate::server::{Kind, ServerUnderTest};
use crate::sys;
use crate::Cli;

use attack::Attacked;
use connect::Clients;
use finish::Samples;
use phases::{Load, Ran};
use setup::{Credentials, Server, Sizes};
use sweep::Sweep;

/// Runs the load test that `cli` describes; its figures, or why it could
/// not run.
pub fn run(cli: Cli) -> Result<Report, String> {
    let started = Instant::now();
    let loadavg_start = sys::loadavg();
    setup::check_flags(&cli)?;
    setup::start_watchdog(&cli);
    let mut notes = Vec::new();
    let sizes = Sizes::fit(&cli, &mut notes)?;
    let server = Server::start(&cli, &sizes, &mut notes)?;
    let creds = Credentials::mint(&cli, &server.signer, sizes.users)?;
    let idle = Sample::idle(&server.srv);
    let clients = Clients::connect(&cli, &sizes, &server.endpoints, &creds.tokens)?;
    let mut run = Run {
        cli,
        started,
        loadavg_start,
        notes,
        sizes,
        server,
        creds,
        clients,
        load: None,
        ran: Vec::new(),
        sweep: None,
        attacked: None,
    };
    run.settle();
    let connected = Sample::take(&run.server.srv);
    let subscribed = run.subscribe();
    run.open_rest()?;
    run.warm_up();
    run.throughput();
    run.fixed_rate();
    run.attack();
    run.sweep();
    let loaded = Sample::take(&run.server.srv);
    let workers = run.stop();
    let samples = Samples {
        idle,
        connected,
        subscribed,
        loaded,
    };
    let report = run.report(&samples, &workers);
    run.write_html(&report)?;
    Ok(report)
}

/// What the stages share once the connections are open.
struct Run {
    cli: Cli,
    started: Instant,
    loadavg_start: Option<f64>,
    /// Said in the report, in the order they came up.
    notes: Vec<String>,
    sizes: Sizes,
    server: Server,
    creds: Credentials,
    clients: Clients,
    /// The REST side of the load; `None` when no connection opened (then
    /// no phase runs).
    load: Option<Load>,
    /// The phases that ran, in order.
    ran: Vec<Ran>,
    /// `--sweep`, once started: the report's word when every step failed.
    sweep: Option<Sweep>,
    /// `--hostile`, once the attack is over: what it did.
    attacked: Option<Attacked>,
}

fn say(msg: impl AsRef<str>) {
    eprintln!("wsedge-loadtest: {}", msg.as_ref());
}

/// CPU seconds of the server (when its process is known) and of the tool.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    server: Option<f64>,
    tool: f64,
}

impl Cpu {
    fn now(srv: &ServerUnderTest) -> Cpu {
        let me = std::process::id();
        let total = sys::cpu_secs(me).unwrap_or(0.0);
        match srv.kind {
            // One process: the server's threads are told apart by name.
            Kind::InProcess => {
                let server = sys::thread_cpu_secs(me, &["wsedge-"]);
                Cpu {
                    server: Some(server),
                    tool: total - server,
                }
            }
            _ => Cpu {
                server: srv.cpu_secs(),
                tool: total,
            },
        }
    }

    /// CPU seconds spent from `earlier` to `self`.
    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            server: difference(self.server, earlier.server),
            tool: self.tool - earlier.tool,
        }
    }
}

/// `a - b` when both are known.
fn difference(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a - b)
}

/// Memory and CPU of server and tool at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    server_rss: Option<u64>,
    tool_rss: Option<u64>,
    cpu: Cpu,
}

impl Sample {
    fn take(srv: &ServerUnderTest) -> Sample {
        Sample {
            server_rss: srv.rss_bytes(),
            tool_rss: sys::rss_bytes(std::process::id()),
            cpu: Cpu::now(srv),
        }
    }

    /// The baseline before any connection, once the server's start-up has
    /// had a moment to settle.
    fn idle(srv: &ServerUnderTest) -> Sample {
        std::thread::sleep(Duration::from_millis(300));
        Sample::take(srv)
    }
}
