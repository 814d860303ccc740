//! The client side of RFC 6455, by hand and on bytes: the upgrade request,
//! the check of the `101` answer, the parser of (unmasked) server frames,
//! masked client frames (pong, close), and the byte scan that pulls the
//! sequence number and the send timestamp out of a payload without parsing
//! JSON; permessage-deflate (RFC 7692) as a client that asks for no context
//! takeover both ways: the offer, the check of the answer, and the inflater
//! that takes each message on its own. Nothing here does I/O, so all of it
//! is unit-tested.

use memchr::memmem::Finder;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The head of one frame: where its payload is and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    /// RSV1: with permessage-deflate, the message is compressed (first
    /// frame of a message only). Only [`parse_frame_ext`] lets it through.
    pub rsv1: bool,
    pub opcode: u8,
    /// 2 to 10 bytes for a server frame (never masked).
    pub header_len: usize,
    pub payload_len: usize,
}

impl FrameHead {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// The outcome of looking at the front of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole frame yet: read more.
    Incomplete,
    /// A whole frame starts at offset 0; `total_len()` bytes of it are there.
    Frame(FrameHead),
    /// The server broke the protocol; the connection is useless.
    Error(&'static str),
}

/// Parses the frame at the start of `buf` (bytes from a server). A frame is
/// returned only when all of its payload is in `buf`. Any reserved bit is
/// an error (no extension).
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Parsed {
    parse_frame_ext(buf, max_payload, false)
}

/// [`parse_frame`], with RSV1 allowed on the first frame of a data message
/// when `deflate` (permessage-deflate was negotiated); RSV2 and RSV3 are
/// errors either way.
pub fn parse_frame_ext(buf: &[u8], max_payload: usize, deflate: bool) -> Parsed {
    if buf.len() < 2 {
        return Parsed::Incomplete;
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Parsed::Error("reserved bits set without an extension");
    }
    let opcode = b0 & 0x0F;
    let control = opcode & 0x08 != 0;
    if rsv1 && (control || opcode == OP_CONTINUATION) {
        return Parsed::Error("RSV1 on a control frame or a continuation");
    }
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Parsed::Error("reserved opcode"),
    }
    if b1 & 0x80 != 0 {
        return Parsed::Error("masked frame from the server");
    }
    let len7 = (b1 & 0x7F) as usize;
    let (header_len, payload_len) = match len7 {
        0..=125 => (2, len7),
        126 => {
            if buf.len() < 4 {
                return Parsed::Incomplete;
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        _ => {
            if buf.len() < 10 {
                return Parsed::Incomplete;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Parsed::Error("64-bit length with the top bit set");
            }
            (10, usize::try_from(n).unwrap_or(usize::MAX))
        }
    };
    if control && (!fin || payload_len > 125) {
        return Parsed::Error("fragmented or oversized control frame");
    }
    if payload_len > max_payload {
        return Parsed::Error("frame larger than the client accepts");
    }
    if buf.len() - header_len < payload_len {
        return Parsed::Incomplete;
    }
    Parsed::Frame(FrameHead {
        fin,
        rsv1,
        opcode,
        header_len,
        payload_len,
    })
}

/// Appends a final, masked client frame (RFC 6455 §5.3: every client frame
/// is masked) with `opcode` and `payload` to `out`.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0F));
    let n = payload.len();
    if n <= 125 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Reverses (or applies) a mask in place.
#[cfg(test)]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The status code of a close frame's payload (1005 "no status" when empty).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// The permessage-deflate offer of `--compression`: no context takeover
/// either way, so that the server compresses every message on its own (as
/// wsedge always does) and one inflater per client thread can take any
/// message of any connection.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The `GET` request that asks for an upgrade. The token goes in the query
/// (`?token=`, which all the servers this tool targets accept) or in an
/// `Authorization: Bearer` header. A JWT is URL-safe as it is. `deflate`:
/// offer [`DEFLATE_OFFER`].
pub fn upgrade_request(
    host: &str,
    path: &str,
    token: &str,
    in_header: bool,
    key: &str,
    deflate: bool,
) -> Vec<u8> {
    let mut req = String::with_capacity(256 + token.len());
    req.push_str("GET ");
    req.push_str(path);
    if !in_header {
        req.push_str(if path.contains('?') {
            "&token="
        } else {
            "?token="
        });
        req.push_str(token);
    }
    req.push_str(" HTTP/1.1\r\nHost: ");
    req.push_str(host);
    req.push_str(
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    req.push_str(key);
    req.push_str("\r\n");
    if in_header {
        req.push_str("Authorization: Bearer ");
        req.push_str(token);
        req.push_str("\r\n");
    }
    if deflate {
        req.push_str("Sec-WebSocket-Extensions: ");
        req.push_str(DEFLATE_OFFER);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// [`upgrade_request`] with a fresh `Sec-WebSocket-Key`, and the
/// `Sec-WebSocket-Accept` the `101` must carry.
pub fn keyed_upgrade_request(
    host: &str,
    path: &str,
    token: &str,
    in_header: bool,
    deflate: bool,
) -> (Vec<u8>, String) {
    let key = tungstenite::handshake::client::generate_key();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    (
        upgrade_request(host, path, token, in_header, &key, deflate),
        accept,
    )
}

/// Checks the server's answer to the upgrade request. `Ok(None)`: the head
/// is not complete yet; `Ok(Some(n))`: a valid `101` whose head is `n` bytes
/// long (what follows is frames); `Err`: refused, with a short reason (the
/// status code, e.g. `"401"`, or what is wrong). For a request without an
/// extension offer: an answer that accepts an extension is an error.
pub fn check_upgrade_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, String> {
    Ok(check_upgrade(buf, expected_accept, false)?.map(|u| u.head))
}

/// A valid `101`: its head's length, and whether the server accepted the
/// permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    pub head: usize,
    pub deflate: bool,
}

/// [`check_upgrade_response`] for a request that offered permessage-deflate
/// when `offered`: the answer may accept it (see [`deflate_answer`]).
pub fn check_upgrade(
    buf: &[u8],
    expected_accept: &str,
    offered: bool,
) -> Result<Option<Upgraded>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP answer: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(code.to_string());
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            std::str::from_utf8(v)
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err("101 without Upgrade: websocket / Connection: Upgrade".into());
    }
    match header("sec-websocket-accept") {
        Some(v) if v == expected_accept.as_bytes() => {}
        _ => return Err("101 with a wrong Sec-WebSocket-Accept".into()),
    }
    let mut deflate = false;
    for h in resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
    {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| "101 with a Sec-WebSocket-Extensions that is not text".to_string())?;
        for ext in value.split(',').filter(|e| !e.trim().is_empty()) {
            if !offered || deflate {
                return Err(format!("101 accepts an extension not offered: {ext}"));
            }
            deflate_answer(ext)?;
            deflate = true;
        }
    }
    Ok(Some(Upgraded { head: n, deflate }))
}

/// Checks one extension of the server's answer to [`DEFLATE_OFFER`]
/// (RFC 7692 §7.1): `permessage-deflate`, which must keep
/// `server_no_context_takeover` (every message compressed on its own: the
/// tool inflates each alone, with one inflater per thread); the other
/// parameters only narrow what the client may send, or the server's window
/// (an inflater with a 32 KiB window takes any).
pub fn deflate_answer(ext: &str) -> Result<(), String> {
    let mut parts = ext.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return Err(format!(
            "101 accepts an extension not offered: {}",
            ext.trim()
        ));
    }
    let mut seen = Vec::new();
    let mut server_nct = false;
    for p in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(format!("permessage-deflate answer repeats {name}"));
        }
        let ok = match (name.as_str(), value) {
            ("server_no_context_takeover", None) => {
                server_nct = true;
                true
            }
            ("client_no_context_takeover", None) => true,
            ("server_max_window_bits" | "client_max_window_bits", Some(v)) => {
                v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "permessage-deflate answer with a bad parameter: {p}"
            ));
        }
        seen.push(name);
    }
    if !server_nct {
        return Err("permessage-deflate answer without server_no_context_takeover".into());
    }
    Ok(())
}

/// Largest message the inflater makes (a compressed message that inflates
/// past it is an error, not an allocation).
pub const MAX_INFLATED: usize = 16 << 20;

/// Raw-deflate inflater for messages compressed without context takeover:
/// one per client thread, reset before every message.
///
/// Without context takeover a message's inflation depends on its bytes
/// alone, so the last [`CACHED`] messages' compressed bytes and inflations
/// are kept: a broadcast reaches the thread's connections as the same
/// compressed bytes (compressed once by the server, or the same way for
/// each connection), a socket's read brings several broadcasts at once,
/// and inflating each again for every connection would make the tool, not
/// the server, the bottleneck of a compressed run.
pub struct Inflater {
    z: flate2::Decompress,
    out: Vec<u8>,
    limit: usize,
    /// (compressed, inflated) of recent messages, a ring; `next` is the
    /// slot written next.
    cache: Vec<(Vec<u8>, Vec<u8>)>,
    next: usize,
    /// Messages actually inflated (the rest came from the cache).
    pub inflated: u64,
}

/// Recent messages an [`Inflater`] keeps (more than the broadcasts the
/// tool has in flight with its default window and lag).
pub const CACHED: usize = 64;
/// Largest inflated message kept.
const CACHED_MAX: usize = 64 << 10;

impl Default for Inflater {
    fn default() -> Self {
        Self::new(MAX_INFLATED)
    }
}

impl Inflater {
    pub fn new(limit: usize) -> Inflater {
        Inflater {
            z: flate2::Decompress::new(false),
            out: Vec::new(),
            limit,
            cache: Vec::new(),
            next: 0,
            inflated: 0,
        }
    }

    /// The message whose compressed payload is `data` (RFC 7692 §7.2.2: the
    /// payload with `00 00 ff ff` appended, inflated), or why not.
    pub fn inflate(&mut self, data: &[u8]) -> Result<&[u8], &'static str> {
        let n = self.cache.len();
        // Newest first: a connection reads the broadcasts in the order its
        // neighbour just did.
        if let Some(i) = (1..=n)
            .map(|k| (self.next + n - k) % n)
            .find(|&i| self.cache[i].0 == data)
        {
            return Ok(&self.cache[i].1);
        }
        self.inflate_anew(data)?;
        self.inflated += 1;
        if self.out.len() > CACHED_MAX {
            return Ok(&self.out);
        }
        let slot = self.next;
        self.next = (slot + 1) % CACHED;
        if slot == self.cache.len() {
            self.cache.push((Vec::new(), Vec::new()));
        }
        let (z, plain) = &mut self.cache[slot];
        z.clear();
        z.extend_from_slice(data);
        std::mem::swap(plain, &mut self.out);
        Ok(plain)
    }

    fn inflate_anew(&mut self, data: &[u8]) -> Result<(), &'static str> {
        const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
        self.z.reset(false);
        self.out.clear();
        let mut fed = 0usize; // bytes of `data` then TAIL taken
        let total = data.len() + TAIL.len();
        // Each turn either takes input or fills output: bounded by the sizes.
        for _ in 0..(total + self.limit / 1024 + 64) {
            if self.out.len() == self.out.capacity() {
                if self.out.len() >= self.limit {
                    return Err("inflated message larger than the client accepts");
                }
                let more = (self.out.len().max(data.len() * 4)).clamp(4096, self.limit);
                self.out
                    .reserve(more.min(self.limit - self.out.len()).max(1));
            }
            let input: &[u8] = if fed < data.len() {
                &data[fed..]
            } else {
                &TAIL[fed - data.len()..]
            };
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(input, &mut self.out, flate2::FlushDecompress::Sync)
                .map_err(|_| "corrupt deflate data")?;
            let took = (self.z.total_in() - in0) as usize;
            let made = (self.z.total_out() - out0) as usize;
            fed += took;
            if self.out.len() > self.limit {
                return Err("inflated message larger than the client accepts");
            }
            if status == flate2::Status::StreamEnd {
                // A final block: allowed, the message ends here.
                return Ok(());
            }
            if fed >= total && self.out.len() < self.out.capacity() {
                return Ok(());
            }
            if took == 0 && made == 0 && self.out.len() < self.out.capacity() {
                return Err("deflate data that makes no progress");
            }
        }
        Err("deflate data that makes no progress")
    }
}

/// One measured message: its sequence number and when it was offered
/// (unix microseconds), taken from the payload the tool itself sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub seq: u64,
    pub sent_us: u64,
}

/// Finds `"s":<digits>` and `"t":<digits>` in a message by byte search. The
/// fields may come in any order (some servers re-serialize the payload with
/// sorted keys) and anywhere in the envelope; a message without both is not
/// one of ours (e.g. `connected`).
pub struct Scanner {
    seq: Finder<'static>,
    time: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            seq: Finder::new(b"\"s\":"),
            time: Finder::new(b"\"t\":"),
        }
    }

    pub fn scan(&self, payload: &[u8]) -> Option<Sample> {
        let seq = number_after(payload, self.seq.find(payload)? + 4)?;
        let sent_us = number_after(payload, self.time.find(payload)? + 4)?;
        Some(Sample { seq, sent_us })
    }
}

/// The unsigned integer that starts at `at` (after optional spaces).
fn number_after(buf: &[u8], mut at: usize) -> Option<u64> {
    while buf.get(at) == Some(&b' ') {
        at += 1;
    }
    let mut value: u64 = 0;
    let mut digits = 0;
    while let Some(&c) = buf.get(at) {
        if !c.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        digits += 1;
        at += 1;
    }
    (digits > 0).then_some(value)
}

/// What fills the payload object up to `--payload-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// `"p":"xxx…"`: one repeated byte (deflate makes it ~100× smaller).
    #[default]
    Padded,
    /// `"items":[…]`: notification-like objects with varied ids, times,
    /// names and titles, about as compressible as real API JSON.
    Json,
}

/// The payload object this tool sends, `{"s":…,"t":…,…}` of `size` bytes
/// (never shorter than the fields need): padded with `x`
/// (`{"s":…,"t":…,"p":"xxx…"}`), or filled with notification-like JSON
/// ([`json_fill`]). `s` and `t` come first either way.
pub fn sample_payload(seq: u64, sent_us: u64, size: usize, kind: PayloadKind, out: &mut Vec<u8>) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, "{{\"s\":{seq},\"t\":{sent_us},");
    match kind {
        PayloadKind::Padded => {
            out.extend_from_slice(b"\"p\":\"");
            let fixed = out.len() - start + 2; // the closing `"}`
            out.resize(out.len() + size.saturating_sub(fixed), b'x');
            out.extend_from_slice(b"\"}");
        }
        PayloadKind::Json => {
            let used = out.len() - start;
            json_fill(
                seq ^ sent_us.rotate_left(17),
                size.saturating_sub(used),
                out,
            );
        }
    }
}

const FIRST: [&str; 16] = [
    "amelia", "noah", "sofia", "liam", "yuki", "mateo", "chloe", "arjun", "freya", "omar", "lena",
    "diego", "hana", "felix", "maya", "tomas",
];
const LAST: [&str; 12] = [
    "kovacs", "nguyen", "schmidt", "okafor", "rossi", "tanaka", "silva", "haddad", "novak",
    "larsen", "moreau", "patel",
];
const KINDS: [&str; 6] = ["comment", "mention", "review", "deploy", "invite", "alert"];
const TITLES: [&str; 10] = [
    "New comment on your pull request",
    "You were mentioned in a discussion",
    "Review requested on a merge request",
    "Deployment finished on production",
    "You were invited to join a project",
    "Build failed on the main branch",
    "Your report is ready to download",
    "Payment received for your invoice",
    "Weekly summary of your activity",
    "Password changed on a new device",
];
const WORDS: [&str; 16] = [
    "update", "release", "billing", "search", "mobile", "api", "cache", "team", "docs", "storage",
    "metrics", "login", "export", "schema", "queue", "webhook",
];

/// Appends `"items":[…]}` of exactly `room` bytes (at least what the
/// brackets need): notification objects drawn from `seed` until the next
/// would not fit, then a `"note"` string of words, then spaces for the last
/// few bytes. Deterministic for a seed; roughly 3–8× compressible.
fn json_fill(seed: u64, room: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let start = out.len();
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    out.extend_from_slice(b"\"items\":[");
    let mut item = Vec::with_capacity(400);
    let mut first = true;
    // Ids and times grow from one item to the next, as in a feed.
    let mut id = 4_000_000 + next() % 1_000_000;
    let mut created = 1_700_000_000_000u64 + next() % 40_000_000_000;
    loop {
        item.clear();
        let r = next();
        id += 1 + r % 97;
        created += 1_000 + (r >> 8) % 600_000;
        let (a, b) = (
            WORDS[((r >> 28) % 16) as usize],
            WORDS[((r >> 32) % 16) as usize],
        );
        let _ = write!(
            item,
            "{}{{\"id\":\"ntf_{id}\",\"type\":\"{}\",\"title\":\"{}\",\"user\":{{\"id\":{},\"name\":\"{}.{}\"}},\"project\":\"{a}-{b}\",\"url\":\"https://app.example.com/{a}-{b}/notifications/{id}\",\"created_at\":{created},\"read\":{},\"priority\":{},\"channels\":[\"web\",\"email\"]}}",
            if first { "" } else { "," },
            KINDS[(r % 6) as usize],
            TITLES[((r >> 8) % 10) as usize],
            10_000 + (r >> 36) % 90_000,
            FIRST[((r >> 16) % 16) as usize],
            LAST[((r >> 20) % 12) as usize],
            (r >> 53) & 1 == 1,
            (r >> 54) % 4,
        );
        // `]}` closes; keep room for it.
        if out.len() - start + item.len() + 2 > room {
            break;
        }
        out.extend_from_slice(&item);
        first = false;
    }
    out.push(b']');
    // `,"note":"…"}`: words up to the size; spaces for what is left.
    let left = room.saturating_sub(out.len() - start + 1);
    if left >= 12 {
        out.extend_from_slice(b",\"note\":\"");
        let end = out.len() + left - 10;
        while out.len() < end {
            let w = WORDS[(next() % 16) as usize].as_bytes();
            let take = w.len().min(end - out.len());
            out.extend_from_slice(&w[..take]);
            if out.len() < end {
                out.push(b' ');
            }
        }
        out.push(b'"');
    }
    let pad = room.saturating_sub(out.len() - start + 1);
    out.resize(out.len() + pad, b' ');
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n <= 125 {
            v.push(n as u8);
        } else if n <= 65535 {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_the_three_length_forms() {
        for n in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload = vec![b'a'; n];
            let f = server_frame(true, OP_TEXT, &payload);
            match parse_frame(&f, MAX) {
                Parsed::Frame(h) => {
                    assert_eq!(h.payload_len, n);
                    assert_eq!(h.header_len, f.len() - n);
                    assert_eq!(
                        h.header_len,
                        if n <= 125 {
                            2
                        } else if n <= 65535 {
                            4
                        } else {
                            10
                        }
                    );
                    assert!(h.fin);
                    assert_eq!(h.opcode, OP_TEXT);
                    assert_eq!(h.total_len(), f.len());
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for n in [5usize, 200, 70000] {
            let f = server_frame(true, OP_BINARY, &vec![7u8; n]);
            for cut in [0, 1, 2, 3, 5, 9, f.len() - 1]
                .into_iter()
                .filter(|&c| c < f.len())
            {
                assert_eq!(
                    parse_frame(&f[..cut], MAX),
                    Parsed::Incomplete,
                    "n={n} cut={cut}"
                );
            }
        }
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = server_frame(true, OP_TEXT, b"one");
        buf.extend(server_frame(true, OP_PING, b"p"));
        let Parsed::Frame(a) = parse_frame(&buf, MAX) else {
            panic!()
        };
        assert_eq!(&buf[a.header_len..a.total_len()], b"one");
        let rest = &buf[a.total_len()..];
        let Parsed::Frame(b) = parse_frame(rest, MAX) else {
            panic!()
        };
        assert_eq!(b.opcode, OP_PING);
        assert_eq!(&rest[b.header_len..b.total_len()], b"p");
    }

    #[test]
    fn fragments_keep_their_fin_bit() {
        let f = server_frame(false, OP_TEXT, b"par");
        assert!(matches!(
            parse_frame(&f, MAX),
            Parsed::Frame(FrameHead {
                fin: false,
                opcode: OP_TEXT,
                ..
            })
        ));
        let f = server_frame(true, OP_CONTINUATION, b"t");
        assert!(matches!(
            parse_frame(&f, MAX),
            Parsed::Frame(FrameHead {
                fin: true,
                opcode: OP_CONTINUATION,
                ..
            })
        ));
    }

    #[test]
    fn protocol_errors() {
        // masked server frame
        assert!(matches!(
            parse_frame(&[0x81, 0x81, 1, 2, 3, 4, 5], MAX),
            Parsed::Error(_)
        ));
        // reserved bits
        assert!(matches!(parse_frame(&[0xC1, 0x00], MAX), Parsed::Error(_)));
        // reserved opcode
        assert!(matches!(parse_frame(&[0x83, 0x00], MAX), Parsed::Error(_)));
        // fragmented ping
        assert!(matches!(parse_frame(&[0x09, 0x00], MAX), Parsed::Error(_)));
        // ping longer than 125
        let f = server_frame(true, OP_PING, &[0u8; 126]);
        assert!(matches!(parse_frame(&f, MAX), Parsed::Error(_)));
        // 64-bit length with the top bit
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert!(matches!(parse_frame(&f, MAX), Parsed::Error(_)));
        // over the client's limit
        let f = server_frame(true, OP_TEXT, &[b'a'; 300]);
        assert!(matches!(parse_frame(&f, 200), Parsed::Error(_)));
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        for n in [0usize, 5, 125, 126, 1000, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            let op = if n <= 125 { OP_PONG } else { OP_BINARY };
            client_frame(op, &payload, mask, &mut out);
            assert_eq!(out[0], 0x80 | op);
            assert!(out[1] & 0x80 != 0, "mask bit");
            let header = if n <= 125 {
                2
            } else if n <= 65535 {
                4
            } else {
                10
            };
            assert_eq!(&out[header..header + 4], &mask);
            let mut body = out[header + 4..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
            // the same bytes unmasked parse as a server frame
            let mut plain = out[..header].to_vec();
            plain[1] &= 0x7F;
            plain.extend_from_slice(&payload);
            assert!(
                matches!(parse_frame(&plain, MAX), Parsed::Frame(h) if h.payload_len == n && h.opcode == op)
            );
        }
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(&[0x03, 0xE8]), 1000);
        assert_eq!(close_code(&[0x03, 0xF0, b'x']), 1008);
        assert_eq!(close_code(&[]), 1005);
    }

    #[test]
    fn scan_finds_fields_in_any_order() {
        let s = Scanner::new();
        let ours = br#"{"type":"lt","payload":{"s":123,"t":1700000000123456,"p":"xxxx"}}"#;
        assert_eq!(
            s.scan(ours),
            Some(Sample {
                seq: 123,
                sent_us: 1_700_000_000_123_456
            })
        );
        // sorted keys (serde_json Map), spaces after colons
        let sorted = br#"{"payload":{"p":"xx","s": 9,"t": 42},"type":"lt"}"#;
        assert_eq!(
            s.scan(sorted),
            Some(Sample {
                seq: 9,
                sent_us: 42
            })
        );
        // not ours
        let hello = br#"{"type":"connected","payload":{"userId":"u","connectionId":"0-1-1","message":"Successfully connected to WebSocket","timestamp":"2024-01-01T00:00:00Z"}}"#;
        assert_eq!(s.scan(hello), None);
        // a field without digits, or one missing
        assert_eq!(s.scan(br#"{"s":"x","t":1}"#), None);
        assert_eq!(s.scan(br#"{"s":1}"#), None);
        // overflow is not a number
        assert_eq!(s.scan(br#"{"s":99999999999999999999999,"t":1}"#), None);
        // "ms": does not count as "s":
        assert_eq!(s.scan(br#"{"ms":5,"t":1}"#), None);
    }

    #[test]
    fn payload_is_padded_to_size_and_scans_back() {
        for size in [0usize, 10, 64, 65, 1024] {
            let mut out = b"prefix".to_vec();
            sample_payload(
                77,
                1_700_000_000_000_001,
                size,
                PayloadKind::Padded,
                &mut out,
            );
            let body = &out[6..];
            let min = br#"{"s":77,"t":1700000000000001,"p":""}"#.len();
            assert_eq!(body.len(), size.max(min), "size {size}");
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["s"], 77);
            assert_eq!(
                Scanner::new().scan(body),
                Some(Sample {
                    seq: 77,
                    sent_us: 1_700_000_000_000_001
                })
            );
        }
    }

    #[test]
    fn upgrade_request_and_answer() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = upgrade_request("127.0.0.1:3000", "/ws", "a.b.c", false, key, false);
        let text = std::str::from_utf8(&req).unwrap();
        assert!(text.starts_with("GET /ws?token=a.b.c HTTP/1.1\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!text.contains("Sec-WebSocket-Extensions"));
        let req = upgrade_request("h", "/ws", "a.b.c", true, key, true);
        let text = std::str::from_utf8(&req).unwrap();
        assert!(text.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer a.b.c\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"));
        assert!(text.ends_with("\r\n\r\n"));

        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\nXYhi");
        let head = ok.len() - 4;
        assert_eq!(
            check_upgrade_response(ok.as_bytes(), &accept),
            Ok(Some(head))
        );
        assert_eq!(
            check_upgrade_response(&ok.as_bytes()[..20], &accept),
            Ok(None)
        );
        let bad = ok.replace(&accept, "nope");
        assert!(check_upgrade_response(bad.as_bytes(), &accept).is_err());
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            check_upgrade_response(refused.as_bytes(), &accept),
            Err("401".into())
        );
    }

    fn answer(accept: &str, ext: Option<&str>) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{}\r\n",
            ext.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
                .unwrap_or_default()
        )
    }

    #[test]
    fn deflate_answers_are_checked() {
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let ok = answer(accept, Some(both));
        assert_eq!(
            check_upgrade(ok.as_bytes(), accept, true),
            Ok(Some(Upgraded {
                head: ok.len(),
                deflate: true
            }))
        );
        // Declined: no header.
        let plain = answer(accept, None);
        assert_eq!(
            check_upgrade(plain.as_bytes(), accept, true),
            Ok(Some(Upgraded {
                head: plain.len(),
                deflate: false
            }))
        );
        // Accepted without having been offered.
        assert!(check_upgrade(ok.as_bytes(), accept, false).is_err());
        assert!(check_upgrade_response(ok.as_bytes(), accept).is_err());
        for good in [
            "permessage-deflate;server_no_context_takeover",
            "PerMessage-Deflate; server_no_context_takeover; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=\"15\"; server_no_context_takeover",
        ] {
            assert_eq!(deflate_answer(good), Ok(()), "{good}");
        }
        for bad in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            "x-webkit-deflate-frame; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover; mystery",
        ] {
            assert!(deflate_answer(bad).is_err(), "{bad}");
        }
        // Two extensions in the answer.
        let two = answer(accept, Some(&format!("{both}, {both}")));
        assert!(check_upgrade(two.as_bytes(), accept, true).is_err());
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        z.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn rsv1_only_with_deflate_and_only_on_a_first_data_frame() {
        let mut f = server_frame(true, OP_TEXT, b"abc");
        f[0] |= 0x40;
        assert!(matches!(parse_frame(&f, MAX), Parsed::Error(_)));
        assert!(matches!(
            parse_frame_ext(&f, MAX, true),
            Parsed::Frame(FrameHead { rsv1: true, .. })
        ));
        let mut c = server_frame(true, OP_CONTINUATION, b"abc");
        c[0] |= 0x40;
        assert!(matches!(parse_frame_ext(&c, MAX, true), Parsed::Error(_)));
        let mut p = server_frame(true, OP_PING, b"");
        p[0] |= 0x40;
        assert!(matches!(parse_frame_ext(&p, MAX, true), Parsed::Error(_)));
        let mut r2 = server_frame(true, OP_TEXT, b"abc");
        r2[0] |= 0x20;
        assert!(matches!(parse_frame_ext(&r2, MAX, true), Parsed::Error(_)));
    }

    #[test]
    fn one_inflater_takes_messages_one_after_another() {
        let mut inf = Inflater::default();
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        for (i, kind) in [PayloadKind::Json, PayloadKind::Padded, PayloadKind::Json]
            .into_iter()
            .enumerate()
        {
            let mut m = Vec::new();
            sample_payload(
                i as u64,
                1_700_000_000_000_000 + i as u64,
                2048,
                kind,
                &mut m,
            );
            msgs.push(m);
        }
        msgs.push(Vec::new());
        msgs.push(vec![b'z'; 300_000]); // many output chunks
        for m in &msgs {
            let z = deflate(m);
            assert_eq!(inf.inflate(&z).unwrap(), &m[..]);
            // Again (the next connection's copy): from the cache.
            assert_eq!(inf.inflate(&z).unwrap(), &m[..]);
        }
        // The 300 KB one is past CACHED_MAX: inflated each time.
        assert_eq!(inf.inflated, msgs.len() as u64 + 1);
        // Interleaved, as one read brings several: all from the cache.
        let zs: Vec<Vec<u8>> = msgs.iter().map(|m| deflate(m)).collect();
        for _ in 0..3 {
            for (z, m) in zs.iter().zip(&msgs) {
                assert_eq!(inf.inflate(z).unwrap(), &m[..]);
            }
        }
        assert_eq!(inf.inflated, msgs.len() as u64 + 1 + 3);
        // Past the ring's size, the oldest are inflated again.
        let many: Vec<Vec<u8>> = (0..CACHED as u64 + 5)
            .map(|i| {
                let mut m = Vec::new();
                sample_payload(i, 9, 300, PayloadKind::Json, &mut m);
                m
            })
            .collect();
        let before = inf.inflated;
        for _ in 0..2 {
            for m in &many {
                assert_eq!(inf.inflate(&deflate(m)).unwrap(), &m[..]);
            }
        }
        assert_eq!(inf.inflated - before, 2 * many.len() as u64);
        // Garbage, then a good message again: the reset recovers.
        assert!(inf.inflate(&[0xff, 0xff, 0xff, 0xff, 0x00]).is_err());
        assert_eq!(inf.inflate(&deflate(&msgs[0])).unwrap(), &msgs[0][..]);
        // The bound: a bomb stops at the limit.
        let mut small = Inflater::new(64 << 10);
        assert!(small.inflate(&deflate(&vec![0u8; 1 << 20])).is_err());
        assert_eq!(small.inflate(&deflate(b"fine")).unwrap(), b"fine");
    }

    #[test]
    fn json_payload_is_valid_sized_scannable_and_compresses_like_real_json() {
        for size in [0usize, 40, 64, 200, 257, 1024, 2048, 2049, 8192, 65536] {
            for seq in [0u64, 1, 77, 123_456_789] {
                let mut out = b"prefix".to_vec();
                let ts = 1_700_000_000_000_001 + seq;
                sample_payload(seq, ts, size, PayloadKind::Json, &mut out);
                let body = &out[6..];
                let min = format!("{{\"s\":{seq},\"t\":{ts},\"items\":[]}}").len();
                assert_eq!(body.len(), size.max(min), "size {size} seq {seq}");
                let v: serde_json::Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
                assert_eq!(v["s"], seq);
                assert_eq!(v["t"], ts);
                assert!(body.starts_with(format!("{{\"s\":{seq},\"t\":{ts},").as_bytes()));
                assert_eq!(Scanner::new().scan(body), Some(Sample { seq, sent_us: ts }));
                if size >= 1024 {
                    let items = v["items"].as_array().unwrap();
                    assert!(items.len() >= 3, "{size}");
                    // Varied: not every object alike.
                    assert!(items.iter().any(|i| i["user"] != items[0]["user"]));
                }
            }
        }
        // Deterministic, and different from one message to the next.
        let make = |seq| {
            let mut v = Vec::new();
            sample_payload(seq, 5, 2048, PayloadKind::Json, &mut v);
            v
        };
        assert_eq!(make(3), make(3));
        assert_ne!(make(3), make(4));
        let json = make(9);
        let ratio = json.len() as f64 / deflate(&json).len() as f64;
        println!("2 KiB JSON payload: deflate ratio {ratio:.2}");
        assert!(
            (2.0..=12.0).contains(&ratio),
            "json deflate ratio {ratio:.2}"
        );
        let mut padded = Vec::new();
        sample_payload(9, 5, 2048, PayloadKind::Padded, &mut padded);
        let pr = padded.len() as f64 / deflate(&padded).len() as f64;
        assert!(pr > 30.0, "padded deflate ratio {pr:.2}");
    }
}
