//! The frame decoder: any bytes, split anywhere, decode to the same events
//! (or the same error) as the whole input, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::testing::FrameDecoder;

/// Events as owned values, for comparing two runs.
fn decode_all(input: &[u8], splits: &[usize], max: usize) -> (Vec<String>, Option<String>) {
    let mut decoder = FrameDecoder::default();
    let mut events = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    for cut in cuts {
        if cut <= start {
            continue;
        }
        let mut chunk = input[start..cut].to_vec();
        let mut pos = 0;
        while pos < chunk.len() {
            match decoder.decode(&mut chunk[pos..], max) {
                Ok(decoded) => {
                    assert!(decoded.consumed > 0 || decoded.event.is_some(), "no progress");
                    pos += decoded.consumed;
                    if let Some(event) = decoded.event {
                        events.push(format!("{event:?}"));
                    }
                }
                Err(e) => return (events, Some(format!("{e:?}"))),
            }
        }
        start = cut;
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (header, input) = data.split_at(4);
    let max = 1 + usize::from(u16::from_le_bytes([header[0], header[1]]));
    let splits: Vec<usize> = input.iter().take(usize::from(header[2] % 16)).map(|&b| usize::from(b) * 3).collect();
    let whole = decode_all(input, &[], max);
    let split = decode_all(input, &splits, max);
    assert_eq!(whole, split, "splitting the input changed the result");
});
