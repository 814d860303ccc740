//! The subscriber thread: it owns a pub/sub connection on the cluster
//! channel and a second connection for reads (other nodes' presence
//! snapshots, the history log and offsets). Each packet from the channel
//! goes to this node through [`LocalNode`]: numbered messages (every
//! node's, this one's included) to the shards with the single-node path,
//! presence news into the [`super::view::View`]. When its subscription
//! starts it first fills this node's history from the cluster's
//! ([`warm_up`]). It never blocks a shard: what it hands over goes through
//! the bus.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::link::{connect, Reconnect, SUBSCRIBER_POLL};
use super::sequence;
use super::wire::{self, Body};
use super::{Cluster, LocalNode, NodeCounters};
use crate::error::CloseCode;

pub(super) fn run(c: &Cluster, local: &dyn LocalNode) {
    let mut reconnect = Reconnect::new();
    while !c.stop.load(Relaxed) {
        if !reconnect.due() {
            std::thread::sleep(
                SUBSCRIBER_POLL.min(reconnect.next.saturating_duration_since(Instant::now())),
            );
            continue;
        }
        let r = subscribe(c, local, &mut reconnect);
        c.stats.subscriber_up.store(false, Relaxed);
        // Packets may be missed until the next subscription has read the
        // offsets again: no recovery here meanwhile.
        local.history_complete(false);
        if let Err(e) = r {
            reconnect.failed("subscriber", c, &e);
        }
    }
}

/// One subscribed session: returns when the connection fails or on stop.
fn subscribe(c: &Cluster, local: &dyn LocalNode, reconnect: &mut Reconnect) -> RedisResult<()> {
    let mut query = connect(c)?;
    let mut con = connect(c)?;
    let mut ps = con.as_pubsub();
    ps.subscribe(c.names.channel())?;
    ps.set_read_timeout(Some(SUBSCRIBER_POLL))?;
    // What was numbered before this subscription; what is numbered from
    // now on waits in the subscription meanwhile.
    warm_up(c, local, &mut query)?;
    c.stats.subscriber_up.store(true, Relaxed);
    reconnect.succeeded("subscriber", c);
    loop {
        if c.stop.load(Relaxed) {
            return Ok(());
        }
        match ps.get_message() {
            Ok(msg) => on_packet(c, local, msg.get_payload_bytes()),
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
        let pending = {
            let mut view = c.view();
            view.expire(Instant::now());
            view.take_resync()
        };
        for node in pending {
            resync(c, &mut query, &node)?;
        }
        // Outside the view's lock: the directory has locks of its own, and
        // the shards get the presence events through the bus.
        let deltas = c.view().take_sub_deltas();
        if !deltas.is_empty() {
            local.remote_subs(deltas);
        }
    }
}

/// Entries of the history log read per `XRANGE`, and fields of the
/// offsets hash per `HSCAN`.
const WARM_UP_PAGE: usize = 1000;

/// Fills this node's history from the cluster's: the epoch, the log of
/// recent numbered packets (oldest first), then every stream's last offset
/// (after the log, so that the log's entries are not taken for old ones).
/// Then clients may recover here.
fn warm_up(c: &Cluster, local: &dyn LocalNode, con: &mut Connection) -> RedisResult<()> {
    let epoch: Option<String> = redis::cmd("GET").arg(c.names.epoch()).query(con)?;
    if let Some(e) = &epoch {
        local.adopt_epoch(e);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut start = "-".to_string();
    loop {
        type Entries = Vec<(String, HashMap<String, Vec<u8>>)>;
        let entries: Entries = redis::cmd("XRANGE")
            .arg(c.names.history())
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(WARM_UP_PAGE)
            .query(con)?;
        for (id, fields) in &entries {
            let sent_ms = id
                .split_once('-')
                .and_then(|(ms, _)| ms.parse::<u64>().ok())
                .unwrap_or(now_ms);
            let age = Duration::from_millis(now_ms.saturating_sub(sent_ms));
            let Some(bytes) = fields.get("m") else {
                continue;
            };
            let Ok((Some(seq), packet)) = sequence::split(bytes) else {
                continue;
            };
            if let Ok(p) = wire::decode(packet) {
                local.remember(&seq, &p.body, age);
            }
        }
        match entries.last() {
            Some((id, _)) if entries.len() == WARM_UP_PAGE => start = format!("({id}"),
            _ => break,
        }
    }
    let mut cursor = 0u64;
    loop {
        let (next, fields): (u64, Vec<(String, u64)>) = redis::cmd("HSCAN")
            .arg(c.names.offsets())
            .arg(cursor)
            .arg("COUNT")
            .arg(WARM_UP_PAGE)
            .query(con)?;
        local.raise_offsets(&fields);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    local.history_complete(true);
    Ok(())
}

/// Reads `node`'s presence snapshot and its sequence number in one step.
fn resync(c: &Cluster, con: &mut Connection, node: &str) -> RedisResult<()> {
    type Snapshot = (HashMap<String, u32>, HashMap<String, u32>, Option<String>);
    let (users, subs, seq): Snapshot = redis::pipe()
        .atomic()
        .hgetall(c.names.presence_key(node))
        .hgetall(c.names.subs_key(node))
        .get(c.names.seq_key(node))
        .query(con)?;
    // Keys not written yet (or expired): the next heartbeat asks again.
    let Some((inc, seq)) = seq.as_deref().and_then(parse_seq) else {
        return Ok(());
    };
    c.view().on_snapshot(node, inc, seq, users, subs);
    Ok(())
}

fn parse_seq(s: &str) -> Option<(u64, u64)> {
    let (inc, seq) = s.split_once(' ')?;
    Some((inc.parse().ok()?, seq.parse().ok()?))
}

/// Applies one packet from the channel. A numbered one (a message) is
/// applied by every node, its sender included: this node's connections
/// get it under the cluster's numbers too.
fn on_packet(c: &Cluster, local: &dyn LocalNode, bytes: &[u8]) {
    let decoded = sequence::split(bytes).and_then(|(seq, packet)| Ok((seq, wire::decode(packet)?)));
    let (seq, p) = match decoded {
        Ok(d) => d,
        Err(e) => {
            c.stats.malformed.fetch_add(1, Relaxed);
            log::debug!("cluster: {e}");
            return;
        }
    };
    if let Some(seq) = &seq {
        if p.node != c.node_id {
            c.stats.received.fetch_add(1, Relaxed);
        }
        match p.body {
            Body::Broadcast {
                message,
                users,
                exclude,
            } => local.deliver(
                message.get().as_bytes(),
                users.as_deref(),
                &exclude,
                Some(seq),
            ),
            Body::Publish { channel, message } => {
                local.publish(&channel, message.get().as_bytes(), Some(seq));
            }
            _ => {
                c.stats.malformed.fetch_add(1, Relaxed);
            }
        }
        return;
    }
    if p.node == c.node_id {
        if p.inc != c.inc {
            log::warn!(
                "cluster: another node also calls itself {:?}; give each node its own --node-id",
                c.node_id
            );
        }
        return;
    }
    c.stats.received.fetch_add(1, Relaxed);
    let now = Instant::now();
    match p.body {
        Body::Broadcast {
            message,
            users,
            exclude,
        } => {
            local.deliver(message.get().as_bytes(), users.as_deref(), &exclude, None);
        }
        Body::Publish { channel, message } => {
            local.publish(&channel, message.get().as_bytes(), None);
        }
        Body::Subscribe {
            channel,
            users,
            subscribe,
        } => local.subscribe_users(&channel, &users, subscribe),
        Body::Disconnect { user, code } => {
            let reconnect = code != CloseCode::DisconnectedNoReconnect.code();
            local.disconnect(&user, CloseCode::disconnect(reconnect));
        }
        Body::Presence { seq, users, subs } => {
            c.view()
                .on_presence(&p.node, p.inc, seq, &users, &subs, now);
        }
        Body::Heartbeat {
            seq,
            connections,
            messages_in,
            messages_out,
            bytes_out,
        } => {
            let counters = NodeCounters {
                connections,
                messages_in,
                messages_out,
                bytes_out,
            };
            c.view().on_heartbeat(&p.node, p.inc, seq, counters, now);
        }
        Body::Bye => c.view().on_bye(&p.node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_values_parse_or_are_refused() {
        assert_eq!(parse_seq("12 3"), Some((12, 3)));
        assert_eq!(parse_seq("12"), None);
        assert_eq!(parse_seq("a 3"), None);
        assert_eq!(parse_seq(""), None);
    }
}
