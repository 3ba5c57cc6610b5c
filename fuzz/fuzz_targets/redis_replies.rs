//! What Redis sends, as the bridge reads it: any bytes, split anywhere and
//! delivered a small budget at a time, give the same messages and the same
//! verdict on the link as the whole input at once, with nothing buffered
//! past the size bound once the budget let it through, and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::RedisUrl;
use wshub::testing::{Bridge, Role};

const MAX_MESSAGE: usize = 256;

fn read_all(input: &[u8], splits: &[usize], role: Role, per_turn: usize) -> (Vec<String>, bool) {
    let url = RedisUrl::parse("redis://127.0.0.1").unwrap();
    let mut bridge = Bridge::new(url, "wshub:", 1, 4096, MAX_MESSAGE);
    for link in [Role::Subscriber, Role::Publisher] {
        assert!(bridge.connect_due(link, 0));
        let n = bridge.transmit(link).len();
        bridge.sent(link, n);
        bridge.received(link, b"+PONG\r\n", 0, &mut { usize::MAX }, &mut |_| panic!("no message yet"));
        assert!(bridge.is_up(link));
    }
    let mut heard = Vec::new();
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts {
        if cut <= start {
            continue;
        }
        let mut deliver = |m: wshub::testing::Incoming<'_>| {
            assert!(m.payload.len() <= MAX_MESSAGE, "over --max-message-size");
            heard.push(format!("{} {:?} {:?}", m.topic, m.kind, m.payload));
            1
        };
        let mut budget = per_turn;
        bridge.received(role, &input[start..cut], 1, &mut budget, &mut deliver);
        // Later turns go on with what the budget left, before new bytes.
        while bridge.is_paused(role) {
            let mut budget = per_turn;
            bridge.received(role, &[], 1, &mut budget, &mut deliver);
        }
        // An incomplete reply is held only up to the bound.
        assert!(bridge.buffered_bytes() <= MAX_MESSAGE + 2048, "{}", bridge.buffered_bytes());
        start = cut;
    }
    (heard, bridge.is_down(role))
}

fuzz_target!(|data: &[u8]| {
    let Some((&header, input)) = data.split_first() else { return };
    let role = if header & 1 == 0 { Role::Subscriber } else { Role::Publisher };
    let splits: Vec<usize> = input.iter().take(usize::from(header >> 4)).map(|&b| usize::from(b) * 5).collect();
    let per_turn = 1 + usize::from(header >> 1 & 7);
    let whole = read_all(input, &[], role, usize::MAX);
    let split = read_all(input, &splits, role, per_turn);
    assert_eq!(whole, split, "splitting the input changed the result");
});
