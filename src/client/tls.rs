//! `wss://`: the TLS configuration (system roots plus an optional extra CA
//! file, aws-lc-rs, ALPN `http/1.1`) and the stream the worker reads and
//! writes, plain or TLS, behind one type so that the rest of the worker is
//! one code path.
//!
//! The configuration builder is public ([`tls_client_config`]) because the
//! load tool trusts the same roots the same way.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, RootCertStore, StreamOwned};

use super::error::ClientError;

/// The ALPN protocol offered: the WebSocket upgrade is HTTP/1.1 (a server
/// that would pick `h2` could not upgrade).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A rustls client configuration on the aws-lc-rs provider (the crate's
/// only one: never `ring`), TLS 1.2 and 1.3, ALPN `http/1.1`, trusting the
/// system's roots plus every certificate of `ca_file` (PEM) when given.
///
/// A system root that does not parse is skipped (and logged at `debug`):
/// one odd file in `/etc/ssl/certs` must not make every connection fail.
/// A `ca_file` that cannot be read, holds no certificate or one that does
/// not parse is an error ([`ClientError::Tls`]): the caller asked for it.
/// No root at all is an error too (nothing could be verified).
pub fn tls_client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("system certificate store: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        log::debug!("system certificate store: {ignored} certificates skipped (unparsable)");
    }
    log::debug!("system certificate store: {added} roots");
    if let Some(path) = ca_file {
        let shown = path.display();
        let mut n = 0usize;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientError::Tls(format!("CA file {shown}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA file {shown}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("CA file {shown}: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(ClientError::Tls(format!(
                "CA file {shown}: no certificate in it"
            )));
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "no trusted root certificate: the system store is empty and no CA file was given"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The SNI name (or IP address) the certificate must match.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| ClientError::Url(format!("{host}: not a valid TLS server name: {e}")))
}

/// What the WebSocket runs on: TCP, or TLS over TCP.
pub(crate) enum Transport {
    Plain(TcpStream),
    /// Boxed: a `ClientConnection` is about 1 KiB inline.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// The TCP socket underneath, for timeouts and socket options.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref(),
        }
    }

    /// Runs the TLS handshake on `tcp` to its end (the socket's read and
    /// write timeouts bound each step), then wraps both.
    pub fn tls(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        mut tcp: TcpStream,
    ) -> Result<Transport, io::Error> {
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(Transport::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }

    /// Queues a TLS `close_notify` and tries to send it (bounded by the
    /// socket's write timeout): the server then knows the end of the stream
    /// is deliberate, not a truncation. Nothing to do on plain TCP.
    pub fn close_notify(&mut self) {
        if let Transport::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => tls_read(&mut s.conn, &mut s.sock, buf),
        }
    }
}

/// Reads plaintext over TLS without writing first. rustls' own
/// `Stream::read` sends the records it holds before it reads, so while
/// the server does not read (its socket full of what it sends us), such a
/// read would only time out on the write and never take the server's
/// bytes: both sides would wait for the keepalive. Here the records still
/// waiting go out with the next write or flush; a read only reads (it
/// tries to send what it produced itself, an alert or a key update
/// answer, without waiting).
fn tls_read(
    conn: &mut ClientConnection,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Plaintext, the end after `close_notify` (Ok(0)), or a stream
            // cut short (UnexpectedEof).
            other => return other,
        }
        // Blocks at most the socket's read timeout; 0 is the peer's FIN,
        // after which the reader answers Ok(0) or UnexpectedEof.
        conn.read_tls(sock)?;
        let state = conn.process_new_packets();
        if conn.wants_write() {
            sock.set_nonblocking(true)?;
            while conn.wants_write() {
                if conn.write_tls(sock).is_err() {
                    break;
                }
            }
            sock.set_nonblocking(false)?;
        }
        state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// The rustls error inside an I/O error (rustls hands its errors, e.g. an
/// untrusted certificate, through `io::Error`s of kind `InvalidData`).
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_a_tls_error() {
        let dir = std::env::temp_dir().join(format!("wsedge-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        assert!(matches!(
            tls_client_config(Some(&missing)),
            Err(ClientError::Tls(m)) if m.contains("missing.pem")
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(matches!(
            tls_client_config(Some(&empty)),
            Err(ClientError::Tls(m)) if m.contains("no certificate")
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ca_file_is_trusted_and_alpn_is_http11() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let dir = std::env::temp_dir().join(format!("wsedge-tls-unit2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).expect("write");
        let config = tls_client_config(Some(&path)).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_names_take_hosts_and_ips() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad host").is_err());
    }
}
