//! How a [`Client`](super::Client) connects: URL, token, reconnect policy,
//! timeouts. Plain data with a builder; every time parameter can be made
//! small, which is how the tests run the real reconnect logic in
//! milliseconds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tungstenite::http::Uri;

use super::backoff;
use super::error::ClientError;

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
    /// `ws://host[:port]/ws` (no TLS in this client: `wss://` is refused;
    /// terminate TLS in front of it or use the browser client).
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

    /// Checks the URL: `ws://` scheme and a host.
    pub(crate) fn validate(&self) -> Result<Endpoint, ClientError> {
        Endpoint::parse(&self.url)
    }
}

/// Characters left as they are in the `token` query value (RFC 3986
/// unreserved); everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A checked `ws://` URL: where to open the TCP connection.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Url(format!("{url}: {e}")))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(ClientError::Url(format!(
                    "{url}: wss:// is not supported by this client (no TLS); use ws:// behind a TLS terminator"
                )))
            }
            _ => return Err(ClientError::Url(format!("{url}: the scheme must be ws://"))),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ClientError::Url(format!("{url}: no host")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Endpoint {
            url: url.to_string(),
            host,
            port: uri.port_u16().unwrap_or(80),
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
    fn ipv6_hosts_lose_their_brackets() {
        let e = Endpoint::parse("ws://[::1]:3000/ws").expect("url");
        assert_eq!(e.host, "::1");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "http://h/ws",
            "wss://h/ws",
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
