//! The HTTP request head parser: any bytes, fed whole and at every prefix,
//! never panic, and a complete head never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::testing::{http_head_complete, http_plausible_start, parse_request};

fuzz_target!(|data: &[u8]| {
    let _ = http_plausible_start(data);
    if let Ok(Some(head)) = parse_request(data) {
        let len = head.len;
        assert!(len <= data.len());
        // The cheap end-of-head scan must have noticed what httparse found.
        assert!(http_head_complete(&data[..len], 0), "head end not noticed");
    }
    // Incremental scanning, as a connection does it, agrees with one pass.
    let mut scanned = 0;
    let mut noticed = false;
    for end in (1..=data.len()).step_by(7) {
        noticed |= http_head_complete(&data[..end], scanned);
        scanned = end;
    }
    if !noticed && !data.is_empty() {
        noticed = http_head_complete(data, scanned);
    }
    assert_eq!(noticed, http_head_complete(data, 0));
});
