//! `wss://` and `https://`: the client TLS settings every connection of a
//! run shares, and the I/O helpers that run rustls over this tool's
//! non-blocking (mio) and blocking (REST) sockets.
//!
//! The roots are the system's plus every certificate of `--ca-file`, built
//! by the same function as the Rust client's
//! ([`wsedge::client::tls_client_config`]: aws-lc-rs, TLS 1.2 and 1.3,
//! ALPN `http/1.1`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

/// TLS for one target: the shared configuration and the name its
/// certificate must match (the URL's host: SNI, or an IP SAN).
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Tls {
    /// The client configuration of a run (system roots + `ca_file`) for
    /// the server called `host`.
    pub fn new(ca_file: Option<&Path>, host: &str) -> Result<Tls, String> {
        let config = wsedge::client::tls_client_config(ca_file).map_err(|e| e.to_string())?;
        Tls::with_config(config, host)
    }

    pub fn with_config(config: Arc<rustls::ClientConfig>, host: &str) -> Result<Tls, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
        Ok(Tls { config, name })
    }

    /// A fresh client connection (nothing sent yet).
    pub fn connect(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)
    }
}

/// A rustls error as an I/O error whose text says it is TLS.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Reads plaintext from a non-blocking socket through `tls`: what rustls
/// already decrypted first, else more records from `sock`. `WouldBlock`
/// only when both are empty, so an edge-triggered caller that reads until
/// `WouldBlock` never leaves decrypted bytes behind. `Ok(0)` at the end of
/// the stream, with or without `close_notify` (a load tool does not care
/// about truncation attacks; it reports the close either way). Handshake
/// records rustls wants to answer are written at once (what the socket
/// does not take waits for [`flush_tls`]).
pub fn recv<S: Read + Write>(
    tls: &mut ClientConnection,
    sock: &mut S,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Ok(0) is the peer's FIN: rustls notes it, and its reader says
        // Ok(0) or UnexpectedEof on the next turn.
        tls.read_tls(sock)?;
        let state = tls.process_new_packets();
        // On an error rustls has queued an alert: try to send it.
        let _ = flush_tls(tls, sock);
        state.map_err(tls_error)?;
    }
}

/// Writes what rustls has queued (handshake, records, alerts) until it is
/// all out (`Ok(true)`) or the socket would block (`Ok(false)`).
pub fn flush_tls<S: Write>(tls: &mut ClientConnection, sock: &mut S) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads plaintext from a non-blocking client socket: straight from it,
/// or through its TLS connection.
pub fn read_plain(
    tls: Option<&mut ClientConnection>,
    stream: &mut mio::net::TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    match tls {
        None => crate::sys::recv(stream.as_raw_fd(), buf),
        Some(tls) => recv(tls, stream, buf),
    }
}

/// Something waits to be written: plaintext, or TLS records.
pub fn wants_flush(tls: Option<&ClientConnection>, out: &[u8]) -> bool {
    !out.is_empty() || tls.is_some_and(|t| t.wants_write())
}

/// Writes what `out` holds to a non-blocking client socket; keeps the rest
/// for the next writable event. Over TLS, the plaintext goes into rustls
/// (as much as it takes), then rustls's records to the socket.
pub fn write_plain(
    tls: Option<&mut ClientConnection>,
    stream: &mut mio::net::TcpStream,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if let Some(tls) = tls {
        loop {
            if !out.is_empty() {
                let n = send(tls, out)?;
                out.drain(..n);
            }
            if !flush_tls(tls, stream)? || out.is_empty() {
                break;
            }
        }
    } else {
        while !out.is_empty() {
            match stream.write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    if out.is_empty() {
        // Give back a buffer a large write grew.
        *out = Vec::new();
    }
    Ok(())
}

/// Hands plaintext to rustls (buffered until the handshake is done);
/// returns how much it took: rustls caps what it holds (64 KiB by
/// default), the caller keeps the rest for later.
pub fn send(tls: &mut ClientConnection, data: &[u8]) -> io::Result<usize> {
    tls.writer().write(data)
}

/// A blocking TLS connection split in two halves for two threads (the REST
/// driver writes requests on one thread and reads answers on another):
/// the rustls state is shared under a mutex that is never held during
/// socket I/O, so a blocked read never stops a write. Only the writer half
/// writes to the socket, so records go out in order.
pub struct Split {
    tls: Arc<Mutex<ClientConnection>>,
}

impl Split {
    /// Runs the handshake to its end on `sock` (blocking, bounded by its
    /// timeouts), then returns the reader and writer halves.
    pub fn handshake(
        tls: &Tls,
        mut sock: std::net::TcpStream,
    ) -> io::Result<(SplitReader, SplitWriter)> {
        let mut conn = tls.connect()?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let shared = Split {
            tls: Arc::new(Mutex::new(conn)),
        };
        let reader = SplitReader {
            tls: shared.tls.clone(),
            sock: sock.try_clone()?,
        };
        Ok((
            reader,
            SplitWriter {
                tls: shared.tls,
                sock,
            },
        ))
    }
}

pub struct SplitReader {
    tls: Arc<Mutex<ClientConnection>>,
    sock: std::net::TcpStream,
}

pub struct SplitWriter {
    tls: Arc<Mutex<ClientConnection>>,
    sock: std::net::TcpStream,
}

impl Read for SplitReader {
    /// Decrypted bytes; the raw read (which may block up to the socket's
    /// read timeout) happens without the lock. Whatever rustls wants to
    /// send in answer (rare after the handshake) waits in it for the
    /// writer half's next write.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut raw = [0u8; 16 * 1024];
        loop {
            {
                let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let n = self.sock.read(&mut raw)?;
            let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
            let mut data = &raw[..n];
            // n == 0: the peer's FIN (read_tls of nothing records it).
            // rustls takes less than offered when its buffer is full, and
            // nothing after `close_notify`: feed it in turns, and stop on
            // a turn that takes nothing (what is left after the end of
            // the TLS stream is of no use).
            loop {
                let took = tls.read_tls(&mut data)?;
                tls.process_new_packets().map_err(tls_error)?;
                if data.is_empty() || took == 0 {
                    break;
                }
            }
        }
    }
}

impl Write for SplitWriter {
    /// Encrypts under the lock, writes the records after releasing it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut records = Vec::with_capacity(buf.len() + 64);
        let n = {
            let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
            let n = tls.writer().write(buf)?;
            while tls.wants_write() {
                tls.write_tls(&mut records)?;
            }
            n
        };
        self.sock.write_all(&records)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl SplitWriter {
    /// The socket underneath (timeouts, shutdown).
    pub fn tcp(&self) -> &std::net::TcpStream {
        &self.sock
    }
}

/// `--server-tls`: a throwaway CA and a server certificate it signed for
/// `localhost` and 127.0.0.1, made at start-up (rcgen, aws-lc-rs) as PEM
/// files in a fresh temp directory, removed on drop. The server reads the
/// leaf and key; this tool trusts the CA.
pub struct ServerCert {
    pub dir: PathBuf,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl ServerCert {
    pub fn new() -> Result<ServerCert, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let e = |what: &str| {
            let what = what.to_string();
            move |err: rcgen::Error| format!("--server-tls: {what}: {err}")
        };
        let ca_key = KeyPair::generate().map_err(e("CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e("CA"))?;
        ca.distinguished_name
            .push(DnType::CommonName, "wsedge-loadtest throwaway CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(e("CA certificate"))?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().map_err(e("server key"))?;
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(e("server certificate"))?
            .signed_by(&leaf_key, &issuer)
            .map_err(e("server certificate"))?;
        let dir = std::env::temp_dir().join(format!(
            "wsedge-loadtest-tls-{}-{}",
            std::process::id(),
            crate::sys::unix_micros()
        ));
        let cert = ServerCert {
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
            dir,
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("--server-tls: {}: {e}", path.display()))
        };
        std::fs::create_dir_all(&cert.dir)
            .map_err(|e| format!("--server-tls: {}: {e}", cert.dir.display()))?;
        write(&cert.ca_path, ca_cert.pem())?;
        write(&cert.cert_path, leaf.pem())?;
        write(&cert.key_path, leaf_key.serialize_pem())?;
        Ok(cert)
    }

    /// The clients' TLS for a server with this certificate: the CA of
    /// this run (and nothing else: no system roots needed) and the name
    /// `localhost`.
    pub fn client_tls(&self) -> Result<Tls, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from_pem_file(&self.ca_path)
            .map_err(|e| format!("--server-tls: {}: {e}", self.ca_path.display()))?;
        roots.add(ca).map_err(|e| format!("--server-tls: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls::with_config(Arc::new(config), "localhost")
    }
}

impl Drop for ServerCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking connection for setup checks and the drill's publisher: TCP,
/// or TLS over it (handshake on first use, bounded by the socket's
/// timeouts).
pub enum Blocking {
    Plain(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, std::net::TcpStream>>),
}

impl Blocking {
    /// Connects to `addr` within `timeout`, with `timeout` on every read
    /// and write, and TCP_NODELAY (requests are small and awaited).
    pub fn connect(
        addr: std::net::SocketAddr,
        tls: Option<&Tls>,
        timeout: std::time::Duration,
    ) -> io::Result<Blocking> {
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(match tls {
            None => Blocking::Plain(s),
            Some(t) => Blocking::Tls(Box::new(rustls::StreamOwned::new(t.connect()?, s))),
        })
    }
}

impl Read for Blocking {
    /// The end of the stream without `close_notify` (a server that closes
    /// after a `Connection: close` answer) reads as the end, as over TCP.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.read(buf),
            Blocking::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.write(buf),
            Blocking::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Blocking::Plain(s) => s.flush(),
            Blocking::Tls(s) => s.flush(),
        }
    }
}
