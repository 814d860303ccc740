//! Keeps `docs/PROTOCOL.md` (the user-facing protocol reference) true, by
//! checking it against the real binary and real servers on loopback:
//!
//! - every `--flag` and environment variable `wsedge --help` prints is in a
//!   table of PROTOCOL.md and of the README's configuration table;
//! - every key the `--config` TOML file accepts is in a table of PROTOCOL.md;
//! - every metric family `GET /metrics` exposes (cluster mode included) and
//!   every `reason` label of the refused-handshake counter is documented, as
//!   is the exact `degraded: …` body of `/healthz`;
//! - every route of the document's route tables answers with success, and
//!   each one's method is the one the server names in `Allow`;
//! - the close-code table lists exactly the codes the server sends, and the
//!   ones provoked here arrive with the documented reason;
//! - the HTTP status table lists exactly the statuses provoked here, with
//!   the documented `error` texts;
//! - the WebSocket messages and REST answers match the document's JSON;
//! - neither document points outside the repository, and the numbered
//!   top-level sections that code comments cite are all there.
//!
//! Servers bind 127.0.0.1:0; every wait is bounded by socket read timeouts
//! or channel timeouts; nothing sleeps. Tokens are minted here with
//! `jsonwebtoken`; REST calls use the static admin key.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use wsedge::{Config, Server};

const SECRET: &str = "protocol-doc-secret";
const ADMIN_KEY: &str = "protocol-doc-admin-key";
/// Upper bound of any single wait.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The documents
// ---------------------------------------------------------------------------

fn read_repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

fn protocol() -> String {
    read_repo_file("docs/PROTOCOL.md")
}

fn readme() -> String {
    read_repo_file("README.md")
}

/// Runs of whitespace (line breaks included) as one space, for substring
/// checks that must not depend on where the Markdown wraps.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The cells of every Markdown table row (separator rows left out). An
/// escaped `\|` stays inside its cell.
fn table_rows(md: &str) -> Vec<Vec<String>> {
    md.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && l.ends_with('|') && l.len() > 1)
        .map(|l| {
            l[1..l.len() - 1]
                .replace("\\|", "\u{1}")
                .split('|')
                .map(|c| c.replace('\u{1}', "|").trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| {
            !cells
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        })
        .collect()
}

/// The `code spans` of a piece of Markdown.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every code span of every table cell of `md`.
fn table_spans(md: &str) -> BTreeSet<String> {
    table_rows(md)
        .iter()
        .flatten()
        .flat_map(|c| spans(c))
        .collect()
}

/// True when a table of `md` names `flag` in a code span: `--bind` matches
/// `` `--bind ADDR:PORT` `` and `` `--no-web` ``.
fn table_has_flag(spans: &BTreeSet<String>, flag: &str) -> bool {
    spans
        .iter()
        .any(|s| s == flag || s.strip_prefix(flag).is_some_and(|r| r.starts_with(' ')))
}

/// The close-code table: code → the reason span of its second cell.
fn close_code_table(md: &str) -> BTreeMap<u16, Option<String>> {
    let mut out = BTreeMap::new();
    for row in table_rows(md) {
        let Some(first) = spans(&row[0]).into_iter().next() else {
            continue;
        };
        if first.len() != 4 || !first.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let code: u16 = first.parse().expect("4 digits");
        let reason = row.get(1).and_then(|c| spans(c).into_iter().next());
        assert!(
            out.insert(code, reason).is_none(),
            "close code {code} is in more than one table row of docs/PROTOCOL.md"
        );
    }
    out
}

/// The HTTP status table: status → its whole row, squashed.
fn status_table(md: &str) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    for row in table_rows(md) {
        let first = row[0].as_str();
        let Some(code) = first
            .strip_prefix('`')
            .and_then(|r| r.strip_suffix('`'))
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let code: u16 = code.parse().expect("3 digits");
        assert!(
            out.insert(code, squash(&row.join(" | "))).is_none(),
            "HTTP status {code} is in more than one table row of docs/PROTOCOL.md"
        );
    }
    out
}

/// `(method, path)` of every route named in the first cell of a table row,
/// e.g. `` `DELETE /v1/websocket/user/:userId/disconnect` ``.
fn doc_routes(md: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for row in table_rows(md) {
        for span in spans(&row[0]) {
            if let Some((method, path)) = span.split_once(' ') {
                if ["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method)
                    && path.starts_with('/')
                    && !path.contains(' ')
                {
                    out.insert((method.to_string(), path.to_string()));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// Runs the real `wsedge` binary with a clean environment, bounded by `WAIT`.
fn run_bin(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsedge"));
    cmd.args(args).env_clear();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(WAIT)
        .expect("wsedge did not exit in time")
        .expect("run wsedge")
}

fn help_text() -> String {
    let out = run_bin(&["--help"]);
    assert!(out.status.success(), "wsedge --help failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Every long flag of the option lines of `--help`.
fn help_flags(help: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in help.lines().map(str::trim_start) {
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', ',']) {
            if let Some(name) = word.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    out.insert(format!("--{name}"));
                }
            }
        }
    }
    out
}

/// Every `[env: NAME…]` of `--help`.
fn help_env_vars(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Servers, tokens, HTTP
// ---------------------------------------------------------------------------

fn start(f: impl FnOnce(&mut Config)) -> (Server, SocketAddr) {
    let mut cfg = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        shards: 2,
        jwt_secret: Some(SECRET.into()),
        admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    };
    f(&mut cfg);
    let server = Server::start(cfg).expect("server starts");
    let addr = server.local_addr();
    (server, addr)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An HS256 token for `sub`, valid `secs` more seconds.
fn token(sub: &str, secs: u64) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "exp": now() + secs}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    /// The `error` field of a JSON error answer.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text()))
            .to_string()
    }
}

fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.set_write_timeout(Some(WAIT)).expect("write timeout");
    s
}

/// Reads one response (Content-Length framed; none for `101`) from `s`,
/// starting with what is already in `buf`; leaves the bytes after it there.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Resp {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut resp = Resp {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = resp
        .header("content-length")
        .map(|v| v.parse().expect("content-length"))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).expect("read response body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    resp.body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    resp
}

/// One raw HTTP exchange on a fresh connection.
fn http_raw(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = connect_tcp(addr);
    s.write_all(raw).expect("write request");
    read_response(&mut s, &mut Vec::new())
}

/// A request with the admin key; a `POST` carries `body` (or an empty one).
fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let body = body.map(Value::to_string).unwrap_or_default();
    let length = if method == "POST" || !body.is_empty() {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    http_raw(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\n{length}Connection: close\r\n\r\n{body}"
        )
        .as_bytes(),
    )
}

/// A WebSocket client that writes and reads frames by hand, so that it can
/// send what a well-behaved library refuses to (unmasked frames, bad UTF-8).
struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades `GET <target>`; `Err` holds the refusal.
    fn open(addr: SocketAddr, target: &str, extra_headers: &str) -> Result<RawWs, Resp> {
        let mut s = connect_tcp(addr);
        s.write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
            )
            .as_bytes(),
        )
        .expect("write upgrade");
        let mut buf = Vec::new();
        let resp = read_response(&mut s, &mut buf);
        if resp.status != 101 {
            return Err(resp);
        }
        Ok(RawWs { s, buf })
    }

    /// Opens a connection for `user` and returns it with its `connected` text.
    fn user(addr: SocketAddr, user: &str) -> (RawWs, String) {
        let mut ws = RawWs::open(addr, &format!("/ws?token={}", token(user, 600)), "")
            .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
        let hello = ws.next_text();
        assert!(hello.contains(r#""type":"connected""#), "{hello}");
        (ws, hello)
    }

    fn need(&mut self, n: usize) {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < n {
            let got = self.s.read(&mut chunk).expect("read frame");
            assert!(got > 0, "connection ended without a close frame");
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// The next frame: (opcode, payload).
    fn frame(&mut self) -> (u8, Vec<u8>) {
        self.need(2);
        let opcode = self.buf[0] & 0x0f;
        let (len, at) = match self.buf[1] & 0x7f {
            126 => {
                self.need(4);
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                self.need(10);
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        self.need(at + len);
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        (opcode, payload)
    }

    fn next_text(&mut self) -> String {
        loop {
            match self.frame() {
                (1, p) => return String::from_utf8(p).expect("server text is UTF-8"),
                (8, p) => panic!("closed while waiting for a message: {p:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the server's close frame and answers it, as a client
    /// should (so the server need not wait for the reply): (code, reason).
    fn expect_close(&mut self) -> (u16, String) {
        loop {
            if let (8, p) = self.frame() {
                assert!(p.len() >= 2, "close frame without a code");
                self.send(8, &p[..2], true);
                let code = u16::from_be_bytes([p[0], p[1]]);
                return (code, String::from_utf8_lossy(&p[2..]).into_owned());
            }
        }
    }

    fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        match self.s.write_all(&f) {
            Ok(()) => {}
            // The server may already have closed after an earlier frame.
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("write frame: {e}"),
        }
    }

    fn send_text(&mut self, text: &str) {
        self.send(1, text.as_bytes(), true);
    }
}

/// Replaces the value of every `"key":"…"` string in `json` with `with`.
fn replace_string_values(json: &str, key: &str, with: &str) -> String {
    let marker = format!("\"{key}\":\"");
    let mut out = String::new();
    let mut rest = json;
    while let Some(i) = rest.find(&marker) {
        let start = i + marker.len();
        out.push_str(&rest[..start]);
        let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
        out.push_str(with);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The document's fixed example timestamp.
const DOC_TIMESTAMP: &str = "2026-11-30T12:00:00.000Z";

fn with_doc_timestamps(json: &str) -> String {
    replace_string_values(json, "timestamp", DOC_TIMESTAMP)
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

#[test]
fn every_flag_and_env_var_of_help_is_documented() {
    let help = help_text();
    let flags = help_flags(&help);
    let envs = help_env_vars(&help);
    assert!(
        flags.len() >= 25 && envs.len() >= 25,
        "parsed too few flags ({}) or env vars ({}) from --help; did its format change?\n{help}",
        flags.len(),
        envs.len()
    );
    let doc = table_spans(&protocol());
    let readme = table_spans(&readme());
    let mut missing = Vec::new();
    for flag in &flags {
        if !table_has_flag(&doc, flag) {
            missing.push(format!("{flag} is not in a table of docs/PROTOCOL.md"));
        }
        if flag != "--help" && flag != "--version" && !table_has_flag(&readme, flag) {
            missing.push(format!("{flag} is not in the README's configuration table"));
        }
    }
    for env in &envs {
        if !doc.contains(env) {
            missing.push(format!("{env} is not in a table of docs/PROTOCOL.md"));
        }
        if !readme.contains(env) {
            missing.push(format!("{env} is not in the README's configuration table"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_config_file_key_is_documented() {
    // An unknown key makes the binary list every key it accepts (the fields
    // of `Config`) and exit before it binds anything.
    let path =
        std::env::temp_dir().join(format!("wsedge-protocol-doc-{}.toml", std::process::id()));
    std::fs::write(&path, "protocol_doc_probe = 1\n").expect("write probe file");
    let out = run_bin(&["--config", path.to_str().expect("utf-8 temp path")]);
    let _ = std::fs::remove_file(&path);
    assert!(
        !out.status.success(),
        "an unknown key was accepted: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let list = stderr
        .split_once("expected one of")
        .map(|(_, l)| l.lines().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no list of keys in: {stderr}"));
    let keys: Vec<String> = spans(list);
    assert!(keys.len() >= 20, "parsed too few keys from: {stderr}");
    let doc = table_spans(&protocol());
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "config file keys not in a table of docs/PROTOCOL.md: {missing:?}"
    );
}

/// The `# TYPE` names and the `reason` labels of a metrics page.
fn metric_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let reasons = text
        .split("reason=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect();
    (families, reasons)
}

#[test]
fn every_metric_and_the_degraded_health_body_are_documented() {
    let doc_text = protocol();
    let doc = table_spans(&doc_text);

    let (single, addr) = start(|_| {});
    let page = http_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(page.status, 200, "{page:?}");
    let (mut families, reasons) = metric_names(&page.text());
    assert!(families.len() >= 10, "too few metrics: {}", page.text());
    assert!(
        !reasons.is_empty(),
        "no reason labels on wsedge_handshakes_rejected_total"
    );
    drop(single);

    // Cluster mode with a Redis that is not there: the node serves locally,
    // says so on /healthz, and exposes the cluster metrics.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (cluster, addr) = start(|c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        c.node_id = Some("protocol-doc".into());
    });
    let page = http_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (cluster_families, _) = metric_names(&page.text());
    assert!(
        cluster_families
            .iter()
            .any(|f| f.starts_with("wsedge_cluster_")),
        "no cluster metrics in cluster mode: {}",
        page.text()
    );
    families.extend(cluster_families);
    let health = http_raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health.status, 200);
    let body = health.text();
    assert!(body.starts_with("degraded: "), "{body}");
    let generic = body.replace(&format!("127.0.0.1:{port}"), "HOST:PORT");
    assert!(
        squash(&doc_text).contains(&squash(&generic)),
        "the /healthz body {generic:?} is not in docs/PROTOCOL.md"
    );
    drop(cluster);

    // Keys from a JWKS endpoint that is not there: the node says so on
    // /healthz and exposes the JWKS metrics.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (jwks, addr) = start(|c| {
        c.jwt_secret = None;
        c.jwt_jwks_url = Some(format!("http://127.0.0.1:{port}/jwks"));
    });
    let page = http_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (jwks_families, _) = metric_names(&page.text());
    assert!(
        jwks_families.iter().any(|f| f.starts_with("wsedge_jwks_")),
        "no JWKS metrics with --jwt-jwks-url: {}",
        page.text()
    );
    families.extend(jwks_families);
    let health = http_raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let body = health.text();
    assert!(body.starts_with("degraded: "), "{body}");
    assert!(
        squash(&doc_text).contains(&squash(&body)),
        "the /healthz body {body:?} is not in docs/PROTOCOL.md"
    );
    drop(jwks);

    let missing: Vec<String> = families
        .iter()
        .filter(|f| !doc.contains(*f))
        .map(|f| format!("metric {f}"))
        .chain(
            reasons
                .iter()
                .filter(|r| !doc.contains(*r))
                .map(|r| format!("reason label {r:?}")),
        )
        .collect();
    assert!(
        missing.is_empty(),
        "not in a table of docs/PROTOCOL.md: {missing:?}"
    );
}

#[test]
fn every_documented_route_answers_and_the_answers_match_the_document() {
    let doc_text = protocol();
    let doc = squash(&doc_text);
    let routes = doc_routes(&doc_text);
    let v1 = routes
        .iter()
        .filter(|(_, p)| p.starts_with("/v1/websocket/"))
        .count();
    assert!(
        routes.len() >= 11 && v1 >= 6,
        "too few routes in the tables of docs/PROTOCOL.md: {routes:?}"
    );

    let (server, addr) = start(|_| {});
    // The documentation's user, so that answers naming it match the text.
    let (mut ws, hello) = RawWs::user(addr, "user123");
    let id = serde_json::from_str::<Value>(&hello).expect("json")["payload"]["connectionId"]
        .as_str()
        .expect("connectionId")
        .to_string();
    let epoch = serde_json::from_str::<Value>(&hello).expect("json")["payload"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let hello = with_doc_timestamps(&hello)
        .replace(&id, "0-5-17")
        .replace(&epoch, "3f9a2c1e8b7d6054");
    assert!(
        doc.contains(&hello),
        "the connected message {hello} is not in docs/PROTOCOL.md"
    );

    // DELETE last: it closes the user's connections.
    let mut ordered: Vec<&(String, String)> = routes.iter().collect();
    ordered.sort_by_key(|(m, _)| m == "DELETE");
    for (method, path) in ordered {
        let path = path
            .replace(":userId", "user123")
            .replace(":channel", "news");
        // The method the server names for this path is the documented one.
        let wrong = http_raw(
            addr,
            format!("OPTIONS {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(wrong.status, 405, "OPTIONS {path}: {wrong:?}");
        // Every GET route also answers HEAD (docs/PROTOCOL.md §4.2).
        let allowed = match method.as_str() {
            "GET" => "GET, HEAD".to_string(),
            m => m.to_string(),
        };
        assert_eq!(
            wrong.header("allow").as_deref(),
            Some(allowed.as_str()),
            "{path}: the server allows another method than docs/PROTOCOL.md says"
        );

        if path == "/ws" {
            let target = format!("/ws?token={}", token("user123", 600));
            let other = RawWs::open(addr, &target, "");
            assert!(other.is_ok(), "GET /ws was refused: {:?}", other.err());
            continue;
        }
        // Unknown fields are ignored: one body serves every POST route.
        let body = json!({"type": "doc-check", "payload": {"n": 1}, "userIds": ["user123"]});
        let resp = admin(addr, method, &path, (method == "POST").then_some(&body));
        assert_eq!(
            resp.status, 200,
            "{method} {path} (documented) answered {resp:?}"
        );
        if resp.header("content-type").as_deref() == Some("application/json") {
            let answer = resp.json();
            let obj = answer.as_object().expect("JSON answers are objects");
            assert!(obj.contains_key("timestamp"), "{method} {path}: {answer}");
            for key in obj.keys() {
                assert!(
                    doc.contains(&format!("`{key}`")) || doc.contains(&format!("\"{key}\"")),
                    "{method} {path}: field {key} is not in docs/PROTOCOL.md"
                );
            }
            if let Some(m) = answer["message"].as_str() {
                assert!(
                    doc.contains(m),
                    "{method} {path}: message {m:?} is not in docs/PROTOCOL.md"
                );
            }
        }
        if path == "/v1/websocket/test/notification" {
            let delivered = loop {
                let m = ws.next_text();
                if m.contains(r#""type":"notification""#) {
                    break with_doc_timestamps(&m);
                }
            };
            assert!(
                doc.contains(&delivered),
                "the test notification {delivered} is not in docs/PROTOCOL.md"
            );
        }
    }
    drop(server);
}

#[test]
fn websocket_messages_are_the_documented_ones() {
    let doc = squash(&protocol());
    let (server, addr) = start(|_| {});
    let (mut ws, _) = RawWs::user(addr, "user123");
    let mut check = |send: &str, what: &str| {
        ws.send_text(send);
        let got = with_doc_timestamps(&ws.next_text());
        assert!(
            doc.contains(&got),
            "{what}: {got} is not in docs/PROTOCOL.md"
        );
    };
    check(r#"{"type":"chat","payload":{"text":"hi"}}"#, "echo");
    check("not json", "error");
    let refreshed = {
        let fresh = token("user123", 900);
        ws.send_text(&json!({"type":"refresh","payload":{"token": fresh}}).to_string());
        ws.next_text()
    };
    let v: Value = serde_json::from_str(&refreshed).expect("json");
    let exp = v["payload"]["expiresAt"].as_u64().expect("expiresAt");
    let generic = refreshed.replace(&exp.to_string(), "1796084578");
    assert!(
        doc.contains(&generic),
        "refreshed: {generic} is not in docs/PROTOCOL.md"
    );
    drop(server);
}

/// Every close code the server sends (`wsedge::CloseCode`).
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1007, 1008, 1009, 4000, 4001, 4500];

#[test]
fn the_close_code_table_is_the_one_the_server_sends() {
    let table = close_code_table(&protocol());
    let documented: BTreeSet<u16> = table.keys().copied().collect();
    assert_eq!(
        documented,
        BTreeSet::from(CLOSE_CODES),
        "the close-code table of docs/PROTOCOL.md lists other codes than the server sends"
    );
    let reason_of = |code: u16| -> String {
        table[&code]
            .clone()
            .unwrap_or_else(|| panic!("close code {code} has no reason in the table"))
    };

    let (server, addr) = start(|c| {
        c.max_message_bytes = 1024;
        c.outbound_buffer_bytes = 4096;
        c.jwt_leeway_secs = 0;
    });
    let mut seen = BTreeMap::new();

    let (mut ws, _) = RawWs::user(addr, "big");
    ws.send_text(&"x".repeat(2000));
    seen.insert("too big", ws.expect_close());

    let (mut ws, _) = RawWs::user(addr, "utf8");
    ws.send(1, b"\xff\xfe", true);
    seen.insert("invalid utf-8", ws.expect_close());

    let (mut ws, _) = RawWs::user(addr, "unmasked");
    ws.send(1, b"{}", false);
    seen.insert("unmasked frame", ws.expect_close());

    let (mut ws, _) = RawWs::user(addr, "slow");
    let big = json!({"type": "big", "payload": "y".repeat(8000), "userIds": ["slow"]});
    let r = admin(addr, "POST", "/v1/websocket/broadcast", Some(&big));
    assert_eq!(r.status, 200, "{r:?}");
    seen.insert("slow consumer", ws.expect_close());

    for (query, what) in [
        ("", "disconnect"),
        ("?reconnect=false", "disconnect, no reconnect"),
    ] {
        let (mut ws, _) = RawWs::user(addr, "gone");
        let path = format!("/v1/websocket/user/gone/disconnect{query}");
        let r = admin(addr, "DELETE", &path, None);
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(what, ws.expect_close());
    }

    // A token that runs out in two seconds (no leeway on this server).
    let mut ws = RawWs::open(addr, &format!("/ws?token={}", token("brief", 2)), "")
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    seen.insert("token expiry", ws.expect_close());

    // The client's own close is answered with its code and reason.
    let (mut ws, _) = RawWs::user(addr, "polite");
    ws.send(8, b"\x03\xe8bye", true);
    let (code, reason) = ws.expect_close();
    assert_eq!((code, reason.as_str()), (1000, "bye"));

    // Shutdown, with a client that answers the close.
    let (mut ws, _) = RawWs::user(addr, "last");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    seen.insert("shutdown", ws.expect_close());
    rx.recv_timeout(WAIT).expect("shutdown finished");

    let expected = [
        ("too big", 1009),
        ("invalid utf-8", 1007),
        ("unmasked frame", 1002),
        ("slow consumer", 1008),
        ("disconnect", 4000),
        ("disconnect, no reconnect", 4500),
        ("token expiry", 4001),
        ("shutdown", 1001),
    ];
    for (what, code) in expected {
        let (got, reason) = &seen[what];
        assert_eq!(*got, code, "{what}: close code");
        assert_eq!(
            *reason,
            reason_of(code),
            "{what}: the reason sent with {code} is not the one in docs/PROTOCOL.md"
        );
    }
}

#[test]
fn the_http_status_table_is_the_one_the_server_answers() {
    let doc_text = protocol();
    let table = status_table(&doc_text);
    let (server, addr) = start(|c| {
        c.max_connections = 2;
        c.max_connections_per_user = 1;
        c.max_header_bytes = 1024;
        c.max_body_bytes = 1024;
        c.handshake_timeout_secs = 1;
        c.allowed_origins = vec!["https://ok.example".into()];
    });
    let user = token("someone", 600);
    let get = |path: &str, bearer: Option<&str>| {
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        http_raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    // (what, answer, status, the `error` as the document writes it, the
    // live `error`); a documented text ending in `…` is a prefix.
    let mut cases: Vec<(&str, Resp, u16, &str, String)> = Vec::new();
    let mut case = |what, resp, status, documented: &'static str, live: String| {
        cases.push((what, resp, status, documented, live));
    };

    case(
        "bad body",
        admin(addr, "POST", "/v1/websocket/broadcast", Some(&json!({}))),
        400,
        "type is required",
        "type is required".into(),
    );
    case(
        "no credential",
        get("/v1/websocket/stats", None),
        401,
        "unauthorized",
        "unauthorized".into(),
    );
    case(
        "user token on a REST route",
        get("/v1/websocket/stats", Some(&user)),
        403,
        "forbidden",
        "forbidden".into(),
    );
    case(
        "unknown path",
        get("/nope", None),
        404,
        "no route for <path>",
        "no route for /nope".into(),
    );
    case(
        "send to a user who is not connected",
        admin(
            addr,
            "POST",
            "/v1/websocket/send/nobody",
            Some(&json!({"type": "t"})),
        ),
        404,
        "User <id> is not connected",
        "User nobody is not connected".into(),
    );
    case(
        "wrong method",
        get("/v1/websocket/broadcast", Some(ADMIN_KEY)),
        405,
        "method not allowed",
        "method not allowed".into(),
    );
    case(
        "slow request",
        http_raw(addr, b"GET /healthz HTTP/1.1\r\n"),
        408,
        "request timeout",
        "request timeout".into(),
    );
    case(
        "POST without length",
        http_raw(
            addr,
            format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n").as_bytes(),
        ),
        411,
        "Content-Length or chunked Transfer-Encoding required",
        "Content-Length or chunked Transfer-Encoding required".into(),
    );
    case(
        "body too large",
        http_raw(
            addr,
            format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 5000\r\n\r\n").as_bytes(),
        ),
        413,
        "request body larger than <N> bytes",
        "request body larger than 1024 bytes".into(),
    );
    case(
        "an unmet expectation",
        http_raw(
            addr,
            format!("POST /v1/websocket/broadcast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
        ),
        417,
        "unsupported Expect …",
        String::new(),
    );
    case(
        "plain HTTP to /ws",
        get("/ws", None),
        426,
        "this endpoint only speaks WebSocket: …",
        String::new(),
    );
    case(
        "head too large",
        http_raw(
            addr,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(2000)
            )
            .as_bytes(),
        ),
        431,
        "request header fields larger than <N> bytes",
        "request header fields larger than 1024 bytes".into(),
    );
    case(
        "foreign Origin",
        RawWs::open(
            addr,
            &format!("/ws?token={user}"),
            "Origin: https://evil.example\r\n",
        )
        .err()
        .expect("refused"),
        403,
        "forbidden",
        "forbidden".into(),
    );
    let (_a, _) = RawWs::user(addr, "a");
    case(
        "second connection of a user",
        RawWs::open(addr, &format!("/ws?token={}", token("a", 600)), "")
            .err()
            .expect("refused"),
        429,
        "too many connections for this user",
        "too many connections for this user".into(),
    );
    let (_b, _) = RawWs::user(addr, "b");
    case(
        "connection over the total",
        RawWs::open(addr, &format!("/ws?token={}", token("c", 600)), "")
            .err()
            .expect("refused"),
        503,
        "server at connection limit",
        "server at connection limit".into(),
    );
    let healthz = get("/healthz", None);
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok"));
    drop(server);

    // 204 is the CORS preflight, driven in tests/hardening.rs.
    let mut answered = BTreeSet::from([101, 200, 204]);
    for (what, resp, status, doc_error, live) in &cases {
        assert_eq!(resp.status, *status, "{what}: {resp:?}");
        answered.insert(*status);
        let got = resp.error();
        match doc_error.strip_suffix('…') {
            Some(prefix) => assert!(got.starts_with(prefix), "{what}: error {got:?}"),
            None => assert_eq!(&got, live, "{what}: error"),
        }
        let row = table
            .get(status)
            .unwrap_or_else(|| panic!("{what}: status {status} is not in the status table"));
        assert!(
            row.contains(doc_error),
            "{what}: the status table's row for {status} does not say {doc_error:?}: {row}"
        );
    }
    let documented: BTreeSet<u16> = table.keys().copied().collect();
    assert_eq!(
        documented, answered,
        "the status table of docs/PROTOCOL.md lists other statuses than the server answers"
    );
}

#[test]
fn the_documents_stay_inside_the_repository_and_keep_their_sections() {
    let doc = protocol();
    for (name, text) in [("docs/PROTOCOL.md", doc.as_str()), ("README.md", &readme())] {
        // Spelled in two halves so that this file itself passes the same
        // search for paths outside the repository.
        let parent_shared = ["..", "/shared"].concat();
        for outside in [parent_shared.as_str(), "SPEC.md", "shared/SPEC"] {
            assert!(
                !text.contains(outside),
                "{name} refers to {outside:?}, outside the repository"
            );
        }
    }
    assert!(
        !doc.contains("](../") && !doc.contains("](/"),
        "docs/PROTOCOL.md links outside docs/ by path"
    );
    // Code comments cite these numbers.
    let sections = [
        "## 1. Overview",
        "## 2. Architecture",
        "## 3. WebSocket endpoint: GET /ws",
        "## 4. Management REST API",
        "## 5. Rust library API",
        "## 6. Clients",
        "## 7. Running it",
        "## 8. Load test and benches",
        "## 9. Cluster mode",
        "## 10. Channels",
        "## 11. History and recovery",
        "## 12. TLS and production keys",
    ];
    let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(headings, sections, "top-level sections of docs/PROTOCOL.md");
    assert!(
        readme().contains("(docs/PROTOCOL.md)"),
        "README.md does not link docs/PROTOCOL.md"
    );
}
