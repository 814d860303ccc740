//! How a [`Client`](super::Client) connects: URL, token, reconnect policy,
//! timeouts. Plain data with a builder; every time parameter can be made
//! small, which is how the tests run the real reconnect logic in
//! milliseconds.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::pki_types::ServerName;
use tungstenite::http::Uri;

use super::backoff;
use super::error::ClientError;
use super::tls;

/// A function returning a fresh token; called on the client thread before
/// every connection attempt (the first one and every reconnect).
pub type TokenProvider = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Where the JWT comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// No token (a server that does not need one, or one already in the URL).
    None,
    /// The same token on every (re)connect.
    Static(String),
    /// Asked on every (re)connect, so a refreshed token is picked up. An
    /// `Err` counts as a failed attempt (an `error` event, then the backoff).
    Provider(TokenProvider),
}

impl fmt::Debug for TokenSource {
    // Never prints the token itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(<fn>)"),
        }
    }
}

impl TokenSource {
    pub(crate) fn fetch(&self) -> Result<Option<String>, ClientError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::Provider(f) => f().map(Some).map_err(ClientError::Token),
        }
    }
}

/// Client settings. Build with [`ClientConfig::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host[:port]/ws`, or `wss://host[:port]/ws` for TLS (port 443
    /// by default; the certificate must match `host`, name or IP address).
    pub url: String,
    /// The JWT, sent as `?token=` (percent-encoded).
    pub token: TokenSource,
    /// Reconnect: base of the exponential backoff. Default 1 s.
    pub base_delay: Duration,
    /// Reconnect: cap of every delay, jitter included. Default 30 s.
    pub max_delay: Duration,
    /// Reconnect attempts in a row before giving up (reset by a successful
    /// connect). Default 10; 0 never reconnects.
    pub max_attempts: u32,
    /// Upper bound of the random jitter added to every delay. Default 1 s.
    pub jitter: Duration,
    /// TCP connect timeout, per address. Default 10 s.
    pub connect_timeout: Duration,
    /// Time for the HTTP upgrade to complete. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long the client thread blocks in a read before it looks at its
    /// command queue (`send`, `disconnect`): the worst added latency of a
    /// `send`. Default 50 ms.
    pub poll_interval: Duration,
    /// After this much silence from the server the client sends a ping; after
    /// twice this much it drops the connection (code 1006) and reconnects.
    /// `None` disables. Default 30 s (the server pings every 25 s by default).
    pub keepalive: Option<Duration>,
    /// When the server's `connected` message has not arrived this long after
    /// the upgrade, the `connected` event fires without it (payload `null`).
    /// Default 1 s.
    pub hello_timeout: Duration,
    /// Largest message accepted from the server. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Outgoing bytes buffered while the socket cannot take them; beyond
    /// this `send` fails with `SendBufferFull`. Default 4 MiB.
    pub max_send_buffer_bytes: usize,
    /// With a token provider: send the in-band `refresh` this long before
    /// the connection's token expires (halfway through tokens shorter than
    /// twice this), so the connection outlives its token instead of being
    /// closed with `4001`. `None` disables. Default 30 s.
    pub refresh_before: Option<Duration>,
    /// `wss://`: a PEM file of CA certificates trusted on top of the
    /// system's roots (every certificate in it), e.g. a private CA or a
    /// self-signed server certificate. Read once, by [`Client::new`](super::Client::new).
    pub ca_file: Option<PathBuf>,
    /// `wss://`: a whole rustls configuration, used as it is instead of the
    /// one built from the system roots and [`ca_file`](Self::ca_file) (for
    /// client certificates, pinning, other roots). Offer ALPN `http/1.1` in
    /// it if the server or a proxy in front of it negotiates ALPN.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// Defaults of docs/PROTOCOL.md §6 for `url`, without a token.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: TokenSource::None,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_attempts: 10,
            jitter: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(50),
            keepalive: Some(Duration::from_secs(30)),
            hello_timeout: Duration::from_secs(1),
            max_message_bytes: 16 << 20,
            max_send_buffer_bytes: 4 << 20,
            refresh_before: Some(Duration::from_secs(30)),
            ca_file: None,
            tls_config: None,
        }
    }

    /// The same token on every (re)connect.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Static(token.into());
        self
    }

    /// A token provider called before every (re)connect.
    pub fn token_provider(
        mut self,
        f: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.token = TokenSource::Provider(Arc::new(f));
        self
    }

    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    pub fn keepalive(mut self, d: Option<Duration>) -> Self {
        self.keepalive = d;
        self
    }
    pub fn hello_timeout(mut self, d: Duration) -> Self {
        self.hello_timeout = d;
        self
    }
    /// The refresh margin ([`ClientConfig::refresh_before`]); `None` turns
    /// the automatic refresh off.
    pub fn refresh_before(mut self, d: Option<Duration>) -> Self {
        self.refresh_before = d;
        self
    }

    /// `wss://`: also trust the CA certificates of this PEM file
    /// ([`ClientConfig::ca_file`]).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// `wss://`: use this rustls configuration as it is
    /// ([`ClientConfig::tls_config`]; `ca_file` is then ignored).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// The delay before reconnect attempt `attempt` (0-based), with a fresh
    /// jitter sample from the thread's RNG: [`backoff_delay`](crate::client::backoff_delay) with
    /// this config's base, cap and jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff::jittered_delay(
            &mut rand::rng(),
            attempt,
            self.base_delay,
            self.max_delay,
            self.jitter,
        )
    }

    /// Checks the URL (`ws://` or `wss://` and a host) and, for `wss://`,
    /// builds the TLS configuration once (reading the system's roots and
    /// the CA file), so that a bad CA file fails `Client::new`, not every
    /// connection attempt.
    pub(crate) fn validate(&self) -> Result<Endpoint, ClientError> {
        let mut endpoint = Endpoint::parse(&self.url)?;
        if endpoint.secure {
            let config = match &self.tls_config {
                Some(c) => c.clone(),
                None => tls::tls_client_config(self.ca_file.as_deref())?,
            };
            let name = tls::server_name(&endpoint.host)?;
            endpoint.tls = Some(TlsTarget { config, name });
        }
        Ok(endpoint)
    }
}

/// Characters left as they are in the `token` query value (RFC 3986
/// unreserved); everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A checked `ws://` or `wss://` URL: where to open the TCP connection,
/// and for `wss://` how to run TLS over it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The scheme is `wss://`.
    pub secure: bool,
    /// `wss://`: how to run TLS, set by [`ClientConfig::validate`].
    pub tls: Option<TlsTarget>,
}

/// The TLS side of a `wss://` endpoint.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    /// SNI, and the name the certificate must match: the URL's host.
    pub name: ServerName<'static>,
}

impl fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(ClientError::Url(format!(
                    "{url}: the scheme must be ws:// or wss://"
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ClientError::Url(format!("{url}: no host")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            url: url.to_string(),
            host,
            port,
            secure: tls,
            tls: None,
        })
    }

    /// The URL with `token=<percent-encoded token>` appended to the query.
    #[cfg(test)]
    pub fn url_with_token(&self, token: Option<&str>) -> String {
        let params: Vec<(&str, &str)> = token.map(|t| ("token", t)).into_iter().collect();
        self.url_with_query(&params)
    }

    /// The URL with `name=<percent-encoded value>` pairs appended to the
    /// query, in order (before any `#fragment`).
    pub fn url_with_query(&self, params: &[(&str, &str)]) -> String {
        if params.is_empty() {
            return self.url.clone();
        }
        let (base, fragment) = match self.url.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (self.url.as_str(), None),
        };
        let mut out = base.to_string();
        let mut sep = if base.contains('?') { '&' } else { '?' };
        for (name, value) in params {
            out.push(sep);
            out.push_str(name);
            out.push('=');
            out.extend(utf8_percent_encode(value, QUERY_VALUE));
            sep = '&';
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_ones() {
        let c = ClientConfig::new("ws://127.0.0.1:3000/ws");
        assert_eq!(c.base_delay, Duration::from_secs(1));
        assert_eq!(c.max_delay, Duration::from_secs(30));
        assert_eq!(c.max_attempts, 10);
        assert_eq!(c.jitter, Duration::from_secs(1));
    }

    #[test]
    fn the_token_is_percent_encoded_into_the_query() {
        let e = Endpoint::parse("ws://127.0.0.1:3000/ws").expect("url");
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.port, 3000);
        assert_eq!(
            e.url_with_token(Some("a.b-c_d~e")),
            "ws://127.0.0.1:3000/ws?token=a.b-c_d~e"
        );
        assert_eq!(
            e.url_with_token(Some("x y&z=1+/é")),
            "ws://127.0.0.1:3000/ws?token=x%20y%26z%3D1%2B%2F%C3%A9"
        );
        let e = Endpoint::parse("ws://h/ws?room=1#frag").expect("url");
        assert_eq!(e.port, 80);
        assert_eq!(e.url_with_token(Some("t")), "ws://h/ws?room=1&token=t#frag");
        assert_eq!(e.url_with_token(None), "ws://h/ws?room=1#frag");
        assert_eq!(
            e.url_with_query(&[("token", "t"), ("epoch", "a b"), ("since_all", "3")]),
            "ws://h/ws?room=1&token=t&epoch=a%20b&since_all=3#frag"
        );
    }

    #[test]
    fn wss_urls_default_to_443_and_get_a_tls_config() {
        let e = Endpoint::parse("wss://example.com/ws").expect("url");
        assert!(e.secure);
        assert_eq!(e.port, 443);
        let e = Endpoint::parse("ws://example.com/ws").expect("url");
        assert!(!e.secure);
        // A given rustls configuration is used as it is (no system store read).
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let given = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let e = ClientConfig::new("wss://127.0.0.1:9/ws")
            .tls_config(given.clone())
            .validate()
            .expect("valid");
        let t = e.tls.expect("tls");
        assert!(Arc::ptr_eq(&t.config, &given));
        assert!(matches!(t.name, ServerName::IpAddress(_)));
        // A CA file that is not there fails at once, as a TLS error.
        let bad = ClientConfig::new("wss://h/ws").ca_file("/nonexistent/wsedge-ca.pem");
        assert!(matches!(bad.validate(), Err(ClientError::Tls(_))));
        // ws:// never reads it.
        let plain = ClientConfig::new("ws://h/ws").ca_file("/nonexistent/wsedge-ca.pem");
        assert!(plain.validate().expect("valid").tls.is_none());
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        let e = Endpoint::parse("ws://[::1]:3000/ws").expect("url");
        assert_eq!(e.host, "::1");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "http://h/ws",
            "https://h/ws",
            "h:3000/ws",
            "not a url",
            "ws:///ws",
        ] {
            assert!(
                matches!(Endpoint::parse(url), Err(ClientError::Url(_))),
                "{url} accepted"
            );
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = ClientConfig::new("ws://h/ws").token("secret-token");
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
