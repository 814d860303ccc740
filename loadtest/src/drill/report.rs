//! The drill's figures: the verdicts of every client added up, the goal
//! checked, a human table and one JSON line.

use std::collections::BTreeMap;

use serde::Serialize;

use super::track::{Outcome, Published, Stream, Verdict};

/// Which drill ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drill {
    /// `--cluster N --kill-node-after S`: the last node SIGKILLed.
    #[default]
    KillNode,
    /// `--restart-after S`: the one server SIGKILLed and started again.
    Restart,
}

/// Milliseconds: p50, p99, max over the clients that have the figure.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    pub fn of(mut us: Vec<u64>) -> Spread {
        if us.is_empty() {
            return Spread::default();
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Spread {
            count: us.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Publishes of one kind by outcome.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Kinds {
    pub ok: u64,
    pub failed: u64,
    /// Written, never answered (the connection broke): never counted lost.
    pub unknown: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Publishes {
    pub broadcasts: Kinds,
    pub sends: Kinds,
    pub channel: Kinds,
}

impl Publishes {
    pub fn of(published: &[Published]) -> Publishes {
        let mut p = Publishes::default();
        for m in published {
            let k = match m.stream {
                Stream::All => &mut p.broadcasts,
                Stream::User(_) => &mut p.sends,
                Stream::Chan(_) => &mut p.channel,
            };
            match m.outcome {
                Outcome::Ok => k.ok += 1,
                Outcome::Failed => k.failed += 1,
                Outcome::Unknown => k.unknown += 1,
            }
        }
        p
    }
}

/// Totals, and the worst client, of one count.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Count {
    pub total: u64,
    pub worst: u64,
    pub clients: u64,
}

impl Count {
    fn add(&mut self, n: u64) {
        self.total += n;
        self.worst = self.worst.max(n);
        self.clients += u64::from(n > 0);
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    pub drill: Drill,
    pub clients: usize,
    pub users: usize,
    pub channels: u32,
    pub subs_per_conn: u32,
    pub nodes: usize,
    /// The node killed (the last); node 0 takes the REST calls.
    pub killed_node: Option<usize>,
    /// Publishes per second, the three kinds together.
    pub rate: f64,
    pub event_after_secs: f64,
    pub drill_secs: f64,
    /// The restart: from the kill until the new server listened.
    pub restart_ms: Option<f64>,
    pub publishes: Publishes,
    /// REST request written → answer read, every publish.
    pub publish_answer: Spread,
    /// Deliveries the clients had to get (each message of theirs published OK).
    pub expected: u64,
    /// Messages of ours the clients got (duplicates included).
    pub received: u64,
    /// Clients connected to the killed (or restarted) node at the event.
    pub on_killed_node: usize,
    /// Clients whose connection ended at the event.
    pub dropped: usize,
    pub reconnected: usize,
    pub recovered_true: usize,
    /// `recovered: false` on the reconnect or a resubscribe: they reload.
    pub recovered_false: usize,
    pub reloaded: usize,
    pub lost: Count,
    pub duplicated: Count,
    pub out_of_order: Count,
    pub covered_by_reload: Count,
    pub misrouted: Count,
    pub unparsed: u64,
    /// From the event until a dropped client had its reconnect, every
    /// resubscribe and the replay.
    pub time_to_recover: Spread,
    /// The backoff those clients waited before reconnecting.
    pub backoff: Spread,
    /// Clients that took longer than their backoff + 1 s (or never finished).
    pub over_budget: usize,
    /// Nodes the dropped clients reconnected to.
    pub reconnected_to: BTreeMap<String, usize>,
    /// Attempts that gave no `connected`, ends of connections, and errors,
    /// by reason.
    pub events: BTreeMap<String, u64>,
    pub goal: String,
    pub pass: bool,
    /// What missed the goal.
    pub failed: Vec<String>,
    pub seconds: f64,
}

/// The figures once every client is judged.
pub struct Inputs<'a> {
    pub drill: Drill,
    pub verdicts: &'a [Verdict],
    pub homes: &'a [u16],
    pub received: u64,
    pub unparsed: u64,
    pub events: BTreeMap<String, u64>,
    pub published: &'a [Published],
    pub killed_node: Option<usize>,
}

/// The slack over its own backoff a client has to recover in.
pub const RECOVER_SLACK_US: u64 = 1_000_000;

impl DrillReport {
    /// Adds up the verdicts and checks the goal; the sizes and flags are
    /// filled in by the caller.
    pub fn build(inp: Inputs, base: DrillReport) -> DrillReport {
        let mut r = base;
        r.drill = inp.drill;
        r.killed_node = inp.killed_node;
        r.publishes = Publishes::of(inp.published);
        r.publish_answer = Spread::of(
            inp.published
                .iter()
                .map(|p| p.answered_us.saturating_sub(p.sent_us))
                .collect(),
        );
        r.received = inp.received;
        r.unparsed = inp.unparsed;
        r.events = inp.events;
        r.on_killed_node = match inp.killed_node {
            Some(k) => inp.homes.iter().filter(|&&h| usize::from(h) == k).count(),
            None => inp.homes.len(),
        };
        let mut recover = Vec::new();
        let mut backoff = Vec::new();
        for v in inp.verdicts {
            r.expected += v.expected;
            r.lost.add(v.lost);
            r.duplicated.add(v.duplicated);
            r.out_of_order.add(v.out_of_order);
            r.covered_by_reload.add(v.covered_by_reload);
            r.misrouted.add(v.misrouted);
            if !v.dropped {
                continue;
            }
            r.dropped += 1;
            if v.reconnected {
                r.reconnected += 1;
                backoff.push(v.backoff_us);
            }
            if let Some(n) = v.node_after {
                *r.reconnected_to.entry(format!("node-{n}")).or_default() += 1;
            }
            match v.recovered {
                Some(true) => r.recovered_true += 1,
                Some(false) => r.recovered_false += 1,
                None => {}
            }
            if v.covered_by_reload > 0 || v.recovered == Some(false) {
                r.reloaded += 1;
            }
            match v.recover_us {
                Some(us) => {
                    recover.push(us);
                    if us > v.backoff_us + RECOVER_SLACK_US {
                        r.over_budget += 1;
                    }
                }
                None => r.over_budget += 1,
            }
        }
        r.time_to_recover = Spread::of(recover);
        r.backoff = Spread::of(backoff);
        r.check_goal();
        r
    }

    fn check_goal(&mut self) {
        let mut failed = Vec::new();
        let mut need = |ok: bool, what: String| {
            if !ok {
                failed.push(what);
            }
        };
        let p = &self.publishes;
        need(
            p.broadcasts.ok > 0 && p.sends.ok > 0 && p.channel.ok > 0,
            "every kind published at least once".into(),
        );
        need(
            self.on_killed_node > 0 && self.dropped == self.on_killed_node,
            format!(
                "the {} clients of the node dropped at the event (dropped: {})",
                self.on_killed_node, self.dropped
            ),
        );
        need(
            self.reconnected == self.dropped,
            format!(
                "all {} reconnected (reconnected: {})",
                self.dropped, self.reconnected
            ),
        );
        for (name, c) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("out of order", self.out_of_order),
            ("misrouted", self.misrouted),
        ] {
            need(c.total == 0, format!("0 {name} (got {})", c.total));
        }
        match self.drill {
            Drill::KillNode => {
                self.goal = "every client of the killed node reconnects to another node and recovers (recovered: true) within its backoff + 1 s; 0 lost, 0 duplicated, 0 out of order, 0 misrouted".into();
                need(
                    self.recovered_true == self.dropped,
                    format!(
                        "all {} recovered: true (true: {}, false: {})",
                        self.dropped, self.recovered_true, self.recovered_false
                    ),
                );
                need(
                    self.over_budget == 0,
                    format!(
                        "all recovered within backoff + 1 s ({} did not)",
                        self.over_budget
                    ),
                );
            }
            Drill::Restart => {
                self.goal = "every client reconnects to the restarted server and reloads (recovered: false: a new epoch, no history); 0 lost after the reload, 0 duplicated, 0 out of order, 0 misrouted".into();
                need(
                    self.recovered_false == self.dropped,
                    format!(
                        "all {} recovered: false (false: {}, true: {})",
                        self.dropped, self.recovered_false, self.recovered_true
                    ),
                );
            }
        }
        self.pass = failed.is_empty();
        self.failed = failed;
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let event = match self.drill {
            Drill::KillNode => format!(
                "node {} of {} killed (SIGKILL) after {:.1} s",
                self.killed_node.unwrap_or(0),
                self.nodes,
                self.event_after_secs
            ),
            Drill::Restart => format!(
                "server killed (SIGKILL) after {:.1} s and started again on its port{}",
                self.event_after_secs,
                self.restart_ms
                    .map(|ms| format!(" ({ms:.0} ms later)"))
                    .unwrap_or_default()
            ),
        };
        let k = |k: &Kinds| format!("{} ok, {} failed, {} unknown", k.ok, k.failed, k.unknown);
        let c = |c: &Count| {
            format!(
                "{} (worst client {}, clients {})",
                c.total, c.worst, c.clients
            )
        };
        let s = |s: &Spread, of: &str| {
            format!(
                "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} {of})",
                s.p50_ms, s.p99_ms, s.max_ms, s.count
            )
        };
        let _ = writeln!(t, "failover drill ({:?})", self.drill);
        let rows: Vec<(&str, String)> = vec![
            (
                "clients",
                format!(
                    "{} ({} users, {} channels × {} per client, {} node(s))",
                    self.clients, self.users, self.channels, self.subs_per_conn, self.nodes
                ),
            ),
            ("event", event),
            (
                "publishing",
                format!(
                    "{:.0}/s for {:.1} s after the event",
                    self.rate, self.drill_secs
                ),
            ),
            ("broadcasts", k(&self.publishes.broadcasts)),
            ("user sends", k(&self.publishes.sends)),
            ("channel publishes", k(&self.publishes.channel)),
            ("publish answers", s(&self.publish_answer, "publishes")),
            (
                "deliveries",
                format!("{} expected, {} received", self.expected, self.received),
            ),
            (
                "on the node",
                format!(
                    "{} (dropped {}, reconnected {})",
                    self.on_killed_node, self.dropped, self.reconnected
                ),
            ),
            (
                "recovered",
                format!(
                    "true {}, false {} (reloaded {})",
                    self.recovered_true, self.recovered_false, self.reloaded
                ),
            ),
            ("lost", c(&self.lost)),
            ("duplicated", c(&self.duplicated)),
            ("out of order", c(&self.out_of_order)),
            ("misrouted", c(&self.misrouted)),
            ("covered by reload", c(&self.covered_by_reload)),
            ("time to recover", s(&self.time_to_recover, "clients")),
            ("backoff waited", s(&self.backoff, "clients")),
            (
                "over budget",
                format!("{} (recovery > backoff + 1 s, or never)", self.over_budget),
            ),
            (
                "reconnected to",
                self.reconnected_to
                    .iter()
                    .map(|(n, c)| format!("{n}: {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ];
        for (name, v) in rows {
            let _ = writeln!(t, "  {name:<18} {v}");
        }
        let mut events: Vec<(&String, &u64)> = self.events.iter().collect();
        events.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, n) in events.into_iter().take(8) {
            let _ = writeln!(t, "  {:<18} {n} × {reason}", "events");
        }
        let _ = writeln!(t, "  {:<18} {}", "goal", self.goal);
        let verdict = if self.pass {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.failed.join("; "))
        };
        let _ = write!(t, "  {:<18} {verdict}", "result");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovered(us: u64, backoff_us: u64) -> Verdict {
        Verdict {
            expected: 10,
            dropped: true,
            reconnected: true,
            recovered: Some(true),
            recover_us: Some(us),
            backoff_us,
            node_after: Some(0),
            ..Verdict::default()
        }
    }

    fn build(drill: Drill, verdicts: &[Verdict], homes: &[u16]) -> DrillReport {
        let published: Vec<Published> = [Stream::All, Stream::User(0), Stream::Chan(0)]
            .into_iter()
            .map(|stream| Published {
                stream,
                seq: 1,
                sent_us: 1,
                answered_us: 2,
                outcome: Outcome::Ok,
            })
            .collect();
        DrillReport::build(
            Inputs {
                drill,
                verdicts,
                homes,
                received: 0,
                unparsed: 0,
                events: BTreeMap::new(),
                published: &published,
                killed_node: (drill == Drill::KillNode).then_some(2),
            },
            DrillReport::default(),
        )
    }

    #[test]
    fn the_kill_drill_passes_only_when_every_client_recovers_in_time_losing_nothing() {
        let steady = Verdict {
            expected: 10,
            ..Verdict::default()
        };
        let homes = [0, 1, 2, 2];
        let ok = [
            steady.clone(),
            steady.clone(),
            recovered(400_000, 300_000),
            recovered(1_200_000, 250_000),
        ];
        let r = build(Drill::KillNode, &ok, &homes);
        assert!(r.pass, "{:?}", r.failed);
        assert_eq!((r.on_killed_node, r.dropped, r.recovered_true), (2, 2, 2));
        assert_eq!(r.time_to_recover.max_ms, 1200.0);
        assert_eq!(r.reconnected_to.get("node-0"), Some(&2));

        // 1.4 s with a 300 ms backoff is over budget.
        let mut late = ok.clone();
        late[3] = recovered(1_400_000, 300_000);
        let r = build(Drill::KillNode, &late, &homes);
        assert!(!r.pass);
        assert_eq!(r.over_budget, 1);

        // One lost message on a client that never dropped fails it too.
        let mut lossy = ok.clone();
        lossy[0].lost = 1;
        let r = build(Drill::KillNode, &lossy, &homes);
        assert!(!r.pass);
        assert_eq!((r.lost.total, r.lost.worst, r.lost.clients), (1, 1, 1));

        // A reload is a failure of the kill drill.
        let mut reload = ok.clone();
        reload[2].recovered = Some(false);
        let r = build(Drill::KillNode, &reload, &homes);
        assert!(!r.pass);
        assert_eq!((r.recovered_true, r.recovered_false, r.reloaded), (1, 1, 1));
    }

    #[test]
    fn the_restart_drill_passes_when_everyone_reloads() {
        let mut v = recovered(300_000, 250_000);
        v.recovered = Some(false);
        v.covered_by_reload = 5;
        let r = build(Drill::Restart, &[v.clone(), v.clone()], &[0, 0]);
        assert!(r.pass, "{:?}", r.failed);
        assert_eq!((r.on_killed_node, r.reloaded), (2, 2));
        let r = build(Drill::Restart, &[v, recovered(300_000, 250_000)], &[0, 0]);
        assert!(!r.pass);
    }

    #[test]
    fn spreads_are_nearest_rank() {
        let s = Spread::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(
            (s.count, s.p50_ms, s.p99_ms, s.max_ms),
            (100, 51.0, 99.0, 100.0)
        );
        assert_eq!(Spread::of(Vec::new()).count, 0);
    }
}
