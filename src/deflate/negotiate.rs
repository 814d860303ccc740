//! `Sec-WebSocket-Extensions` parsing and the permessage-deflate answer
//! (RFC 7692 §5, §7.1), as plain functions on strings.
//!
//! The grammar is RFC 6455 §9.1: a comma-separated list of extensions, each
//! a token followed by `;`-separated parameters, a parameter being a token
//! with an optional value that is a token or a quoted-string (whose unescaped
//! content must itself be a token). A client may send several headers; they
//! form one list, in order.
//!
//! The server takes the first `permessage-deflate` offer it can accept and
//! declines the others silently, as RFC 7692 §5 asks: an offer with an
//! unknown parameter, a parameter given twice, a window size out of 8..15,
//! or a value on a parameter that takes none is not accepted (nothing is
//! refused: the connection simply opens without that offer). An element of
//! the list that does not parse is skipped the same way.

use super::Agreement;

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// One parameter of an offer: name and value (unquoted), as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// One element of the extension list: the extension name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub name: String,
    pub params: Vec<Param>,
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Splits `value` at the `sep` bytes (`,` between offers, `;` between an
/// offer's parameters) that are not inside a quoted-string. An
/// unterminated quote makes the rest one (invalid) element.
fn split_unquoted(value: &str, sep: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in value.bytes().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
            continue;
        }
        if b == b'"' {
            quoted = true;
        } else if b == sep {
            out.push(&value[start..i]);
            start = i + 1;
        }
    }
    out.push(&value[start..]);
    out
}

/// The content of a quoted-string (`"` … `"`, `\` escapes), or `None` when
/// it is not exactly one.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            // An unescaped quote inside would have ended the string.
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Parses one list element into an offer; `None` when it does not follow
/// the grammar (empty name, a bad parameter, a value that is not a token).
fn parse_offer(elem: &str) -> Option<Offer> {
    let mut parts = split_unquoted(elem, b';').into_iter();
    let name = parts.next()?.trim();
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        if !is_token(k) {
            return None;
        }
        let value = match v {
            None => None,
            Some(v) if v.starts_with('"') => {
                let u = unquote(v)?;
                // RFC 6455 §9.1: the unescaped value must be a token too.
                if !is_token(&u) {
                    return None;
                }
                Some(u)
            }
            Some(v) if is_token(v) => Some(v.to_string()),
            Some(_) => return None,
        };
        params.push(Param {
            name: k.to_ascii_lowercase(),
            value,
        });
    }
    Some(Offer {
        name: name.to_ascii_lowercase(),
        params,
    })
}

/// Every element of every header value, in order; elements that do not
/// parse are `None` (skipped by the caller, never fatal). Empty elements
/// (`a,,b`, allowed by the `#` rule) are dropped.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Option<Offer>> {
    values
        .into_iter()
        .flat_map(|v| split_unquoted(v, b','))
        .filter(|e| !e.trim().is_empty())
        .map(parse_offer)
        .collect()
}

/// A window size: a decimal 8..15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|n| (8..=15).contains(n))
}

/// The agreement for one permessage-deflate offer, or `None` to decline it.
pub fn accept(offer: &Offer) -> Option<Agreement> {
    if offer.name != NAME {
        return None;
    }
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    let mut server_nct = false;
    let mut client_nct = false;
    for p in &offer.params {
        match (p.name.as_str(), p.value.as_deref()) {
            ("server_no_context_takeover", None) if !server_nct => server_nct = true,
            ("client_no_context_takeover", None) if !client_nct => client_nct = true,
            ("server_max_window_bits", Some(v)) if server_bits.is_none() => {
                server_bits = Some(window_bits(v)?);
            }
            ("client_max_window_bits", None) if client_bits.is_none() => client_bits = Some(None),
            ("client_max_window_bits", Some(v)) if client_bits.is_none() => {
                client_bits = Some(Some(window_bits(v)?));
            }
            // Unknown, duplicated, or a value where none belongs (or none
            // where one is required): decline this offer.
            _ => return None,
        }
    }
    Some(Agreement {
        server_max_window_bits: server_bits,
    })
}

/// The first acceptable permessage-deflate offer among all the
/// `Sec-WebSocket-Extensions` values, if any.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    parse(values).iter().flatten().find_map(accept)
}

/// The `Sec-WebSocket-Extensions` value of the 101 answer for `agreement`.
/// Both no-context-takeover parameters are always there: the server keeps no
/// compression state between messages in either direction.
/// `client_max_window_bits` is never sent: the client may then use any
/// window, and the server's inflater reads them all.
pub fn response(agreement: &Agreement) -> String {
    let mut s = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = agreement.server_max_window_bits {
        s.push_str(&format!("; server_max_window_bits={bits}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Option<Agreement> {
        negotiate([v])
    }

    #[test]
    fn plain_offer_is_accepted() {
        let a = one("permessage-deflate").expect("accepted");
        assert_eq!(a.server_max_window_bits, None);
        assert_eq!(
            response(&a),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn browser_offer() {
        let a = one("permessage-deflate; client_max_window_bits").expect("accepted");
        assert!(!response(&a).contains("client_max_window_bits"));
    }

    #[test]
    fn window_bits_echoed() {
        for n in 8..=15u8 {
            let a =
                one(&format!("permessage-deflate; server_max_window_bits={n}")).expect("accepted");
            assert_eq!(a.server_max_window_bits, Some(n));
            assert!(response(&a).ends_with(&format!("; server_max_window_bits={n}")));
        }
        let a = one("permessage-deflate; server_max_window_bits=\"10\"").expect("quoted");
        assert_eq!(a.server_max_window_bits, Some(10));
    }

    #[test]
    fn all_params_case_and_spaces() {
        let a = one(
            "  PerMessage-Deflate ;SERVER_NO_CONTEXT_TAKEOVER ; client_no_context_takeover; \
             server_max_window_bits = 12 ; client_max_window_bits=9 ",
        )
        .expect("accepted");
        assert_eq!(a.server_max_window_bits, Some(12));
    }

    #[test]
    fn bad_offers_declined() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=999999999999",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate;",
            "permessage-deflate; =10",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(one(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_acceptable_offer_taken() {
        let a = one(
            "permessage-deflate; server_max_window_bits=20, permessage-deflate; server_max_window_bits=10",
        )
        .expect("second");
        assert_eq!(a.server_max_window_bits, Some(10));
        let a = negotiate([
            "foo; bar=\"a,b\"",
            "permessage-deflate; bogus, permessage-deflate",
        ])
        .expect("over several headers");
        assert_eq!(a.server_max_window_bits, None);
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let offers = parse(["a; p=\"x,y\", b"]);
        assert_eq!(offers.len(), 2);
        assert_eq!(
            offers[0].as_ref().map(|o| o.name.as_str()),
            None,
            "x,y is not a token"
        );
        assert_eq!(offers[1].as_ref().map(|o| o.name.as_str()), Some("b"));
        let offers = parse(["a; p=\"x\\y\""]);
        assert_eq!(
            offers[0].as_ref().and_then(|o| o.params[0].value.clone()),
            Some("xy".into())
        );
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "\"",
            "\\",
            ";;;",
            ",,,",
            "a=\"\\",
            "permessage-deflate; a=\"\\\"",
            "é; ü",
        ] {
            let _ = negotiate([s]);
        }
    }
}
