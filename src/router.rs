//! The dispatcher above the connections: a complete HTTP request goes to
//! the WebSocket upgrade checks or to the REST API, by its path and method.
//!
//! The connection (`conn`) only frames requests and queues answers; this is
//! the one place that decides what a request is. It never touches a socket
//! and never blocks: REST operations only queue commands to shards.

use crate::conn::{Dispatch, Dispatcher};
use crate::error::HttpError;
use crate::http::{percent_decode, Request, Response};
use crate::ops::Handle;
use crate::{rest, upgrade};

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

    pub(crate) fn needs_admin(&self) -> bool {
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

/// Routes every request of one shard's connections.
pub(crate) struct Router {
    handle: Handle,
}

impl Router {
    pub fn new(handle: Handle) -> Router {
        Router { handle }
    }
}

impl Dispatcher for Router {
    fn dispatch(&self, req: &Request<'_>) -> Dispatch {
        let shared = &self.handle.shared;
        match route(req) {
            Ok(Route::WebSocket) => match upgrade::check(req, &shared.config, &shared.verifier) {
                Ok(up) => Dispatch::Upgrade(up),
                Err(e) => {
                    shared.metrics.reject(e.reject_reason());
                    // A refused upgrade ends the exchange: the client may
                    // have sent frames after it.
                    Dispatch::Answer(Response::error(&e).with_close(true))
                }
            },
            Ok(route) => Dispatch::Answer(rest::answer(&self.handle, &route, req)),
            Err(e) => Dispatch::Answer(Response::error(&e)),
        }
    }

    fn refused(&self, err: &HttpError) {
        log::debug!("HTTP request refused: {err}");
        if matches!(
            err,
            HttpError::HeadersTooLarge { .. } | HttpError::RequestTimeout
        ) {
            self.handle.shared.metrics.reject(err.reject_reason());
        }
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
}
