//! The checks a `GET /ws` request must pass before it becomes a WebSocket:
//! RFC 6455 handshake headers, `Origin`, and the user's JWT.
//!
//! A plain function of the parsed request and the verifier, so it runs
//! without sockets. Connection limits need the shard's and the presence
//! table's state and are checked by the shard right after
//! (`shard::Shard::open_websocket`).

use crate::auth::{extract_token, UserClaims, Verifier};
use crate::config::Config;
use crate::deflate::{negotiate, Agreement};
use crate::error::HttpError;
use crate::history::Resume;
use crate::http::Request;
use crate::ratelog::refusal;

/// An upgrade that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub claims: UserClaims,
    /// What the client asks to recover (`epoch`, `since_all`, `since_user`
    /// in the query).
    pub resume: Option<Resume>,
    /// `Sec-WebSocket-Accept` value for the 101 answer.
    pub accept_key: String,
    /// permessage-deflate, when the client offered it acceptably and
    /// compression is on (`--no-compression` off).
    pub deflate: Option<Agreement>,
}

/// Checks the handshake headers, the origin and the token, in that order.
/// The reason for a `401` is logged here and not returned to the client.
pub fn check(req: &Request<'_>, cfg: &Config, verifier: &Verifier) -> Result<Upgrade, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::MethodNotAllowed { allow: "GET" });
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(HttpError::UpgradeRequired(
            "this endpoint only speaks WebSocket: missing Upgrade: websocket".into(),
        ));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(HttpError::BadRequest(
            "WebSocket handshake needs Connection: Upgrade".into(),
        ));
    }
    if req.header("sec-websocket-version") != Some(b"13") {
        return Err(HttpError::UpgradeRequired(
            "unsupported Sec-WebSocket-Version; 13 is required".into(),
        ));
    }
    let key = req
        .header("sec-websocket-key")
        .map(|k| k.trim_ascii())
        .filter(|k| is_valid_key(k))
        .ok_or_else(|| HttpError::BadRequest("missing or invalid Sec-WebSocket-Key".into()))?;
    if !cfg.allowed_origins.is_empty() {
        if let Some(origin) = req.header("origin") {
            let origin = std::str::from_utf8(origin).unwrap_or("");
            if !cfg.allowed_origins.iter().any(|o| o == origin || o == "*") {
                refusal!("upgrade refused: origin {origin:?} not allowed");
                return Err(HttpError::Forbidden);
            }
        }
    }
    let token = extract_token(req.header("authorization"), req.query).unwrap_or_default();
    let claims = verifier.verify_user(&token).map_err(|e| {
        refusal!("upgrade refused: {e}");
        HttpError::Unauthorized
    })?;
    let resume = resume_request(req.query)?;
    // Offers that are not valid UTF-8 cannot be tokens: skipped, like any
    // offer the server declines (RFC 7692 §5).
    let deflate = if cfg.compression {
        negotiate::negotiate(
            req.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                .filter_map(|(_, v)| std::str::from_utf8(v).ok()),
        )
    } else {
        None
    };
    Ok(Upgrade {
        claims,
        resume,
        accept_key: tungstenite::handshake::derive_accept_key(key),
        deflate,
    })
}

/// The recovery a connecting client asks for (docs/PROTOCOL.md §11): any of
/// `epoch`, `since_all`, `since_user` asks; a missing offset is 0.
fn resume_request(query: Option<&str>) -> Result<Option<Resume>, HttpError> {
    let mut resume: Option<Resume> = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !matches!(k, "epoch" | "since_all" | "since_user") {
            continue;
        }
        let r = resume.get_or_insert_with(|| Resume {
            epoch: String::new(),
            all: 0,
            user: 0,
        });
        let offset = || {
            v.parse::<u64>()
                .map_err(|_| HttpError::BadRequest(format!("{k} must be a non-negative integer")))
        };
        match k {
            "epoch" => r.epoch = crate::http::percent_decode(v),
            "since_all" => r.all = offset()?,
            _ => r.user = offset()?,
        }
    }
    Ok(resume)
}

/// A key is 16 bytes in base64: 24 characters ending in `==`.
fn is_valid_key(k: &[u8]) -> bool {
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint_hs256, now_secs};
    use crate::http::{parse_request, Limits, Parsed};

    fn run(raw: &str, cfg: &Config) -> Result<Upgrade, HttpError> {
        let v = Verifier::from_config(cfg, Some("s")).expect("verifier");
        let limits = Limits {
            max_header_bytes: 8192,
            max_body_bytes: 1024,
        };
        match parse_request(raw.as_bytes(), &limits) {
            Ok(Parsed::Complete(req, _)) => check(&req, cfg, &v),
            other => panic!("{other:?}"),
        }
    }

    fn req(extra: &str, token: &str) -> String {
        format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accepts_and_derives_key() {
        let t = mint_hs256("s", &serde_json::json!({"sub":"u","exp":now_secs()+60}));
        let up = run(&req("", &t), &Config::default()).expect("accepted");
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.claims.user_id, "u");
    }

    #[test]
    fn negotiates_deflate_unless_turned_off() {
        let t = mint_hs256("s", &serde_json::json!({"sub":"u","exp":now_secs()+60}));
        let offer = "Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Extensions: permessage-deflate; bogus, permessage-deflate; server_max_window_bits=11\r\n";
        let up = run(&req(offer, &t), &Config::default()).expect("accepted");
        assert_eq!(
            up.deflate,
            Some(Agreement {
                server_max_window_bits: Some(11)
            })
        );
        assert_eq!(
            up.deflate.and_then(|a| a.outbound(256)).map(|d| d.window),
            Some(11)
        );
        let off = Config {
            compression: false,
            ..Config::default()
        };
        assert_eq!(run(&req(offer, &t), &off).expect("accepted").deflate, None);
        assert_eq!(
            run(&req("", &t), &Config::default()).expect("ok").deflate,
            None
        );
    }

    #[test]
    fn refusals() {
        let t = mint_hs256("s", &serde_json::json!({"sub":"u","exp":now_secs()+60}));
        let cfg = Config {
            allowed_origins: vec!["https://a.example".into()],
            ..Config::default()
        };
        assert_eq!(
            run(&req("Origin: https://b.example\r\n", &t), &cfg),
            Err(HttpError::Forbidden)
        );
        assert!(run(&req("Origin: https://a.example\r\n", &t), &cfg).is_ok());
        assert!(run(&req("", &t), &cfg).is_ok(), "no Origin is allowed");
        assert_eq!(
            run(&req("", "bad"), &Config::default()),
            Err(HttpError::Unauthorized)
        );
        let bad_header = req("Authorization: Bearer nope\r\n", &t);
        assert_eq!(
            run(&bad_header, &Config::default()),
            Err(HttpError::Unauthorized)
        );
        let no_key = req("", &t).replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(
            run(&no_key, &Config::default()).map_err(|e| e.status()),
            Err(400)
        );
    }
}
