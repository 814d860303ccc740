//! A TLS connection's transport: rustls' server state machine over the TCP
//! stream, giving the connection above it plaintext reads and writes with
//! the same non-blocking meaning as a bare socket.
//!
//! It uses rustls' unbuffered API, so the buffers are this module's and
//! exist only while they hold bytes: the TLS bytes received and not yet
//! processed (a partial record), the plaintext decrypted and not yet read
//! by the layer above, and what was encrypted and not yet taken by the
//! socket. An idle TLS connection holds none of them, only rustls' session
//! (its record keys), which is what keeps it small.
//!
//! It keeps the two promises the connection's state machine relies on:
//! a read shorter than asked means the TCP socket was drained (readiness is
//! edge-triggered, so nothing would announce bytes left behind), and a
//! write either accepts plaintext or says `WouldBlock`. Encrypted bytes the
//! socket did not take ([`TlsSock::has_pending`]) are at most one write
//! ahead of the outbound queue; the connection flushes them before it
//! closes.
//!
//! It never interprets the plaintext (HTTP and WebSocket framing live
//! above), and it never blocks.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;

use crate::tls::PENDING_TLS_LIMIT;

/// Bytes read from the socket per `recv` into the TLS input buffer.
const READ_CHUNK: usize = 4096;

/// Room a TLS record needs beyond its plaintext (header, tag, content type).
const RECORD_OVERHEAD: usize = 64;

/// Where the session is, as far as reading goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshaking or open: records may come.
    Open,
    /// The peer said `close_notify` or closed TCP: nothing more comes.
    Ended,
}

/// One TLS connection: the TCP stream, rustls' state for it, and the bytes
/// in flight each way.
pub struct TlsSock {
    pub(super) tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// TLS bytes received and not processed yet (at most a partial record
    /// once processing stops).
    incoming: Vec<u8>,
    /// Plaintext decrypted and not read yet, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken yet, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    phase: Phase,
}

impl std::fmt::Debug for TlsSock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSock")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("outgoing", &(self.outgoing.len() - self.out_at))
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// What processing the received records came to.
enum Processed {
    /// Records need more bytes from the socket.
    NeedMore,
    /// The peer closed the session.
    Ended,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSock {
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSock> {
        Ok(TlsSock {
            tcp,
            tls: UnbufferedServerConnection::new(config).map_err(io::Error::other)?,
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            phase: Phase::Open,
        })
    }

    /// The handshake is not done: no answer could reach the peer yet.
    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Encrypted bytes wait for the socket (a handshake message, the tail
    /// of a record, a close alert).
    pub fn has_pending(&self) -> bool {
        self.out_at < self.outgoing.len()
    }

    /// Writes what is encrypted. `WouldBlock` when the socket cannot take
    /// all of it now; the buffer is freed once it is all written.
    pub fn send_pending(&mut self) -> io::Result<()> {
        while self.out_at < self.outgoing.len() {
            match self.tcp.write(&self.outgoing[self.out_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.out_at = 0;
        Ok(())
    }

    /// Sends what is pending if the socket takes it; the rest waits for the
    /// next writable event.
    fn try_send_pending(&mut self) -> io::Result<()> {
        match self.send_pending() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Says goodbye at the TLS layer (`close_notify`) before the TCP
    /// shutdown, when the session got that far.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            let _ =
                self.with_write_traffic(|w, out| encode_into(out, |buf| w.queue_close_notify(buf)));
            let _ = self.try_send_pending();
        }
        self.tcp.shutdown(how)
    }

    /// Runs rustls over the bytes received until it needs more: handshake
    /// messages get their answers encoded (and sent if the socket takes
    /// them), application data lands in `plain`.
    fn process(&mut self) -> io::Result<Processed> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.fail(&e);
                    return Err(tls_error(e));
                }
            };
            let next = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(tls_error)?;
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(&mut self.outgoing, |buf| e.encode(buf))?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    // The bytes stay in `outgoing`, sent in order before
                    // anything encrypted later: rustls may forget them.
                    t.done();
                    self.try_send_pending()?;
                    None
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    Some(Processed::NeedMore)
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => Some(Processed::Ended),
                // No early data is enabled; anything else is a state this
                // version of the transport does not know.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS state",
                    ))
                }
            };
            self.incoming.drain(..discard);
            if let Some(p) = next {
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                }
                return Ok(p);
            }
        }
    }

    /// After a fatal TLS error: a TLS peer is told why (the alert rustls
    /// queued), while bytes that are not TLS at all (plaintext HTTP sent to
    /// the TLS port) get no answer, as nothing they could read would make
    /// sense to them.
    fn fail(&mut self, e: &rustls::Error) {
        if matches!(e, rustls::Error::InvalidMessage(_)) {
            self.outgoing = Vec::new();
            self.out_at = 0;
            return;
        }
        // rustls hands out the queued alert before it reports the error again.
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.tls.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if encode_into(&mut self.outgoing, |buf| enc.encode(buf)).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        let _ = self.try_send_pending();
    }

    /// Calls `f` with the session's write side once rustls has nothing else
    /// to do first (records to read in, handshake messages to send).
    /// `Ok(None)` when the session cannot send application data yet.
    fn with_write_traffic<T>(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> io::Result<T>,
    ) -> io::Result<Option<T>> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let state = state.map_err(tls_error)?;
            match state {
                ConnectionState::WriteTraffic(mut w) => {
                    let r = f(&mut w, &mut self.outgoing);
                    self.incoming.drain(..discard);
                    return r.map(Some);
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(tls_error)?;
                        self.plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(&mut self.outgoing, |buf| e.encode(buf))?;
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                _ => {
                    self.incoming.drain(..discard);
                    return Ok(None);
                }
            }
            self.incoming.drain(..discard);
        }
    }

    /// Reads from the socket into `incoming`. `Ok(false)` at the peer's EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let old = self.incoming.len();
        self.incoming.resize(old + READ_CHUNK, 0);
        let r = loop {
            match self.tcp.read(&mut self.incoming[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let n = *r.as_ref().unwrap_or(&0);
        self.incoming.truncate(old + n);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        r.map(|n| n > 0)
    }

    /// Moves decrypted bytes to `buf`; frees the plaintext once all read.
    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.plain.len() - self.plain_at).min(buf.len());
        buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        n
    }
}

/// Encodes or encrypts into the free end of `out`, growing it to the size
/// rustls asks for.
fn encode_into<E: Into<Grow>>(
    out: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match f(&mut out[start..]).map_err(Into::into) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Grow::To(size)) if size > room => room = size,
            Err(Grow::To(_)) | Err(Grow::Fail) => {
                out.truncate(start);
                return Err(io::Error::other("TLS encoding failed"));
            }
        }
    }
}

/// What an encode or encrypt error asks of the buffer.
enum Grow {
    To(usize),
    Fail,
}

impl From<EncodeError> for Grow {
    fn from(e: EncodeError) -> Grow {
        match e {
            EncodeError::InsufficientSize(s) => Grow::To(s.required_size),
            _ => Grow::Fail,
        }
    }
}

impl From<EncryptError> for Grow {
    fn from(e: EncryptError) -> Grow {
        match e {
            EncryptError::InsufficientSize(s) => Grow::To(s.required_size),
            _ => Grow::Fail,
        }
    }
}

impl Read for TlsSock {
    /// Fills `buf` from decrypted data, reading more records while the
    /// socket has them; returns short only once the socket is drained (or at
    /// EOF), and `WouldBlock` when there is no plaintext at all.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.take_plain(buf);
        while filled < buf.len() && self.phase == Phase::Open {
            match self.process() {
                Ok(Processed::NeedMore) => {}
                Ok(Processed::Ended) => self.phase = Phase::Ended,
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
            filled += self.take_plain(&mut buf[filled..]);
            if filled == buf.len() || self.phase == Phase::Ended {
                break;
            }
            match self.fill() {
                Ok(true) => {}
                // A TCP close without close_notify is an EOF to the layers
                // above, whose frames and requests say whether they ended.
                Ok(false) => self.phase = Phase::Ended,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 && self.phase == Phase::Open {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(filled)
    }
}

impl Write for TlsSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Encrypts up to one record's worth of plaintext, only when nothing
    /// encrypted is left over, so that the connection's queue, not this
    /// layer, holds what the peer is slow to read.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_pending()?;
        let written = self.with_write_traffic(|w, out| {
            let mut taken = 0;
            for b in bufs {
                if taken >= PENDING_TLS_LIMIT {
                    break;
                }
                let part = &b[..b.len().min(PENDING_TLS_LIMIT - taken)];
                if part.is_empty() {
                    continue;
                }
                out.reserve(part.len() + RECORD_OVERHEAD);
                encode_into(out, |buf| w.encrypt(part, buf))?;
                taken += part.len();
            }
            Ok(taken)
        })?;
        let Some(n) = written else {
            // Still handshaking: the request has not been read, so nothing
            // should be written yet; wait for the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        };
        self.try_send_pending()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
