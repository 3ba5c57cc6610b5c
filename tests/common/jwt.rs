//! Minting tokens in tests, by hand from RFC 7515/7519 with `ring`: the way
//! an issuer would, without the hub's own code.

use ring::hmac;

/// Base64url without padding (RFC 4648 §5).
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

/// `header.payload.signature` with `alg` in the header, signed by `sign`.
pub fn token(alg: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    let input = format!("{}.{}", b64url(header.as_bytes()), b64url(claims.as_bytes()));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

/// An HS256 token over `claims` with `secret`.
pub fn hs256_with(secret: &[u8], claims: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    token("HS256", claims, |m| hmac::sign(&key, m).as_ref().to_vec())
}
