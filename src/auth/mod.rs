//! Token checks: user JWTs on `GET /ws` and admin credentials on the REST API.
//!
//! A [`Verifier`] is built once from [`Config`] and shared by every shard.
//! It owns the decoding keys and the validation rules: one fixed key (a
//! secret or a PEM public key), or the key set of a JWKS endpoint kept
//! fresh by [`jwks`]'s refresher thread. It never logs a token, and the
//! reason a check failed ([`AuthError`]) goes to the log only, never to the
//! client (the HTTP layer answers a bare `401`).
//!
//! A check never blocks on the network: with a JWKS it reads the key set in
//! use, and a `kid` that set lacks is refused at once (the refresher is
//! asked for a fetch, without waiting for it).

pub mod jwks;

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::{Config, ConfigError};
use jwks::{Jwks, Missing};

/// Why a token was refused. Logged, never sent to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("expired")]
    Expired,
    #[error("not yet valid (nbf)")]
    NotYetValid,
    #[error("bad signature")]
    BadSignature,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("missing or empty sub")]
    BadSubject,
    #[error("no JWKS key has kid {0:?} (a refresh was asked for)")]
    UnknownKid(String),
    #[error("no kid, and the JWKS has more than one key")]
    NoKid,
    #[error("no JWKS keys loaded yet")]
    KeysNotLoaded,
    #[error("alg {token:?} is not the key's {key:?}")]
    WrongAlgorithm { token: Algorithm, key: Algorithm },
    #[error("malformed: {0}")]
    Malformed(String),
}

/// What a valid user token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// The `sub` claim: the user id.
    pub user_id: String,
    /// The `exp` claim, unix seconds.
    pub exp: u64,
    /// The `channels` claim: channel names and `prefix*` patterns the user
    /// may subscribe to (empty without the claim).
    pub channels: Vec<String>,
}

/// Result of checking a REST credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCheck {
    Admin,
    /// A valid token without the admin role: `403`.
    NotAdmin,
    /// Missing or invalid: `401`.
    Refused(AuthError),
}

/// The keys tokens are checked with.
enum Keys {
    /// A secret or a PEM public key: the one algorithm of `--jwt-algorithm`.
    Fixed {
        key: DecodingKey,
        validation: Box<Validation>,
    },
    /// The key set of a JWKS endpoint; each key has its algorithm, checked
    /// with the rules of that algorithm in `validations`.
    Jwks {
        jwks: Arc<Jwks>,
        validations: Vec<Validation>,
    },
}

/// The algorithms a JWKS key may have: every asymmetric one.
const JWKS_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Validates tokens with the server's keys.
pub struct Verifier {
    keys: Keys,
    admin_key: Option<Vec<u8>>,
    admin_claim: String,
    admin_value: String,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.keys {
            Keys::Fixed { validation, .. } => f
                .debug_struct("Verifier")
                .field("algorithms", &validation.algorithms)
                .finish_non_exhaustive(),
            Keys::Jwks { jwks, .. } => f
                .debug_struct("Verifier")
                .field("jwks", jwks)
                .finish_non_exhaustive(),
        }
    }
}

/// Parses `--jwt-algorithm`.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    name.parse::<Algorithm>()
        .map_err(|_| ConfigError::UnknownAlgorithm(name.to_string()))
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Verifier {
    /// Builds the key and the rules. `secret` is the effective HMAC secret
    /// (the configured one, or the one dev mode made up).
    pub fn from_config(cfg: &Config, secret: Option<&str>) -> Result<Verifier, ConfigError> {
        let keys = match &cfg.jwt_jwks_url {
            // The algorithm comes from each key: --jwt-algorithm is not used.
            Some(url) => Keys::Jwks {
                jwks: Jwks::from_config(cfg, url)?,
                validations: JWKS_ALGORITHMS
                    .iter()
                    .map(|alg| validation(cfg, *alg))
                    .collect(),
            },
            None => {
                let alg = parse_algorithm(&cfg.jwt_algorithm)?;
                Keys::Fixed {
                    key: fixed_key(cfg, alg, secret)?,
                    validation: Box::new(validation(cfg, alg)),
                }
            }
        };
        Ok(Verifier {
            keys,
            admin_key: cfg.admin_key.as_ref().map(|k| k.as_bytes().to_vec()),
            admin_claim: cfg.admin_role_claim.clone(),
            admin_value: cfg.admin_role_value.clone(),
            leeway: cfg.jwt_leeway_secs,
        })
    }

    /// The JWKS key set, when keys come from one.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.keys {
            Keys::Jwks { jwks, .. } => Some(jwks),
            Keys::Fixed { .. } => None,
        }
    }

    /// Clock-skew leeway in seconds: an open connection lives until `exp + leeway`.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token` and deserializes its claims as `T`.
    fn claims<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let (jwks, validations) = match &self.keys {
            Keys::Fixed { key, validation } => return check(token, key, validation),
            Keys::Jwks { jwks, validations } => (jwks, validations),
        };
        let header =
            decode_header(token).map_err(|e| AuthError::Malformed(format!("{:?}", e.kind())))?;
        if !jwks.is_loaded() {
            jwks.unknown_kid(None);
            return Err(AuthError::KeysNotLoaded);
        }
        // The set in use stays alive for this check even if the refresher
        // swaps in another meanwhile.
        let set = jwks.current();
        let key = match set.find(header.kid.as_deref()) {
            Ok(key) => key,
            Err(Missing::NoKid) => return Err(AuthError::NoKid),
            Err(Missing::UnknownKid) => {
                let kid = header.kid.unwrap_or_default();
                jwks.unknown_kid(Some(&kid));
                return Err(AuthError::UnknownKid(
                    jwks::truncate(&kid, jwks::MAX_LOGGED_KID).to_string(),
                ));
            }
        };
        if header.alg != key.alg {
            return Err(AuthError::WrongAlgorithm {
                token: header.alg,
                key: key.alg,
            });
        }
        let validation = validations
            .iter()
            .find(|v| v.algorithms.first() == Some(&key.alg))
            .ok_or(AuthError::WrongAlgorithm {
                token: header.alg,
                key: key.alg,
            })?;
        check(token, &key.key, validation)
    }

    /// Checks a user token: signature, `exp`, `nbf`, issuer, audience and a
    /// non-empty string `sub`.
    pub fn verify_user(&self, token: &str) -> Result<UserClaims, AuthError> {
        /// Only the two claims a user token is read for: the others are
        /// skipped by the parser instead of built into a map (this runs on
        /// every connect).
        #[derive(serde::Deserialize)]
        struct Claims {
            #[serde(default)]
            sub: Option<Value>,
            #[serde(default)]
            exp: Option<Value>,
            #[serde(default)]
            channels: Option<Value>,
        }
        let claims: Claims = self.claims(token)?;
        let user_id = match claims.sub {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return Err(AuthError::BadSubject),
        };
        let exp = claims
            .exp
            .as_ref()
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::Malformed("exp is not a number".into()))?;
        // A claim that is not an array of strings grants nothing.
        let channels = match claims.channels {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(UserClaims {
            user_id,
            exp,
            channels,
        })
    }

    /// Checks a REST credential: the static admin key (constant time) or a
    /// JWT carrying the admin role claim.
    pub fn check_admin(&self, bearer: Option<&str>) -> AdminCheck {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return AdminCheck::Refused(AuthError::Missing);
        };
        if let Some(key) = &self.admin_key {
            // `ct_eq` on slices of different length returns false without
            // leaking where they differ; the length itself is not secret.
            if bool::from(key.as_slice().ct_eq(token.as_bytes())) {
                return AdminCheck::Admin;
            }
        }
        match self.claims::<serde_json::Map<String, Value>>(token) {
            Ok(claims) => match claims.get(&self.admin_claim) {
                Some(Value::String(v)) if *v == self.admin_value => AdminCheck::Admin,
                Some(Value::Array(vs))
                    if vs.iter().any(|v| v.as_str() == Some(&self.admin_value)) =>
                {
                    AdminCheck::Admin
                }
                _ => AdminCheck::NotAdmin,
            },
            Err(e) => AdminCheck::Refused(e),
        }
    }
}

/// The key of `--jwt-algorithm`: the HMAC secret, or the PEM public key.
fn fixed_key(
    cfg: &Config,
    alg: Algorithm,
    secret: Option<&str>,
) -> Result<DecodingKey, ConfigError> {
    if is_hmac(alg) {
        if cfg.jwt_public_key.is_some() {
            return Err(ConfigError::NeedsSecret(cfg.jwt_algorithm.clone()));
        }
        let secret = secret.ok_or_else(|| ConfigError::NeedsSecret(cfg.jwt_algorithm.clone()))?;
        return Ok(DecodingKey::from_secret(secret.as_bytes()));
    }
    let path = cfg
        .jwt_public_key
        .as_ref()
        .ok_or_else(|| ConfigError::NeedsPublicKey(cfg.jwt_algorithm.clone()))?;
    let pem = std::fs::read(path).map_err(|e| ConfigError::PublicKey {
        path: path.clone(),
        err: e.to_string(),
    })?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        _ => DecodingKey::from_rsa_pem(&pem),
    };
    key.map_err(|e| ConfigError::PublicKey {
        path: path.clone(),
        err: e.to_string(),
    })
}

/// The claim rules of the configuration for tokens signed with `alg`.
fn validation(cfg: &Config, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    // jsonwebtoken checks `iss`/`aud` only when the token carries them:
    // when configured they must be required, or a token without them
    // would pass.
    let mut required = vec!["exp"];
    if cfg.jwt_issuer.is_some() {
        required.push("iss");
    }
    if cfg.jwt_audience.is_some() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = cfg.jwt_leeway_secs;
    match &cfg.jwt_audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &cfg.jwt_issuer {
        validation.set_issuer(&[iss]);
    }
    validation
}

/// Verifies `token` with `key` and deserializes its claims.
fn check<T: serde::de::DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<T, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    decode::<T>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
            other => AuthError::Malformed(format!("{other:?}")),
        })
}

/// Where the upgrade request carried its token: the `Authorization: Bearer`
/// header wins whenever present (even when its token is bad), else the
/// percent-decoded `?token=` query parameter.
pub fn extract_token(authorization: Option<&[u8]>, query: Option<&str>) -> Option<String> {
    if let Some(h) = authorization {
        return Some(bearer_token(h).unwrap_or_default().to_string());
    }
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "token" {
            return Some(crate::http::percent_decode(v));
        }
    }
    None
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim())
    } else {
        None
    }
}

/// Mints an HS256 token; used by dev mode, the examples and the tests.
pub fn mint_hs256(secret: &str, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    // Encoding a JSON object with an HMAC key cannot fail.
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(secret: &str) -> Verifier {
        let cfg = Config {
            admin_key: Some("k3y".into()),
            ..Config::default()
        };
        Verifier::from_config(&cfg, Some(secret)).expect("verifier")
    }

    #[test]
    fn good_token_and_its_claims() {
        let v = verifier("s");
        let exp = now_secs() + 60;
        let t = mint_hs256("s", &json!({"sub":"u1","exp":exp}));
        assert_eq!(
            v.verify_user(&t),
            Ok(UserClaims {
                user_id: "u1".into(),
                exp,
                channels: Vec::new(),
            })
        );
        let t = mint_hs256(
            "s",
            &json!({"sub":"u1","exp":exp,"channels":["news","room:*",5]}),
        );
        let claims = v.verify_user(&t).expect("valid");
        assert_eq!(claims.channels, vec!["news".to_string(), "room:*".into()]);
    }

    #[test]
    fn refusals_have_reasons() {
        let v = verifier("s");
        let now = now_secs();
        assert_eq!(v.verify_user(""), Err(AuthError::Missing));
        let t = mint_hs256("other", &json!({"sub":"u1","exp":now+60}));
        assert_eq!(v.verify_user(&t), Err(AuthError::BadSignature));
        let t = mint_hs256("s", &json!({"sub":"u1","exp":now-120}));
        assert_eq!(v.verify_user(&t), Err(AuthError::Expired));
        let t = mint_hs256("s", &json!({"sub":"u1","exp":now+600,"nbf":now+300}));
        assert_eq!(v.verify_user(&t), Err(AuthError::NotYetValid));
        let t = mint_hs256("s", &json!({"sub":"","exp":now+60}));
        assert_eq!(v.verify_user(&t), Err(AuthError::BadSubject));
        let t = mint_hs256("s", &json!({"sub":5,"exp":now+60}));
        assert_eq!(v.verify_user(&t), Err(AuthError::BadSubject));
        let t = mint_hs256("s", &json!({"sub":"u"}));
        assert!(matches!(v.verify_user(&t), Err(AuthError::Malformed(_))));
        assert!(matches!(
            v.verify_user("a.b.c"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn admin_by_key_or_role() {
        let v = verifier("s");
        let exp = now_secs() + 60;
        assert_eq!(v.check_admin(Some("k3y")), AdminCheck::Admin);
        assert!(matches!(v.check_admin(Some("k3")), AdminCheck::Refused(_)));
        assert!(matches!(
            v.check_admin(None),
            AdminCheck::Refused(AuthError::Missing)
        ));
        let t = mint_hs256("s", &json!({"sub":"a","exp":exp,"role":"admin"}));
        assert_eq!(v.check_admin(Some(&t)), AdminCheck::Admin);
        let t = mint_hs256("s", &json!({"sub":"a","exp":exp}));
        assert_eq!(v.check_admin(Some(&t)), AdminCheck::NotAdmin);
    }

    #[test]
    fn header_wins_over_query() {
        assert_eq!(
            extract_token(Some(b"Bearer abc"), Some("token=xyz")),
            Some("abc".into())
        );
        assert_eq!(
            extract_token(Some(b"Basic abc"), Some("token=xyz")),
            Some(String::new())
        );
        assert_eq!(
            extract_token(None, Some("a=1&token=x%2Ey")),
            Some("x.y".into())
        );
        assert_eq!(extract_token(None, Some("a=1")), None);
        assert_eq!(extract_token(None, None), None);
    }
}
