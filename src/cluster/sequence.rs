//! Numbering messages across the cluster (docs/PROTOCOL.md §11): Redis
//! gives each message its offset on each of its streams, so that every node
//! delivers and keeps it under the same numbers, in the same order.
//!
//! A message to number (a broadcast, a send, a channel publish) goes to
//! Redis as one call of [`SCRIPT`], which in one atomic step: reads (or
//! sets) the cluster's epoch, increments the offset of each of the
//! message's streams, appends the numbered packet to the cluster's capped
//! history log and publishes it on the cluster channel. What every node
//! (the sender included) then reads is `S<epoch> <offset>,<offset>…\n`
//! followed by the packet. Nothing here does I/O; the link runs the
//! script.

use super::wire::{Body, DecodeError};
use crate::history::{targets, Stream};

/// The sequencing script. Keys: the offsets hash, the history log (a
/// Redis stream), the epoch key, the cluster channel. Arguments: the epoch
/// to set when there is none, the packet, the log's length (0: no log),
/// then the message's streams.
pub const SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
end
local offsets = {}
for i = 4, #ARGV do
  offsets[#offsets + 1] = redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
end
local msg = 'S' .. epoch .. ' ' .. table.concat(offsets, ',') .. '\n' .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, '*', 'm', msg)
end
redis.call('PUBLISH', KEYS[4], msg)
return 1
"#;

/// A packet's numbers: the epoch and, per stream of [`streams`], its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq {
    pub epoch: String,
    pub offsets: Vec<u64>,
}

/// The Redis names of the streams the message of `body` travels on, in
/// the order of its offsets: `@all`; `@user:<id>` for each targeted user
/// (once each, exclusions out); `#<channel>`. Empty for what is not a
/// message.
pub fn streams(body: &Body<'_>) -> Vec<String> {
    match body {
        Body::Broadcast { users: None, .. } => vec!["@all".to_string()],
        Body::Broadcast {
            users: Some(users),
            exclude,
            ..
        } => targets(users, exclude)
            .map(|u| format!("@user:{u}"))
            .collect(),
        Body::Publish { channel, .. } => vec![format!("#{channel}")],
        _ => Vec::new(),
    }
}

/// The stream a Redis name of [`streams`] stands for.
pub fn stream_of(name: &str) -> Option<Stream<'_>> {
    if name == "@all" {
        return Some(Stream::All);
    }
    if let Some(user) = name.strip_prefix("@user:") {
        return Some(Stream::User(user));
    }
    name.strip_prefix('#').map(Stream::Channel)
}

/// Splits what arrives on the cluster channel into its numbers (for a
/// numbered packet) and the packet.
pub fn split(bytes: &[u8]) -> Result<(Option<Seq>, &[u8]), DecodeError> {
    let Some(rest) = bytes.strip_prefix(b"S") else {
        return Ok((None, bytes));
    };
    let bad = || DecodeError::Header;
    let nl = rest.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&rest[..nl]).map_err(|_| bad())?;
    let (epoch, offsets) = head.split_once(' ').ok_or_else(bad)?;
    let offsets = offsets
        .split(',')
        .filter(|o| !o.is_empty())
        .map(|o| o.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if epoch.is_empty() || offsets.contains(&0) {
        return Err(bad());
    }
    let seq = Seq {
        epoch: epoch.to_string(),
        offsets,
    };
    Ok((Some(seq), &rest[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn numbered_packets_split_into_numbers_and_packet() {
        let (seq, packet) = split(b"Sab12 7,9\n{\"x\":1}").unwrap();
        assert_eq!(
            seq,
            Some(Seq {
                epoch: "ab12".into(),
                offsets: vec![7, 9]
            })
        );
        assert_eq!(packet, b"{\"x\":1}");
        let (none, same) = split(b"{\"node\":1}").unwrap();
        assert!(none.is_none());
        assert_eq!(same, b"{\"node\":1}");
        for bad in [
            &b"S"[..],
            b"Sab 1,2",
            b"S 1\n{}",
            b"Sab x\n{}",
            b"Sab 0\n{}",
            b"S\xff 1\n{}",
        ] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn streams_follow_the_targets_in_order_once_each() {
        let env = RawValue::from_string("{}".into()).unwrap();
        let all = Body::Broadcast {
            message: &env,
            users: None,
            exclude: vec!["x".into()],
        };
        assert_eq!(streams(&all), ["@all"]);
        let some = Body::Broadcast {
            message: &env,
            users: Some(vec!["b".into(), "a".into(), "b".into(), "x".into()]),
            exclude: vec!["x".into()],
        };
        assert_eq!(streams(&some), ["@user:b", "@user:a"]);
        let ch = Body::Publish {
            channel: "news".into(),
            message: &env,
        };
        assert_eq!(streams(&ch), ["#news"]);
        assert!(streams(&Body::Bye).is_empty());
        assert_eq!(stream_of("@all"), Some(Stream::All));
        assert_eq!(stream_of("@user:a b"), Some(Stream::User("a b")));
        assert_eq!(stream_of("#news"), Some(Stream::Channel("news")));
        assert_eq!(stream_of("news"), None);
    }
}
