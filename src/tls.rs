//! TLS at the edge: the certificate and key the listening port presents,
//! and the rustls server configuration every TLS connection starts from
//! (docs/PROTOCOL.md §12.1).
//!
//! This module owns loading the PEM pair, checking that key and certificate
//! match, and swapping in a new pair on reload (`SIGHUP`): a connection
//! picks the pair current at its `ClientHello`, so connections already open
//! keep theirs and the next handshake sees the new one. A reload that fails
//! (a missing file, a key that does not match) keeps the old pair.
//!
//! It never touches a socket: the per-connection TLS state machine lives
//! with the other transports in `conn::tls`. Loading reads files, so it runs
//! at start and on the signal-handling thread, never on a shard.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why a certificate and key could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --tls-cert {path}: {err}")]
    Cert { path: PathBuf, err: String },
    #[error("--tls-cert {0} holds no certificate")]
    NoCert(PathBuf),
    #[error("cannot read --tls-key {path}: {err}")]
    Key { path: PathBuf, err: String },
    #[error("--tls-key {key} does not fit --tls-cert {cert}: {err}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        err: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of every TLS context of the server (and of its
/// clients): aws-lc-rs, the same one jsonwebtoken verifies tokens with.
/// Passed explicitly so that no process-wide default is ever needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Plaintext bytes a TLS connection encrypts ahead of its socket: one full
/// record. More stays in the connection's outbound queue, where broadcast
/// frames are shared, instead of being copied into per-connection records.
pub const PENDING_TLS_LIMIT: usize = 16 * 1024;

/// The server's TLS setup: where the pair is read from and the config new
/// connections start from.
#[derive(Debug)]
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    keys: Arc<CurrentKey>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads the pair and builds the config: TLS 1.2 and 1.3, ALPN
    /// `http/1.1`, no client certificates.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let key = load_pair(cert_path, key_path, &provider)?;
        let keys = Arc::new(CurrentKey(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(keys.clone());
        // A client that offers ALPN must be offered HTTP/1.1 (browsers
        // offer h2 first); one that offers only h2 is refused.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            keys,
            config: Arc::new(config),
        })
    }

    /// The config each accepted connection starts its handshake from.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Reads the pair again from the same paths. On success new handshakes
    /// present it; on error the old pair stays and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_pair(
            &self.cert_path,
            &self.key_path,
            self.config.crypto_provider(),
        )?;
        let mut current = match self.keys.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(key);
        Ok(())
    }
}

/// The pair new handshakes present; replaced whole on reload.
#[derive(Debug)]
struct CurrentKey(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = match self.0.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

/// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1
/// PEM) and checks that they belong together.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_err = |err: String| TlsError::Cert {
        path: cert_path.to_owned(),
        err,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        err: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        err: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![format!("{name}.test")]).expect("rcgen");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
        (cert_path, key_path, cert.pem())
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wsedge-tls-unit-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn current_cert(tls: &ServerTls) -> Vec<u8> {
        let key = tls.keys.0.read().expect("lock").clone();
        key.cert[0].as_ref().to_vec()
    }

    #[test]
    fn reload_swaps_the_pair_and_a_bad_file_keeps_the_old_one() {
        let dir = tempdir("reload");
        let (a_cert, a_key, _) = write_pair(&dir, "a");
        let tls = ServerTls::load(&a_cert, &a_key).expect("load a");
        let first = current_cert(&tls);

        // A certificate whose key is not the configured key: refused, old kept.
        let (b_cert, b_key, _) = write_pair(&dir, "b");
        std::fs::copy(&b_cert, &a_cert).expect("copy cert");
        let err = tls.reload().expect_err("mismatched pair must be refused");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert_eq!(current_cert(&tls), first);

        // Garbage: refused, old kept.
        std::fs::write(&a_cert, "not a pem").expect("write");
        assert!(matches!(tls.reload(), Err(TlsError::NoCert(_))));
        assert_eq!(current_cert(&tls), first);

        // The whole new pair: taken.
        std::fs::copy(&b_cert, &a_cert).expect("copy cert");
        std::fs::copy(&b_key, &a_key).expect("copy key");
        tls.reload().expect("reload b");
        assert_ne!(current_cert(&tls), first);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let dir = tempdir("missing");
        let err = ServerTls::load(&dir.join("nope.crt"), &dir.join("nope.key"))
            .expect_err("missing cert");
        assert!(err.to_string().contains("nope.crt"), "{err}");
        let (cert, _, _) = write_pair(&dir, "c");
        let err = ServerTls::load(&cert, &dir.join("nope.key")).expect_err("missing key");
        assert!(err.to_string().contains("nope.key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
