//! The drill's publisher: one keep-alive REST connection to node 0 (which
//! the drill never kills), one request at a time at a fixed rate, the
//! three kinds in turn: a broadcast to everyone, a send to one user (users
//! in turn), a publish to one channel (channels in turn). Each stream has
//! its own sequence numbers from 1, carried in the payload; every request
//! is logged with when it was written, when it was answered and how.
//!
//! One connection and one request at a time keep the publishes in the
//! order node 0 accepted them, the order every client must see them in.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::track::{Outcome, Published, Stream};
use crate::channels;
use crate::rest::parse_answer;
use crate::sys::unix_micros;
use crate::tls::{Blocking, Tls};

pub struct PubConfig {
    pub addr: SocketAddr,
    /// `--server-tls`: the requests go over `https://`.
    pub tls: Option<Tls>,
    pub bearer: String,
    pub user_ids: Arc<Vec<String>>,
    pub channels: u32,
    /// Requests per second, all kinds together.
    pub rate: f64,
}

/// The `k`-th request's stream: broadcasts, sends and channel publishes in
/// turn, users and channels in turn within their kind.
pub fn stream_of(k: u64, users: u32, channels: u32) -> Stream {
    let round = k / 3;
    match k % 3 {
        0 => Stream::All,
        1 => Stream::User((round % u64::from(users.max(1))) as u32),
        _ => Stream::Chan((round % u64::from(channels.max(1))) as u32),
    }
}

/// The request for one publish: path and body.
pub fn request(stream: Stream, seq: u64, user_ids: &[String], t_us: u64) -> (String, String) {
    match stream {
        Stream::All => (
            "/v1/websocket/broadcast".into(),
            format!(r#"{{"type":"drill","payload":{{"k":"a","s":{seq},"t":{t_us}}}}}"#),
        ),
        Stream::User(u) => (
            format!(
                "/v1/websocket/send/{}",
                user_ids.get(u as usize).map_or("", String::as_str)
            ),
            format!(r#"{{"type":"drill","payload":{{"k":"u","u":{u},"s":{seq},"t":{t_us}}}}}"#),
        ),
        Stream::Chan(c) => (
            format!("/v1/websocket/channels/{}/publish", channels::name(c)),
            format!(r#"{{"type":"drill","payload":{{"k":"c","c":{c},"s":{seq},"t":{t_us}}}}}"#),
        ),
    }
}

/// How an answer counts: 2xx, and `404` to a send (the user has no
/// connection open right now, yet the message is kept in its history).
pub fn outcome_of(stream: Stream, status: u16) -> Outcome {
    match (stream, status) {
        (_, 200..=299) | (Stream::User(_), 404) => Outcome::Ok,
        _ => Outcome::Failed,
    }
}

/// Publishes from now until `end`; what it published.
pub fn run(cfg: &PubConfig, end: Instant) -> Vec<Published> {
    let users = cfg.user_ids.len() as u32;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut conn: Option<Blocking> = None;
    let mut seqs: std::collections::HashMap<Stream, u64> = std::collections::HashMap::new();
    let mut k: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(k as f64 / cfg.rate);
        let now = Instant::now();
        if due >= end {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let stream = stream_of(k, users, cfg.channels);
        k += 1;
        let seq = {
            let s = seqs.entry(stream).or_insert(0);
            *s += 1;
            *s
        };
        let sent_us = unix_micros();
        let (path, body) = request(stream, seq, &cfg.user_ids, sent_us);
        let outcome = match call(cfg, &mut conn, &path, &body) {
            Ok(status) => outcome_of(stream, status),
            Err(written) => {
                conn = None;
                if written {
                    Outcome::Unknown
                } else {
                    Outcome::Failed
                }
            }
        };
        out.push(Published {
            stream,
            seq,
            sent_us,
            answered_us: unix_micros(),
            outcome,
        });
    }
    out
}

/// One request on the kept connection (opened when there is none): the
/// answer's status, or whether the request had been written when it failed.
fn call(cfg: &PubConfig, conn: &mut Option<Blocking>, path: &str, body: &str) -> Result<u16, bool> {
    if conn.is_none() {
        // The connect within 500 ms, then 2 s for each read and write
        // (the TLS handshake's too, on the first write).
        let s = Blocking::connect(cfg.addr, cfg.tls.as_ref(), Duration::from_millis(500))
            .map_err(|_| false)?;
        let timeout = Some(Duration::from_secs(2));
        let tcp = match &s {
            Blocking::Plain(t) => t,
            Blocking::Tls(t) => t.get_ref(),
        };
        let _ = tcp.set_read_timeout(timeout);
        let _ = tcp.set_write_timeout(timeout);
        *conn = Some(s);
    }
    let Some(s) = conn.as_mut() else {
        return Err(false);
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        cfg.addr,
        cfg.bearer,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|_| false)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|_| true)?;
        if n == 0 {
            return Err(true);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_answer(&buf) {
            Ok(None) if buf.len() < 1 << 20 => continue,
            Ok(Some((answer, _))) => {
                if answer.close {
                    *conn = None;
                }
                return Ok(answer.status);
            }
            _ => return Err(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_users_and_channels_go_in_turn() {
        let s: Vec<Stream> = (0..9).map(|k| stream_of(k, 2, 3)).collect();
        assert_eq!(
            s,
            [
                Stream::All,
                Stream::User(0),
                Stream::Chan(0),
                Stream::All,
                Stream::User(1),
                Stream::Chan(1),
                Stream::All,
                Stream::User(0),
                Stream::Chan(2),
            ]
        );
    }

    #[test]
    fn requests_carry_the_stream_and_sequence_in_the_payload() {
        let users = vec!["lt-u0".to_string(), "lt-u1".to_string()];
        let (path, body) = request(Stream::User(1), 5, &users, 42);
        assert_eq!(path, "/v1/websocket/send/lt-u1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            super::super::client::ours(&v["payload"]),
            Some((Stream::User(1), 5))
        );
        let (path, body) = request(Stream::Chan(3), 1, &users, 42);
        assert_eq!(path, "/v1/websocket/channels/lt:3/publish");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "drill");
        let (path, _) = request(Stream::All, 1, &users, 42);
        assert_eq!(path, "/v1/websocket/broadcast");
        assert_eq!(outcome_of(Stream::User(0), 404), Outcome::Ok);
        assert_eq!(outcome_of(Stream::All, 404), Outcome::Failed);
        assert_eq!(outcome_of(Stream::Chan(0), 503), Outcome::Failed);
    }
}
