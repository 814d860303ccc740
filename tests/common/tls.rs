//! Certificates made at test time (rcgen) and TLS clients for them: a CA,
//! a leaf for `localhost` / 127.0.0.1 signed by it, written to a temp dir
//! as PEM files the server and clients read; WSS and HTTPS over rustls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;

use super::WAIT;

/// A TLS stream to the server under test.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A WebSocket over it.
pub type Wss = WebSocket<TlsStream>;

/// A throwaway CA and a `localhost` leaf it signed, as PEM files in their
/// own temp dir (removed on drop).
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = std::env::temp_dir().join(format!(
            "wsedge-pki-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.distinguished_name
            .push(DnType::CommonName, "wsedge test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let pki = TestPki {
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            dir,
        };
        std::fs::write(&pki.ca_path, &pki.ca_pem).expect("write ca");
        std::fs::write(&pki.cert_path, leaf.pem()).expect("write cert");
        std::fs::write(&pki.key_path, leaf_key.serialize_pem()).expect("write key");
        pki
    }

    /// `--tls-cert … --tls-key …` for a spawned server.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert_path.display().to_string(),
            "--tls-key".into(),
            self.key_path.display().to_string(),
        ]
    }

    /// A client config trusting this CA only, at the given versions.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add ca");
        let mut cfg = ClientConfig::builder_with_provider(wsedge_provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A client config trusting this CA, TLS 1.2 and 1.3.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_config(rustls::DEFAULT_VERSIONS)
    }
}

fn wsedge_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TCP connection to `addr` with the TLS handshake done (as `localhost`).
pub fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One HTTPS exchange on a fresh connection: (status, head, body).
pub fn https_raw(addr: SocketAddr, cfg: Arc<ClientConfig>, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = tls_connect(addr, cfg).expect("tls connect");
    s.write_all(raw).expect("write");
    super::read_response(&mut s)
}

/// Opens a WSS connection with `?token=` and returns it after `connected`.
pub fn wss_connect(addr: SocketAddr, cfg: Arc<ClientConfig>, token: &str) -> Wss {
    let s = tls_connect(addr, cfg).expect("tls connect");
    let req = format!("wss://localhost:{}/ws?token={token}", addr.port())
        .into_client_request()
        .expect("request");
    let (mut ws, _) = tungstenite::client(req, s).expect("wss upgrade");
    let hello = super::next_json(&mut ws);
    assert_eq!(hello["type"], "connected", "first message: {hello}");
    ws
}

/// Reads what the server sends until it closes; the bytes it sent.
pub fn read_to_close(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read error while waiting for the close: {e}"),
        }
    }
}

pub fn write_all(s: &mut impl Write, b: &[u8]) {
    s.write_all(b).expect("write");
}
