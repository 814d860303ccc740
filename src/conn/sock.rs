//! The socket a connection reads from and writes to: a real TCP stream, a
//! TLS session over one (`--tls-cert`), or an in-memory sink that stands in
//! for one in the fan-out bench and tests.
//!
//! This module owns only the byte transport: `recv`/`read`, `send`/`sendmsg`,
//! shutdown and poll registration. It must never buffer, retry or interpret
//! plaintext (the outbound queue and the state machine do that; a TLS
//! session holds only what it encrypted, see [`super::tls`]), and the server
//! must never create a [`Sock::Sink`]: sinks exist only through the test bed
//! in [`crate::shard::SinkShard`]. The TCP path costs one `match` per system
//! call over calling the stream directly.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::tls::TlsSock;

/// A connection's socket.
#[derive(Debug)]
pub enum Sock {
    Tcp(TcpStream),
    /// Boxed: rustls' state is ~1 KiB, and plaintext connections must not
    /// pay for it in every slab slot.
    Tls(Box<TlsSock>),
    /// Takes every byte at once and only counts them; reads find nothing.
    Sink(Sink),
}

/// An in-memory peer that reads everything instantly: a socket whose send
/// buffer never fills. It never blocks a write and never has bytes to read.
#[derive(Debug, Default)]
pub struct Sink {
    /// Bytes written into it since it was made. A `u32` that wraps rather
    /// than a `u64`: it keeps `Sock` at 16 bytes (a box and a tag), so the
    /// test bed does not grow every real connection, and the tests that
    /// read it write far less than 4 GiB per sink.
    written: u32,
}

impl Sink {
    /// Bytes written into this sink, modulo 2³².
    pub fn written(&self) -> u32 {
        self.written
    }

    fn take(&mut self, n: usize) -> usize {
        self.written = self.written.wrapping_add(n as u32);
        n
    }
}

impl Sock {
    /// Closes one or both directions (a TLS session says `close_notify`
    /// first); a sink has nothing to close.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Tls(s) => s.shutdown(how),
            Sock::Sink(_) => Ok(()),
        }
    }

    /// Whether a close may linger (read what the peer still sends): a sink
    /// has no peer, and its reads never end.
    pub fn can_linger(&self) -> bool {
        !matches!(self, Sock::Sink(_))
    }

    /// A TLS handshake is under way: the peer cannot read an answer yet.
    pub fn is_handshaking(&self) -> bool {
        matches!(self, Sock::Tls(s) if s.is_handshaking())
    }

    /// Bytes below the connection's queue still wait for the socket: what a
    /// TLS session encrypted and the socket did not take yet.
    pub fn has_pending(&self) -> bool {
        match self {
            Sock::Tls(s) => s.has_pending(),
            Sock::Tcp(_) | Sock::Sink(_) => false,
        }
    }

    /// Writes those bytes; `WouldBlock` while the socket cannot take them.
    pub fn send_pending(&mut self) -> io::Result<()> {
        match self {
            Sock::Tls(s) => s.send_pending(),
            Sock::Tcp(_) | Sock::Sink(_) => Ok(()),
        }
    }

    /// The sink behind this socket, if it is one.
    pub fn sink(&self) -> Option<&Sink> {
        match self {
            Sock::Sink(s) => Some(s),
            Sock::Tcp(_) | Sock::Tls(_) => None,
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Tls(s) => s.read(buf),
            // A peer that never sends: like a drained non-blocking socket.
            Sock::Sink(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Writes are `send`/`sendmsg` rather than `write`/`writev`. On a socket
/// they do the same, minus the VFS layer (`writev` takes the file-position
/// lock and imports the iovec through `vfs_writev`): a few per cent of the
/// kernel time of each delivery, and a fixed-rate fan-out is one such call
/// per connection per message.
impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => socket2::SockRef::from(&*s).send(buf),
            Sock::Tls(s) => s.write(buf),
            Sock::Sink(s) => Ok(s.take(buf.len())),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => {
                let sock = socket2::SockRef::from(&*s);
                match bufs {
                    [one] => sock.send(one),
                    _ => sock.send_vectored(bufs),
                }
            }
            Sock::Tls(s) => s.write_vectored(bufs),
            Sock::Sink(s) => Ok(s.take(bufs.iter().map(|b| b.len()).sum())),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registration goes to the stream; a sink is never polled (it is always
/// writable and never readable), so registering it does nothing.
impl Source for Sock {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.register(registry, token, interests),
            Sock::Tls(s) => s.tcp.register(registry, token, interests),
            Sock::Sink(_) => Ok(()),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.reregister(registry, token, interests),
            Sock::Tls(s) => s.tcp.reregister(registry, token, interests),
            Sock::Sink(_) => Ok(()),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.deregister(registry),
            Sock::Tls(s) => s.tcp.deregister(registry),
            Sock::Sink(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_counts_every_byte_and_never_has_input() {
        let mut s = Sock::Sink(Sink::default());
        assert_eq!(s.write(b"abc").ok(), Some(3));
        let bufs = [IoSlice::new(b"de"), IoSlice::new(b""), IoSlice::new(b"fgh")];
        assert_eq!(s.write_vectored(&bufs).ok(), Some(5));
        assert_eq!(s.sink().map(Sink::written), Some(8));
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::WouldBlock));
        assert!(s.shutdown(Shutdown::Both).is_ok());
    }
}
