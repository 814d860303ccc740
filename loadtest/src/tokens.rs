//! The tokens the tool connects with: HS256 from the server's secret, or
//! an asymmetric algorithm (`--jwt-algorithm RS256 --jwt-private-key PEM`)
//! to measure what a deployment with an identity provider's keys pays per
//! handshake. A server started here is given the matching public key
//! (`--jwt-public-key`).

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::Cli;

/// Signs every token of a run.
pub struct Signer {
    header: Header,
    key: EncodingKey,
    /// For a server started here: its `--jwt-algorithm` and
    /// `--jwt-public-key`; `None` for HS256 (it gets the secret).
    pub server_key: Option<(String, PathBuf)>,
}

/// Six hours: longer than any run.
fn exp() -> u64 {
    wsedge::now_secs() + 6 * 3600
}

impl Signer {
    pub fn new(cli: &Cli, secret: &str) -> Result<Signer, String> {
        let alg: Algorithm = cli
            .jwt_algorithm
            .parse()
            .map_err(|_| format!("unknown --jwt-algorithm {:?}", cli.jwt_algorithm))?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Ok(Signer {
                header: Header::new(alg),
                key: EncodingKey::from_secret(secret.as_bytes()),
                server_key: None,
            });
        }
        let private = cli.jwt_private_key.as_ref().ok_or_else(|| {
            format!(
                "--jwt-algorithm {} needs --jwt-private-key",
                cli.jwt_algorithm
            )
        })?;
        let pem = std::fs::read(private)
            .map_err(|e| format!("cannot read --jwt-private-key {}: {e}", private.display()))?;
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| format!("--jwt-private-key {}: {e}", private.display()))?;
        Ok(Signer {
            header: Header::new(alg),
            key,
            server_key: cli
                .jwt_public_key
                .clone()
                .map(|p| (cli.jwt_algorithm.clone(), p)),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        // Signing with a key that parsed cannot fail but for a bug.
        jsonwebtoken::encode(&self.header, claims, &self.key).expect("sign a token")
    }

    /// `n` users `{prefix}0`, `{prefix}1`, … and a token for each, with the
    /// claims of `extra` (an object) added. RSA signatures take about a
    /// millisecond each: they are made on every core.
    pub fn users(&self, prefix: &str, n: usize, extra: &Value) -> (Vec<String>, Vec<String>) {
        let exp = exp();
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let per = n.div_ceil(cores).max(1);
        let tokens = std::thread::scope(|s| {
            let parts: Vec<_> = ids
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|u| {
                                let mut claims = json!({"sub": u, "exp": exp});
                                if let (Some(c), Some(e)) =
                                    (claims.as_object_mut(), extra.as_object())
                                {
                                    c.extend(e.clone());
                                }
                                self.sign(&claims)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().expect("signing thread"))
                .collect()
        });
        (ids, tokens)
    }

    /// The REST bearer: `--admin-key`, or an admin token with
    /// `--admin-claim`.
    pub fn admin(&self, cli: &Cli) -> Result<String, String> {
        if let Some(k) = &cli.admin_key {
            return Ok(k.clone());
        }
        let (claim, value) = cli
            .admin_claim
            .split_once('=')
            .ok_or("--admin-claim must be CLAIM=VALUE")?;
        Ok(self.sign(&json!({"sub": "lt-admin", claim: value, "exp": exp()})))
    }
}
