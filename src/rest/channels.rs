//! The channel routes of the management API (docs/PROTOCOL.md §10): publish,
//! a channel's members, the channel list, and subscribing users.

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{parse_body, string_list, BroadcastBody};
use crate::channels::check_name;
use crate::error::HttpError;
use crate::http::{Request, Response};
use crate::ops::Handle;

/// A channel name from a path, or `400` saying what is wrong with it.
fn valid(name: &str) -> Result<(), HttpError> {
    check_name(name).map_err(|why| HttpError::BadRequest(format!("{why}: {name}")))
}

pub(super) fn publish(h: &Handle, name: &str, req: &Request<'_>) -> Result<Response, HttpError> {
    valid(name)?;
    let body = parse_body::<BroadcastBody>(&req.body)?;
    let kind = body.kind()?;
    let n = h.try_publish(name, &kind, body.payload)?;
    Ok(Response::json(
        200,
        json!({"message":format!("Message published to channel {name}"),"channel":name,"sentToConnections":n}),
    ))
}

pub(super) fn info(h: &Handle, name: &str, limit: usize) -> Result<Response, HttpError> {
    valid(name)?;
    let info = serde_json::to_value(h.channel(name, limit)).unwrap_or_default();
    Ok(Response::json(200, info))
}

pub(super) fn list(h: &Handle, limit: usize) -> Response {
    Response::json(
        200,
        serde_json::to_value(h.channels(limit)).unwrap_or_default(),
    )
}

#[derive(Deserialize)]
struct UsersBody<'a> {
    #[serde(rename = "userIds", borrow)]
    user_ids: Option<&'a RawValue>,
}

pub(super) fn subscribe(
    h: &Handle,
    name: &str,
    req: &Request<'_>,
    subscribe: bool,
) -> Result<Response, HttpError> {
    valid(name)?;
    let body = parse_body::<UsersBody>(&req.body)?;
    let users = string_list(body.user_ids, "userIds")?
        .ok_or_else(|| HttpError::BadRequest("userIds is required".into()))?;
    let n = h.try_subscribe_users(name, &users, subscribe)?;
    let field = if subscribe {
        "subscribedConnections"
    } else {
        "unsubscribedConnections"
    };
    Ok(Response::json(200, json!({ field: n })))
}
