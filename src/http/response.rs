//! HTTP responses as bytes. Every JSON answer carries `timestamp`.

use serde_json::{json, Value};

use crate::deflate::{negotiate, Agreement};
use crate::error::HttpError;

/// A response ready to be written.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra_headers: Vec<(&'static str, String)>,
    /// Close the connection after this answer.
    pub close: bool,
    /// The answer to a `HEAD`: every header of the `GET` answer
    /// (`Content-Length` included), no body.
    pub head: bool,
}

/// RFC 3339 time of now, with milliseconds, UTC.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Response {
    /// A JSON answer; `timestamp` is added to an object body.
    pub fn json(status: u16, mut body: Value) -> Response {
        if let Value::Object(map) = &mut body {
            map.insert("timestamp".into(), Value::String(timestamp()));
        }
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(&body).unwrap_or_default(),
            extra_headers: Vec::new(),
            close: false,
            head: false,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            extra_headers: Vec::new(),
            close: false,
            head: false,
        }
    }

    /// The one place an [`HttpError`] becomes a status and a body.
    pub fn error(err: &HttpError) -> Response {
        let mut r = Response::json(err.status(), json!({ "error": err.message() }));
        if let HttpError::MethodNotAllowed { allow } = err {
            r.extra_headers.push(("Allow", (*allow).to_string()));
        }
        if let HttpError::UpgradeRequired(_) = err {
            r.extra_headers.push(("Sec-WebSocket-Version", "13".into()));
        }
        r.close = err.closes_connection();
        r
    }

    /// A status with no body (`204`).
    pub fn empty(status: u16) -> Response {
        Response::text(status, "text/plain; charset=utf-8", Vec::new())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.extra_headers.push((name, value.into()));
        self
    }

    pub fn with_close(mut self, close: bool) -> Response {
        self.close |= close;
        self
    }

    /// Appends the status line, headers and body to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.extra_headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head {
            out.extend_from_slice(&self.body);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128 + self.body.len());
        self.write_to(&mut v);
        v
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The `101 Switching Protocols` answer to a valid upgrade, with the
/// permessage-deflate agreement when there is one.
pub fn switching_protocols(accept_key: &str, deflate: Option<&Agreement>) -> Vec<u8> {
    let ext = match deflate {
        Some(a) => format!("Sec-WebSocket-Extensions: {}\r\n", negotiate::response(a)),
        None => String::new(),
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{ext}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_405_has_allow() {
        let r = Response::error(&HttpError::MethodNotAllowed { allow: "POST" });
        let s = String::from_utf8(r.to_bytes()).unwrap_or_default();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("\r\nAllow: POST\r\n"));
        assert!(s.contains("\"timestamp\""));
    }
}
