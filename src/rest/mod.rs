//! The management REST API (docs/PROTOCOL.md §4) and the unauthenticated
//! routes: admin auth, JSON bodies → [`Handle`] operations → JSON answers.
//!
//! Plain functions of a parsed request: they never touch a socket and never
//! block (every operation only queues commands to shards). The router
//! (`router`) picks the route; this module answers it.

use crate::ratelog::refusal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::auth::{bearer_token, AdminCheck};
use crate::error::HttpError;
use crate::http::{Request, Response};
use crate::ops::{Handle, MAX_STATS_USERS};
use crate::router::Route;

mod channels;

/// Answers an admitted request for any route but `/ws`.
pub(crate) fn answer(h: &Handle, route: &Route, req: &Request<'_>) -> Response {
    respond(h, route, req).unwrap_or_else(|e| {
        log::debug!("{} {} -> {}: {e}", req.method, req.path, e.status());
        Response::error(&e)
    })
}

/// Decides on a request's head alone, before any of its body is read:
/// the admin credential on every route that needs one, and no body at all
/// on the others. Only an admitted request may make the server buffer a
/// body, so an unauthenticated client cannot make it hold megabytes.
pub(crate) fn admit(
    h: &Handle,
    route: &Route,
    req: &Request<'_>,
    has_body: bool,
) -> Result<(), HttpError> {
    if !route.needs_admin() {
        if has_body {
            return Err(HttpError::PayloadTooLarge { limit: 0 });
        }
        return Ok(());
    }
    let bearer = req.header("authorization").and_then(bearer_token);
    match h.shared.verifier.check_admin(bearer) {
        AdminCheck::Admin => Ok(()),
        AdminCheck::NotAdmin => {
            refusal!("{} {}: token without admin role", req.method, req.path);
            Err(HttpError::Forbidden)
        }
        AdminCheck::Refused(why) => {
            refusal!(
                "{} {}: admin credential refused: {why}",
                req.method,
                req.path
            );
            Err(HttpError::Unauthorized)
        }
    }
}

fn respond(h: &Handle, route: &Route, req: &Request<'_>) -> Result<Response, HttpError> {
    let web = h.shared.config.serve_web;
    Ok(match route {
        Route::Healthz => healthz(h),
        Route::Metrics => Response::text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            h.metrics_text(),
        ),
        Route::Page if web => Response::text(
            200,
            "text/html; charset=utf-8",
            crate::web::page(h.shared.dev_user_token.as_deref()),
        ),
        Route::Script if web => {
            Response::text(200, "text/javascript; charset=utf-8", crate::web::SCRIPT)
        }
        Route::Page | Route::Script => {
            return Err(HttpError::NotFound("web assets are turned off".into()))
        }
        Route::WebSocket => {
            return Err(HttpError::UpgradeRequired(
                "this endpoint only speaks WebSocket".into(),
            ))
        }
        Route::Broadcast => broadcast(h, req)?,
        Route::Send(user) => send(h, user, req)?,
        Route::Stats => stats(h, req)?,
        Route::Status(user) => {
            let n = h.connection_count(user);
            Response::json(
                200,
                json!({"userId":user,"isConnected":n>0,"connectionCount":n}),
            )
        }
        Route::Disconnect(user) => disconnect(h, user, req)?,
        Route::TestNotification => test_notification(h)?,
        Route::Channels => channels::list(h, limit_param(req)?),
        Route::Channel(name) => channels::info(h, name, limit_param(req)?)?,
        Route::Publish(name) => channels::publish(h, name, req)?,
        Route::Subscribe(name) => channels::subscribe(h, name, req, true)?,
        Route::Unsubscribe(name) => channels::subscribe(h, name, req, false)?,
    })
}

fn healthz(h: &Handle) -> Response {
    let body = match h.degraded() {
        // Still 200: a load balancer must not drop every node at once
        // because their shared Redis is down.
        Some(reason) => format!("degraded: {reason}"),
        None => "ok".to_string(),
    };
    Response::text(200, "text/plain; charset=utf-8", body)
}

fn broadcast(h: &Handle, req: &Request<'_>) -> Result<Response, HttpError> {
    let body = parse_body::<BroadcastBody>(&req.body)?;
    let kind = body.kind()?;
    let user_ids = string_list(body.user_ids, "userIds")?;
    let exclude = string_list(body.exclude_user_ids, "excludeUserIds")?.unwrap_or_default();
    let target_users = match &user_ids {
        Some(ids) => json!(ids.len()),
        None => json!("all"),
    };
    let n = h.try_broadcast_raw(&kind, body.payload, user_ids.as_deref(), &exclude)?;
    Ok(Response::json(
        200,
        json!({"message":"Message broadcasted successfully","sentToConnections":n,"targetUsers":target_users}),
    ))
}

fn send(h: &Handle, user: &str, req: &Request<'_>) -> Result<Response, HttpError> {
    let body = parse_body::<BroadcastBody>(&req.body)?;
    let kind = body.kind()?;
    let n = h.try_broadcast_raw(&kind, body.payload, Some(&[user.to_string()]), &[])?;
    if n == 0 {
        return Err(HttpError::NotFound(format!("User {user} is not connected")));
    }
    Ok(Response::json(
        200,
        json!({"message":format!("Message sent to user {user}"),"sentToConnections":n}),
    ))
}

/// `?limit=`: 1,000 by default, at most [`MAX_STATS_USERS`], so the cost of
/// a listing is bounded whatever the number of users or channels.
fn limit_param(req: &Request<'_>) -> Result<usize, HttpError> {
    let limit = match req.query_param("limit") {
        None => 1000,
        Some(v) => v.parse::<usize>().map_err(|_| {
            HttpError::BadRequest(format!("limit must be a non-negative integer, got {v:?}"))
        })?,
    };
    if limit > MAX_STATS_USERS {
        return Err(HttpError::BadRequest(format!(
            "limit must be at most {MAX_STATS_USERS}, got {limit}"
        )));
    }
    Ok(limit)
}

fn stats(h: &Handle, req: &Request<'_>) -> Result<Response, HttpError> {
    let limit = limit_param(req)?;
    Ok(Response::json(
        200,
        serde_json::to_value(h.stats_limited(limit)).unwrap_or(Value::Null),
    ))
}

fn disconnect(h: &Handle, user: &str, req: &Request<'_>) -> Result<Response, HttpError> {
    let reconnect = match req.query_param("reconnect").as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(v) => {
            return Err(HttpError::BadRequest(format!(
                "reconnect must be true or false, got {v:?}"
            )))
        }
    };
    let n = h.try_disconnect_user(user, reconnect)?;
    if n == 0 {
        return Err(HttpError::NotFound(format!(
            "User {user} has no active connections"
        )));
    }
    Ok(Response::json(
        200,
        json!({"message":format!("All connections for user {user} have been disconnected"),"disconnectedConnections":n}),
    ))
}

fn test_notification(h: &Handle) -> Result<Response, HttpError> {
    let payload = json!({
        "title": "Test Notification",
        "message": "This is a test notification from wsedge",
        "timestamp": crate::http::timestamp(),
    });
    let n = h.try_broadcast("notification", &payload, None)?;
    Ok(Response::json(
        200,
        json!({"message":"Test notification sent","sentToConnections":n}),
    ))
}

#[derive(Deserialize)]
pub(super) struct BroadcastBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) payload: Option<&'a RawValue>,
    #[serde(rename = "userIds", borrow)]
    user_ids: Option<&'a RawValue>,
    #[serde(rename = "excludeUserIds", borrow)]
    exclude_user_ids: Option<&'a RawValue>,
}

impl BroadcastBody<'_> {
    pub(super) fn kind(&self) -> Result<String, HttpError> {
        let bad = || HttpError::BadRequest("type must be a non-empty string".into());
        let raw = self
            .kind
            .ok_or_else(|| HttpError::BadRequest("type is required".into()))?;
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) if !s.is_empty() => Ok(s),
            _ => Err(bad()),
        }
    }
}

pub(super) fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(HttpError::BadRequest(
            "request body is empty; a JSON object is required".into(),
        ));
    }
    let v: &RawValue = serde_json::from_slice(body)
        .map_err(|e| HttpError::BadRequest(format!("body is not valid JSON: {e}")))?;
    if !v.get().trim_start().starts_with('{') {
        return Err(HttpError::BadRequest("body must be a JSON object".into()));
    }
    serde_json::from_str(v.get()).map_err(|e| HttpError::BadRequest(format!("invalid body: {e}")))
}

pub(super) fn string_list(
    raw: Option<&RawValue>,
    field: &str,
) -> Result<Option<Vec<String>>, HttpError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str::<Vec<String>>(r.get())
            .map(Some)
            .map_err(|_| HttpError::BadRequest(format!("{field} must be an array of strings"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_say_what_is_wrong() {
        let e = |b: &[u8]| {
            parse_body::<BroadcastBody>(b)
                .and_then(|b| b.kind())
                .err()
                .map(|e| e.message())
        };
        assert!(e(b"").is_some_and(|m| m.contains("empty")));
        assert!(e(b"{").is_some_and(|m| m.contains("not valid JSON")));
        assert!(e(b"[1]").is_some_and(|m| m.contains("JSON object")));
        assert!(e(br#"{"payload":1}"#).is_some_and(|m| m.contains("type is required")));
        assert!(e(br#"{"type":""}"#).is_some_and(|m| m.contains("non-empty")));
        assert!(e(br#"{"type":5}"#).is_some_and(|m| m.contains("non-empty")));
        assert_eq!(e(br#"{"type":"x"}"#), None);
        assert!(string_list(serde_json::from_str(r#"[1]"#).ok(), "userIds").is_err());
    }
}
