//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.
//!
//! A [`Chunked`] decoder remembers how far it got, so each call looks only
//! at bytes it has not seen: a body trickled in one byte per read costs time
//! linear in its size, not quadratic (re-decoding from the start on every
//! read event let a slow client burn a shard's CPU). Every line is bounded
//! ([`MAX_CHUNK_LINE`]) and the decoded body by the caller's limit.

use crate::error::HttpError;

/// Longest chunk size line or trailer line accepted (without its CRLF).
pub const MAX_CHUNK_LINE: usize = 1024;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A chunk size line.
    Size,
    /// `left` bytes of chunk data, then its CRLF.
    Data { left: usize },
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines until an empty one.
    Trailer,
    /// The body ended at `pos`.
    Done,
}

/// An incremental decoder of one chunked body.
#[derive(Debug)]
pub struct Chunked {
    part: Part,
    /// Bytes of the encoded body consumed so far.
    pos: usize,
    /// How far the search for the current line's CRLF has looked, so a line
    /// arriving a byte at a time is scanned once.
    scanned: usize,
    body: Vec<u8>,
    /// Bytes examined or copied over every call so far: what the decoding
    /// cost, for the fuzz target that holds it linear in the input.
    work: usize,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked {
            part: Part::Size,
            pos: 0,
            scanned: 0,
            body: Vec::new(),
            work: 0,
        }
    }
}

impl Chunked {
    /// Decodes what `buf` (the encoded body so far, from its first byte)
    /// holds past what earlier calls consumed. True once the body is whole.
    pub fn advance(&mut self, buf: &[u8], max: usize) -> Result<bool, HttpError> {
        loop {
            match self.part {
                Part::Done => return Ok(true),
                Part::Size => {
                    let Some(line) = self.line(buf, "chunk size")? else {
                        return Ok(false);
                    };
                    let size = chunk_size(line)?;
                    self.part = if size == 0 {
                        Part::Trailer
                    } else if self.body.len().saturating_add(size) > max {
                        return Err(HttpError::PayloadTooLarge { limit: max });
                    } else {
                        Part::Data { left: size }
                    };
                }
                Part::Data { left } => {
                    let have = (buf.len() - self.pos).min(left);
                    self.work += have;
                    self.body.extend_from_slice(&buf[self.pos..self.pos + have]);
                    self.pos += have;
                    if have < left {
                        self.part = Part::Data { left: left - have };
                        return Ok(false);
                    }
                    self.part = Part::DataEnd;
                }
                Part::DataEnd => {
                    let Some(end) = buf.get(self.pos..self.pos + 2) else {
                        return Ok(false);
                    };
                    if end != b"\r\n" {
                        return Err(HttpError::BadRequest("chunk not followed by CRLF".into()));
                    }
                    self.pos += 2;
                    self.part = Part::Size;
                }
                Part::Trailer => {
                    let Some(line) = self.line(buf, "chunk trailer")? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.part = Part::Done;
                    }
                }
            }
        }
    }

    /// Bytes examined or copied by every call so far (see `work`).
    pub fn work(&self) -> usize {
        self.work
    }

    /// The decoded body and the encoded bytes it took; call once
    /// [`Chunked::advance`] returned true.
    pub fn finish(self) -> (Vec<u8>, usize) {
        (self.body, self.pos)
    }

    /// The next whole line from `pos`, consumed with its CRLF; `None` while
    /// its CRLF has not arrived. The same limit applies whether the CRLF has
    /// arrived or not (a line of the limit's length may be waiting for the
    /// LF after its CR), so the answer does not depend on how the body was
    /// split into reads.
    fn line<'b>(&mut self, buf: &'b [u8], what: &str) -> Result<Option<&'b [u8]>, HttpError> {
        let too_long = || HttpError::BadRequest(format!("{what} line too long"));
        let start = self.pos;
        // A CR may already have been scanned while its LF had not arrived.
        let from = self.scanned.saturating_sub(1).max(start);
        let found = buf[from..].windows(2).position(|w| w == b"\r\n");
        self.work += found.map_or(buf.len() - from, |i| i + 2);
        match found {
            Some(i) => {
                let end = from + i;
                if end - start > MAX_CHUNK_LINE {
                    return Err(too_long());
                }
                self.pos = end + 2;
                self.scanned = self.pos;
                Ok(Some(&buf[start..end]))
            }
            None => {
                if buf.len() - start > MAX_CHUNK_LINE + 1 {
                    return Err(too_long());
                }
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }
}

/// The size of a chunk size line: RFC 9112 chunk-size is 1*HEXDIG (no sign,
/// which `from_str_radix` would take, no `0x`), then optional extensions.
fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let size_str = std::str::from_utf8(size_part).unwrap_or("").trim();
    size_str
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| usize::from_str_radix(size_str, 16).ok())
        .flatten()
        .ok_or_else(|| HttpError::BadRequest(format!("invalid chunk size {size_str:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";

    #[test]
    fn decodes_whole_and_byte_by_byte_alike() {
        let mut whole = Chunked::default();
        assert_eq!(whole.advance(BODY, 100), Ok(true));
        let (body, used) = whole.finish();
        assert_eq!(body, b"Wikipedia");
        assert_eq!(&BODY[used..], b"NEXT");

        let mut trickle = Chunked::default();
        let mut done_at = None;
        for n in 1..=BODY.len() {
            if trickle.advance(&BODY[..n], 100) == Ok(true) {
                done_at = Some(n);
                break;
            }
        }
        assert_eq!(done_at, Some(used));
        assert_eq!(trickle.finish(), (b"Wikipedia".to_vec(), used));
    }

    #[test]
    fn refuses_what_it_must() {
        let err = |b: &[u8], max| Chunked::default().advance(b, max).err().map(|e| e.status());
        assert_eq!(err(b"5\r\nhello\r\n0\r\n\r\n", 4), Some(413));
        assert_eq!(err(b"2\r\nhixx", 10), Some(400));
        let long = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert_eq!(err(&long, 10), Some(400));
        let mut trailer = b"0\r\n".to_vec();
        trailer.resize(trailer.len() + MAX_CHUNK_LINE + 2, b'x');
        assert_eq!(err(&trailer, 10), Some(400));
    }

    #[test]
    fn a_trickled_line_is_scanned_once() {
        // A size line of the maximum length, one byte per call: each call
        // scans only the new byte (and the CR before it).
        let mut line = vec![b'0'; MAX_CHUNK_LINE - 1];
        line.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
        let mut c = Chunked::default();
        // Until the line's LF arrives (at index MAX_CHUNK_LINE + 1).
        for n in 1..=MAX_CHUNK_LINE + 1 {
            assert_eq!(c.advance(&line[..n], 10), Ok(false));
            assert_eq!(c.scanned, n, "the next call resumes where this one stopped");
        }
        assert_eq!(c.advance(&line, 10), Ok(true));
    }
}
