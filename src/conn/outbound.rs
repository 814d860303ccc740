//! A connection's outbound queue: the bytes it still has to write, in order.
//!
//! Broadcast frames are queued by reference (`SharedFrame`), so a message to
//! 10,000 connections is one allocation; per-connection answers (HTTP
//! responses, echoes, pongs, close frames) are owned chunks. Writes use
//! `sendmsg` (one vectored send) over the front chunks until the socket would block.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::frame::{Deflating, SharedFrame};

/// At most this many chunks go into one vectored send.
const MAX_IOV: usize = 64;

#[derive(Debug)]
enum Chunk {
    Shared(SharedFrame),
    /// A shared frame's compressed twin (made before it was queued).
    Deflated(SharedFrame),
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(f) => f,
            Chunk::Deflated(f) => f.deflated_bytes().unwrap_or(f),
            Chunk::Owned(v) => v,
        }
    }
}

/// Bytes waiting to be written to one socket.
#[derive(Debug, Default)]
pub struct Outbound {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

/// What a write attempt achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is written.
    All,
    /// The socket would block; the rest waits for the next writable event.
    Partial,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_shared(&mut self, frame: SharedFrame) {
        self.len += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues a shared frame as the connection takes it: its compressed
    /// twin when the connection negotiated compression and the twin exists
    /// (made now if it was not yet), else the plain frame. The twin is
    /// compressed with the full window: a connection that allows less gets
    /// the plain frame.
    pub fn push_frame(&mut self, frame: SharedFrame, deflating: Option<Deflating>) {
        let twin = deflating
            .filter(|d| d.window == Deflating::SHARED_WINDOW)
            .and_then(|d| frame.deflated(d.min).map(<[u8]>::len));
        match twin {
            Some(len) => {
                self.len += len;
                self.chunks.push_back(Chunk::Deflated(frame));
            }
            None => self.push_shared(frame),
        }
    }

    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Owned(bytes));
    }

    /// Drops everything queued (the connection is going away).
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.offset = 0;
        self.len = 0;
    }

    /// Drops every chunk not started yet and keeps the rest of the one being
    /// written, so the peer never gets half a frame followed by something
    /// else: what is queued next (a close frame) still parses. Frees the
    /// queue at once but for that one chunk.
    pub fn drop_unsent(&mut self) {
        if self.offset == 0 {
            self.clear();
            return;
        }
        let Some(front) = self.chunks.pop_front() else {
            return self.clear();
        };
        self.len = front.bytes().len() - self.offset;
        self.chunks = VecDeque::from([front]);
    }

    /// Writes until done or `WouldBlock`; adds the bytes written to `written`.
    pub fn flush_to<W: Write>(&mut self, w: &mut W, written: &mut u64) -> io::Result<Flushed> {
        while !self.chunks.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                n_iov += 1;
            }
            match w.write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *written += n as u64;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partial),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Give back the memory of a queue that grew under a burst.
        if self.chunks.capacity() > 64 {
            self.chunks = VecDeque::new();
        }
        Ok(Flushed::All)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    /// A writer that takes at most `cap` bytes per call and then blocks.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let n = buf.len().min(self.cap);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut q = Outbound::default();
        q.push_owned(b"abc".to_vec());
        q.push_shared(Frame::shared(b"defgh".to_vec()));
        q.push_owned(b"ij".to_vec());
        assert_eq!(q.len(), 10);
        let mut w = Trickle {
            out: vec![],
            cap: 4,
            calls_left: 1,
        };
        let mut written = 0;
        assert_eq!(
            q.flush_to(&mut w, &mut written).ok(),
            Some(Flushed::Partial)
        );
        // The default `write_vectored` writes the first slice only: "abc".
        assert_eq!(q.len(), 7);
        w.calls_left = 10;
        assert_eq!(q.flush_to(&mut w, &mut written).ok(), Some(Flushed::All));
        assert_eq!(w.out, b"abcdefghij");
        assert_eq!(written, 10);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_unsent_keeps_the_rest_of_a_started_chunk() {
        let mut q = Outbound::default();
        q.push_shared(Frame::shared(b"frame-one".to_vec()));
        q.push_owned(b"frame-two".to_vec());
        let mut w = Trickle {
            out: vec![],
            cap: 5,
            calls_left: 1,
        };
        let mut written = 0;
        assert_eq!(
            q.flush_to(&mut w, &mut written).ok(),
            Some(Flushed::Partial)
        );
        q.drop_unsent();
        assert_eq!(q.len(), 4, "the rest of the started chunk");
        q.push_owned(b"close".to_vec());
        w.calls_left = 10;
        assert_eq!(q.flush_to(&mut w, &mut written).ok(), Some(Flushed::All));
        assert_eq!(w.out, b"frame-oneclose");

        // Nothing started: everything goes.
        q.push_owned(b"abc".to_vec());
        q.drop_unsent();
        assert!(q.is_empty());
    }
}
