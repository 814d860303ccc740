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
    Channels,
    Channel(String),
    Publish(String),
    Subscribe(String),
    Unsubscribe(String),
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
            "/v1/websocket/channels" => Route::Channels,
            _ => {
                if let Some(rest) = path.strip_prefix("/v1/websocket/channels/") {
                    return channel_route(rest);
                }
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

    /// The `Allow` header of a `405` on this route.
    pub fn allow(&self) -> &'static str {
        match self.method() {
            "GET" => "GET, HEAD",
            m => m,
        }
    }

    /// The one method each route answers to (and `HEAD` where it is `GET`).
    pub fn method(&self) -> &'static str {
        match self {
            Route::Broadcast
            | Route::Send(_)
            | Route::TestNotification
            | Route::Publish(_)
            | Route::Subscribe(_)
            | Route::Unsubscribe(_) => "POST",
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

/// `<channel>[/publish|/subscribe|/unsubscribe]`: a channel name may hold
/// `/` itself, so the action is the last segment. The name is
/// percent-decoded; whether it is valid is the route's to say (`400`).
fn channel_route(rest: &str) -> Option<Route> {
    type Action = (&'static str, fn(String) -> Route);
    let actions: [Action; 3] = [
        ("/publish", Route::Publish),
        ("/subscribe", Route::Subscribe),
        ("/unsubscribe", Route::Unsubscribe),
    ];
    let (name, make) = actions
        .iter()
        .find_map(|(suffix, make)| rest.strip_suffix(suffix).map(|n| (n, *make)))
        .unwrap_or((rest, Route::Channel));
    let name = percent_decode(name);
    (!name.is_empty()).then(|| make(name))
}

/// One non-empty path segment, percent-decoded.
fn user_segment(seg: &str) -> Option<String> {
    if seg.is_empty() || seg.contains('/') {
        return None;
    }
    let user = percent_decode(seg);
    (!user.is_empty()).then_some(user)
}

/// Finds the route and checks the method (`HEAD` is allowed wherever `GET`
/// is); shared by REST and the upgrade path.
pub fn route(req: &Request<'_>) -> Result<Route, HttpError> {
    let route = Route::parse(req.path)
        .ok_or_else(|| HttpError::NotFound(format!("no route for {}", req.path)))?;
    let method = route.method();
    if req.method != method && !(req.method == "HEAD" && method == "GET") {
        return Err(HttpError::MethodNotAllowed {
            allow: route.allow(),
        });
    }
    Ok(route)
}

/// Proof that a request's head was admitted: the only way to [`Dispatcher::dispatch`].
pub(crate) struct Admitted {
    route: Route,
    /// The `Origin` to answer with CORS headers, when it is an allowed one.
    cors: Option<String>,
    preflight: bool,
}

/// Routes every request of one shard's connections.
pub(crate) struct Router {
    handle: Handle,
}

impl Router {
    pub fn new(handle: Handle) -> Router {
        Router { handle }
    }

    /// The request's `Origin` when `--cors-origins` allows it.
    fn cors_origin(&self, req: &Request<'_>) -> Option<String> {
        let allowed = &self.handle.shared.config.cors_origins;
        let origin = std::str::from_utf8(req.header("origin")?).ok()?;
        allowed
            .iter()
            .any(|o| o == "*" || o == origin)
            .then(|| origin.to_string())
    }
}

impl Dispatcher for Router {
    fn admit(&self, head: &Request<'_>, has_body: bool) -> Result<Admitted, HttpError> {
        let cors = self.cors_origin(head);
        if head.method == "OPTIONS" && cors.is_some() {
            if let Some(route) = Route::parse(head.path).filter(Route::needs_admin) {
                return Ok(Admitted {
                    route,
                    cors,
                    preflight: true,
                });
            }
        }
        let route = route(head)?;
        rest::admit(&self.handle, &route, head, has_body)?;
        Ok(Admitted {
            route,
            cors,
            preflight: false,
        })
    }

    fn dispatch(&self, admitted: Admitted, req: &Request<'_>) -> Dispatch {
        let shared = &self.handle.shared;
        let Admitted {
            route,
            cors,
            preflight,
        } = admitted;
        let mut resp = match route {
            _ if preflight => {
                Response::empty(204).with_header("Access-Control-Allow-Methods", route.method())
            }
            Route::WebSocket if req.method == "GET" => {
                match upgrade::check(req, &shared.config, &shared.verifier) {
                    Ok(up) => return Dispatch::Upgrade(up),
                    Err(e) => {
                        shared.metrics.reject(e.reject_reason());
                        // A refused upgrade ends the exchange: the client may
                        // have sent frames after it.
                        return Dispatch::Answer(Response::error(&e).with_close(true));
                    }
                }
            }
            route => rest::answer(&self.handle, &route, req),
        };
        if let Some(origin) = cors {
            resp = with_cors(resp, origin, preflight);
        }
        Dispatch::Answer(resp)
    }

    /// An error answer carries the CORS headers too: a browser app calling
    /// from an allowed origin must be able to read its 401.
    fn refusal(&self, head: &Request<'_>, err: &HttpError) -> Response {
        let resp = Response::error(err);
        match self.cors_origin(head) {
            Some(origin) => with_cors(resp, origin, false),
            None => resp,
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

/// How long a browser may cache a preflight's answer, in seconds.
const CORS_MAX_AGE: &str = "600";

/// The CORS headers of an answer to an allowed `origin`.
fn with_cors(resp: Response, origin: String, preflight: bool) -> Response {
    let resp = resp
        .with_header("Access-Control-Allow-Origin", origin)
        .with_header("Vary", "Origin");
    if !preflight {
        return resp;
    }
    resp.with_header(
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type",
    )
    .with_header("Access-Control-Max-Age", CORS_MAX_AGE)
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
