//! Base64 decoding (RFC 4648) for tokens and key files: the URL-safe
//! alphabet without padding for JWS parts (RFC 7515 §2), the standard one
//! with padding and line breaks for PEM.
//!
//! Strict where a token is concerned: a symbol whose unused low bits are not
//! zero is refused, so every token has exactly one spelling and a changed
//! last symbol never decodes to the same signature.

/// Decodes a JWS part: URL-safe alphabet, no padding, no whitespace.
pub fn decode_url(input: &[u8]) -> Option<Vec<u8>> {
    decode(input.iter().copied(), url_value)
}

/// Decodes a PEM body: standard alphabet; whitespace is skipped and
/// padding is accepted at the end.
pub fn decode_pem(input: &[u8]) -> Option<Vec<u8>> {
    let unpadded = input.trim_ascii_end();
    let unpadded = unpadded.strip_suffix(b"==").or_else(|| unpadded.strip_suffix(b"=")).unwrap_or(unpadded);
    decode(unpadded.iter().copied().filter(|b| !b.is_ascii_whitespace()), standard_value)
}

fn url_value(b: u8) -> Option<u32> {
    match b {
        b'-' => Some(62),
        b'_' => Some(63),
        _ => common_value(b),
    }
}

fn standard_value(b: u8) -> Option<u32> {
    match b {
        b'+' => Some(62),
        b'/' => Some(63),
        _ => common_value(b),
    }
}

fn common_value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some((b - b'A') as u32),
        b'a'..=b'z' => Some((b - b'a') as u32 + 26),
        b'0'..=b'9' => Some((b - b'0') as u32 + 52),
        _ => None,
    }
}

fn decode(symbols: impl Iterator<Item = u8>, value: fn(u8) -> Option<u32>) -> Option<Vec<u8>> {
    let (lower, _) = symbols.size_hint();
    let mut out = Vec::with_capacity(lower * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0; // bits held
    for symbol in symbols {
        bits = (bits << 6) | value(symbol)?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    // 0, 2 or 4 bits may be left over, and must be zero; 6 means one symbol
    // too many (a length of 4n+1 symbols).
    (count < 6 && bits == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let cases: [(&str, &str); 7] = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(decode_url(encoded.as_bytes()).as_deref(), Some(plain.as_bytes()), "{encoded}");
        }
        assert_eq!(decode_pem(b"Zm9v\nYg==\n").as_deref(), Some(&b"foob"[..]));
        assert_eq!(decode_pem(b"Zm9vYmE=").as_deref(), Some(&b"fooba"[..]));
    }

    #[test]
    fn alphabets_are_not_mixed() {
        assert_eq!(decode_url(b"-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_url(b"+/8"), None);
        assert_eq!(decode_pem(b"+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_pem(b"-_8="), None);
    }

    #[test]
    fn refuses_padding_whitespace_and_non_canonical_endings_in_tokens() {
        assert_eq!(decode_url(b"Zg=="), None);
        assert_eq!(decode_url(b"Zm 9v"), None);
        assert_eq!(decode_url(b"Zh"), None, "'h' leaves non-zero unused bits");
        assert_eq!(decode_url(b"Zm9vY"), None, "4n+1 symbols");
    }
}
