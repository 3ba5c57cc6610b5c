//! Streaming UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1 lets an endpoint fail a text message as soon as it sees an
//! invalid byte, and Autobahn 6.4.x checks that it does so before the rest of
//! the message arrives. So the validator is fed every chunk as it is read (a
//! TCP segment, a fragment) and remembers at most three bytes of a code point
//! cut in half. The standard library's validator already reports an invalid
//! prefix at the first byte that cannot continue it, so we lean on it.

/// Incremental validator. `Default` is the state at the start of a message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// Bytes of a code point that started but has not finished yet.
    pending: [u8; 4],
    pending_len: u8,
}

/// The bytes seen so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates the next piece of the message.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), InvalidUtf8> {
        // First finish a code point left over from the previous chunk.
        while self.pending_len > 0 {
            let Some((&byte, rest)) = chunk.split_first() else {
                return Ok(());
            };
            chunk = rest;
            self.pending[usize::from(self.pending_len)] = byte;
            self.pending_len += 1;
            match std::str::from_utf8(&self.pending[..usize::from(self.pending_len)]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {} // still a valid prefix: wait for the next byte
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &chunk[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Checks that the message does not end inside a code point, and resets.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> bool {
        let mut v = Utf8Validator::default();
        v.feed(bytes).is_ok() && v.finish().is_ok()
    }

    fn split_everywhere(bytes: &[u8]) -> Vec<bool> {
        (0..=bytes.len())
            .map(|i| {
                let mut v = Utf8Validator::default();
                v.feed(&bytes[..i]).is_ok() && v.feed(&bytes[i..]).is_ok() && v.finish().is_ok()
            })
            .collect()
    }

    #[test]
    fn agrees_with_std_at_every_split_point() {
        let samples: &[&[u8]] = &[
            b"hello",
            "κόσμε".as_bytes(),
            "𝄞 music €".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"abc\xff",
            b"\xf0\x9f\x98",
            b"",
        ];
        for s in samples {
            let expected = std::str::from_utf8(s).is_ok();
            assert_eq!(whole(s), expected, "{s:?}");
            for (i, ok) in split_everywhere(s).into_iter().enumerate() {
                assert_eq!(ok, expected, "{s:?} split at {i}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_fails_on_the_first_impossible_byte() {
        // U+110000 and above: 0xF4 may only be followed by 0x80..=0x8F.
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"ok").is_ok());
        assert!(v.feed(b"\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));

        // A UTF-16 surrogate (ED A0..BF) fails at its second byte.
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"\xed").is_ok());
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_code_point_fails_at_finish() {
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"\xe2\x82").is_ok());
        assert_eq!(v.finish(), Err(InvalidUtf8));
        // and finish resets for the next message
        assert!(v.feed(b"fine").is_ok());
        assert!(v.finish().is_ok());
    }
}
