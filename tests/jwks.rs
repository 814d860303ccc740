//! Keys from a JWKS endpoint (docs/PROTOCOL.md §12.3), against a JWKS
//! server written here: a std `TcpListener` thread (plain or TLS) that
//! serves a document the test swaps, counts requests, and can answer 503,
//! or accept and never answer.
//!
//! Every wait is bounded: request counts are waited for on a condition
//! variable with a deadline, metrics are polled with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::process::spawn;
use common::{eventually, http_raw, metric_value, start, try_connect, TestServer, WAIT};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wsedge::{now_secs, Config, ConfigError, Server, StartError};

// ---- keys and tokens ----

fn pem(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read(path).expect("read test key")
}

/// A private test key (tests/keys) and the algorithm it signs with.
struct TestKey {
    alg: Algorithm,
    key: EncodingKey,
}

fn rsa() -> TestKey {
    TestKey {
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).expect("rsa"),
    }
}

fn ec256() -> TestKey {
    TestKey {
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(&pem("ec256_private.pem")).expect("ec256"),
    }
}

fn ec384() -> TestKey {
    TestKey {
        alg: Algorithm::ES384,
        key: EncodingKey::from_ec_pem(&pem("ec384_private.pem")).expect("ec384"),
    }
}

fn ed25519() -> TestKey {
    TestKey {
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(&pem("ed25519_private.pem")).expect("ed25519"),
    }
}

impl TestKey {
    /// The public JWK of this key under `kid`; `with_alg` false leaves the
    /// algorithm to follow from the key type.
    fn jwk(&self, kid: &str, with_alg: bool) -> Value {
        let jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("jwk");
        let mut v = serde_json::to_value(&jwk).expect("jwk json");
        v["kid"] = kid.into();
        if !with_alg {
            if let Some(o) = v.as_object_mut() {
                o.remove("alg");
            }
        }
        v
    }

    /// A user token for `sub` with `kid` in its header, valid 10 minutes.
    fn token(&self, kid: Option<&str>, sub: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_string);
        let claims = json!({"sub": sub, "exp": now_secs() + 600});
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

fn document(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

// ---- the JWKS server ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    /// Answers `503`.
    Fail,
    /// Accepts, reads the request, never answers.
    Hang,
}

struct State {
    doc: String,
    mode: Mode,
    requests: usize,
    /// Connections left unanswered, kept open until the server drops.
    hung: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A JWKS endpoint on 127.0.0.1, plain or TLS.
struct JwksServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl JwksServer {
    fn start(doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        JwksServer::on(listener, doc, None)
    }

    fn on(
        listener: TcpListener,
        doc: String,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> JwksServer {
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                doc,
                mode: Mode::Serve,
                requests: 0,
                hung: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let t = tls.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, t) = (Arc::clone(&s), t.clone());
                std::thread::spawn(move || serve(&s, conn, t));
            }
        });
        JwksServer { shared, addr, tls }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/.well-known/jwks.json", self.addr)
    }

    fn set_doc(&self, doc: String) {
        self.shared.state.lock().expect("state").doc = doc;
    }

    fn set_mode(&self, mode: Mode) {
        self.shared.state.lock().expect("state").mode = mode;
    }

    fn requests(&self) -> usize {
        self.shared.state.lock().expect("state").requests
    }

    /// Waits until at least `n` requests came in.
    fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        let mut st = self.shared.state.lock().expect("state");
        while st.requests < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "only {} JWKS requests, waited for {n}",
                st.requests
            );
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .expect("wait")
                .0;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One connection: reads the request head, then answers as the mode says.
fn serve(s: &Shared, conn: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    let _ = conn.set_read_timeout(Some(WAIT));
    let raw = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(cfg) => match rustls::ServerConnection::new(cfg) {
            Ok(c) => Box::new(rustls::StreamOwned::new(c, conn)),
            Err(_) => return,
        },
        None => Box::new(conn),
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let (mode, doc) = {
        let mut st = s.state.lock().expect("state");
        st.requests += 1;
        s.changed.notify_all();
        if st.mode == Mode::Hang {
            st.hung.push(raw);
            return;
        }
        (st.mode, st.doc.clone())
    };
    let (status, body) = match mode {
        Mode::Fail => (
            "503 Service Unavailable",
            "down for maintenance".to_string(),
        ),
        _ => ("200 OK", doc),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

// ---- the wsedge side ----

/// A wsedge server whose keys come from `url`, refreshed every
/// `refresh_secs`.
fn edge(url: &str, refresh_secs: u64) -> TestServer {
    start(|c| jwks_config(c, url, refresh_secs))
}

fn jwks_config(c: &mut Config, url: &str, refresh_secs: u64) {
    c.jwt_secret = None;
    c.jwt_jwks_url = Some(url.to_string());
    c.jwt_jwks_refresh_secs = refresh_secs;
}

/// The upgrade's outcome: `Ok(user)` from the `connected` message, or the
/// refusal's status.
fn upgrade(addr: SocketAddr, token: &str) -> Result<String, u16> {
    let mut ws = try_connect(addr, &format!("/ws?token={token}"), &[])?;
    let hello = common::next_json(&mut ws);
    assert_eq!(hello["type"], "connected", "{hello}");
    let _ = ws.close(None);
    Ok(hello["payload"]["userId"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn refreshes(addr: SocketAddr, result: &str) -> u64 {
    metric_value(
        addr,
        &format!("wsedge_jwks_refreshes_total{{result=\"{result}\"}}"),
    )
}

fn healthz(addr: SocketAddr) -> String {
    let (status, _, body) = http_raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).into_owned()
}

const NOT_LOADED: &str =
    "degraded: no keys loaded yet from the JWKS endpoint; every token is refused";

// ---- the tests ----

#[test]
fn the_kid_picks_the_key_among_rsa_ec_and_ed25519_and_the_alg_must_be_the_keys() {
    let (rsa, ec256, ec384, ed) = (rsa(), ec256(), ec384(), ed25519());
    let jwks = JwksServer::start(document(&[
        rsa.jwk("rsa-1", true),
        // Without `alg`: the algorithm follows from the key type.
        ec256.jwk("ec-256", false),
        ec384.jwk("ec-384", false),
        ed.jwk("ed-1", false),
    ]));
    let srv = edge(&jwks.url(), 300);
    // Start waited for the first fetch: keys are there at once.
    assert_eq!(healthz(srv.addr), "ok");
    assert_eq!(metric_value(srv.addr, "wsedge_jwks_keys"), 4);
    for (key, kid, user) in [
        (&rsa, "rsa-1", "u-rsa"),
        (&ec256, "ec-256", "u-ec256"),
        (&ec384, "ec-384", "u-ec384"),
        (&ed, "ed-1", "u-ed"),
    ] {
        assert_eq!(
            upgrade(srv.addr, &key.token(Some(kid), user)),
            Ok(user.to_string())
        );
    }
    // A key under another key's kid: that key's algorithm does not match.
    assert_eq!(upgrade(srv.addr, &rsa.token(Some("ec-256"), "u")), Err(401));
    // The right key and algorithm, another token's signature.
    let mut other_ec = ec256.token(Some("ec-256"), "u");
    let forged = ec256.token(Some("ec-256"), "v");
    other_ec.truncate(other_ec.rfind('.').expect("sig"));
    other_ec.push_str(&forged[forged.rfind('.').expect("sig")..]);
    assert_eq!(upgrade(srv.addr, &other_ec), Err(401));
    // HS256 signed with the RSA public key as the secret (the classic
    // confusion): never accepted from a JWKS.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &json!({"sub": "x", "exp": now_secs() + 600}),
        &EncodingKey::from_secret(&pem("rsa_public.pem")),
    )
    .expect("hs256");
    assert_eq!(upgrade(srv.addr, &hs), Err(401));
    // No kid, several keys: refused, and no fetch is asked for it.
    assert_eq!(upgrade(srv.addr, &rsa.token(None, "u")), Err(401));
    assert_eq!(metric_value(srv.addr, "wsedge_jwks_unknown_kid_total"), 0);
    assert_eq!(jwks.requests(), 1);
}

#[test]
fn a_lone_key_serves_tokens_without_kid() {
    let ed = ed25519();
    let jwks = JwksServer::start(document(&[ed.jwk("only", false)]));
    let srv = edge(&jwks.url(), 300);
    assert_eq!(upgrade(srv.addr, &ed.token(None, "u1")), Ok("u1".into()));
    assert_eq!(
        upgrade(srv.addr, &ed.token(Some("only"), "u2")),
        Ok("u2".into())
    );
}

#[test]
fn a_new_kid_is_refused_then_accepted_after_the_refresh_it_triggers() {
    let (old, new) = (rsa(), ec256());
    let jwks = JwksServer::start(document(&[old.jwk("2026-01", true)]));
    // The period is long: only the unknown kid can bring the new key in.
    let srv = edge(&jwks.url(), 300);
    assert_eq!(jwks.requests(), 1);
    let token = new.token(Some("2026-02"), "rotated");

    jwks.set_doc(document(&[
        old.jwk("2026-01", true),
        new.jwk("2026-02", true),
    ]));
    // Refused at once: the shard never waits for the fetch it asks for.
    let t = Instant::now();
    assert_eq!(upgrade(srv.addr, &token), Err(401));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    jwks.wait_requests(2);
    eventually("the refresh for the unknown kid installed", || {
        refreshes(srv.addr, "ok") >= 2
    });
    assert_eq!(upgrade(srv.addr, &token), Ok("rotated".into()));
    assert_eq!(
        upgrade(srv.addr, &old.token(Some("2026-01"), "old")),
        Ok("old".into())
    );
    assert_eq!(metric_value(srv.addr, "wsedge_jwks_unknown_kid_total"), 1);

    // A flood of made-up kids right after: no new fetch before 10 s from
    // the last one for an unknown kid (one is scheduled then).
    for i in 0..20 {
        let _ = upgrade(srv.addr, &new.token(Some(&format!("made-up-{i}")), "x"));
    }
    assert_eq!(jwks.requests(), 2);
}

#[test]
fn a_key_removed_from_the_document_is_refused_after_the_next_refresh() {
    let (a, b) = (rsa(), ed25519());
    let jwks = JwksServer::start(document(&[a.jwk("a", true), b.jwk("b", true)]));
    let srv = edge(&jwks.url(), 1);
    assert_eq!(upgrade(srv.addr, &b.token(Some("b"), "u")), Ok("u".into()));

    jwks.set_doc(document(&[a.jwk("a", true)]));
    // The fetch after the next one surely served the new document.
    let ok = refreshes(srv.addr, "ok");
    eventually("two refreshes after the key was removed", || {
        refreshes(srv.addr, "ok") >= ok + 2
    });
    assert_eq!(metric_value(srv.addr, "wsedge_jwks_keys"), 1);
    assert_eq!(upgrade(srv.addr, &b.token(Some("b"), "u")), Err(401));
    assert_eq!(upgrade(srv.addr, &a.token(Some("a"), "u")), Ok("u".into()));
}

#[test]
fn an_endpoint_down_at_start_then_up_then_failing_keeps_the_last_good_keys() {
    let key = ec384();
    // A port nothing listens on (yet).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = format!("http://{addr}/.well-known/jwks.json");
    let srv = edge(&url, 1);
    // Started without keys: every token refused, and /healthz says why.
    assert_eq!(healthz(srv.addr), NOT_LOADED);
    assert_eq!(upgrade(srv.addr, &key.token(Some("k"), "u")), Err(401));
    assert!(refreshes(srv.addr, "error") >= 1);
    assert_eq!(metric_value(srv.addr, "wsedge_jwks_keys"), 0);

    // The endpoint comes up: the retries (1 s, 2 s, 4 s …) find it.
    let listener = TcpListener::bind(addr).expect("rebind the reserved port");
    let jwks = JwksServer::on(listener, document(&[key.jwk("k", true)]), None);
    jwks.wait_requests(1);
    eventually("keys loaded", || healthz(srv.addr) == "ok");
    assert_eq!(
        upgrade(srv.addr, &key.token(Some("k"), "u")),
        Ok("u".into())
    );

    // It fails later: the keys stay.
    jwks.set_mode(Mode::Fail);
    let errors = refreshes(srv.addr, "error");
    let seen = jwks.requests();
    jwks.wait_requests(seen + 1);
    eventually("a failed refresh counted", || {
        refreshes(srv.addr, "error") > errors
    });
    assert_eq!(healthz(srv.addr), "ok");
    assert_eq!(
        upgrade(srv.addr, &key.token(Some("k"), "u")),
        Ok("u".into())
    );
    // And a document without usable keys is a failure too.
    jwks.set_doc(document(&[
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "k"}),
    ]));
    jwks.set_mode(Mode::Serve);
    let errors = refreshes(srv.addr, "error");
    eventually("the empty document refused", || {
        refreshes(srv.addr, "error") > errors
    });
    assert_eq!(
        upgrade(srv.addr, &key.token(Some("k"), "u")),
        Ok("u".into())
    );
}

#[test]
fn a_hanging_endpoint_never_stalls_the_server() {
    let key = rsa();
    let jwks = JwksServer::start(document(&[key.jwk("k", true)]));
    let mut srv = edge(&jwks.url(), 1);
    assert_eq!(
        upgrade(srv.addr, &key.token(Some("k"), "u")),
        Ok("u".into())
    );

    jwks.set_mode(Mode::Hang);
    let seen = jwks.requests();
    jwks.wait_requests(seen + 1);
    // The refresher is now stuck in a fetch (up to its 10 s bound): the
    // shards keep serving, at once, with the keys they have.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        assert_eq!(healthz(srv.addr), "ok");
        let user = format!("u{i}");
        assert_eq!(upgrade(srv.addr, &key.token(Some("k"), &user)), Ok(user));
        assert_eq!(
            upgrade(srv.addr, &key.token(Some("unknown"), "x")),
            Err(401)
        );
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest round {slowest:?}"
    );
    // Nor does it hold up a shutdown.
    let t = Instant::now();
    srv.stop();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t.elapsed()
    );
}

/// A CA made by rcgen, and a TLS server config for 127.0.0.1 signed by it.
fn test_ca() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    (ca_cert.pem(), Arc::new(config))
}

#[test]
fn an_https_endpoint_is_trusted_through_the_extra_ca_file() {
    let key = ed25519();
    let (ca_pem, tls) = test_ca();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let jwks = JwksServer::on(listener, document(&[key.jwk("k", true)]), Some(tls));
    assert!(jwks.url().starts_with("https://"));
    let dir = std::env::temp_dir().join(format!("wsedge-jwks-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write ca");

    let srv = start(|c| {
        jwks_config(c, &jwks.url(), 300);
        c.jwt_jwks_ca_file = Some(ca_file.clone());
    });
    assert_eq!(healthz(srv.addr), "ok");
    assert_eq!(
        upgrade(srv.addr, &key.token(Some("k"), "tls")),
        Ok("tls".into())
    );

    // Without the CA, the system's roots do not know the server's.
    let untrusting = edge(&jwks.url(), 300);
    assert_eq!(healthz(untrusting.addr), NOT_LOADED);
    assert!(refreshes(untrusting.addr, "error") >= 1);
    assert_eq!(
        upgrade(untrusting.addr, &key.token(Some("k"), "tls")),
        Err(401)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_takes_the_jwks_flags() {
    let key = ec256();
    let jwks = JwksServer::start(document(&[key.jwk("k", true)]));
    let url = jwks.url();
    let proc = spawn(
        &["--jwt-jwks-refresh-secs", "60"],
        &[("WSEDGE_JWT_JWKS_URL", url.as_str())],
    );
    assert_eq!(
        upgrade(proc.addr, &key.token(Some("k"), "cli")),
        Ok("cli".into())
    );
    assert!(
        proc.log
            .iter()
            .any(|l| l.contains("JWKS") && l.contains("1 key(s) loaded")),
        "{:?}",
        proc.log
    );
}

#[test]
fn jwks_settings_that_cannot_work_are_refused_at_start() {
    let start_with = |f: &dyn Fn(&mut Config)| {
        let mut c = common::config(|_| {});
        c.jwt_secret = None;
        f(&mut c);
        Server::start(c).err()
    };
    let url = "http://127.0.0.1:9/jwks";
    let is = |e: Option<StartError>, want: fn(&ConfigError) -> bool| matches!(&e, Some(StartError::Config(c)) if want(c));
    assert!(is(
        start_with(&|c| {
            c.jwt_jwks_url = Some(url.into());
            c.jwt_secret = Some("s".into());
        }),
        |e| matches!(e, ConfigError::JwksConflict("JWT_SECRET"))
    ));
    assert!(is(
        start_with(&|c| {
            c.jwt_jwks_url = Some(url.into());
            c.jwt_public_key = Some("tests/keys/rsa_public.pem".into());
        }),
        |e| matches!(e, ConfigError::JwksConflict("--jwt-public-key"))
    ));
    for bad in ["ftp://idp/jwks", "idp/jwks", "https://", "http:///jwks"] {
        assert!(
            is(
                start_with(&|c| c.jwt_jwks_url = Some(bad.into())),
                |e| matches!(e, ConfigError::JwksUrl(_))
            ),
            "{bad}"
        );
    }
    assert!(is(
        start_with(&|c| c.jwt_jwks_ca_file = Some("ca.pem".into())),
        |e| matches!(e, ConfigError::JwksCaWithoutUrl)
    ));
    assert!(is(
        start_with(&|c| {
            c.jwt_jwks_url = Some(url.into());
            c.jwt_jwks_ca_file = Some("tests/keys/rsa_public.pem".into());
        }),
        |e| matches!(e, ConfigError::JwksCaFile { .. })
    ));
    assert!(is(
        start_with(&|c| {
            c.jwt_jwks_url = Some(url.into());
            c.jwt_jwks_refresh_secs = 0;
        }),
        |e| matches!(e, ConfigError::Zero("--jwt-jwks-refresh-secs"))
    ));
}
