//! Signed tokens (JWT, RFC 7519, as compact JWS, RFC 7515): who a client is
//! and which topics it may subscribe to and publish on.
//!
//! Verification is once per connection, at the upgrade, with keys loaded at
//! startup: an HMAC secret (HS256) and/or public keys (ES256 on P-256,
//! EdDSA on Ed25519). A token's `alg` must match a configured key's type,
//! so `none`, an unknown algorithm, or an HMAC token "signed" with a public
//! key never verifies. Signatures are checked before the claims are read.
//! Crypto is `ring`'s, the library rustls runs on.

use std::fmt;
use std::fs;
use std::path::Path;

use ring::{hmac, signature};

use super::json::{self, Value};
use super::{Claims, Grant, Refusal, base64};
use crate::config::Config;
use crate::der::Der;

/// Longest token accepted (the request head is bounded anyway).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest header accepted, base64url (1 KiB once decoded): it is parsed
/// before the signature is checked, so anyone can send one. A real header
/// is `alg`, `typ` and maybe `kid`: a few dozen bytes.
const MAX_HEADER_B64: usize = 1368;
/// The configured keys and claim requirements.
pub struct Verifier {
    hmac: Option<hmac::Key>,
    public: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl fmt::Debug for Verifier {
    // Key material stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("public_keys", &self.public.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// A P-256 point, uncompressed (65 bytes): verifies ES256.
    P256,
    /// An Ed25519 key (32 bytes): verifies EdDSA.
    Ed25519,
}

struct PublicKey {
    kind: KeyKind,
    bytes: Vec<u8>,
}

impl Verifier {
    /// Loads the keys named in `config`; `Ok(None)` when none is configured.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, String> {
        let hmac = match &config.jwt_secret_file {
            Some(path) => Some(load_secret(path)?),
            None => None,
        };
        let mut public = Vec::new();
        for path in &config.jwt_public_key_files {
            public.push(load_public_key(path)?);
        }
        if hmac.is_none() && public.is_empty() {
            if config.jwt_issuer.is_some() || config.jwt_audience.is_some() {
                return Err("--jwt-issuer/--jwt-audience need --jwt-secret-file or --jwt-public-key-file".into());
            }
            return Ok(None);
        }
        Ok(Some(Verifier {
            hmac,
            public,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway.as_secs(),
        }))
    }

    /// A verifier for HS256 tokens with `secret` (for fuzzing and tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn from_secret(secret: &[u8]) -> Verifier {
        Verifier {
            hmac: Some(hmac::Key::new(hmac::HMAC_SHA256, secret)),
            public: Vec::new(),
            issuer: None,
            audience: None,
            leeway: 30,
        }
    }

    /// Checks a compact JWS token's signature, then its claims, at
    /// `unix_now` (seconds since the epoch).
    pub fn verify(&self, token: &str, unix_now: u64) -> Result<Claims, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS (three dot-separated parts)");
        };
        if header.len() > MAX_HEADER_B64 {
            return Err("header too long");
        }
        let header = base64::decode_url(header.as_bytes()).ok_or("header is not base64url")?;
        let header = json::parse(&header).map_err(|_| "header is not JSON")?;
        if header.get("crit").is_some() {
            return Err("critical header extensions are not supported");
        }
        let Some(Value::String(alg)) = header.get("alg") else {
            return Err("no alg in the header");
        };
        let sig = base64::decode_url(sig.as_bytes()).ok_or("signature is not base64url")?;
        let signed = &token.as_bytes()[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        self.check_signature(alg, signed, &sig)?;
        let payload = base64::decode_url(payload.as_bytes()).ok_or("payload is not base64url")?;
        let claims = json::parse(&payload).map_err(|_| "payload is not JSON")?;
        if !matches!(claims, Value::Object(_)) {
            return Err("payload is not a JSON object");
        }
        self.check_claims(&claims, unix_now)
    }

    /// Does `sig` sign `signed` with a configured key of `alg`'s type?
    fn check_signature(&self, alg: &str, signed: &[u8], sig: &[u8]) -> Result<(), Refusal> {
        let kind = match alg {
            "HS256" => {
                let key = self.hmac.as_ref().ok_or("HS256 token, but no --jwt-secret-file")?;
                return hmac::verify(key, signed, sig).map_err(|_| "bad signature");
            }
            "ES256" => KeyKind::P256,
            "EdDSA" => KeyKind::Ed25519,
            _ => return Err("algorithm not accepted"),
        };
        let algorithm: &dyn signature::VerificationAlgorithm = match kind {
            KeyKind::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            KeyKind::Ed25519 => &signature::ED25519,
        };
        let mut keys = self.public.iter().filter(|k| k.kind == kind).peekable();
        if keys.peek().is_none() {
            return Err("no public key of the token's algorithm");
        }
        // A few keys at most (rotation): trying each costs little, and needs
        // no `kid` agreement with the issuer.
        for key in keys {
            if signature::UnparsedPublicKey::new(algorithm, &key.bytes).verify(signed, sig).is_ok() {
                return Ok(());
            }
        }
        Err("bad signature")
    }

    fn check_claims(&self, claims: &Value, now: u64) -> Result<Claims, Refusal> {
        let exp = time_claim(claims, "exp")?;
        if let Some(exp) = exp
            && now > exp.saturating_add(self.leeway)
        {
            return Err("token expired");
        }
        if let Some(nbf) = time_claim(claims, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err("token not yet valid (nbf)");
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss") != Some(&Value::String(issuer.clone()))
        {
            return Err("wrong or missing iss");
        }
        if let Some(audience) = &self.audience {
            let ours = |v: &Value| matches!(v, Value::String(s) if s == audience);
            let matches = match claims.get("aud") {
                Some(Value::Array(list)) => list.iter().any(ours),
                Some(one) => ours(one),
                None => false,
            };
            if !matches {
                return Err("wrong or missing aud");
            }
        }
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("sub is not a string"),
        };
        Ok(Claims {
            expires: exp.map(|e| e.saturating_add(self.leeway)),
            sub,
            subscribe: grant(claims.get("subscribe"))?,
            publish: grant(claims.get("publish"))?,
        })
    }
}

/// A `subscribe` or `publish` claim: a list of pattern strings.
fn grant(claim: Option<&Value>) -> Result<Grant, Refusal> {
    match claim {
        None => Ok(Grant::default()),
        Some(Value::Array(items)) => {
            let mut patterns = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(text) = item else {
                    return Err("a topic pattern must be a string");
                };
                patterns.push(text.as_str());
            }
            Grant::new(patterns)
        }
        Some(_) => Err("a grant must be a list of topic patterns"),
    }
}

/// A NumericDate claim (seconds since the epoch, possibly fractional).
fn time_claim(claims: &Value, name: &str) -> Result<Option<u64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) if *n >= 0.0 => Ok(Some(*n as u64)),
        Some(_) => Err("exp/nbf must be a non-negative number"),
    }
}

/// The HS256 secret: the file's bytes, one trailing newline ignored.
fn load_secret(path: &Path) -> Result<hmac::Key, String> {
    let bytes = fs::read(path).map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
    let secret = bytes.strip_suffix(b"\n").map(|s| s.strip_suffix(b"\r").unwrap_or(s)).unwrap_or(&bytes);
    // A PEM key used as an HMAC secret: anyone with the public key could
    // sign tokens (the classic HS256/RS256 confusion, from the other side).
    if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(format!(
            "--jwt-secret-file {}: this is a PEM key, not a shared secret (a public key goes to --jwt-public-key-file)",
            path.display()
        ));
    }
    // RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
    if secret.len() < 32 {
        return Err(format!("--jwt-secret-file {}: the secret must be at least 32 bytes", path.display()));
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, secret))
}

fn load_public_key(path: &Path) -> Result<PublicKey, String> {
    let text = fs::read(path).map_err(|e| format!("--jwt-public-key-file {}: {e}", path.display()))?;
    parse_public_key_pem(&text).map_err(|why| format!("--jwt-public-key-file {}: {why}", path.display()))
}

/// A `-----BEGIN PUBLIC KEY-----` PEM block (SubjectPublicKeyInfo, RFC 5280
/// §4.1, as `openssl pkey -pubout` writes it) holding a P-256 or Ed25519 key.
fn parse_public_key_pem(text: &[u8]) -> Result<PublicKey, &'static str> {
    const BEGIN: &[u8] = b"-----BEGIN PUBLIC KEY-----";
    const END: &[u8] = b"-----END PUBLIC KEY-----";
    let start = find(text, BEGIN).ok_or("no '-----BEGIN PUBLIC KEY-----' block")? + BEGIN.len();
    let len = find(&text[start..], END).ok_or("no '-----END PUBLIC KEY-----' line")?;
    let der = base64::decode_pem(&text[start..start + len]).ok_or("the PEM block is not base64")?;
    parse_spki(&der)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING key }`.
fn parse_spki(der: &[u8]) -> Result<PublicKey, &'static str> {
    const ID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]; // 1.2.840.10045.2.1
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]; // 1.2.840.10045.3.1.7
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70]; // 1.3.101.112
    const UNSUPPORTED: &str = "not a P-256 or Ed25519 public key";
    const BAD: &str = "malformed DER";
    let mut outer = Der(der);
    let mut spki = Der(outer.take(0x30).ok_or(BAD)?);
    if !outer.is_empty() {
        return Err("trailing bytes after the key");
    }
    let mut algorithm = Der(spki.take(0x30).ok_or(BAD)?);
    let bits = spki.take(0x03).ok_or(BAD)?;
    let oid = algorithm.take(0x06).ok_or(BAD)?;
    let kind = if oid == ED25519 && algorithm.is_empty() {
        KeyKind::Ed25519
    } else if oid == ID_EC_PUBLIC_KEY && algorithm.take(0x06).ok_or(BAD)? == P256 {
        KeyKind::P256
    } else {
        return Err(UNSUPPORTED);
    };
    // A BIT STRING starts with its count of unused bits: 0 for a key.
    let [0, key @ ..] = bits else {
        return Err("malformed key bits");
    };
    let valid = match kind {
        KeyKind::Ed25519 => key.len() == 32,
        KeyKind::P256 => key.len() == 65 && key[0] == 0x04,
    };
    if !valid {
        return Err("the key has the wrong length or form (want an uncompressed P-256 point or 32 Ed25519 bytes)");
    }
    Ok(PublicKey { kind, bytes: key.to_vec() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    pub fn b64url(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn signed_with(alg: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input =
            format!("{}.{}", b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()), b64url(claims.as_bytes()));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs256(claims: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        signed_with("HS256", claims, |m| hmac::sign(&key, m).as_ref().to_vec())
    }

    fn verifier() -> Verifier {
        Verifier::from_secret(SECRET)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn hs256_claims_and_grants() {
        let token = hs256(r#"{"sub":"dev-1","exp":1800000100,"subscribe":["news","sensors.*","*"],"publish":["a"]}"#);
        let claims = verifier().verify(&token, NOW).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("dev-1"));
        assert_eq!(claims.expires, Some(1_800_000_130), "expiry includes the leeway");
        assert!(claims.publish.covers("a") && !claims.publish.covers("ab") && !claims.publish.covers("b"));
        assert!(claims.subscribe.covers("anything"));
        assert_eq!(verifier().verify(&hs256("{}"), NOW).unwrap().publish, Grant::default(), "absent: nothing");
    }

    #[test]
    fn time_claims_with_leeway() {
        let v = verifier();
        assert!(v.verify(&hs256(r#"{"exp":1799999980}"#), NOW).is_ok(), "within leeway");
        assert_eq!(v.verify(&hs256(r#"{"exp":1799999960}"#), NOW), Err("token expired"));
        assert!(v.verify(&hs256(r#"{"nbf":1800000020}"#), NOW).is_ok(), "within leeway");
        assert_eq!(v.verify(&hs256(r#"{"nbf":1800000040}"#), NOW), Err("token not yet valid (nbf)"));
        assert!(v.verify(&hs256(r#"{"exp":"tomorrow"}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"exp":1.8e9}"#), NOW).is_ok(), "NumericDate may be fractional");
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = Verifier { issuer: Some("me".into()), audience: Some("hub".into()), ..verifier() };
        assert!(v.verify(&hs256(r#"{"iss":"me","aud":"hub"}"#), NOW).is_ok());
        assert!(v.verify(&hs256(r#"{"iss":"me","aud":["x","hub"]}"#), NOW).is_ok());
        assert!(v.verify(&hs256(r#"{"iss":"me","aud":["x"]}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"iss":"you","aud":"hub"}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"aud":"hub"}"#), NOW).is_err());
    }

    #[test]
    fn refuses_forgeries_and_confusion() {
        let v = verifier();
        let good = hs256(r#"{"sub":"a"}"#);
        assert!(v.verify(&good, NOW).is_ok());
        let [h, p, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
        // alg none, with or without a signature.
        let none_header = b64url(br#"{"alg":"none"}"#);
        assert_eq!(v.verify(&format!("{none_header}.{p}."), NOW), Err("algorithm not accepted"));
        assert_eq!(v.verify(&format!("{none_header}.{p}.{s}"), NOW), Err("algorithm not accepted"));
        // Tampered payload, tampered signature, truncated, extra part.
        let other = b64url(br#"{"sub":"b"}"#);
        assert_eq!(v.verify(&format!("{h}.{other}.{s}"), NOW), Err("bad signature"));
        let mut sig = s.to_string();
        let last = if sig.ends_with('A') { "E" } else { "A" };
        sig.replace_range(sig.len() - 1.., last);
        assert!(v.verify(&format!("{h}.{p}.{sig}"), NOW).is_err());
        assert!(v.verify(&format!("{h}.{p}"), NOW).is_err());
        assert!(v.verify(&format!("{good}.x"), NOW).is_err());
        assert!(v.verify("", NOW).is_err());
        // Other algorithms, and ES256/EdDSA without a public key.
        for alg in ["HS384", "RS256", "PS256", "hs256", "ES256", "EdDSA"] {
            let forged =
                signed_with(alg, "{}", |m| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET), m).as_ref().to_vec());
            assert!(v.verify(&forged, NOW).is_err(), "{alg}");
        }
        // crit, and malformed claims.
        let crit = signed_with("HS256", "{}", |_| Vec::new())
            .replace(&b64url(br#"{"alg":"HS256","typ":"JWT"}"#), &b64url(br#"{"alg":"HS256","crit":["exp"]}"#));
        assert_eq!(v.verify(&crit, NOW), Err("critical header extensions are not supported"));
        assert!(v.verify(&hs256("[1]"), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"subscribe":"a"}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"subscribe":["a*b"]}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"publish":[""]}"#), NOW).is_err());
        assert!(v.verify(&hs256(r#"{"sub":1}"#), NOW).is_err());
    }

    /// The SubjectPublicKeyInfo prefix of each key type, for building PEM
    /// files from `ring`'s raw public keys.
    pub const ED25519_SPKI_PREFIX: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    pub const P256_SPKI_PREFIX: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    #[test]
    fn es256_and_eddsa_with_rotation() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec =
            EcdsaKeyPair::from_pkcs8(alg, EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap().as_ref(), &rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let old_ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let spki = |prefix: &[u8], key: &[u8]| [prefix, key].concat();
        let mut public = Vec::new();
        for der in [
            spki(ED25519_SPKI_PREFIX, old_ed.public_key().as_ref()),
            spki(P256_SPKI_PREFIX, ec.public_key().as_ref()),
            spki(ED25519_SPKI_PREFIX, ed.public_key().as_ref()),
        ] {
            public.push(parse_spki(&der).unwrap());
        }
        let v = Verifier { hmac: None, public, ..verifier() };
        let es = signed_with("ES256", r#"{"sub":"ec"}"#, |m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        assert_eq!(v.verify(&es, NOW).unwrap().sub.as_deref(), Some("ec"));
        for key in [&ed, &old_ed] {
            let token = signed_with("EdDSA", r#"{"sub":"ed"}"#, |m| key.sign(m).as_ref().to_vec());
            assert!(v.verify(&token, NOW).is_ok(), "either key of a rotation verifies");
        }
        // Algorithm confusion: an EdDSA signature labelled ES256, and an HS256
        // token "signed" with a public key's bytes as the secret.
        let mislabelled = signed_with("ES256", "{}", |m| ed.sign(m).as_ref().to_vec());
        assert!(v.verify(&mislabelled, NOW).is_err());
        let confused = signed_with("HS256", "{}", |m| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, ed.public_key().as_ref()), m).as_ref().to_vec()
        });
        assert_eq!(v.verify(&confused, NOW), Err("HS256 token, but no --jwt-secret-file"));
        // A wrong key.
        let stranger = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let token = signed_with("EdDSA", "{}", |m| stranger.sign(m).as_ref().to_vec());
        assert_eq!(v.verify(&token, NOW), Err("bad signature"));
    }

    #[test]
    fn a_header_is_bounded_before_it_is_parsed() {
        // 600 members: a quadratic duplicate check made this cost 23x an
        // upgrade, before any signature was looked at.
        let members: Vec<String> = (0..600).map(|i| format!("\"m{i}\":0")).collect();
        let header = b64url(format!("{{\"alg\":\"HS256\",{}}}", members.join(",")).as_bytes());
        let token = format!("{header}.{}.{}", b64url(b"{}"), b64url(&[0; 32]));
        assert_eq!(verifier().verify(&token, NOW), Err("header too long"));
        // Within the bound, a duplicate is still found.
        let twice = b64url(br#"{"alg":"HS256","typ":"JWT","alg":"none"}"#);
        let token = format!("{twice}.{}.{}", b64url(b"{}"), b64url(&[0; 32]));
        assert_eq!(verifier().verify(&token, NOW), Err("header is not JSON"));
    }

    #[test]
    fn es256_signatures_verify_in_either_s_form() {
        // ECDSA's (r, s) and (r, n - s) both verify. Mainstream signers
        // (OpenSSL, Go, WebCrypto, ring) do not normalise s, so refusing the
        // high form would refuse about half of their tokens; the hub keys
        // nothing by a token's bytes, so a second spelling gains nothing:
        // same claims, same expiry. This pins that decision.
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6,
            0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
        ];
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec =
            EcdsaKeyPair::from_pkcs8(alg, EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap().as_ref(), &rng).unwrap();
        let public = vec![parse_spki(&[P256_SPKI_PREFIX, ec.public_key().as_ref()].concat()).unwrap()];
        let v = Verifier { hmac: None, public, ..verifier() };
        let sig = std::cell::RefCell::new(Vec::new());
        let token = signed_with("ES256", r#"{"sub":"s","exp":2000000000}"#, |m| {
            *sig.borrow_mut() = ec.sign(&rng, m).unwrap().as_ref().to_vec();
            sig.borrow().clone()
        });
        let mut other = sig.borrow().clone();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(N[i]) - i16::from(other[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            other[32 + i] = d.rem_euclid(256) as u8;
        }
        let (head, _) = token.rsplit_once('.').unwrap();
        let respelled = format!("{head}.{}", b64url(&other));
        assert_ne!(respelled, token);
        assert_eq!(v.verify(&respelled, NOW), v.verify(&token, NOW));
        assert!(v.verify(&token, NOW).is_ok());
    }

    #[test]
    fn a_pem_key_is_not_an_hmac_secret() {
        let path = std::env::temp_dir().join(format!("wshub-jwt-pem-secret-{}", std::process::id()));
        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAIjMY0socwbtW1U1HsGwQb30yO++0pulk82Ux3r52W2I=\n-----END PUBLIC KEY-----\n").unwrap();
        let err = load_secret(&path).err().unwrap();
        assert!(err.contains("PEM key"), "{err}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn public_key_files_from_openssl() {
        // `openssl genpkey -algorithm ed25519 | openssl pkey -pubout`
        let ed = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAIjMY0socwbtW1U1HsGwQb30yO++0pulk82Ux3r52W2I=\n-----END PUBLIC KEY-----\n";
        assert_eq!(parse_public_key_pem(ed).unwrap().kind, KeyKind::Ed25519);
        // `openssl ecparam -name prime256v1 -genkey | openssl ec -pubout`
        let ec = b"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBEuBW+kG/T6RqrIKt7GwuJMBmXCz
x1PxkOlZ0LX6bzdjsve26byCWX66nIJ7XOTp2mlj6DHklAwtxqM6v4fj8w==
-----END PUBLIC KEY-----
";
        assert_eq!(parse_public_key_pem(ec).unwrap().kind, KeyKind::P256);
        // An RSA key, a private key, garbage.
        let rsa = b"-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0L3ZxMaLufzmQ0mO55jpRkHwe
/hormHoK0sfbJkyGsBpcqUALYDMYC46/q7EjI11aHyFwDlGUl6QK1sZOdOSWRu9r
1DqJ89roEbkDyl0HbBKVobIPCifIMPqOC/u48CNAIVcwAggQMFB3DWJsbW55/sgy
TiVXr60nCNaeMQZ6vwIDAQAB
-----END PUBLIC KEY-----
";
        assert_eq!(parse_public_key_pem(rsa).err(), Some("not a P-256 or Ed25519 public key"));
        assert!(parse_public_key_pem(b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n").is_err());
        assert!(parse_public_key_pem(b"-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n").is_err());
        assert!(parse_spki(&[0x30, 0x82, 0xff]).is_err());
    }
}
