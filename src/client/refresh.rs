//! The in-band token refresh of a connection (docs/PROTOCOL.md §3.7): when
//! the `refresh` message goes out (a margin before the current token's
//! `exp`, halfway for tokens shorter than two margins), the token it carries
//! until the server answers, and what an answer plans next. Pure state: the
//! worker asks the token provider and writes the message.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The server's answer to a refused `refresh`.
const REFRESH_FAILED: &str = "Token refresh failed";

/// The `exp` claim (Unix seconds) of a JWT, read without checking anything
/// else: only the timing of the refresh depends on it.
pub(crate) fn jwt_exp(token: &str) -> Option<u64> {
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    claims.get("exp")?.as_u64()
}

/// How long to wait before refreshing a token that expires in `remaining`:
/// `margin` before it, or half of `remaining` when that is less than two
/// margins (so that short-lived tokens are not refreshed in a loop).
pub(crate) fn refresh_delay(remaining: Duration, margin: Duration) -> Duration {
    if remaining > margin * 2 {
        remaining - margin
    } else {
        remaining / 2
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// What the server said about a refresh, as far as the worker cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Not an answer to a pending refresh.
    None,
    /// `refreshed`: the pending token is now the connection's token.
    Accepted(String),
    /// `error` `Token refresh failed`: the old token (and its expiry) stays.
    Refused,
}

/// The refresh state of one connection.
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// When the next `refresh` goes out; `None`: not planned.
    due: Option<Instant>,
    /// `exp` of the connection's current token.
    exp: Option<u64>,
    /// The token sent in a `refresh` not answered yet.
    pending: Option<String>,
}

impl Refresh {
    /// Plans the refresh of the connection's token, expiring at `exp`.
    pub fn plan(&mut self, exp: Option<u64>, margin: Duration) {
        self.exp = exp;
        self.due = exp.map(|exp| {
            let remaining = Duration::from_secs(exp).saturating_sub(unix_now());
            Instant::now() + refresh_delay(remaining, margin)
        });
    }

    /// Whether the refresh is due at `now` (then it is no longer planned).
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.pending.is_none() && self.due.is_some_and(|due| now >= due) {
            self.due = None;
            return true;
        }
        false
    }

    /// The `refresh` carrying `token` went out.
    pub fn sent(&mut self, token: String) {
        self.pending = Some(token);
    }

    /// Reads a server message; on `refreshed` plans the next refresh from
    /// `expiresAt`, unless the new token does not live longer than the last
    /// (then no refresh would gain anything and none is planned).
    pub fn on_message(&mut self, kind: &str, payload: &Value, margin: Duration) -> Answer {
        if self.pending.is_none() {
            return Answer::None;
        }
        match kind {
            "refreshed" => {
                let token = self.pending.take().unwrap_or_default();
                let exp = payload["expiresAt"].as_u64().or_else(|| jwt_exp(&token));
                match (exp, self.exp) {
                    (Some(new), Some(old)) if new <= old => self.due = None,
                    _ => self.plan(exp, margin),
                }
                Answer::Accepted(token)
            }
            "error" if payload["message"] == REFRESH_FAILED => {
                self.pending = None;
                Answer::Refused
            }
            _ => Answer::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_delay_is_a_margin_before_exp_or_halfway_for_short_tokens() {
        assert_eq!(refresh_delay(S(3600), S(30)), S(3570));
        assert_eq!(refresh_delay(S(61), S(30)), S(31));
        assert_eq!(refresh_delay(S(60), S(30)), S(30));
        assert_eq!(refresh_delay(S(40), S(30)), S(20));
        assert_eq!(refresh_delay(S(0), S(30)), S(0));
    }

    #[test]
    fn exp_is_read_from_the_claims() {
        let token = crate::mint_hs256("k", &json!({"sub": "u", "exp": 1234}));
        assert_eq!(jwt_exp(&token), Some(1234));
        assert_eq!(jwt_exp("not.a.jwt"), None);
        let no_exp = crate::mint_hs256("k", &json!({"sub": "u"}));
        assert_eq!(jwt_exp(&no_exp), None);
    }

    #[test]
    fn refreshed_plans_the_next_refresh_only_when_the_token_lives_longer() {
        let margin = S(30);
        let now = unix_now().as_secs();
        let mut r = Refresh::default();
        r.plan(Some(now + 120), margin);
        let due = r.due.expect("planned");
        let expected = Instant::now() + S(90);
        assert!(
            due <= expected && due + S(2) > expected,
            "due in about 90 s"
        );
        assert!(!r.take_due(Instant::now()));
        assert!(r.take_due(due));
        r.sent("t2".into());
        assert!(
            !r.take_due(due + S(1000)),
            "nothing while an answer is pending"
        );
        let later = json!({"expiresAt": now + 240});
        assert_eq!(
            r.on_message("refreshed", &later, margin),
            Answer::Accepted("t2".into())
        );
        assert!(r.due.is_some(), "the longer-lived token gets its refresh");

        assert!(r.take_due(Instant::now() + S(1000)));
        r.sent("same".into());
        let same = json!({"expiresAt": now + 240});
        assert_eq!(
            r.on_message("refreshed", &same, margin),
            Answer::Accepted("same".into())
        );
        assert_eq!(
            r.due, None,
            "no refresh loop on a token that does not live longer"
        );
    }

    #[test]
    fn a_refused_refresh_is_recognised_and_other_messages_are_not_answers() {
        let mut r = Refresh::default();
        let failed = json!({"message": REFRESH_FAILED});
        assert_eq!(r.on_message("error", &failed, S(30)), Answer::None);
        r.sent("t".into());
        assert_eq!(
            r.on_message("error", &json!({"message": "other"}), S(30)),
            Answer::None
        );
        assert_eq!(r.on_message("echo", &json!({}), S(30)), Answer::None);
        assert_eq!(r.on_message("error", &failed, S(30)), Answer::Refused);
        assert_eq!(r.pending, None);
    }
}
