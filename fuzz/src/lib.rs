//! The fuzz targets' bodies, one module each (`fuzz_targets/` only wraps
//! them in `fuzz_target!`), and what they share: one real server per process
//! (for a `Handle` with its verifier and message handler), and tokens minted
//! from fuzzer-chosen claims so the fuzzer gets past signature checks.
//!
//! Nothing here depends on libFuzzer: `tests/fuzz_regressions.rs` includes
//! this file as a module and replays the saved crashers and the seeds
//! through the very same code in `cargo test`.

pub mod chunked_cost;
pub mod cluster_packet;
pub mod http_request;
pub mod permessage_deflate;
pub mod upgrade;
pub mod ws_inbound;

use std::io::{self, Read};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use wsedge::{mint_hs256, now_secs};
use wsedge::{Config, Handle, RawEchoHandler, Server};

pub const SECRET: &str = "fuzz-secret";
pub const ADMIN_KEY: &str = "fuzz-admin-key";
pub const LEEWAY: u64 = 30;
/// The user every WebSocket session of the fuzz targets belongs to.
pub const USER: &str = "u";

/// The configuration of the fuzz servers (and of the sessions they host).
pub fn config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().expect("loopback address"),
        shards: 1,
        jwt_secret: Some(SECRET.into()),
        admin_key: Some(ADMIN_KEY.into()),
        jwt_leeway_secs: LEEWAY,
        ..Config::default()
    }
}

fn start(raw_echo: bool) -> Server {
    let builder = Server::builder().config(config());
    let builder = if raw_echo {
        builder.handler(RawEchoHandler)
    } else {
        builder
    };
    builder.start().expect("fuzz server starts")
}

/// A handle on a running server with the default echo handler, or with
/// `RawEchoHandler` (the `on_raw` path). The server lives in a static for
/// the life of the fuzz process (so the leak checker sees it as reachable).
pub fn handle(raw_echo: bool) -> Handle {
    static ECHO: OnceLock<Server> = OnceLock::new();
    static RAW: OnceLock<Server> = OnceLock::new();
    let server = if raw_echo {
        RAW.get_or_init(|| start(true))
    } else {
        ECHO.get_or_init(|| start(false))
    };
    server.handle()
}

/// Claims of a token to mint, decoded from [`TokenSpec::LEN`] fuzzer bytes:
///
/// - byte 0, bits 0-2: `sub` ("u", "other", "", 5, missing, "u\0\u{fffd}", 300 × 'a', "u")
/// - bits 3-4: `exp` (the raw u64; now + raw % 1e5; now − raw % 1e5; raw as i64)
/// - bit 5: an `nbf` within ±100 s of now
/// - bit 6: signed with a wrong secret
/// - bit 7: `role: "admin"`
/// - bytes 1-8: the raw u64, little-endian
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec {
    pub flags: u8,
    pub raw: u64,
}

impl TokenSpec {
    pub const LEN: usize = 9;

    /// Reads the spec from the front of `data` (zero-padded) and returns the rest.
    pub fn split(data: &[u8]) -> (TokenSpec, &[u8]) {
        let mut b = [0u8; Self::LEN];
        let n = data.len().min(Self::LEN);
        b[..n].copy_from_slice(&data[..n]);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&b[1..9]);
        (
            TokenSpec {
                flags: b[0],
                raw: u64::from_le_bytes(raw),
            },
            &data[n..],
        )
    }

    pub fn claims(&self) -> Value {
        let now = now_secs();
        let mut c = Map::new();
        let sub = match self.flags & 7 {
            0 | 7 => Some(json!(USER)),
            1 => Some(json!("other")),
            2 => Some(json!("")),
            3 => Some(json!(5)),
            4 => None,
            5 => Some(json!("u\0\u{fffd}")),
            _ => Some(json!("a".repeat(300))),
        };
        if let Some(sub) = sub {
            c.insert("sub".into(), sub);
        }
        let exp = match (self.flags >> 3) & 3 {
            0 => json!(self.raw),
            1 => json!(now + self.raw % 100_000),
            2 => json!(now.saturating_sub(self.raw % 100_000)),
            _ => json!(self.raw as i64),
        };
        c.insert("exp".into(), exp);
        if self.flags & 0x20 != 0 {
            c.insert("nbf".into(), json!(now + (self.raw >> 48) % 200 - 100));
        }
        if self.flags & 0x80 != 0 {
            c.insert("role".into(), json!("admin"));
        }
        Value::Object(c)
    }

    pub fn mint(&self) -> String {
        let secret = if self.flags & 0x40 != 0 {
            "not-the-secret"
        } else {
            SECRET
        };
        mint_hs256(secret, &self.claims())
    }
}

/// Replaces every `$T` in `bytes` with `token`.
pub fn substitute(bytes: &[u8], token: &str) -> Vec<u8> {
    substitute_with(bytes, b"$T", token)
}

/// Replaces every `marker` in `bytes` with `with`.
pub fn substitute_with(bytes: &[u8], marker: &[u8], with: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + with.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(marker) {
            out.extend_from_slice(with.as_bytes());
            i += marker.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// A socket as a shard sees it: the bytes of `data` read at most `size`
/// at a time, then `WouldBlock` once drained (or EOF when `eof`).
pub struct Source<'a> {
    pub data: &'a [u8],
    pub size: usize,
    pub eof: bool,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.size).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
