//! A TLS connection's transport: rustls' server state machine over the TCP
//! stream, giving the connection above it plaintext reads and writes with
//! the same non-blocking meaning as a bare socket.
//!
//! It keeps the two promises the connection's state machine relies on:
//! a read shorter than asked means the TCP socket was drained (readiness is
//! edge-triggered, so nothing would announce bytes left behind), and a
//! write either accepts plaintext or says `WouldBlock`. What rustls
//! encrypted but the socket did not take yet is the one buffer this layer
//! holds ([`TlsSock::has_pending`]); the connection flushes it before it
//! closes, and it is at most one record ahead of the outbound queue.
//!
//! It never interprets the plaintext (HTTP and WebSocket framing live
//! above), and it never blocks.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// One TLS connection: the TCP stream and rustls' state for it.
pub struct TlsSock {
    pub(super) tcp: TcpStream,
    tls: ServerConnection,
}

impl std::fmt::Debug for TlsSock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSock")
            .field("tcp", &self.tcp)
            .field("handshaking", &self.tls.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsSock {
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSock> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(crate::tls::PENDING_TLS_LIMIT));
        Ok(TlsSock { tcp, tls })
    }

    /// Encrypted bytes wait for the socket (a handshake message, the tail
    /// of a record, a close alert).
    pub fn has_pending(&self) -> bool {
        self.tls.wants_write()
    }

    /// Writes what rustls has encrypted. `WouldBlock` when the socket
    /// cannot take all of it now.
    pub fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends what is pending if the socket takes it; what it does not take
    /// waits for the next writable event.
    fn try_send_pending(&mut self) -> io::Result<()> {
        match self.send_pending() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Says goodbye at the TLS layer (`close_notify`) before the TCP
    /// shutdown, when the handshake got that far.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read && !self.tls.is_handshaking() {
            self.tls.send_close_notify();
            let _ = self.try_send_pending();
        }
        self.tcp.shutdown(how)
    }

    /// Reads TLS records from the socket and processes them: handshake
    /// messages get their answers queued (and sent if the socket takes
    /// them), application data becomes readable plaintext. `Ok(false)` at
    /// the peer's EOF.
    fn pull(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.tls.read_tls(&mut self.tcp) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if let Err(e) = self.tls.process_new_packets() {
            // A TLS peer is told why: rustls queued an alert, sent now or
            // by the connection's last flush. Bytes that are not TLS at all
            // (plaintext HTTP sent to the TLS port) get no answer, as
            // nothing they could read would make sense to them: our side is
            // shut at once, so that alert never leaves.
            match e {
                rustls::Error::InvalidMessage(_) => {
                    let _ = self.tcp.shutdown(Shutdown::Write);
                }
                _ => {
                    let _ = self.try_send_pending();
                }
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.try_send_pending()?;
        Ok(n > 0)
    }
}

impl Read for TlsSock {
    /// Fills `buf` from decrypted data, reading more records while the
    /// socket has them; returns short only once the socket is drained (or at
    /// EOF), and `WouldBlock` when there is no plaintext at all.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                // The peer's close_notify once everything before it is read.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A TCP close without close_notify: an EOF to the layers
                // above, whose frames and requests say themselves whether
                // they are complete.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            match self.pull() {
                Ok(true) => {}
                Ok(false) => return Ok(filled),
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsSock {
    /// Accepts plaintext only when nothing encrypted is left over, so the
    /// connection's queue, not rustls, holds what the peer is slow to read.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_pending()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        self.try_send_pending()?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            // Still handshaking with the socket full: wait for writable.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
