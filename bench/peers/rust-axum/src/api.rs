//! HTTP side: token checks, the `/ws` upgrade and the management routes
//! (`/v1/websocket/...`, admin token required), with wsedge's request and
//! answer shapes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::hub::Hub;
use crate::session;

pub struct App {
    key: DecodingKey,
    rules: Validation,
    pub hub: Arc<Hub>,
    ws_read_buf: Option<usize>,
}

type Shared = State<Arc<App>>;

#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    role: Option<String>,
}

impl App {
    pub fn new(secret: &[u8], hub: Hub, ws_read_buf: Option<usize>) -> App {
        let mut rules = Validation::new(Algorithm::HS256);
        // `exp` is checked when present but not demanded (as wsedge does).
        rules.required_spec_claims = HashSet::new();
        App {
            key: DecodingKey::from_secret(secret),
            rules,
            hub: Arc::new(hub),
            ws_read_buf,
        }
    }

    fn claims(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.rules)
            .ok()
            .map(|t| t.claims)
    }

    /// Management routes: a valid token whose `role` is `admin`.
    fn admin(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let token = bearer(headers).ok_or(Failure(StatusCode::UNAUTHORIZED, "Authorization: Bearer <admin token> required".into()))?;
        let claims = self
            .claims(token)
            .ok_or(Failure(StatusCode::UNAUTHORIZED, "invalid or expired token".into()))?;
        if claims.role.as_deref() != Some("admin") {
            return Err(Failure(StatusCode::FORBIDDEN, "admin role required".into()));
        }
        Ok(())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// An error answer, `{"error": "..."}`.
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// Now, RFC 3339 in UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /ws?token=<jwt>` (or `Authorization: Bearer <jwt>`): a user token
/// with a `sub` opens a WebSocket for that user.
pub async fn upgrade(
    State(app): Shared,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = query.get("token").map(String::as_str).or_else(|| bearer(&headers));
    let Some(token) = token else {
        return Failure(StatusCode::UNAUTHORIZED, "token required".into()).into_response();
    };
    let user = match app.claims(token).and_then(|c| c.sub) {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => return Failure(StatusCode::UNAUTHORIZED, "invalid token".into()).into_response(),
    };
    let mut upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(n) = app.ws_read_buf {
        upgrade = upgrade.read_buffer_size(n);
    }
    let hub = app.hub.clone();
    upgrade.on_upgrade(move |socket| session::run(socket, hub, user))
}

#[derive(Deserialize)]
struct Outgoing {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
    #[serde(rename = "userIds", default)]
    user_ids: Option<Vec<String>>,
    #[serde(rename = "excludeUserIds", default)]
    exclude_user_ids: Option<Vec<String>>,
}

fn parse_outgoing(body: &[u8]) -> Result<Outgoing, Failure> {
    let msg: Outgoing = serde_json::from_slice(body)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    if msg.kind.is_empty() {
        return Err(Failure(StatusCode::BAD_REQUEST, "type must be a non-empty string".into()));
    }
    Ok(msg)
}

/// The frame every recipient gets, serialized once.
fn envelope(msg: &Outgoing) -> Utf8Bytes {
    json!({"type": msg.kind, "payload": msg.payload}).to_string().into()
}

/// `POST /v1/websocket/broadcast` `{type, payload, userIds?, excludeUserIds?}`
pub async fn broadcast(State(app): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, Failure> {
    app.admin(&headers)?;
    let msg = parse_outgoing(&body)?;
    let text = envelope(&msg);
    let except = msg.exclude_user_ids.as_deref().unwrap_or(&[]);
    let sent = app.hub.broadcast(&text, msg.user_ids.as_deref(), except);
    let target: Value = match &msg.user_ids {
        Some(ids) => json!(ids.len()),
        None => json!("all"),
    };
    Ok(Json(json!({
        "message": "Message broadcasted successfully",
        "sentToConnections": sent,
        "targetUsers": target,
        "timestamp": timestamp(),
    }))
    .into_response())
}

/// `POST /v1/websocket/send/{user}` `{type, payload}`
pub async fn send_to_user(
    State(app): Shared,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    app.admin(&headers)?;
    let msg = parse_outgoing(&body)?;
    let sent = app.hub.send_to(&user, &envelope(&msg));
    if sent == 0 {
        return Err(Failure(StatusCode::NOT_FOUND, format!("User {user} is not connected")));
    }
    Ok(Json(json!({
        "message": format!("Message sent to user {user}"),
        "sentToConnections": sent,
        "timestamp": timestamp(),
    }))
    .into_response())
}

/// `GET /v1/websocket/stats[?limit=N]` (at most N user ids, default 1000)
pub async fn stats(
    State(app): Shared,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    app.admin(&headers)?;
    let limit = match query.get("limit") {
        None => 1000,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| Failure(StatusCode::BAD_REQUEST, format!("limit must be a non-negative integer, got {v:?}")))?,
    };
    let s = app.hub.snapshot(limit);
    Ok(Json(json!({
        "totalConnections": s.connections,
        "totalUsers": s.user_count,
        "users": s.users,
        "usersTruncated": s.user_count > s.users.len(),
        "messagesOut": s.handed_out,
        "uptimeSeconds": s.uptime_secs,
    }))
    .into_response())
}

/// `GET /v1/websocket/user/{user}/status`
pub async fn user_status(State(app): Shared, Path(user): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    app.admin(&headers)?;
    let (count, since) = app.hub.presence(&user);
    Ok(Json(json!({
        "userId": user,
        "isConnected": count > 0,
        "connectionCount": count,
        "connectedSince": since.map(rfc3339),
    }))
    .into_response())
}

/// `DELETE /v1/websocket/user/{user}/disconnect`
pub async fn disconnect_user(State(app): Shared, Path(user): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    app.admin(&headers)?;
    let n = app.hub.disconnect(&user);
    if n == 0 {
        return Err(Failure(StatusCode::NOT_FOUND, format!("User {user} has no active connections")));
    }
    Ok(Json(json!({
        "message": format!("All connections for user {user} have been disconnected"),
        "disconnectedConnections": n,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599); // last second of 2024
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }
}
