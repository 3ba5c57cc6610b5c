//! Token verification and the JSON reader behind it: any bytes, as a token
//! or as JSON, are refused or accepted without a panic; a random token never
//! verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::testing::{Verifier, parse_json};

fuzz_target!(|data: &[u8]| {
    let _ = parse_json(data);
    if let Ok(token) = std::str::from_utf8(data) {
        let verifier = Verifier::from_secret(b"fuzzing secret, at least 32 bytes long");
        assert!(verifier.verify(token, 1_800_000_000).is_err(), "a forged token verified");
    }
});
