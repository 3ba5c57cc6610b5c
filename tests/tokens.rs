//! Signed tokens on real sockets: who may open `/ws`, which topics a token
//! grants, where a client's messages go, expiry, and HTTP publish with a
//! token. Tokens are minted here with `ring`, the way an issuer would.
#![cfg(feature = "jwt")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::jwt::{b64url, hs256_with, token};
use common::*;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use wshub::{Config, Server};

const SECRET: &str = "correct horse battery staple, 32+ bytes of secret";

fn b64(bytes: &[u8]) -> String {
    let url = b64url(bytes).replace('-', "+").replace('_', "/");
    let pad = (4 - url.len() % 4) % 4;
    url + &"=".repeat(pad)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &str) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

/// A new file in a directory of this test process's own (a fresh name each
/// call: tests run in parallel, and a file rewritten while another test's
/// hub reads it would be a race).
fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wshub-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{n}-{name}"));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A public key as a PEM file, the way `openssl pkey -pubout` writes one.
fn public_key_pem(name: &str, spki_prefix: &[u8], raw: &[u8]) -> PathBuf {
    let der = [spki_prefix, raw].concat();
    let body = b64(&der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"));
    temp_file(name, pem.as_bytes())
}

const ED25519_SPKI: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn hs256_hub(config: Config) -> Hub {
    // One trailing newline in the file is not part of the secret.
    let secret = temp_file("secret", format!("{SECRET}\n").as_bytes());
    Hub::start(Config { jwt_secret_file: Some(secret), ..config })
}

/// The status line's code for an upgrade of `path` with `extra` headers.
fn upgrade_status(hub: &Hub, path: &str, extra: &str) -> u16 {
    let request = upgrade_request(path).replace("Host: test\r\n", &format!("Host: test\r\n{extra}"));
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    status_of(&String::from_utf8_lossy(&head))
}

fn publish(hub: &Hub, topic: &str, bearer: Option<&str>) -> String {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("POST /publish/{topic} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 2\r\n\r\nhi");
    http(hub.addr, request.as_bytes())
}

#[test]
fn ws_needs_a_valid_token() {
    let hub = hs256_hub(Config::default());
    let now = unix_now();
    let good = hs256(&format!(r#"{{"sub":"dev-1","exp":{},"subscribe":["*"]}}"#, now + 600));
    assert_eq!(upgrade_status(&hub, "/ws", ""), 401, "no token");
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={good}"), ""), 101, "in the query");
    assert_eq!(upgrade_status(&hub, "/ws", &format!("Authorization: bearer {good}\r\n")), 101, "in the header");

    let [h, p, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let forged_payload = b64url(br#"{"sub":"admin","subscribe":["*"]}"#);
    let mut bad_sig = s.to_string();
    bad_sig.replace_range(..2, if s.starts_with("AA") { "BB" } else { "AA" });
    let wrong_key = {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"another secret that is long enough to pass");
        token("HS256", r#"{"subscribe":["*"]}"#, |m| hmac::sign(&key, m).as_ref().to_vec())
    };
    let wrong_alg = {
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        token("HS384", r#"{"subscribe":["*"]}"#, |m| hmac::sign(&key, m).as_ref().to_vec())
    };
    let none = format!("{}.{p}.", b64url(br#"{"alg":"none"}"#));
    for (what, bad) in [
        ("expired", hs256(&format!(r#"{{"exp":{},"subscribe":["*"]}}"#, now - 120))),
        ("not yet valid", hs256(&format!(r#"{{"nbf":{},"subscribe":["*"]}}"#, now + 120))),
        ("wrong key", wrong_key),
        ("wrong alg", wrong_alg),
        ("alg none", none),
        ("tampered payload", format!("{h}.{forged_payload}.{s}")),
        ("tampered signature", format!("{h}.{p}.{bad_sig}")),
        ("garbage", "not-a-token".to_string()),
    ] {
        assert_eq!(upgrade_status(&hub, &format!("/ws?token={bad}"), ""), 401, "{what}");
    }
    // Within the default 30 s leeway, a just-expired token is still good.
    let skewed = hs256(&format!(r#"{{"exp":{},"subscribe":["*"]}}"#, now - 5));
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={skewed}"), ""), 101);
}

#[test]
fn the_subscribe_grant_decides_the_topics() {
    let hub = hs256_hub(Config::default());
    let t = hs256(r#"{"subscribe":["news","sensors.*"]}"#);
    assert_eq!(upgrade_status(&hub, &format!("/ws?topic=news&topic=sensors.t1&token={t}"), ""), 101);
    assert_eq!(upgrade_status(&hub, &format!("/ws?topic=news&topic=other&token={t}"), ""), 403);
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={t}"), ""), 403, "the default topic `all` is not granted");
    let nothing = hs256(r#"{"sub":"x"}"#);
    assert_eq!(upgrade_status(&hub, &format!("/ws?topic=news&token={nothing}"), ""), 403, "no claim: no grant");
    let everything = hs256(r#"{"subscribe":["*"]}"#);
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={everything}"), ""), 101);
}

#[test]
fn messages_go_only_to_topics_the_publish_grant_covers() {
    let hub = hs256_hub(Config::default());
    let reader = hs256(r#"{"subscribe":["*"]}"#);
    let mut on_a = RawWs::connect(hub.addr, &format!("/ws?topic=a&token={reader}"));
    let mut on_b = RawWs::connect(hub.addr, &format!("/ws?topic=b&token={reader}"));
    let writer = hs256(r#"{"subscribe":["a","b"],"publish":["b"]}"#);
    let mut sender = RawWs::connect(hub.addr, &format!("/ws?topic=a&topic=b&token={writer}"));
    sender.send_frame(0x81, b"for b only");
    assert_eq!(on_b.read_frame().payload, b"for b only");
    assert_eq!(sender.read_frame().payload, b"for b only", "the sender hears its own message on b");
    // `a` got nothing: the next thing it sees is a later publish.
    hub.publisher.publish("a", "marker").unwrap();
    assert_eq!(on_a.read_frame().payload, b"marker");

    // A reader without a publish grant that sends data is closed with 1008.
    on_a.send_frame(0x82, b"may I?");
    assert_eq!(on_a.expect_close(), Some(1008));
    // Control frames are fine without a grant.
    on_b.send_frame(0x89, b"ping");
    assert_eq!(on_b.read_frame().opcode, 0xA);
}

#[test]
fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let hub = hs256_hub(Config { jwt_leeway: std::time::Duration::ZERO, ..Config::default() });
    let expires = unix_now() + 2;
    let t = hs256(&format!(r#"{{"exp":{expires},"subscribe":["*"]}}"#));
    let mut ws = RawWs::connect(hub.addr, &format!("/ws?token={t}"));
    let mut other = RawWs::connect(hub.addr, &format!("/ws?token={}", hs256(r#"{"subscribe":["*"]}"#)));
    let (_, code) = ws.read_until_close();
    assert_eq!(code, Some(1008));
    assert!(unix_now() >= expires, "closed at exp, not before");
    // A token without exp does not expire.
    hub.publisher.publish("all", "still here").unwrap();
    assert_eq!(other.read_frame().payload, b"still here");
}

#[test]
fn public_keys_es256_and_eddsa_with_rotation() {
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec = EcdsaKeyPair::from_pkcs8(alg, EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap().as_ref(), &rng).unwrap();
    let new_ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let old_ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let stranger = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let config = Config {
        jwt_public_key_files: vec![
            public_key_pem("ec.pem", P256_SPKI, ec.public_key().as_ref()),
            public_key_pem("ed-new.pem", ED25519_SPKI, new_ed.public_key().as_ref()),
            public_key_pem("ed-old.pem", ED25519_SPKI, old_ed.public_key().as_ref()),
        ],
        ..Config::default()
    };
    let hub = Hub::start(config);
    let claims = r#"{"subscribe":["*"]}"#;
    let es256 = token("ES256", claims, |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
    let eddsa_new = token("EdDSA", claims, |m| new_ed.sign(m).as_ref().to_vec());
    let eddsa_old = token("EdDSA", claims, |m| old_ed.sign(m).as_ref().to_vec());
    for good in [&es256, &eddsa_new, &eddsa_old] {
        assert_eq!(upgrade_status(&hub, &format!("/ws?token={good}"), ""), 101);
    }
    let unknown = token("EdDSA", claims, |m| stranger.sign(m).as_ref().to_vec());
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={unknown}"), ""), 401, "a key not configured");
    // No secret is configured: an HS256 token (here keyed with a public
    // key's bytes, the classic confusion) never verifies.
    let confused = {
        let key = hmac::Key::new(hmac::HMAC_SHA256, new_ed.public_key().as_ref());
        token("HS256", claims, |m| hmac::sign(&key, m).as_ref().to_vec())
    };
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={confused}"), ""), 401);
    // The answer does not say which key types the hub holds (the log does).
    let response = http(hub.addr, upgrade_request(&format!("/ws?token={confused}")).as_bytes());
    assert!(response.ends_with("\r\n\r\na valid token is needed\n"), "{response}");
    let mislabelled = token("ES256", claims, |m| new_ed.sign(m).as_ref().to_vec());
    assert_eq!(upgrade_status(&hub, &format!("/ws?token={mislabelled}"), ""), 401);
}

#[test]
fn issuer_and_audience_when_configured() {
    let hub = hs256_hub(Config {
        jwt_issuer: Some("auth.example".into()),
        jwt_audience: Some("hub".into()),
        ..Config::default()
    });
    let status = |claims: &str| upgrade_status(&hub, &format!("/ws?token={}", hs256(claims)), "");
    assert_eq!(status(r#"{"iss":"auth.example","aud":"hub","subscribe":["*"]}"#), 101);
    assert_eq!(status(r#"{"iss":"auth.example","aud":["web","hub"],"subscribe":["*"]}"#), 101);
    assert_eq!(status(r#"{"iss":"auth.example","subscribe":["*"]}"#), 401, "aud missing");
    assert_eq!(status(r#"{"iss":"evil","aud":"hub","subscribe":["*"]}"#), 401);
}

#[test]
fn http_publish_with_a_token_whose_grant_covers_the_topic() {
    let hub = hs256_hub(Config::default());
    let reader = hs256(r#"{"subscribe":["*"]}"#);
    let mut ws = RawWs::connect(hub.addr, &format!("/ws?topic=t&token={reader}"));
    let t_only = hs256(r#"{"publish":["t"]}"#);
    let response = publish(&hub, "t", Some(&t_only));
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("{\"receivers\": 1, \"id\": \""), "{response}");
    assert_eq!(ws.read_frame().payload, b"hi");
    assert_eq!(status_of(&publish(&hub, "u", Some(&t_only))), 401, "outside the grant");
    assert_eq!(status_of(&publish(&hub, "t", None)), 401, "keys configured: loopback alone is not enough");
    assert_eq!(status_of(&publish(&hub, "t", Some(&reader))), 401, "no publish claim");

    // With --publish-token as well, either credential works.
    let both = hs256_hub(Config { publish_token: Some("shared-token".into()), ..Config::default() });
    assert_eq!(status_of(&publish(&both, "t", Some("shared-token"))), 200);
    assert_eq!(status_of(&publish(&both, "t", Some(&t_only))), 200);
    assert_eq!(status_of(&publish(&both, "t", Some("wrong"))), 401);
}

#[test]
fn bad_key_files_stop_startup_with_a_reason() {
    let start = |config: Config| Server::bind(Config { listen: "127.0.0.1:0".parse().unwrap(), ..config });
    let short = temp_file("short", b"too short\n");
    let err = start(Config { jwt_secret_file: Some(short), ..Config::default() }).err().unwrap();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    let missing = Config { jwt_public_key_files: vec!["/nonexistent/key.pem".into()], ..Config::default() };
    assert!(start(missing).err().unwrap().to_string().contains("/nonexistent/key.pem"));
    let not_pem = temp_file("not.pem", b"hello");
    let err = start(Config { jwt_public_key_files: vec![not_pem], ..Config::default() }).err().unwrap();
    assert!(err.to_string().contains("BEGIN PUBLIC KEY"), "{err}");
}

#[test]
fn event_streams_need_a_token_and_its_subscribe_grant_like_websocket() {
    let hub = hs256_hub(Config::default());
    let sse_status = |target: &str, extra: &str| {
        let mut stream = TcpStream::connect(hub.addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        status_of(&String::from_utf8_lossy(&head))
    };
    let t = hs256(r#"{"subscribe":["news"]}"#);
    assert_eq!(sse_status("/sse?topic=news", ""), 401, "no token");
    assert_eq!(sse_status("/sse?topic=news&token=not.a.token", ""), 401);
    assert_eq!(sse_status(&format!("/sse?topic=news&token={t}"), ""), 200);
    assert_eq!(sse_status("/sse?topic=news", &format!("Authorization: Bearer {t}\r\n")), 200);
    assert_eq!(sse_status(&format!("/sse?topic=other&token={t}"), ""), 403, "outside the grant");
}
