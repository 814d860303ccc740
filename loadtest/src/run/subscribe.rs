//! `--mode channel`, between connecting and the load: every open connection
//! subscribes to its channels, and the tool waits (at most
//! `--subscribe-timeout-secs`) until each subscription is acknowledged or
//! refused. The server's RSS is sampled again then: its growth over the
//! connected figure, per subscription, is what a subscription costs beyond
//! the connection.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{say, Run, Sample};
use crate::rest;

/// What subscribing gave.
pub struct Subscribed {
    /// Subscriptions asked for: open connections × `--subs-per-conn`.
    pub requested: u64,
    pub acked: u64,
    pub refused: u64,
    /// From the first subscribe sent to the last answer counted.
    pub seconds: f64,
    /// Once every answer came (or the wait was over), before any publish.
    pub sample: Sample,
}

impl Run {
    /// Subscribes every open connection and waits for the answers; `None`
    /// outside `--mode channel` or when no connection opened.
    pub(super) fn subscribe(&mut self) -> Option<Subscribed> {
        let layout = self.sizes.channels?;
        let shared = &self.clients.shared;
        let open = shared
            .connected
            .load(Ordering::Relaxed)
            .saturating_sub(shared.dropped.load(Ordering::Relaxed));
        if open == 0 {
            return None;
        }
        let requested = layout.subscriptions(open);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.cli.subscribe_timeout_secs);
        shared.subscribe.store(true, Ordering::Release);
        let mut last_said = Instant::now();
        let (mut acked, mut refused);
        let mut seconds;
        loop {
            acked = shared.acks.load(Ordering::Relaxed);
            refused = shared.sub_errors.load(Ordering::Relaxed);
            seconds = started.elapsed().as_secs_f64();
            if acked + refused >= requested {
                break;
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "{acked} of {requested} subscriptions acknowledged ({refused} refused) after {} s: measuring anyway",
                    self.cli.subscribe_timeout_secs
                );
                say(&msg);
                self.notes.push(msg);
                break;
            }
            if !self.cli.quiet && last_said.elapsed() >= Duration::from_secs(2) {
                say(format!(
                    "subscribing: {acked} of {requested} acknowledged, {refused} refused"
                ));
                last_said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        say(format!(
            "{acked} of {requested} subscriptions ({} channels, {} per connection) acknowledged in {seconds:.2} s{}",
            layout.channels,
            layout.per_conn,
            if refused > 0 {
                format!("; {refused} refused")
            } else {
                String::new()
            }
        ));
        // As after connecting: let the server settle before the figures.
        std::thread::sleep(Duration::from_millis(300));
        let sample = Sample::take(&self.server.srv);
        self.check_channel_count(layout.channels, requested);
        if self.server.endpoints.len() > 1 {
            self.notes.push("channels are node-local: a publish to node 0 reaches node 0's subscribers only (its sentToConnections says how many)".into());
        }
        Some(Subscribed {
            requested,
            acked,
            refused,
            seconds,
            sample,
        })
    }

    /// Notes when node 0 counts other than the channels subscribed to (not
    /// in a cluster, where each node counts its own).
    fn check_channel_count(&mut self, channels: u32, subscriptions: u64) {
        if self.server.endpoints.len() > 1 {
            return;
        }
        let want = u64::from(channels).min(subscriptions);
        let seen = rest::get_json(
            self.server.endpoints[0].addr,
            "/v1/websocket/stats?limit=0",
            &self.creds.bearer,
        )
        .ok()
        .and_then(|v| v["totalChannels"].as_u64());
        if let Some(n) = seen.filter(|n| *n != want) {
            self.notes.push(format!(
                "the server counts {n} channels; the connections subscribed to {want}"
            ));
        }
    }
}
