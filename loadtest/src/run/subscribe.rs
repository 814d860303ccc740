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
    /// Waiting for the answers, both steps.
    pub seconds: f64,
    /// With more than one channel per connection: the figures once every
    /// connection had its first subscription answered, and how many were.
    pub first: Option<(Sample, u64)>,
    /// Once every answer came (or the wait was over), before any publish.
    pub sample: Sample,
}

impl Run {
    /// Subscribes every open connection and waits for the answers; `None`
    /// outside `--mode channel` or when no connection opened. It goes in
    /// K steps, one channel per connection each, the next once every
    /// answer of the last came: what a connection's first subscription
    /// costs (its read buffer, once the client has sent anything, and its
    /// list of channels) is told apart from what each further one does, and
    /// the server never reads more than one subscribe per connection at a
    /// time (K frames at once would grow its read buffer, a cost of the
    /// burst rather than of the subscriptions).
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
        let deadline = Instant::now() + Duration::from_secs(self.cli.subscribe_timeout_secs);
        let mut first = None;
        let mut seconds = 0.0;
        if layout.per_conn > 1 {
            let (acked, _, secs) = self.await_answers(1, open as u64, deadline);
            seconds += secs;
            first = Some((self.settled_sample(), acked));
        }
        let (mut acked, mut refused) = (0, 0);
        for upto in 2.min(layout.per_conn)..=layout.per_conn {
            let secs;
            (acked, refused, secs) =
                self.await_answers(upto, open as u64 * u64::from(upto), deadline);
            seconds += secs;
            if Instant::now() >= deadline {
                // The wait is over (and said so): tell the rest at once.
                self.clients
                    .shared
                    .subscribe
                    .store(layout.per_conn, Ordering::Release);
                break;
            }
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
        let sample = self.settled_sample();
        self.check_channel_count(layout.channels, requested);
        Some(Subscribed {
            requested,
            acked,
            refused,
            seconds,
            first,
            sample,
        })
    }

    /// Tells every connection to subscribe to its first `upto` channels,
    /// then waits until `want` answers came in all (or the deadline):
    /// acknowledged, refused, seconds waited.
    fn await_answers(&mut self, upto: u32, want: u64, deadline: Instant) -> (u64, u64, f64) {
        let shared = &self.clients.shared;
        let started = Instant::now();
        shared.subscribe.store(upto, Ordering::Release);
        let mut last_said = Instant::now();
        loop {
            let acked = shared.acks.load(Ordering::Relaxed);
            let refused = shared.sub_errors.load(Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64();
            if acked + refused >= want {
                return (acked, refused, seconds);
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "{acked} of {want} subscriptions acknowledged ({refused} refused) after {} s: measuring anyway",
                    self.cli.subscribe_timeout_secs
                );
                say(&msg);
                self.notes.push(msg);
                return (acked, refused, seconds);
            }
            if !self.cli.quiet && last_said.elapsed() >= Duration::from_secs(2) {
                say(format!(
                    "subscribing: {acked} of {want} acknowledged, {refused} refused"
                ));
                last_said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// As after connecting: the server settles before the figures.
    fn settled_sample(&self) -> Sample {
        std::thread::sleep(Duration::from_millis(300));
        Sample::take(&self.server.srv)
    }

    /// Notes when node 0 counts other than the channels subscribed to (not
    /// in a cluster, where each node counts its own).
    /// Checks the channel count node 0 reports. In a cluster the other
    /// nodes' subscriptions reach it within ~50 ms: wait for them (at most
    /// 5 s), so that the measured publishes count every subscriber.
    fn check_channel_count(&mut self, channels: u32, subscriptions: u64) {
        let want = u64::from(channels).min(subscriptions);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let seen = loop {
            let seen = rest::get_json(
                self.server.endpoints[0].addr,
                self.server.endpoints[0].tls.as_ref(),
                "/v1/websocket/stats?limit=0",
                &self.creds.bearer,
            )
            .ok()
            .and_then(|v| v["totalChannels"].as_u64());
            if seen == Some(want) || std::time::Instant::now() >= deadline {
                break seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if let Some(n) = seen.filter(|n| *n != want) {
            self.notes.push(format!(
                "the server counts {n} channels; the connections subscribed to {want}"
            ));
        }
    }
}
