//! What nodes say to each other on the cluster's Redis channel, as JSON.
//!
//! One packet per Redis `PUBLISH`: who sent it (node id and incarnation)
//! and one [`Body`]. A broadcast carries its `{"type","payload"}` envelope
//! already encoded, so a receiving node frames it without re-encoding.
//! Decoding is a plain function on bytes: a malformed packet is an error for
//! the caller to count and skip, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One message on the cluster channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Packet<'a> {
    /// The sending node's `--node-id`.
    #[serde(borrow)]
    pub node: std::borrow::Cow<'a, str>,
    /// Random per process start: tells a restarted node from its old self.
    pub inc: u64,
    #[serde(borrow)]
    pub body: Body<'a>,
}

/// What a packet asks or tells.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body<'a> {
    /// Deliver `message` (an encoded `{"type","payload"}`) to this node's
    /// connections: all of them but `exclude`'s, or only `users`' when
    /// given. Each node puts it on its own streams (`@all`, `@user`).
    Broadcast {
        #[serde(borrow)]
        message: &'a RawValue,
        #[serde(default)]
        users: Option<Vec<String>>,
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// Deliver `message` (an encoded `{"type","payload"}`) to this node's
    /// subscribers of `channel`, on this node's stream of it.
    Publish {
        channel: String,
        #[serde(borrow)]
        message: &'a RawValue,
    },
    /// Subscribe (or unsubscribe) every connection of `users` on this node
    /// to `channel`.
    Subscribe {
        channel: String,
        users: Vec<String>,
        subscribe: bool,
    },
    /// Close every connection of `user` with `code`.
    Disconnect { user: String, code: u16 },
    /// Presence change number `seq`: each user's connection count on the
    /// sending node now (0: gone), and each changed channel subscription as
    /// `("<channel> <user>", connections)`.
    Presence {
        seq: u64,
        users: Vec<(String, u32)>,
        #[serde(default)]
        subs: Vec<(String, u32)>,
    },
    /// "I am alive", sent every second, with the sender's latest presence
    /// `seq` (a receiver whose copy is behind re-reads the snapshot) and its
    /// counters for the cluster-wide stats.
    Heartbeat {
        seq: u64,
        connections: u64,
        messages_in: u64,
        messages_out: u64,
        bytes_out: u64,
    },
    /// The node is shutting down: forget it now rather than at expiry.
    Bye,
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed cluster packet: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed numbers of a cluster packet")]
    Header,
}

pub fn encode(packet: &Packet<'_>) -> Vec<u8> {
    // A Packet holds strings, numbers and already-valid JSON only.
    serde_json::to_vec(packet).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<Packet<'_>, DecodeError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// The Redis names of one cluster: its channel and each node's keys.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(cluster_name: &str) -> Names {
        Names {
            prefix: cluster_name.to_string(),
        }
    }
    /// The one pub/sub channel every node publishes to and reads.
    pub fn channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }
    /// Hash of user → connection count on `node`.
    pub fn presence_key(&self, node: &str) -> String {
        format!("{}:presence:{node}", self.prefix)
    }
    /// Hash of stream → last offset, for the whole cluster.
    pub fn offsets(&self) -> String {
        format!("{}:offsets", self.prefix)
    }
    /// The capped log of numbered packets (a Redis stream).
    pub fn history(&self) -> String {
        format!("{}:history", self.prefix)
    }
    /// The cluster's history epoch.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    /// Hash of `"<channel> <user>"` → subscribed connections on `node`.
    pub fn subs_key(&self, node: &str) -> String {
        format!("{}:subs:{node}", self.prefix)
    }
    /// `"<incarnation> <seq>"` of the presence hashes, written with them.
    pub fn seq_key(&self, node: &str) -> String {
        format!("{}:presence-seq:{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_round_trips_with_the_envelope_untouched() {
        let env = RawValue::from_string(r#"{"type":"t","payload":{"a":[1,2]}}"#.into()).unwrap();
        let p = Packet {
            node: "n1".into(),
            inc: 7,
            body: Body::Broadcast {
                message: &env,
                users: Some(vec!["u".into()]),
                exclude: vec![],
            },
        };
        let bytes = encode(&p);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.node, "n1");
        assert_eq!(back.inc, 7);
        match back.body {
            Body::Broadcast {
                message,
                users,
                exclude,
            } => {
                assert_eq!(message.get(), r#"{"type":"t","payload":{"a":[1,2]}}"#);
                assert_eq!(users, Some(vec!["u".to_string()]));
                assert!(exclude.is_empty());
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn presence_and_heartbeat_round_trip() {
        let p = Packet {
            node: "n".into(),
            inc: 1,
            body: Body::Presence {
                seq: 3,
                users: vec![("a".into(), 2), ("b".into(), 0)],
                subs: vec![("news a".into(), 1)],
            },
        };
        let bytes = encode(&p);
        assert!(matches!(
            decode(&bytes).unwrap().body,
            Body::Presence { seq: 3, ref users, ref subs } if users.len() == 2 && subs.len() == 1
        ));
        // A packet of a node from before channels has no `subs`.
        let old = br#"{"node":"n","inc":1,"body":{"presence":{"seq":1,"users":[["a",1]]}}}"#;
        assert!(matches!(
            decode(old).unwrap().body,
            Body::Presence { ref subs, .. } if subs.is_empty()
        ));
        let hb = encode(&Packet {
            node: "n".into(),
            inc: 1,
            body: Body::Heartbeat {
                seq: 3,
                connections: 10,
                messages_in: 1,
                messages_out: 2,
                bytes_out: 3,
            },
        });
        assert!(matches!(
            decode(&hb).unwrap().body,
            Body::Heartbeat {
                connections: 10,
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{}",
            b"null",
            b"{\"node\":\"n\",\"inc\":1,\"body\":{\"nope\":{}}}",
            b"{\"node\":\"n\",\"inc\":-1,\"body\":\"bye\"}",
            b"\xff\xfe",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            decode(b"{\"node\":\"n\",\"inc\":1,\"body\":\"bye\"}")
                .unwrap()
                .body,
            Body::Bye
        ));
    }
}
