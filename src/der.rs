//! Just enough DER (X.690) to read what the hub needs from certificates and
//! keys: a certificate's subject (TLS client certificates) and a public
//! key's algorithm and bits (JWT keys). Definite lengths up to 64 KiB only,
//! as DER requires for anything this small; anything else is `None`.

/// A cursor over a sequence of DER elements.
#[derive(Debug, Clone, Copy)]
pub struct Der<'a>(pub &'a [u8]);

impl<'a> Der<'a> {
    /// The contents of the next element, which must carry `tag`.
    pub fn take(&mut self, tag: u8) -> Option<&'a [u8]> {
        if *self.0.first()? != tag {
            return None;
        }
        self.any()
    }

    /// The contents of the next element, whatever its tag.
    pub fn any(&mut self) -> Option<&'a [u8]> {
        let [_, first, rest @ ..] = self.0 else { return None };
        let (len, rest) = match *first {
            n if n < 0x80 => (usize::from(n), rest),
            0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
            0x82 => (usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?), rest.get(2..)?),
            _ => return None,
        };
        let contents = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(contents)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tag of the next element, if any.
    #[cfg(feature = "tls")]
    pub fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }
}

/// The subject of an X.509 certificate as `CN=…, O=…, OU=…` (the
/// attributes a device fleet names its devices by): Certificate →
/// tbsCertificate → its sixth field. Values are shown as they are; the
/// logger escapes control characters.
#[cfg(feature = "tls")]
pub fn certificate_subject(cert: &[u8]) -> Option<String> {
    let mut outer = Der(cert);
    let mut tbs = Der(Der(outer.take(0x30)?).take(0x30)?);
    if tbs.peek_tag() == Some(0xa0) {
        tbs.take(0xa0)?; // version
    }
    tbs.take(0x02)?; // serial number
    tbs.take(0x30)?; // signature algorithm
    tbs.take(0x30)?; // issuer
    tbs.take(0x30)?; // validity
    let mut name = Der(tbs.take(0x30)?);
    let mut parts = Vec::new();
    while !name.is_empty() {
        let mut set = Der(name.take(0x31)?);
        while !set.is_empty() {
            let mut pair = Der(set.take(0x30)?);
            let label = match pair.take(0x06)? {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            let value = pair.any()?;
            parts.push(format!("{label}={}", String::from_utf8_lossy(value)));
        }
    }
    Some(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tls")]
    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256
    ///  -nodes -subj "/O=Fleet/OU=Sensors/CN=device-17"`, as DER (base64).
    const DEVICE_CERT: &str = "MIIBwTCCAWegAwIBAgIUY32oZt5WCOKlr3TbZeOoJMdso8MwCgYIKoZIzj0EAwIwNjEOMAwGA1UECgwFRmxlZXQxEDAOBgNVBAsMB1NlbnNvcnMxEjAQBgNVBAMMCWRldmljZS0xNzAeFw0yNjExMjYwMjM5MzZaFw0zNjExMjMwMjM5MzZaMDYxDjAMBgNVBAoMBUZsZWV0MRAwDgYDVQQLDAdTZW5zb3JzMRIwEAYDVQQDDAlkZXZpY2UtMTcwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQlN4d2ThJ3i+OFBliOpnWmixPDQ+Q1CJQjcawKR7N5vCijagbUEhP1qhZAISXam1ddsSwAugeBWYYnKP6RPrSRo1MwUTAdBgNVHQ4EFgQUkYX5E+DgjP6mnngZrJlxaNgJroowHwYDVR0jBBgwFoAUkYX5E+DgjP6mnngZrJlxaNgJroowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAhVJOVyGvJEMmmOUf6srJmn0txrGQka7mMSnUWaqwXTECID5XZ7do+Q8RWhT++b4jZ9+B2UI+niccUPvIMhifxRaQ";

    #[cfg(feature = "tls")]
    fn decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for b in text.bytes().filter(|&b| b != b'=') {
            acc = acc << 6 | ALPHABET.iter().position(|&a| a == b).unwrap() as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    #[cfg(feature = "tls")]
    #[test]
    fn reads_the_subject_of_a_real_certificate() {
        let der = decode(DEVICE_CERT);
        assert_eq!(certificate_subject(&der).as_deref(), Some("O=Fleet, OU=Sensors, CN=device-17"));
        for cut in 0..der.len() {
            let _ = certificate_subject(&der[..cut]); // never panics on a prefix
        }
        assert_eq!(certificate_subject(&[0x30, 0x00]), None, "truncated input is refused, not a panic");
    }

    #[test]
    fn lengths_short_and_long_and_truncated() {
        let mut der = Der(&[0x04, 0x02, 0xaa, 0xbb, 0x05, 0x00]);
        assert_eq!(der.take(0x04), Some(&[0xaa, 0xbb][..]));
        assert_eq!(der.take(0x04), None, "wrong tag");
        assert_eq!(der.any(), Some(&[][..]));
        assert!(der.is_empty());
        let long = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        assert_eq!(Der(&long).take(0x04).map(<[u8]>::len), Some(0x80));
        assert_eq!(Der(&long[..50]).take(0x04), None);
        assert_eq!(Der(&[0x04, 0x83, 0, 0, 1]).any(), None, "lengths over 64 KiB are refused");
    }
}
