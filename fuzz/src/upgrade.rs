//! The checks of `GET /ws`: arbitrary bytes as the upgrade request through
//! `upgrade::check` with a verifier built from a config (HS256), then, when
//! accepted, the session the shard would open (`WsState::new`). Also the
//! token helpers (`extract_token`, `bearer_token`, `verify_user`,
//! `check_admin`) on arbitrary strings.
//!
//! Input: [`super::TokenSpec`] (9 bytes: claims of a token minted with
//! the server's secret or a wrong one), one byte of config flags (bit 0:
//! allowed origins set; bit 1: issuer required; bit 2: audience required),
//! then the request. Every `$T` in the request becomes the minted token, so
//! accepted upgrades are reachable. Bytes after the first request are what
//! arrived with it (the session's first bytes).

use std::sync::OnceLock;
use std::time::Instant;

use super::TokenSpec;
use wsedge::testbed::check_upgrade;
use wsedge::testbed::WsState;
use wsedge::testbed::{bearer_token, extract_token, Verifier};
use wsedge::testbed::{parse_request, Limits, Parsed};
use wsedge::Config;

fn configs() -> &'static [(Config, Verifier)] {
    static CONFIGS: OnceLock<Vec<(Config, Verifier)>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        (0u8..8)
            .map(|flags| {
                let mut cfg = super::config();
                if flags & 1 != 0 {
                    cfg.allowed_origins = vec!["https://a.example".into(), "null".into()];
                }
                if flags & 2 != 0 {
                    cfg.jwt_issuer = Some("iss".into());
                }
                if flags & 4 != 0 {
                    cfg.jwt_audience = Some("aud".into());
                }
                let v = Verifier::from_config(&cfg, Some(super::SECRET)).expect("verifier");
                (cfg, v)
            })
            .collect()
    })
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let (spec, rest) = TokenSpec::split(data);
    let Some((&flags, rest)) = rest.split_first() else {
        return;
    };
    let (cfg, verifier) = &configs()[(flags & 7) as usize];
    let token = spec.mint();
    let buf = super::substitute(rest, &token);
    let limits = Limits {
        max_header_bytes: cfg.max_header_bytes,
        max_body_bytes: 1024,
    };

    if let Ok(Parsed::Complete(req, used)) = parse_request(&buf, &limits) {
        let auth = req.header("authorization");
        let extracted = extract_token(auth, req.query);
        if let Some(h) = auth {
            // The header wins whenever present, even with a bad token.
            assert_eq!(
                extracted.as_deref(),
                Some(bearer_token(h).unwrap_or_default())
            );
        }
        if let Ok(up) = check_upgrade(&req, cfg, verifier) {
            assert_eq!(up.accept_key.len(), 28);
            assert!(!up.claims.user_id.is_empty());
            assert_eq!(
                verifier.verify_user(extracted.as_deref().unwrap_or("")),
                Ok(up.claims.clone())
            );
            // What `Shard::open_websocket` does next.
            let ws = WsState::new(
                up.claims.user_id.as_str().into(),
                up.claims.exp,
                "0-1-1".into(),
                buf[used..].to_vec(),
                up.deflate,
                cfg,
                verifier.leeway(),
                Instant::now(),
            );
            let _ = ws.next_deadline(cfg);
        }
    }

    // The token helpers on the raw bytes.
    let _ = bearer_token(rest);
    let text = String::from_utf8_lossy(rest);
    let _ = extract_token(None, Some(&text));
    assert_eq!(
        extract_token(Some(rest), Some(&text)).as_deref(),
        Some(bearer_token(rest).unwrap_or_default())
    );
    let _ = verifier.verify_user(&text);
    let _ = verifier.verify_user(&token);
    let _ = verifier.check_admin(Some(&text));
    let _ = verifier.check_admin(Some(&token));
}
