//! Criterion benches of the hot paths: HTTP request parsing, JWT
//! verification, envelope building and frame encoding.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use serde_json::value::RawValue;
use wsedge::testbed as frame;
use wsedge::testbed::Verifier;
use wsedge::testbed::{parse_request, Limits, Parsed};
use wsedge::Config;
use wsedge::{mint_hs256, now_secs};

const BROADCAST_REQUEST: &[u8] = b"POST /v1/websocket/broadcast HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nAuthorization: Bearer integration-admin-key\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"type\":\"notification\",\"payload\":{\"seq\":1,\"t\":1732700000000000}}";

const UPGRADE_REQUEST: &[u8] = b"GET /ws?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.sig HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nUser-Agent: bench\r\n\r\n";

fn http_parse(c: &mut Criterion) {
    let limits = Limits {
        max_header_bytes: 8192,
        max_body_bytes: 1 << 20,
    };
    let mut g = c.benchmark_group("http_parse");
    for (name, req) in [
        ("broadcast_post", BROADCAST_REQUEST),
        ("ws_upgrade", UPGRADE_REQUEST),
    ] {
        g.throughput(Throughput::Bytes(req.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| match parse_request(black_box(req), &limits) {
                Ok(Parsed::Complete(r, n)) => (r.path.len(), n),
                _ => (0, 0),
            })
        });
    }
    g.finish();
}

fn jwt_verify(c: &mut Criterion) {
    let cfg = Config::default();
    let verifier = Verifier::from_config(&cfg, Some("bench-secret")).expect("verifier");
    let token = mint_hs256(
        "bench-secret",
        &json!({"sub": "user-42", "exp": now_secs() + 3600}),
    );
    c.bench_function("jwt_verify/hs256", |b| {
        b.iter(|| verifier.verify_user(black_box(&token)).is_ok())
    });

    // The asymmetric algorithms with the test key pairs (tests/keys), as a
    // deployment with an identity provider's public key would run them.
    for (name, alg, public, private) in [
        ("rs256", "RS256", "rsa_public.pem", "rsa_private.pem"),
        ("es256", "ES256", "ec256_public.pem", "ec256_private.pem"),
        (
            "eddsa",
            "EdDSA",
            "ed25519_public.pem",
            "ed25519_private.pem",
        ),
    ] {
        let (verifier, token) = asymmetric(alg, public, private);
        c.bench_function(&format!("jwt_verify/{name}"), |b| {
            b.iter(|| verifier.verify_user(black_box(&token)).is_ok())
        });
    }

    // RS256 through a JWKS key set of three keys, picked by kid: the same
    // signature check plus the header parse and the key set read.
    let (verifier, token) = jwks_rs256();
    c.bench_function("jwt_verify/rs256_jwks", |b| {
        b.iter(|| verifier.verify_user(black_box(&token)).is_ok())
    });
}

/// A JWKS verifier (its endpoint never asked: the document is installed
/// directly) with the RSA, P-256 and Ed25519 test keys, and an RS256 token.
fn jwks_rs256() -> (Verifier, String) {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let read = |name: &str| std::fs::read(format!("{keys}/{name}")).expect("key");
    let rsa = EncodingKey::from_rsa_pem(&read("rsa_private.pem")).expect("rsa");
    let ec = EncodingKey::from_ec_pem(&read("ec256_private.pem")).expect("ec");
    let ed = EncodingKey::from_ed_pem(&read("ed25519_private.pem")).expect("ed");
    let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut v =
            serde_json::to_value(Jwk::from_encoding_key(key, alg).expect("jwk")).expect("jwk json");
        v["kid"] = kid.into();
        v
    };
    let doc = json!({"keys": [
        jwk(&ec, Algorithm::ES256, "ec"),
        jwk(&rsa, Algorithm::RS256, "rsa"),
        jwk(&ed, Algorithm::EdDSA, "ed"),
    ]});
    let cfg = Config {
        jwt_jwks_url: Some("http://127.0.0.1:9/jwks".into()),
        ..Config::default()
    };
    let verifier = Verifier::from_config(&cfg, None).expect("jwks verifier");
    wsedge::testbed::load_jwks(&verifier, doc.to_string().as_bytes()).expect("key set");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "user-42", "exp": now_secs() + 3600}),
        &rsa,
    )
    .expect("token");
    (verifier, token)
}

/// A verifier for `alg` with the public key file and a token signed with the
/// private one, both from tests/keys.
fn asymmetric(alg: &str, public: &str, private: &str) -> (Verifier, String) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let cfg = Config {
        jwt_algorithm: alg.into(),
        jwt_public_key: Some(format!("{keys}/{public}").into()),
        ..Config::default()
    };
    let verifier = Verifier::from_config(&cfg, None).expect("verifier");
    let pem = std::fs::read(format!("{keys}/{private}")).expect("private key");
    let algorithm: Algorithm = alg.parse().expect("algorithm");
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("encoding key");
    let token = jsonwebtoken::encode(
        &Header::new(algorithm),
        &json!({"sub": "user-42", "exp": now_secs() + 3600}),
        &key,
    )
    .expect("token");
    (verifier, token)
}

fn envelope_and_frame(c: &mut Criterion) {
    let payload = RawValue::from_string(
        r#"{"seq":12345,"t":1732700000000000,"pad":"xxxxxxxxxxxxxxxx"}"#.into(),
    )
    .expect("raw");
    let mut g = c.benchmark_group("outbound");
    g.bench_function("envelope_64B", |b| {
        b.iter(|| frame::envelope(black_box("notification"), Some(&payload)))
    });
    let body = frame::envelope("notification", Some(&payload));
    g.bench_function("text_frame_64B", |b| {
        b.iter(|| frame::text_frame(black_box(&body)))
    });
    let big = vec![b'x'; 16 * 1024];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("text_frame_16KiB", |b| {
        b.iter(|| frame::text_frame(black_box(&big)))
    });
    g.finish();
}

/// A ~2 KiB JSON notification list, as an application would broadcast.
fn notification_json() -> Vec<u8> {
    let items: Vec<_> = (0..24)
        .map(|i| {
            let kind = ["mention", "like", "reply"][i % 3];
            json!({"id": 1000 + i * 7, "kind": kind,
                   "from": format!("user-{}", (i * 37) % 101), "read": i % 2 == 0,
                   "at": 1732700000000u64 + (i as u64) * 1931})
        })
        .collect();
    serde_json::to_vec(&json!({"type": "notification", "payload": items})).expect("json")
}

/// permessage-deflate: what a broadcast's compress-once costs (one
/// deflate, shared by every connection that negotiated it) and what one
/// connection's compressed reply costs.
fn deflate(c: &mut Criterion) {
    let json = notification_json();
    let plain = frame::text_frame(&json);
    let mut g = c.benchmark_group("deflate");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("shared_frame_2KiB", |b| {
        b.iter(|| {
            let f = frame::Frame::shared(black_box(plain.clone()));
            f.deflated(256).map(<[u8]>::len)
        })
    });
    g.bench_function("reply_2KiB", |b| {
        let how = frame::Deflating {
            min: 256,
            window: 15,
        };
        b.iter(|| frame::deflate_frames(black_box(&plain), how).len())
    });
    g.finish();
}

/// A masked client frame (the zero key: unmasking costs the same).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0, 0x80 | 126];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// permessage-deflate inbound: a client's compressed 2 KiB message through
/// the filter in front of tungstenite (collect, inflate on the thread's
/// inflater, rebuild a plain frame), and what the filter costs a plain
/// message on a connection that negotiated.
fn inflate(c: &mut Criterion) {
    use flate2::{Compress, Compression, FlushCompress};
    use std::io::Cursor;
    use wsedge::testbed::{Agreement, DeflateInbound};

    let json = notification_json();
    let mut z = Vec::with_capacity(json.len() + 64);
    Compress::new(Compression::default(), false)
        .compress_vec(&json, &mut z, FlushCompress::Sync)
        .expect("compress");
    z.truncate(z.len() - 4); // RFC 7692: the 00 00 ff ff tail goes
    let compressed = client_frame(0xc1, &z);
    let plain = client_frame(0x81, &json);
    let agreement = Agreement {
        server_max_window_bits: None,
    };
    let mut g = c.benchmark_group("inflate");
    g.throughput(Throughput::Bytes(json.len() as u64));
    for (name, wire) in [("message_2KiB", &compressed), ("plain_2KiB", &plain)] {
        g.bench_function(name, |b| {
            let mut buf = vec![0u8; 4096];
            b.iter(|| {
                let mut filter = DeflateInbound::new(agreement, 64 * 1024, Vec::new());
                let mut src = Cursor::new(black_box(wire.as_slice()));
                let mut total = 0;
                while let Ok(n) = filter.read_from(&mut src, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    http_parse,
    jwt_verify,
    envelope_and_frame,
    deflate,
    inflate
);
criterion_main!(benches);
