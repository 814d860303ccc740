//! The inbound filter: client frames on their way from the socket to
//! tungstenite, with compressed messages inflated so that tungstenite never
//! sees RSV1.
//!
//! [`Inbound::process`] is a state machine over the bytes read, run in
//! place in the buffer tungstenite handed to the read: the bytes of a plain
//! frame (header and payload) stay, moved forward over what was dropped;
//! the frames of a compressed message are dropped and their payload
//! (unmasked) collected. At the end of that message the collected payload
//! is inflated into one plain frame (FIN, same opcode, masked with a zero
//! key, as tungstenite wants client frames masked), which the next reads
//! return before anything that followed it on the wire. Control frames
//! between the fragments of a compressed message go through in their place.
//!
//! Bounds: the compressed payload may not pass `--max-message-bytes`, and
//! inflating stops as soon as the output would (never more than max + 1
//! bytes are produced), both closing with 1009. Between messages the filter
//! holds no buffer.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use flate2::{Decompress, FlushDecompress, Status};

use super::{Agreement, InboundError};

/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

/// RFC 7692 §7.2.2: the tail the sender stripped from each message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// The thread's (shard's) inflater: raw deflate, 32 KiB window, reset
    /// before each message. A connection keeps no inflate state.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Where the filter is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Reading a frame header (`have` bytes of it so far).
    Header,
    /// Reading `remaining` payload bytes of the current frame.
    Payload,
}

/// A compressed message being collected.
#[derive(Debug)]
struct Message {
    /// Text (1) or binary (2).
    opcode: u8,
    /// Unmasked compressed payload so far.
    data: Vec<u8>,
}

/// A connection's inbound permessage-deflate state (only on a connection
/// that negotiated the extension).
#[derive(Debug)]
pub struct Inbound {
    agreement: Agreement,
    /// `--max-message-bytes`.
    max: usize,
    part: Part,
    header: [u8; MAX_HEADER],
    have: usize,
    /// The current frame's payload is collected (it belongs to a
    /// compressed message) rather than passed through.
    collect: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame seen so far, for the mask.
    offset: usize,
    message: Option<Message>,
    /// An inflated message waiting to be read, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Input read past the end of a compressed message, from `rest_pos`:
    /// it comes after the inflated frame. At first, what came with the
    /// upgrade request.
    rest: Vec<u8>,
    rest_pos: usize,
    /// Set once the stream is refused: every later read fails the same.
    failed: Option<InboundError>,
}

impl Inbound {
    /// The filter of a connection that agreed to `agreement`, whose client
    /// sent `leftover` right after its upgrade request.
    pub fn new(agreement: Agreement, max_message_bytes: usize, leftover: Vec<u8>) -> Inbound {
        Inbound {
            agreement,
            max: max_message_bytes,
            part: Part::Header,
            header: [0; MAX_HEADER],
            have: 0,
            collect: false,
            remaining: 0,
            mask: [0; 4],
            offset: 0,
            message: None,
            out: Vec::new(),
            out_pos: 0,
            rest: leftover,
            rest_pos: 0,
            failed: None,
        }
    }

    pub fn agreement(&self) -> &Agreement {
        &self.agreement
    }

    /// Bytes held now (buffers' capacity), for tests of the memory bound.
    pub fn held_bytes(&self) -> usize {
        self.out.capacity()
            + self.rest.capacity()
            + self.message.as_ref().map_or(0, |m| m.data.capacity())
    }

    /// Header length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Decides, on a frame's first byte, whether its payload is collected.
    fn first_byte(&mut self, b: u8) -> Result<(), InboundError> {
        let rsv1 = b & 0x40 != 0;
        let opcode = b & 0x0f;
        self.collect = match opcode {
            // Control frames may come between fragments; never compressed.
            8..=15 if rsv1 => return Err(InboundError::Rsv1OnControl),
            8..=15 => false,
            0 if rsv1 => return Err(InboundError::Rsv1OnContinuation),
            0 => self.message.is_some(),
            _ if self.message.is_some() => return Err(InboundError::ExpectedContinuation),
            1 | 2 if rsv1 => {
                self.message = Some(Message {
                    opcode,
                    data: Vec::new(),
                });
                true
            }
            3..=7 if rsv1 => return Err(InboundError::Rsv1OnReserved),
            // Plain data (or a reserved opcode tungstenite refuses).
            _ => false,
        };
        Ok(())
    }

    /// The header is complete: payload length and mask.
    fn header_done(&mut self) -> Result<(), InboundError> {
        let h = &self.header;
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => n as u64,
        };
        let masked = h[1] & 0x80 != 0;
        if masked {
            let at = self.have - 4;
            self.mask.copy_from_slice(&h[at..at + 4]);
        }
        self.remaining = len;
        self.offset = 0;
        if self.collect {
            if !masked {
                return Err(InboundError::Unmasked);
            }
            let Some(msg) = &mut self.message else {
                return Err(InboundError::ExpectedContinuation);
            };
            let total = (msg.data.len() as u64).saturating_add(len);
            if total > self.max as u64 {
                return Err(InboundError::TooBig);
            }
            // Bounded by the check above; one allocation per frame.
            msg.data.reserve_exact(len as usize);
        }
        Ok(())
    }

    /// Runs the filter over `buf` (bytes just read), in place: returns how
    /// many bytes at its start are now for tungstenite, and how many of the
    /// input were consumed. Fewer than all are consumed when a compressed
    /// message ended: its inflated frame is then waiting in `out` and goes
    /// before the unconsumed rest.
    pub(crate) fn process(
        &mut self,
        buf: &mut [u8],
        inflater: &mut Decompress,
    ) -> Result<(usize, usize), InboundError> {
        let mut r = 0;
        let mut w = 0;
        while r < buf.len() {
            match self.part {
                Part::Header => {
                    let b = buf[r];
                    r += 1;
                    if self.have == 0 {
                        self.first_byte(b)?;
                    }
                    self.header[self.have] = b;
                    self.have += 1;
                    if !self.collect {
                        buf[w] = b;
                        w += 1;
                    }
                    if self.have >= 2 && self.have == self.header_len() {
                        self.header_done()?;
                        self.part = Part::Payload;
                        if self.remaining == 0 && self.frame_done(inflater)? {
                            return Ok((w, r));
                        }
                    }
                }
                Part::Payload => {
                    let k = (self.remaining.min((buf.len() - r) as u64)) as usize;
                    if self.collect {
                        if let Some(msg) = &mut self.message {
                            let mask = self.mask;
                            let start = self.offset;
                            msg.data.extend(
                                buf[r..r + k]
                                    .iter()
                                    .enumerate()
                                    .map(|(i, b)| b ^ mask[(start + i) % 4]),
                            );
                        }
                    } else {
                        buf.copy_within(r..r + k, w);
                        w += k;
                    }
                    r += k;
                    self.offset += k;
                    self.remaining -= k as u64;
                    if self.remaining == 0 && self.frame_done(inflater)? {
                        return Ok((w, r));
                    }
                }
            }
        }
        Ok((w, r))
    }

    /// A frame's payload is complete. True when it ended a compressed
    /// message, which is now inflated in `out`.
    fn frame_done(&mut self, inflater: &mut Decompress) -> Result<bool, InboundError> {
        let fin = self.header[0] & 0x80 != 0;
        let ended = self.collect && fin;
        self.part = Part::Header;
        self.have = 0;
        self.collect = false;
        if !ended {
            return Ok(false);
        }
        let Some(msg) = self.message.take() else {
            return Ok(false);
        };
        self.out = inflate_frame(inflater, msg.opcode, msg.data, self.max)?;
        self.out_pos = 0;
        Ok(true)
    }

    /// Copies out of the inflated frame waiting, if any; frees it once read.
    fn drain_out(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.out_pos >= self.out.len() {
            return None;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
        Some(n)
    }

    /// Copies out of the stashed input, if any; frees it once read.
    fn take_rest(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.rest_pos >= self.rest.len() {
            if !self.rest.is_empty() {
                self.rest = Vec::new();
                self.rest_pos = 0;
            }
            return None;
        }
        let n = buf.len().min(self.rest.len() - self.rest_pos);
        buf[..n].copy_from_slice(&self.rest[self.rest_pos..self.rest_pos + n]);
        self.rest_pos += n;
        Some(n)
    }

    /// Reads through the filter from `src` into `buf`, as tungstenite's
    /// reader: never `Ok(0)` unless `src` is at its end, never more than
    /// max + 1 inflated bytes per message.
    pub fn read_from<R: Read>(&mut self, src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(n) = self.drain_out(buf) {
                return Ok(n);
            }
            let (n, from_rest) = match self.take_rest(buf) {
                Some(n) => (n, true),
                None => match src.read(buf)? {
                    0 => {
                        // The peer is gone: a message it left unfinished
                        // is freed now, not with the connection.
                        self.message = None;
                        return Ok(0);
                    }
                    n => (n, false),
                },
            };
            let step = INFLATER.with(|i| match i.try_borrow_mut() {
                Ok(mut inflater) => self.process(&mut buf[..n], &mut inflater),
                // Not reentrant, but a fresh one is correct if it ever were.
                Err(_) => self.process(&mut buf[..n], &mut Decompress::new(false)),
            });
            let (w, r) = match step {
                Ok(v) => v,
                Err(e) => {
                    self.message = None;
                    self.out = Vec::new();
                    self.rest = Vec::new();
                    self.failed = Some(e);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            if r < n {
                // Input after the end of a compressed message: it goes
                // after the inflated frame, on a later read.
                if from_rest {
                    self.rest_pos -= n - r;
                } else {
                    self.rest = buf[r..n].to_vec();
                    self.rest_pos = 0;
                }
            }
            if w > 0 {
                return Ok(w);
            }
        }
    }
}

/// Inflates one message (`data`, the tail not yet appended) into a whole
/// plain client frame: FIN, `opcode`, masked with a zero key. Stops as soon
/// as the output passes `max`.
fn inflate_frame(
    inflater: &mut Decompress,
    opcode: u8,
    mut data: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, InboundError> {
    let sent = data.len();
    data.extend_from_slice(&TAIL);
    inflater.reset(false);
    // Room for the header first; written once the length is known.
    let limit = MAX_HEADER + max.saturating_add(1);
    let first = data.len().saturating_mul(4).clamp(4096, 1 << 20);
    let mut out = vec![0u8; MAX_HEADER];
    let mut used = 0;
    loop {
        if out.len() >= limit {
            // max + 1 bytes came out and more may follow: too big.
            return Err(InboundError::TooBig);
        }
        let start = out.len();
        let grow = if start == MAX_HEADER {
            first
        } else {
            start - MAX_HEADER
        };
        let end = start.saturating_add(grow).min(limit);
        out.reserve_exact(end - start);
        out.resize(end, 0);
        let (in0, out0) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress(&data[used..], &mut out[start..], FlushDecompress::Sync)
            .map_err(|_| InboundError::Corrupt)?;
        let took = (inflater.total_in() - in0) as usize;
        let made = (inflater.total_out() - out0) as usize;
        used += took;
        out.truncate(start + made);
        let space = end - start;
        match status {
            Status::StreamEnd => {
                // A final block: the tail may follow it unread, nothing else.
                if used < sent {
                    return Err(InboundError::Corrupt);
                }
                break;
            }
            _ if made == space => continue, // output full: more may come
            _ if used == data.len() => break,
            // Input left, room left, no progress: the data is broken.
            _ if took == 0 && made == 0 => return Err(InboundError::Corrupt),
            _ => continue,
        }
    }
    drop(data);
    let len = out.len() - MAX_HEADER;
    if len > max {
        return Err(InboundError::TooBig);
    }
    let mut head = [0u8; MAX_HEADER];
    head[0] = 0x80 | opcode;
    let h = match len {
        n if n < 126 => {
            head[1] = 0x80 | n as u8;
            2
        }
        n if n <= 0xffff => {
            head[1] = 0x80 | 126;
            head[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            head[1] = 0x80 | 127;
            head[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    // The zero mask key follows (already zero); XOR with it is the identity.
    let h = h + 4;
    let at = MAX_HEADER - h;
    out[at..MAX_HEADER].copy_from_slice(&head[..h]);
    out.drain(..at);
    Ok(out)
}

/// What tungstenite reads from and writes to on a connection that
/// negotiated permessage-deflate: reads go through the filter, writes
/// straight to the underlying stream.
pub struct Filtered<'a, S> {
    pub filter: &'a mut Inbound,
    pub stream: &'a mut S,
}

impl<S: Read> Read for Filtered<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.filter.read_from(self.stream, buf)
    }
}

impl<S: Write> Write for Filtered<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    const MAX: usize = 65536;

    fn agreement() -> Agreement {
        Agreement {
            server_max_window_bits: None,
        }
    }

    /// Raw deflate of `data`, sync-flushed, tail stripped (RFC 7692 §7.2.1).
    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            let before = c.total_in() as usize;
            c.compress_vec(&data[before..], &mut out, FlushCompress::Sync)
                .expect("compress");
            if c.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    use crate::frame::client_frame as frame;

    /// A plain client frame as the filter writes it (zero mask).
    fn plain(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(0x80 | opcode, payload, [0; 4])
    }

    /// Everything the filter gives for `wire`, read in `chunk`-byte reads
    /// (the source gives at most that much per read too).
    fn run(wire: &[u8], chunk: usize, max: usize) -> Result<Vec<u8>, InboundError> {
        let mut f = Inbound::new(agreement(), max, Vec::new());
        let mut src = io::Cursor::new(wire.to_vec());
        struct Limited<'a>(&'a mut io::Cursor<Vec<u8>>, usize);
        impl Read for Limited<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk.max(1)];
        loop {
            match f.read_from(&mut Limited(&mut src, chunk), &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_eq!(f.held_bytes(), 0, "freed on error");
                    return Err(InboundError::from_io(&e).expect("typed"));
                }
            }
        }
        assert_eq!(f.held_bytes(), 0, "nothing held between messages");
        Ok(got)
    }

    #[test]
    fn plain_frames_pass_byte_for_byte() {
        let mut wire = frame(0x81, b"hello", [1, 2, 3, 4]);
        wire.extend(frame(0x02, &[7; 300], [9, 8, 7, 6]));
        wire.extend(frame(0x89, b"p", [5, 5, 5, 5]));
        wire.extend(frame(0x80, &[1; 70000], [1, 1, 2, 2]));
        for chunk in [1, 3, 7, 512, 100_000] {
            assert_eq!(
                run(&wire, chunk, 1 << 20),
                Ok(wire.clone()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn compressed_message_inflated() {
        let text = "héllo ".repeat(100);
        let wire = frame(0xc1, &deflate(text.as_bytes()), [0xa, 0xb, 0xc, 0xd]);
        for chunk in [1, 2, 5, 64, 4096] {
            assert_eq!(run(&wire, chunk, MAX), Ok(plain(1, text.as_bytes())));
        }
    }

    #[test]
    fn fragmented_with_ping_between() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let z = deflate(&data);
        let (a, b) = z.split_at(z.len() / 2);
        let mut wire = frame(0x42, a, [1, 2, 3, 4]); // RSV1, binary, not FIN
        let ping = frame(0x89, b"x", [4, 3, 2, 1]);
        wire.extend(&ping);
        wire.extend(frame(0x80, b, [7, 7, 7, 7])); // FIN continuation
        let after = frame(0x81, b"{}", [0, 1, 0, 1]);
        wire.extend(&after);
        let mut want = ping.clone();
        want.extend(plain(2, &data));
        want.extend(&after);
        for chunk in [1, 13, 512, 1 << 16] {
            assert_eq!(run(&wire, chunk, MAX), Ok(want.clone()), "chunk {chunk}");
        }
    }

    #[test]
    fn empty_compressed_message() {
        // An empty message compresses to `00` (RFC 7692 §7.2.3.6) or to
        // nothing at all.
        assert_eq!(
            run(&frame(0xc1, &[0x00], [1; 4]), 4, MAX),
            Ok(plain(1, b""))
        );
        assert_eq!(run(&frame(0xc1, &[], [1; 4]), 4, MAX), Ok(plain(1, b"")));
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 7692 §7.2.3.1: "Hello" in one compressed frame.
        let z = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            run(&frame(0xc1, &z, [0; 4]), 64, MAX),
            Ok(plain(1, b"Hello"))
        );
        // §7.2.3.3: with a final block (BFINAL set): no tail needed.
        let z = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            run(&frame(0xc1, &z, [0; 4]), 64, MAX),
            Ok(plain(1, b"Hello"))
        );
    }

    #[test]
    fn zip_bomb_stops_at_max() {
        let zeros = vec![0u8; 10 << 20];
        let z = deflate(&zeros);
        assert!(z.len() < 20_000, "{}", z.len());
        assert_eq!(
            run(&frame(0xc2, &z, [1, 2, 3, 4]), 4096, 65536),
            Err(InboundError::TooBig)
        );
        // Exactly max inflates; one more byte does not.
        let z = deflate(&vec![b'a'; 1000]);
        assert_eq!(
            run(&frame(0xc2, &z, [0; 4]), 4096, 1000),
            Ok(plain(2, &[b'a'; 1000]))
        );
        assert_eq!(
            run(&frame(0xc2, &z, [0; 4]), 4096, 999),
            Err(InboundError::TooBig)
        );
    }

    #[test]
    fn compressed_payload_over_max() {
        let wire = frame(0xc2, &[0u8; 2000], [0; 4]);
        assert_eq!(run(&wire, 4096, 1000), Err(InboundError::TooBig));
        // Over several fragments, refused at the header that passes it.
        let mut wire = frame(0x42, &[0u8; 600], [0; 4]);
        wire.extend(frame(0x80, &[0u8; 600], [0; 4]));
        assert_eq!(run(&wire, 4096, 1000), Err(InboundError::TooBig));
        // A 64-bit length that cannot fit anywhere.
        let mut wire = vec![0xc2, 0xff];
        wire.extend_from_slice(&u64::MAX.to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        assert_eq!(run(&wire, 4096, 1000), Err(InboundError::TooBig));
    }

    #[test]
    fn garbage_does_not_inflate() {
        // BTYPE 11 is reserved: invalid at once.
        let wire = frame(0xc1, &[0xff, 0xff, 0xff, 0xff], [3; 4]);
        assert_eq!(run(&wire, 64, MAX), Err(InboundError::Corrupt));
        // A final block followed by more data.
        let wire = frame(0xc1, &[0x03, 0x00, 0x41, 0x42], [3; 4]);
        assert_eq!(run(&wire, 64, MAX), Err(InboundError::Corrupt));
    }

    #[test]
    fn rsv1_misuse() {
        let bad = [
            (frame(0xc9, b"", [0; 4]), InboundError::Rsv1OnControl),
            (frame(0xc8, b"", [0; 4]), InboundError::Rsv1OnControl),
            (frame(0xc3, b"", [0; 4]), InboundError::Rsv1OnReserved),
            (
                [frame(0x01, b"a", [0; 4]), frame(0xc0, b"b", [0; 4])].concat(),
                InboundError::Rsv1OnContinuation,
            ),
            (
                [frame(0x41, b"a", [0; 4]), frame(0x81, b"b", [0; 4])].concat(),
                InboundError::ExpectedContinuation,
            ),
        ];
        for (wire, e) in bad {
            assert_eq!(run(&wire, 3, MAX), Err(e));
        }
        // Unmasked compressed frame.
        assert_eq!(
            run(&[0xc1, 0x01, 0x00], 3, MAX),
            Err(InboundError::Unmasked)
        );
        // Plain frames with RSV2/RSV3 go through: tungstenite refuses them.
        let wire = frame(0xa1, b"x", [0; 4]);
        assert_eq!(run(&wire, 3, MAX), Ok(wire.clone()));
    }

    #[test]
    fn eof_mid_message_frees_it() {
        // Found by the fuzz target: the collected payload outlived the EOF.
        let mut wire = frame(0x42, &deflate(b"first part"), [1; 4]);
        wire.extend(frame(0x80, b"", [1; 4])[..4].iter());
        assert_eq!(run(&wire, 5, MAX), Ok(Vec::new()));
    }

    #[test]
    fn errors_stick() {
        let mut f = Inbound::new(agreement(), MAX, Vec::new());
        let mut src = io::Cursor::new(frame(0xc9, b"", [0; 4]));
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let e = f.read_from(&mut src, &mut buf).expect_err("refused");
            assert_eq!(InboundError::from_io(&e), Some(InboundError::Rsv1OnControl));
        }
    }

    #[test]
    fn leftover_read_first() {
        let text = b"0123456789".repeat(50);
        let mut wire = frame(0xc1, &deflate(&text), [1, 2, 3, 4]);
        wire.extend(frame(0x81, b"next", [1; 4]));
        let (first, second) = wire.split_at(5);
        let mut f = Inbound::new(agreement(), MAX, first.to_vec());
        let mut src = io::Cursor::new(second.to_vec());
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            match f.read_from(&mut src, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{e}"),
            }
        }
        let mut want = plain(1, &text);
        want.extend(frame(0x81, b"next", [1; 4]));
        assert_eq!(got, want);
        assert_eq!(f.held_bytes(), 0);
    }

    #[test]
    fn would_block_midway_keeps_state() {
        // A source that gives one byte, then WouldBlock, alternately.
        struct Trickle(Vec<u8>, usize, bool);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.2 = !self.2;
                if self.2 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                if self.1 == self.0.len() {
                    return Ok(0);
                }
                buf[0] = self.0[self.1];
                self.1 += 1;
                Ok(1)
            }
        }
        let text = b"abcabcabc".repeat(30);
        let wire = frame(0xc1, &deflate(&text), [9, 9, 9, 9]);
        let mut f = Inbound::new(agreement(), MAX, Vec::new());
        let mut src = Trickle(wire, 0, false);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match f.read_from(&mut src, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, plain(1, &text));
    }
}
