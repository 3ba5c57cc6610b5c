//! Micro-benchmarks of the hot pure functions, and the cost of the deadlines
//! of 20,000 idle connections. `cargo bench --bench micro` prints a table of
//! medians over repeated runs (a shared, noisy machine: look at medians).
//!
//! A counting global allocator also reports allocations per broadcast, which
//! must not grow with the number of receivers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wshub::testing::{
    Admission, Connection, Context, FrameDecoder, Hub, Inflater, MemoryTransport, MessageKind, encode_client,
    encode_message, parse_request,
};
use wshub::{Config, Topic};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::thread_allocations;

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\r\n";

/// Median of `runs` timings of `f`, each doing `iters` iterations.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    times[runs / 2]
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_client(first, payload, [0xa1, 0xb2, 0xc3, 0xd4])
}

/// A hub with `n` open clients on topic `all`, on sink transports.
fn hub_with_clients(n: usize) -> Hub<MemoryTransport> {
    let mut hub = Hub::new(Config { max_connections: n, ..Config::default() });
    for i in 0..n {
        let peer = ([127, 0, 0, 1], (i % 60_000) as u16 + 1).into();
        let id = hub.insert(MemoryTransport::sink(), peer, 0);
        hub.receive(id, &mut UPGRADE.to_vec(), 0);
    }
    hub.flush(0);
    assert_eq!(hub.stats().open, n as u64);
    hub
}

fn main() {
    println!("| benchmark | median |");
    println!("| --- | --- |");

    // Frame decoding: unmask + UTF-8 validation, whole frames in the buffer.
    for (label, size, count) in [("64 KiB text frames", 65536usize, 16usize), ("64 B text frames", 64, 16384)] {
        let unit = "wshub décode ";
        let mut payload = unit.repeat(size / unit.len()).into_bytes();
        payload.resize(size, b'x');
        let mut stream = Vec::new();
        for _ in 0..count {
            stream.extend(masked(0x81, &payload));
        }
        let original = stream.clone();
        let bytes = (size * count) as f64;
        let t = median(21, || {
            stream.copy_from_slice(&original);
            let mut decoder = FrameDecoder::default();
            let start = Instant::now();
            let mut pos = 0;
            while pos < stream.len() {
                let d = decoder.decode(&mut stream[pos..], 1 << 20).unwrap();
                pos += d.consumed;
                black_box(d.event);
            }
            start.elapsed()
        });
        println!("| decode {label} (unmask + UTF-8) | {:.2} GB/s |", bytes / t.as_secs_f64() / 1e9);
    }

    // Handshake parsing.
    let iters = 20_000;
    let t = median(11, || {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(parse_request(black_box(UPGRADE)).unwrap());
        }
        start.elapsed()
    });
    println!(
        "| parse + validate an upgrade request ({} B) | {:.0} ns |",
        UPGRADE.len(),
        t.as_nanos() as f64 / iters as f64
    );

    // A publish through the hub's fan-out to N receivers, then the
    // end-of-turn write of every receiver's queue (into sink transports).
    let all = Topic::new("all").unwrap();
    for receivers in [100usize, 1000, 10_000] {
        let mut hub = hub_with_clients(receivers);
        hub.publish(&all, encode_message(MessageKind::Text, b"warm"), 0);
        hub.flush(0);
        let rounds = 20;
        let mut allocated = 0;
        let t = median(rounds, || {
            let before = thread_allocations();
            let frame = encode_message(MessageKind::Text, &[b'x'; 64]);
            let start = Instant::now();
            hub.publish(&all, frame, 0);
            hub.flush(0);
            let elapsed = start.elapsed();
            allocated += thread_allocations() - before;
            elapsed
        });
        let allocations = allocated as f64 / rounds as f64;
        println!(
            "| publish one 64 B message to {receivers} receivers and write it out | {:.1} ns per receiver, {allocations:.1} allocations per broadcast |",
            t.as_nanos() as f64 / receivers as f64
        );
    }

    // Deadlines: 20,000 idle connections for a minute (their ping, the
    // housekeeping each second), as the loop wakes for them.
    let n = 20_000;
    let mut hub = hub_with_clients(n);
    let (mut now, mut wakeups) = (0, 0);
    let start = Instant::now();
    while now < 60_000 {
        now = hub.poll_timeout().unwrap_or(60_000).max(now + 1);
        hub.handle_timeout(now);
        hub.flush(now);
        wakeups += 1;
    }
    let t = start.elapsed();
    println!(
        "| deadlines of {n} idle connections over a minute (one ping each) | {:.0} µs per second of it ({:.3}% of a core), {wakeups} wake-ups |",
        t.as_secs_f64() * 1e6 / 60.0,
        t.as_secs_f64() * 100.0 / 60.0
    );
    let config = Config::default();
    let admission = Admission::new();
    let inflater = Inflater::default();
    let ctx = Context { config: &config, now: 0, admission: &admission, inflater: &inflater };
    let mut conn = Connection::new(0, ([127, 0, 0, 1], 1).into());
    let _ = conn.receive(&mut UPGRADE.to_vec(), &ctx);
    black_box(&conn);
    println!("\nsize of one connection's state: {} bytes", std::mem::size_of::<Connection>());
}
