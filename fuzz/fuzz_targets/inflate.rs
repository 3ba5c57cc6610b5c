//! Frames from a client that negotiated permessage-deflate, then the
//! shared inflater on every compressed message: any bytes, split anywhere,
//! give the same messages and errors as the whole input, nothing inflates
//! past the size limit, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::testing::{Event, FrameDecoder, Inflater};

/// What a run produced, as owned values for comparing two runs.
fn run(inflater: &Inflater, input: &[u8], splits: &[usize], max: usize) -> (Vec<String>, Option<String>) {
    let mut decoder = FrameDecoder::new(true);
    let mut seen = Vec::new();
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
                    match decoded.event {
                        Some(Event::Compressed(kind, payload)) => {
                            let inflated = inflater.inflate(payload, max, |plain| {
                                assert!(plain.len() <= max, "inflated past the limit");
                                (
                                    plain.len(),
                                    plain.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
                                )
                            });
                            seen.push(format!("{kind:?} {inflated:?}"));
                        }
                        Some(event) => seen.push(format!("{event:?}")),
                        None => {}
                    }
                }
                Err(e) => return (seen, Some(format!("{e:?}"))),
            }
        }
        start = cut;
    }
    (seen, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (header, input) = data.split_at(4);
    let max = 1 + usize::from(u16::from_le_bytes([header[0], header[1]]));
    let splits: Vec<usize> = input.iter().take(usize::from(header[2] % 16)).map(|&b| usize::from(b) * 3).collect();
    let inflater = Inflater::default();
    let whole = run(&inflater, input, &[], max);
    // The same inflater again: it must be reset between messages.
    let split = run(&inflater, input, &splits, max);
    assert_eq!(whole, split, "splitting the input changed the result");
});
