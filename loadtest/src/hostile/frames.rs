//! The bytes the hostile connections send, and the reading of what the
//! server answers them, without any I/O so that all of it is unit-tested:
//! the head of an unauthenticated body, the slowloris head, the frames of
//! the WebSocket kinds (oversized, garbage, the never-reader's probe), and
//! the HTTP status or close code that ended a connection.

use crate::ws::{self, Parsed};

/// Declared length of an unauthenticated body: the server's default body
/// limit, so that a server that buffers bodies before it checks the
/// credentials holds a whole mebibyte per connection.
pub const BODY_DECLARED: usize = 1 << 20;
/// Body bytes sent: most of the body, never all of it, so that the
/// request never completes.
pub const BODY_SENT: usize = BODY_DECLARED - 4096;
/// Length of the oversized message: 8 MiB, far over any message limit.
pub const OVERSIZED: usize = 8 << 20;
/// The slowloris head grows to this at most (past any header limit).
pub const SLOWLORIS_MAX: usize = 16 << 10;
/// Length of the shared filler buffers: a multiple of 4, so that a slice
/// of the masked filler that starts at `done % FILLER` is masked right for
/// payload offset `done` (the mask repeats every 4 bytes).
pub const FILLER: usize = 256 << 10;
/// Largest frame from the server looked through: a broadcast of the
/// largest payload the tool sends (1 MiB) and its envelope.
pub const MAX_FRAME: usize = 2 << 20;
/// The one mask of every hostile frame: masks need not be secret on
/// loopback, and a fixed one lets one buffer of masked filler serve every
/// connection.
pub const MASK: [u8; 4] = [0x5A, 0x17, 0xC3, 0x88];

/// `POST /v1/websocket/broadcast` announcing [`BODY_DECLARED`] bytes,
/// without credentials or with a bearer that is no token.
pub fn body_head(host: &str, credentials: bool) -> Vec<u8> {
    let auth = if credentials {
        "Authorization: Bearer not.a.token\r\n"
    } else {
        ""
    };
    format!(
        "POST /v1/websocket/broadcast HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {BODY_DECLARED}\r\n\r\n"
    )
    .into_bytes()
}

/// A request head that never ends: the request line, `Host`, then header
/// lines up to [`SLOWLORIS_MAX`] bytes, never the empty line.
pub fn slowloris_head(host: &str) -> Vec<u8> {
    let mut head = format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    let mut k = 0u32;
    while head.len() < SLOWLORIS_MAX {
        head.extend_from_slice(format!("X-Wait-{k:05}: still coming\r\n").as_bytes());
        k += 1;
    }
    head.truncate(SLOWLORIS_MAX);
    head
}

/// The header of one final, masked text frame of [`OVERSIZED`] bytes (its
/// payload is [`masked_filler`], written after it).
pub fn oversized_head() -> Vec<u8> {
    let mut h = vec![0x80 | ws::OP_TEXT, 0x80 | 127];
    h.extend_from_slice(&(OVERSIZED as u64).to_be_bytes());
    h.extend_from_slice(&MASK);
    h
}

/// [`FILLER`] bytes of `a` masked with [`MASK`]: valid UTF-8 once unmasked,
/// so only the size is wrong.
pub fn masked_filler() -> Vec<u8> {
    (0..FILLER).map(|i| b'a' ^ MASK[i & 3]).collect()
}

/// An empty unsolicited pong (RFC 6455 §5.5.3: the server ignores it): the
/// never-reader's probe. A write to a socket the server has closed draws a
/// reset, so the tool learns of the drop without reading.
pub fn probe() -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    ws::client_frame(ws::OP_PONG, &[], MASK, &mut out);
    out
}

/// The invalid frames of the garbage kind, one per attempt in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Opcode 0x3, reserved for data frames not yet defined.
    ReservedOpcode,
    /// A text frame without a mask: every client frame must be masked.
    Unmasked,
    /// A masked text frame whose payload is not UTF-8.
    BadUtf8,
}

impl Garbage {
    /// The `n`-th in turn.
    pub fn nth(n: usize) -> Garbage {
        match n % 3 {
            0 => Garbage::ReservedOpcode,
            1 => Garbage::Unmasked,
            _ => Garbage::BadUtf8,
        }
    }

    pub fn frame(self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Garbage::ReservedOpcode => ws::client_frame(0x3, b"junk", MASK, &mut out),
            Garbage::Unmasked => {
                out.extend_from_slice(&[0x80 | ws::OP_TEXT, 5]);
                out.extend_from_slice(b"hello");
            }
            Garbage::BadUtf8 => {
                ws::client_frame(ws::OP_TEXT, &[b'o', b'k', 0xC3, 0x28, 0xFF], MASK, &mut out)
            }
        }
        out
    }
}

/// The status of an HTTP answer at the front of `buf`, once its status line
/// is there.
pub fn http_status(buf: &[u8]) -> Option<u16> {
    let line = &buf[..buf.iter().position(|&b| b == b'\r')?];
    let rest = line.strip_prefix(b"HTTP/1.")?.get(2..)?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// What the frames at the front of a buffer from the server say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// A close frame with this code (1005 without one).
    Close(u16),
    /// No close frame yet; this many bytes are whole frames to drop.
    Seen(usize),
    /// Not WebSocket frames.
    Broken,
}

/// Looks through the whole frames at the front of `buf` for a close frame.
pub fn scan_frames(buf: &[u8]) -> Frames {
    let mut at = 0;
    loop {
        match ws::parse_frame(&buf[at..], MAX_FRAME) {
            Parsed::Incomplete => return Frames::Seen(at),
            Parsed::Error(_) => return Frames::Broken,
            Parsed::Frame(h) if h.opcode == ws::OP_CLOSE => {
                return Frames::Close(ws::close_code(&buf[at + h.header_len..at + h.total_len()]))
            }
            Parsed::Frame(h) => at += h.total_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_head_is_complete_and_announces_a_mebibyte() {
        for creds in [false, true] {
            let head = body_head("127.0.0.1:9", creds);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&head) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{other:?}"),
            };
            assert_eq!(n, head.len());
            assert_eq!(req.method, Some("POST"));
            assert_eq!(req.path, Some("/v1/websocket/broadcast"));
            let value = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_vec())
            };
            assert_eq!(value("content-length"), Some(b"1048576".to_vec()));
            assert_eq!(value("authorization").is_some(), creds);
        }
        const { assert!(BODY_SENT < BODY_DECLARED && BODY_SENT > BODY_DECLARED / 2) };
    }

    #[test]
    fn the_slowloris_head_never_ends() {
        let head = slowloris_head("h:1");
        assert_eq!(head.len(), SLOWLORIS_MAX);
        assert!(head.starts_with(b"GET /ws HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(!head.windows(4).any(|w| w == b"\r\n\r\n"));
        // Any prefix is a request still coming, never a malformed one.
        for cut in [3, 17, 100, 4097, SLOWLORIS_MAX] {
            let mut headers = [httparse::EMPTY_HEADER; 1024];
            let mut req = httparse::Request::new(&mut headers);
            assert_eq!(req.parse(&head[..cut]), Ok(httparse::Status::Partial));
        }
    }

    #[test]
    fn the_oversized_frame_is_a_masked_8_mib_text_frame() {
        let head = oversized_head();
        assert_eq!(head.len(), 14);
        // Unmasked, the same header is what a parser with a limit refuses.
        let mut plain = head[..10].to_vec();
        plain[1] &= 0x7F;
        assert!(matches!(ws::parse_frame(&plain, 1 << 20), Parsed::Error(_)));
        match ws::parse_frame(&plain, OVERSIZED) {
            Parsed::Incomplete => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(&head[10..], &MASK);
        // Any slice of the filler that starts at `done % FILLER` unmasks to `a`.
        let filler = masked_filler();
        for done in [0usize, 4, FILLER + 8, 3 * FILLER + 12] {
            let off = done % FILLER;
            let mut chunk = filler[off..off + 64].to_vec();
            for (i, b) in chunk.iter_mut().enumerate() {
                *b ^= MASK[(done + i) & 3];
            }
            assert!(chunk.iter().all(|&b| b == b'a'), "done {done}");
        }
        const { assert!(FILLER.is_multiple_of(4)) };
    }

    #[test]
    fn garbage_frames_break_the_protocol_each_in_its_own_way() {
        let kinds: Vec<Garbage> = (0..6).map(Garbage::nth).collect();
        assert_eq!(&kinds[..3], &kinds[3..]);
        assert_eq!(
            kinds[..3],
            [Garbage::ReservedOpcode, Garbage::Unmasked, Garbage::BadUtf8]
        );
        let f = Garbage::ReservedOpcode.frame();
        assert_eq!(f[0] & 0x0F, 0x3);
        assert!(f[1] & 0x80 != 0, "masked");
        let f = Garbage::Unmasked.frame();
        assert_eq!(f[1] & 0x80, 0, "not masked");
        assert!(matches!(ws::parse_frame(&f, 100), Parsed::Frame(h) if h.opcode == ws::OP_TEXT));
        let f = Garbage::BadUtf8.frame();
        let mut payload = f[6..].to_vec();
        ws::apply_mask(&mut payload, MASK);
        assert!(std::str::from_utf8(&payload).is_err());
        assert_eq!(probe(), [0x8A, 0x80, MASK[0], MASK[1], MASK[2], MASK[3]]);
    }

    #[test]
    fn statuses_and_close_codes_are_read_back() {
        assert_eq!(http_status(b"HTTP/1.1 408 Request Timeout\r\n"), Some(408));
        assert_eq!(http_status(b"HTTP/1.0 401 x\r\nc: d\r\n\r\n"), Some(401));
        assert_eq!(http_status(b"HTTP/1.1 40"), None, "no whole line yet");
        assert_eq!(http_status(b"HTTP/1.1 4x8 no\r\n"), None);
        assert_eq!(http_status(b"\x81\x05hello"), None);

        let frame = |op: u8, payload: &[u8]| {
            let mut f = vec![0x80 | op, payload.len() as u8];
            f.extend_from_slice(payload);
            f
        };
        let mut buf = frame(ws::OP_TEXT, b"{\"type\":\"connected\"}");
        let first = buf.len();
        assert_eq!(scan_frames(&buf), Frames::Seen(first));
        buf.extend(frame(ws::OP_CLOSE, &[0x03, 0xF1, b'b']));
        assert_eq!(scan_frames(&buf), Frames::Close(1009));
        assert_eq!(scan_frames(&buf[..first + 2]), Frames::Seen(first));
        assert_eq!(scan_frames(&frame(ws::OP_CLOSE, &[])), Frames::Close(1005));
        assert_eq!(scan_frames(b"HTTP/1.1 400 Bad\r\n"), Frames::Broken);
    }
}
