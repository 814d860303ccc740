//! The management REST API (SPEC §4) and the unauthenticated routes:
//! routing, admin auth, JSON bodies → [`Handle`] calls → JSON answers.
//!
//! Plain functions of a parsed request: they never touch a socket and never
//! block (every operation only queues commands to shards).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::auth::{bearer_token, AdminCheck};
use crate::error::HttpError;
use crate::handle::Handle;
use crate::http::{percent_decode, Request, Response};

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Metrics,
    Page,
    Script,
    WebSocket,
    Broadcast,
    Send(String),
    Stats,
    Status(String),
    Disconnect(String),
    TestNotification,
}

impl Route {
    /// Matches a path (without query); `None` is `404`.
    pub fn parse(path: &str) -> Option<Route> {
        let r = match path {
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/" | "/index.html" => Route::Page,
            "/realtime.js" => Route::Script,
            "/ws" => Route::WebSocket,
            "/v1/websocket/broadcast" => Route::Broadcast,
            "/v1/websocket/stats" => Route::Stats,
            "/v1/websocket/test/notification" => Route::TestNotification,
            _ => {
                if let Some(user) = path.strip_prefix("/v1/websocket/send/") {
                    Route::Send(user_segment(user)?)
                } else if let Some(rest) = path.strip_prefix("/v1/websocket/user/") {
                    if let Some(user) = rest.strip_suffix("/status") {
                        Route::Status(user_segment(user)?)
                    } else if let Some(user) = rest.strip_suffix("/disconnect") {
                        Route::Disconnect(user_segment(user)?)
                    } else {
                        return None;
                    }
                } else {
                    return None;
                }
            }
        };
        Some(r)
    }

    /// The one method each route answers to (`Allow` on `405`).
    pub fn method(&self) -> &'static str {
        match self {
            Route::Broadcast | Route::Send(_) | Route::TestNotification => "POST",
            Route::Disconnect(_) => "DELETE",
            _ => "GET",
        }
    }

    fn needs_admin(&self) -> bool {
        !matches!(
            self,
            Route::Healthz | Route::Metrics | Route::Page | Route::Script | Route::WebSocket
        )
    }
}

/// One non-empty path segment, percent-decoded.
fn user_segment(seg: &str) -> Option<String> {
    if seg.is_empty() || seg.contains('/') {
        return None;
    }
    let user = percent_decode(seg);
    (!user.is_empty()).then_some(user)
}

/// Finds the route and checks the method; shared by REST and the upgrade path.
pub fn route(req: &Request<'_>) -> Result<Route, HttpError> {
    let route = Route::parse(req.path)
        .ok_or_else(|| HttpError::NotFound(format!("no route for {}", req.path)))?;
    let allowed = route.method();
    if req.method != allowed {
        return Err(HttpError::MethodNotAllowed { allow: allowed });
    }
    Ok(route)
}

/// Answers a request for any route but `/ws`.
pub fn handle(h: &Handle, route: &Route, req: &Request<'_>) -> Response {
    match respond(h, route, req) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("{} {} -> {}: {e}", req.method, req.path, e.status());
            Response::error(&e)
        }
    }
}

fn respond(h: &Handle, route: &Route, req: &Request<'_>) -> Result<Response, HttpError> {
    if route.needs_admin() {
        let bearer = req.header("authorization").and_then(bearer_token);
        match h.core.verifier.check_admin(bearer) {
            AdminCheck::Admin => {}
            AdminCheck::NotAdmin => {
                log::info!("{} {}: token without admin role", req.method, req.path);
                return Err(HttpError::Forbidden);
            }
            AdminCheck::Refused(why) => {
                log::info!(
                    "{} {}: admin credential refused: {why}",
                    req.method,
                    req.path
                );
                return Err(HttpError::Unauthorized);
            }
        }
    }
    let core = &h.core;
    Ok(match route {
        Route::Healthz => match h.degraded() {
            // Still 200: a load balancer must not drop every node at once
            // because their shared Redis is down.
            Some(reason) => Response::text(
                200,
                "text/plain; charset=utf-8",
                format!("degraded: {reason}"),
            ),
            None => Response::text(200, "text/plain; charset=utf-8", "ok"),
        },
        Route::Metrics => Response::text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            h.metrics_text(),
        ),
        Route::Page if core.config.serve_web => Response::text(
            200,
            "text/html; charset=utf-8",
            crate::web::page(core.dev_user_token.as_deref()),
        ),
        Route::Script if core.config.serve_web => {
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
        Route::Broadcast => {
            let body = parse_body::<BroadcastBody>(&req.body)?;
            let kind = body.kind()?;
            let user_ids = string_list(body.user_ids, "userIds")?;
            let exclude = string_list(body.exclude_user_ids, "excludeUserIds")?.unwrap_or_default();
            let target_users = match &user_ids {
                Some(ids) => json!(ids.len()),
                None => json!("all"),
            };
            let n = h.broadcast_raw(&kind, body.payload, user_ids.as_deref(), &exclude);
            Response::json(
                200,
                json!({"message":"Message broadcasted successfully","sentToConnections":n,"targetUsers":target_users}),
            )
        }
        Route::Send(user) => {
            let body = parse_body::<BroadcastBody>(&req.body)?;
            let kind = body.kind()?;
            let n = h.send_to_user_raw(user, &kind, body.payload);
            if n == 0 {
                return Err(HttpError::NotFound(format!("User {user} is not connected")));
            }
            Response::json(
                200,
                json!({"message":format!("Message sent to user {user}"),"sentToConnections":n}),
            )
        }
        Route::Stats => {
            let limit = match req.query_param("limit") {
                None => 1000,
                Some(v) => v.parse::<usize>().map_err(|_| {
                    HttpError::BadRequest(format!(
                        "limit must be a non-negative integer, got {v:?}"
                    ))
                })?,
            };
            Response::json(
                200,
                serde_json::to_value(h.stats_limited(limit)).unwrap_or(Value::Null),
            )
        }
        Route::Status(user) => {
            let n = h.connection_count(user);
            Response::json(
                200,
                json!({"userId":user,"isConnected":n>0,"connectionCount":n}),
            )
        }
        Route::Disconnect(user) => {
            let reconnect = match req.query_param("reconnect").as_deref() {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(v) => {
                    return Err(HttpError::BadRequest(format!(
                        "reconnect must be true or false, got {v:?}"
                    )))
                }
            };
            let n = h.disconnect_user(user, reconnect);
            if n == 0 {
                return Err(HttpError::NotFound(format!(
                    "User {user} has no active connections"
                )));
            }
            Response::json(
                200,
                json!({"message":format!("All connections for user {user} have been disconnected"),"disconnectedConnections":n}),
            )
        }
        Route::TestNotification => {
            let payload = json!({
                "title": "Test Notification",
                "message": "This is a test notification from wsedge",
                "timestamp": crate::http::timestamp(),
            });
            let n = h.broadcast("notification", payload, None);
            Response::json(
                200,
                json!({"message":"Test notification sent","sentToConnections":n}),
            )
        }
    })
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "userIds", borrow)]
    user_ids: Option<&'a RawValue>,
    #[serde(rename = "excludeUserIds", borrow)]
    exclude_user_ids: Option<&'a RawValue>,
}

impl BroadcastBody<'_> {
    fn kind(&self) -> Result<String, HttpError> {
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

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpError> {
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

fn string_list(raw: Option<&RawValue>, field: &str) -> Result<Option<Vec<String>>, HttpError> {
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
    fn routes() {
        assert_eq!(
            Route::parse("/v1/websocket/send/a%20b"),
            Some(Route::Send("a b".into()))
        );
        assert_eq!(
            Route::parse("/v1/websocket/user/u/status"),
            Some(Route::Status("u".into()))
        );
        assert_eq!(
            Route::parse("/v1/websocket/user/u/disconnect"),
            Some(Route::Disconnect("u".into()))
        );
        assert_eq!(Route::parse("/v1/websocket/user//status"), None);
        assert_eq!(Route::parse("/v1/websocket/send/"), None);
        assert_eq!(Route::parse("/v1/websocket/send/a/b"), None);
        assert_eq!(Route::parse("/nope"), None);
    }

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
