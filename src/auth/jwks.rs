//! Verification keys from a JWKS document (`--jwt-jwks-url`,
//! docs/PROTOCOL.md §12.3).
//!
//! This module owns the key set in use (kid → key and algorithm), the
//! refresher thread that fetches the document, the schedule of those
//! fetches, and their counters.
//!
//! It must never let a shard wait on the network. A shard only reads the
//! current set (an `RwLock` read and an `Arc` clone, held for nanoseconds:
//! the writer swaps in a whole new set, it never edits one in place) and, on
//! an unknown `kid`, makes a non-blocking `try_send` that is dropped when a
//! wake-up is already pending. Fetching, parsing and TLS all happen on the
//! refresher thread; a slow, failing or hanging endpoint only delays the next
//! set, while the last good one stays in use.
//!
//! Rules (each documented in §12.3):
//! - the algorithm of a key is its `alg`, else follows from its type (RSA →
//!   RS256, EC P-256 → ES256, EC P-384 → ES384, OKP Ed25519 → EdDSA); a
//!   token's `alg` must be that one. Symmetric (`oct`) keys and HS*
//!   algorithms are never taken from a JWKS: anyone can read the document;
//! - a token without `kid` is checked with the document's only key when it
//!   has exactly one usable key, and refused otherwise;
//! - until the first document is fetched, every token is refused;
//! - a document without a usable key, or that cannot be read, is an error:
//!   the last good set stays.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::metrics::Prom;
use crate::ratelog::RateLog;

/// Largest JWKS document read; an identity provider's is a few KiB.
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 20;
/// Bound on opening the connection (DNS, TCP, TLS) to the endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one whole fetch, from connect to the last byte of the body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Fetches for unknown `kid`s are at most this often (the periodic ones
/// come on top): a flood of tokens with made-up `kid`s costs the identity
/// provider at most one request per this period.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// How long `Server::start` waits for the first fetch before it goes on
/// (every token is refused until one succeeds).
pub const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);
/// Retry after a failed fetch: doubling from 1 s up to this (and never
/// later than the refresh period).
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Longest `kid` quoted in a log line (it comes from the token, anyone's).
pub(crate) const MAX_LOGGED_KID: usize = 64;

/// Why a fetch did not give a new key set. Logged, with the last good set
/// kept.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("not a JWKS document: {0}")]
    Document(String),
    #[error("no usable signature key in the document ({0})")]
    NoUsableKey(String),
}

/// One verification key and the one algorithm it checks.
#[derive(Clone)]
pub struct Key {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

/// The keys of one fetched document.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    /// The document's only usable key, for tokens without a `kid`.
    only: Option<Key>,
    /// Usable keys in the document.
    len: usize,
}

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Its `kid` is not in the set in use (refused; a fetch is asked for).
    UnknownKid,
    /// It has no `kid` and the document has more than one key.
    NoKid,
}

impl KeySet {
    /// The key for a token's `kid`.
    pub fn find(&self, kid: Option<&str>) -> Result<&Key, Missing> {
        match kid {
            Some(kid) => self.by_kid.get(kid).ok_or(Missing::UnknownKid),
            None => self.only.as_ref().ok_or(Missing::NoKid),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

/// Reads a JWKS document. Keys that cannot be used are skipped, each with
/// its reason in the returned list (for the log); a document without any
/// usable key is an error.
pub fn parse_document(body: &[u8]) -> Result<(KeySet, Vec<String>), JwksError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| JwksError::Document(e.to_string()))?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    let mut without_kid = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        // One key at a time: a key of a type this server does not know must
        // not make the whole document unreadable.
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                skipped.push(format!("key {i}: {e}"));
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        let name = match &kid {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key {i}"),
        };
        match usable_key(&jwk) {
            Ok(key) => match kid {
                Some(kid) if set.by_kid.contains_key(&kid) => {
                    skipped.push(format!("{name}: duplicate kid (the first one is used)"));
                }
                Some(kid) => {
                    set.only = Some(key.clone());
                    set.by_kid.insert(kid, key);
                    set.len += 1;
                }
                None => {
                    without_kid.push(key);
                    set.len += 1;
                }
            },
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    if set.len != 1 {
        set.only = None;
    } else if let Some(key) = without_kid.pop() {
        set.only = Some(key);
    }
    if set.len > 1 && !without_kid.is_empty() {
        skipped.push(format!(
            "{} key(s) without kid: not used, since the document has several keys",
            without_kid.len()
        ));
    }
    if set.is_empty() {
        let why = if skipped.is_empty() {
            "the document has no keys".to_string()
        } else {
            skipped.join("; ")
        };
        return Err(JwksError::NoUsableKey(why));
    }
    Ok((set, skipped))
}

/// The key and algorithm of one JWK, or why it cannot check signatures.
fn usable_key(jwk: &Jwk) -> Result<Key, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("\"use\" is {other:?}, not \"sig\"")),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|o| matches!(o, KeyOperations::Verify)) {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let named = match &jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signature_algorithm(*a)?),
    };
    let alg = match (&jwk.algorithm, named) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (
            AlgorithmParameters::RSA(_),
            Some(
                a @ (Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512),
            ),
        ) => a,
        (AlgorithmParameters::EllipticCurve(p), named) => {
            let by_curve = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                ref c => return Err(format!("EC curve {c:?} is not supported")),
            };
            match named {
                Some(a) if a != by_curve => {
                    return Err(format!("alg {a:?} does not fit curve {:?}", p.curve))
                }
                _ => by_curve,
            }
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(Algorithm::EdDSA)) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("OKP curve {:?} is not supported", p.curve));
            }
            Algorithm::EdDSA
        }
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("symmetric (oct) keys are never taken from a JWKS".into())
        }
        (_, Some(a)) => return Err(format!("alg {a:?} does not fit the key type")),
        (_, None) => return Err("unsupported key type".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable key: {e}"))?;
    Ok(Key { key, alg })
}

/// The signature algorithm a JWK's `alg` names; HMAC and encryption
/// algorithms are refused.
fn signature_algorithm(a: KeyAlgorithm) -> Result<Algorithm, String> {
    Ok(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512 => {
            return Err(format!(
                "alg {a:?} is HMAC: symmetric keys are never taken from a JWKS"
            ))
        }
        other => return Err(format!("alg {other:?} is not a signature algorithm")),
    })
}

/// The URL without user, password, query or fragment: what logs may show.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

/// Counters of the refresher, on `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    error: AtomicU64,
    unknown_kid: AtomicU64,
}

/// The key set in use and the way to ask for a new one; shared by the
/// verifier (the shards) and the refresher thread.
pub struct Jwks {
    /// What logs show of the URL.
    shown_url: String,
    current: RwLock<Arc<KeySet>>,
    /// True once a document was fetched: until then every token is refused.
    loaded: AtomicBool,
    /// Wake-ups for the refresher: an unknown `kid`, or stop. Capacity 1,
    /// sent with `try_send`: a full channel means one is already pending.
    wake: Sender<Option<String>>,
    stop: AtomicBool,
    counters: Counters,
    /// Set when the first fetch finished, either way (`Server::start` waits
    /// for it, bounded).
    first: (Mutex<bool>, Condvar),
    /// What the refresher thread takes when it starts.
    refresher: Mutex<Option<Refresher>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.shown_url)
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

/// Refusals of tokens for keys not loaded, and fetch errors, at a bounded
/// rate: an endpoint that is down must not fill the log.
static FETCH_LOG: RateLog = RateLog::new();

impl Jwks {
    /// Everything but the thread: the HTTP agent (with its TLS roots, so an
    /// unreadable `--jwt-jwks-ca-file` stops the start) and an empty set.
    pub fn from_config(cfg: &Config, url: &str) -> Result<Arc<Jwks>, ConfigError> {
        let agent = agent(url, cfg.jwt_jwks_ca_file.as_deref())?;
        let (wake, woken) = crossbeam_channel::bounded(1);
        let refresher = Refresher {
            url: url.to_string(),
            agent,
            refresh: Duration::from_secs(cfg.jwt_jwks_refresh_secs),
            woken,
        };
        Ok(Arc::new(Jwks {
            shown_url: redacted(url),
            current: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            wake,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            first: (Mutex::new(false), Condvar::new()),
            refresher: Mutex::new(Some(refresher)),
        }))
    }

    /// The set in use. A poisoned lock still holds a whole set (the writer
    /// only swaps an `Arc`), so it is read through.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// A token named a key the set does not have (or no set is loaded yet):
    /// asks the refresher for a fetch without ever waiting.
    pub fn unknown_kid(&self, kid: Option<&str>) {
        self.counters.unknown_kid.fetch_add(1, Ordering::Relaxed);
        if self.wake.is_full() {
            return;
        }
        // A full channel (a race with another shard) or a stopped
        // refresher both mean there is nothing more to do.
        match self
            .wake
            .try_send(kid.map(|k| truncate(k, MAX_LOGGED_KID).to_string()))
        {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Starts the refresher thread (once; later calls return `None`).
    pub fn spawn(self: &Arc<Self>) -> io::Result<Option<RefresherThread>> {
        let taken = match self.refresher.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some(refresher) = taken else {
            return Ok(None);
        };
        let jwks = Arc::clone(self);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("wsedge-jwks".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends: `stop`
                // sees the channel disconnect.
                let _done = done_tx;
                refresher.run(&jwks);
            })?;
        Ok(Some(RefresherThread {
            jwks: Arc::clone(self),
            thread,
            done,
        }))
    }

    /// Waits at most `limit` for the first fetch to finish (either way);
    /// returns whether a key set is loaded.
    pub fn wait_first_fetch(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, cond) = &self.first;
        let mut done = match lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            done = match cond.wait_timeout(done, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.is_loaded()
    }

    /// `Some(reason)` while no key set is loaded (`/healthz`).
    pub fn degraded(&self) -> Option<String> {
        (!self.is_loaded())
            .then(|| "no keys loaded yet from the JWKS endpoint; every token is refused".into())
    }

    /// The JWKS families of `/metrics`.
    pub(crate) fn render(&self, p: &mut Prom<'_>) {
        let name = "wsedge_jwks_refreshes_total";
        p.family(name, "Fetches of the JWKS document, by result.", "counter");
        p.labelled(
            name,
            "result",
            "ok",
            self.counters.ok.load(Ordering::Relaxed),
        );
        p.labelled(
            name,
            "result",
            "error",
            self.counters.error.load(Ordering::Relaxed),
        );
        p.single(
            "wsedge_jwks_keys",
            "Keys in the JWKS key set in use (0 until the first fetch).",
            "gauge",
            self.current().len() as u64,
        );
        p.single(
            "wsedge_jwks_unknown_kid_total",
            "Tokens refused because their kid was not in the key set in use.",
            "counter",
            self.counters.unknown_kid.load(Ordering::Relaxed),
        );
    }

    /// Installs `body` as if it had just been fetched, without the
    /// refresher: for the benches and the fuzz targets, which have no
    /// endpoint. Returns the number of keys.
    pub fn install_document(&self, body: &[u8]) -> Result<usize, JwksError> {
        let (set, _) = parse_document(body)?;
        let n = set.len();
        self.install(set);
        Ok(n)
    }

    fn finished_first(&self) {
        let (lock, cond) = &self.first;
        match lock.lock() {
            Ok(mut g) => *g = true,
            Err(p) => *p.into_inner() = true,
        }
        cond.notify_all();
    }

    fn install(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
        self.loaded.store(true, Ordering::Release);
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The running refresher thread, as the server holds it.
pub struct RefresherThread {
    jwks: Arc<Jwks>,
    thread: JoinHandle<()>,
    /// Disconnects when the thread ends.
    done: Receiver<()>,
}

impl RefresherThread {
    /// Stops the thread: at once when it is waiting; when it is in a fetch,
    /// waits at most `limit`, then leaves it to end on its own when the
    /// fetch times out (it holds nothing but its own state), so that a
    /// hanging endpoint never holds up a shutdown.
    pub fn stop(self, limit: Duration) {
        self.jwks.stop.store(true, Ordering::Release);
        let _ = self.jwks.wake.try_send(None);
        match self.done.recv_timeout(limit) {
            Err(RecvTimeoutError::Timeout) => {
                log::info!("JWKS refresher still in a fetch; not waiting for it");
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
        }
    }
}

/// When the next fetch is due: the periodic one, or an earlier one for an
/// unknown `kid` (at most one per [`UNKNOWN_KID_INTERVAL`]).
#[derive(Debug, Clone)]
pub struct Schedule {
    refresh: Duration,
    periodic_at: Instant,
    on_demand_at: Option<Instant>,
    last_on_demand: Option<Instant>,
    failures: u32,
}

impl Schedule {
    /// The first fetch is due at once.
    pub fn new(now: Instant, refresh: Duration) -> Schedule {
        Schedule {
            refresh,
            periodic_at: now,
            on_demand_at: None,
            last_on_demand: None,
            failures: 0,
        }
    }

    pub fn due(&self) -> Instant {
        match self.on_demand_at {
            Some(t) => t.min(self.periodic_at),
            None => self.periodic_at,
        }
    }

    /// A shard saw an unknown `kid` at `now`: a fetch at once, or as soon
    /// as the previous one for an unknown `kid` is [`UNKNOWN_KID_INTERVAL`]
    /// old. Wake-ups while one is pending add nothing.
    pub fn unknown_kid(&mut self, now: Instant) {
        if self.on_demand_at.is_none() {
            let earliest = self
                .last_on_demand
                .map_or(now, |t| t + UNKNOWN_KID_INTERVAL);
            self.on_demand_at = Some(earliest.max(now));
        }
    }

    /// A fetch started at `started` finished. Any fetch answers the
    /// wake-ups received before it started; after a failure the next try
    /// comes sooner than the period (1 s, 2 s, 4 s … up to 60 s).
    pub fn fetched(&mut self, started: Instant, ok: bool) {
        if self.on_demand_at.is_some_and(|t| t <= started) {
            self.last_on_demand = Some(started);
        }
        self.on_demand_at = None;
        let wait = if ok {
            self.failures = 0;
            self.refresh
        } else {
            self.failures = self.failures.saturating_add(1);
            let backoff = Duration::from_secs(1u64 << self.failures.min(7).saturating_sub(1));
            backoff.min(MAX_RETRY).min(self.refresh)
        };
        self.periodic_at = started + wait;
    }
}

/// The refresher's own state, moved into its thread.
struct Refresher {
    url: String,
    agent: ureq::Agent,
    refresh: Duration,
    woken: Receiver<Option<String>>,
}

impl Refresher {
    fn run(self, jwks: &Jwks) {
        let mut schedule = Schedule::new(Instant::now(), self.refresh);
        let mut first = true;
        while !jwks.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let due = schedule.due();
            if due > now {
                match self.woken.recv_timeout(due - now) {
                    // An unknown kid the set has by now (a fetch since
                    // the token was checked brought it) needs no fetch.
                    Ok(Some(kid)) if jwks.current().contains(&kid) => {}
                    Ok(Some(_)) => schedule.unknown_kid(Instant::now()),
                    // No kid (no set loaded, or a token without one), or
                    // the stop signal, checked by the loop.
                    Ok(None) => {
                        if !jwks.is_loaded() {
                            schedule.unknown_kid(Instant::now());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            let started = Instant::now();
            let ok = self.refresh_once(jwks);
            schedule.fetched(started, ok);
            if first {
                first = false;
                jwks.finished_first();
            }
        }
    }

    /// Fetches and installs the document; false (logged, the last good set
    /// kept) when that fails.
    fn refresh_once(&self, jwks: &Jwks) -> bool {
        let result = fetch(&self.agent, &self.url).and_then(|body| parse_document(&body));
        match result {
            Ok((set, skipped)) => {
                for why in &skipped {
                    FETCH_LOG.info(format_args!("JWKS {}: skipped {why}", jwks.shown_url));
                }
                let before = jwks.current();
                let changed = before.len() != set.len()
                    || set.by_kid.keys().any(|k| !before.contains(k))
                    || !jwks.is_loaded();
                let n = set.len();
                jwks.install(set);
                jwks.counters.ok.fetch_add(1, Ordering::Relaxed);
                if changed {
                    log::info!("JWKS {}: {n} key(s) loaded", jwks.shown_url);
                } else {
                    log::debug!("JWKS {}: refreshed, {n} key(s)", jwks.shown_url);
                }
                true
            }
            Err(e) => {
                jwks.counters.error.fetch_add(1, Ordering::Relaxed);
                let kept = if jwks.is_loaded() {
                    "the last good key set stays in use"
                } else {
                    "no keys loaded yet: every token is refused"
                };
                FETCH_LOG.info(format_args!("JWKS {}: {e}; {kept}", jwks.shown_url));
                false
            }
        }
    }
}

/// One GET of the document, bounded in time and size.
fn fetch(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, JwksError> {
    let mut resp = agent
        .get(url)
        .header("Accept", "application/json, application/jwk-set+json")
        .call()
        .map_err(|e| JwksError::Fetch(e.to_string()))?;
    resp.body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_vec()
        .map_err(|e| JwksError::Fetch(e.to_string()))
}

/// The blocking HTTP client of the refresher: bounded timeouts, HTTP
/// errors as errors, rustls on aws-lc-rs (the one crypto provider of the
/// process, always passed explicitly) with the system's roots plus
/// `ca_file`'s certificates.
fn agent(url: &str, ca_file: Option<&Path>) -> Result<ureq::Agent, ConfigError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    if let Some(path) = ca_file {
        roots.extend(read_ca_file(path)?);
    }
    // The system's roots are read once, at start; only an https URL needs
    // them (a redirect of an http URL to https gets the same roots).
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::warn!("JWKS: reading the system's root certificates: {e}");
    }
    let system = native.certs.len();
    roots.extend(
        native
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
    );
    if https && roots.is_empty() {
        log::warn!("JWKS: no trusted root certificates (none from the system, no --jwt-jwks-ca-file): https fetches will fail");
    }
    log::debug!("JWKS: {system} system root certificate(s)");
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(true)
        // An https URL must not be redirected to plain http.
        .https_only(https)
        .max_redirects(3)
        .user_agent(concat!("wsedge/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(ureq::Agent::new_with_config(config))
}

/// The certificates of a PEM file; one without any is an error.
fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ConfigError> {
    let bad = |err: String| ConfigError::JwksCaFile {
        path: PathBuf::from(path),
        err,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            // Keys or other sections in the file are not trusted anything.
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn doc(keys: Value) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    fn rsa(kid: Option<&str>, alg: Option<&str>) -> Value {
        let mut k = serde_json::json!({"kty":"RSA","n":RSA_N,"e":"AQAB"});
        if let Some(kid) = kid {
            k["kid"] = kid.into();
        }
        if let Some(alg) = alg {
            k["alg"] = alg.into();
        }
        k
    }

    #[test]
    fn algorithm_from_alg_or_key_type_and_hmac_never() {
        let (set, skipped) = parse_document(&doc(serde_json::json!([
            rsa(Some("a"), None),
            rsa(Some("b"), Some("PS384")),
            rsa(Some("c"), Some("HS256")),
            rsa(Some("d"), Some("ES256")),
            {"kty":"oct","k":"c2VjcmV0","kid":"e"},
            {"kty":"RSA","n":RSA_N,"e":"AQAB","kid":"f","use":"enc"},
            {"kty":"XYZ","kid":"g"},
            rsa(Some("a"), Some("RS512")),
        ])))
        .expect("two usable keys");
        assert_eq!(set.len(), 2, "{skipped:?}");
        assert_eq!(
            set.find(Some("a")).map(|k| k.alg).ok(),
            Some(Algorithm::RS256)
        );
        assert_eq!(
            set.find(Some("b")).map(|k| k.alg).ok(),
            Some(Algorithm::PS384)
        );
        for kid in ["c", "d", "e", "f", "g", "zz"] {
            assert_eq!(
                set.find(Some(kid)).err(),
                Some(Missing::UnknownKid),
                "{kid}"
            );
        }
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        // Several keys: a token without kid has none.
        assert_eq!(set.find(None).err(), Some(Missing::NoKid));
    }

    #[test]
    fn the_only_key_serves_tokens_without_kid() {
        let (set, _) = parse_document(&doc(serde_json::json!([rsa(None, None)]))).expect("set");
        assert_eq!(set.find(None).map(|k| k.alg).ok(), Some(Algorithm::RS256));
        let (set, _) =
            parse_document(&doc(serde_json::json!([rsa(Some("k"), None)]))).expect("set");
        assert!(set.find(None).is_ok());
        assert!(set.find(Some("k")).is_ok());
        let (set, skipped) = parse_document(&doc(serde_json::json!([
            rsa(Some("k"), None),
            rsa(None, None)
        ])))
        .expect("set");
        assert_eq!(set.find(None).err(), Some(Missing::NoKid), "{skipped:?}");
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        for body in [
            &b"{}"[..],
            b"not json",
            br#"{"keys":[]}"#,
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
        ] {
            assert!(
                parse_document(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unknown_kid_fetches_at_once_then_at_most_every_interval() {
        let t0 = Instant::now();
        let refresh = Duration::from_secs(300);
        let mut s = Schedule::new(t0, refresh);
        assert_eq!(s.due(), t0);
        s.fetched(t0, true);
        assert_eq!(s.due(), t0 + refresh);
        // The first unknown kid: at once, even right after a fetch.
        let t1 = t0 + Duration::from_secs(1);
        s.unknown_kid(t1);
        assert_eq!(s.due(), t1);
        s.fetched(t1, true);
        // The next one waits for the interval, and more add nothing.
        let t2 = t1 + Duration::from_secs(2);
        s.unknown_kid(t2);
        s.unknown_kid(t2 + Duration::from_secs(1));
        assert_eq!(s.due(), t1 + UNKNOWN_KID_INTERVAL);
        s.fetched(t1 + UNKNOWN_KID_INTERVAL, true);
        assert_eq!(s.due(), t1 + UNKNOWN_KID_INTERVAL + refresh);
    }

    #[test]
    fn failures_retry_sooner_with_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(300));
        let mut waits = Vec::new();
        let mut t = t0;
        for _ in 0..9 {
            s.fetched(t, false);
            waits.push((s.due() - t).as_secs());
            t = s.due();
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        s.fetched(t, true);
        assert_eq!(s.due() - t, Duration::from_secs(300));
        // Never later than the period.
        let mut s = Schedule::new(t0, Duration::from_secs(1));
        s.fetched(t0, false);
        s.fetched(t0, false);
        s.fetched(t0, false);
        assert_eq!(s.due() - t0, Duration::from_secs(1));
    }

    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        assert_eq!(
            redacted("https://user:pw@idp.example:8443/keys.json?token=x#f"),
            "https://idp.example:8443/keys.json"
        );
        assert_eq!(redacted("http://idp/jwks"), "http://idp/jwks");
    }
}
