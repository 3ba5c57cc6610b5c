//! One connection's state machine: any bytes after any of a few starts
//! (nothing, an upgrade, one that negotiates compression, an event stream
//! with a resume, a publish head), split anywhere, with deadlines and
//! writes in between, never panic and never stop making progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::Config;
use wshub::testing::{Action, Admission, Connection, Context, Inflater, MessageId};

const STARTS: [&[u8]; 5] = [
    b"",
    b"GET /ws?topic=a&topic=b HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /ws?last=3 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    b"GET /sse?topic=a HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 1f-2\r\n\r\n",
    b"POST /publish/t HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\n",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let config = Config { max_message_size: 4096, queue_messages: 8, queue_bytes: 4096, ..Config::default() };
    let admission = Admission::new();
    let inflater = Inflater::default();
    let mut conn = Connection::new(0, ([127, 0, 0, 1], 1).into());
    let mut bytes = STARTS[usize::from(data[0]) % STARTS.len()].to_vec();
    bytes.extend_from_slice(&data[2..]);
    let step = 1 + usize::from(data[1] % 64);
    let mut now = 0;
    let mut out = Vec::new();
    let mut cork = Vec::new();
    for chunk in bytes.chunks_mut(step) {
        now += 7;
        let ctx = Context { config: &config, now, admission: &admission, inflater: &inflater };
        let mut pos = 0;
        while pos < chunk.len() {
            let (used, action) = conn.receive(&mut chunk[pos..], &ctx);
            assert!(used > 0 || !matches!(action, Action::Nothing), "no progress");
            pos += used;
            if let Action::Publish(..) = action {
                conn.published(1, MessageId { epoch: 1, seq: 1 }, now);
            }
        }
        if now % 3 == 0 {
            let _ = conn.transmit(&mut out, &mut cork, now);
        }
        let _ = conn.tick(&ctx);
    }
    let ctx = Context { config: &config, now: now + 100_000, admission: &admission, inflater: &inflater };
    let _ = conn.tick(&ctx);
    let _ = conn.shut_down(&ctx);
    let _ = conn.transmit(&mut out, &mut cork, now);
});
