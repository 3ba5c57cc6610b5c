//! Hot-path discipline: a broadcast allocates its one shared frame, and
//! nothing per receiver. Counted with a global allocator in this test binary
//! (its only test, so no other thread allocates meanwhile).

use std::sync::atomic::Ordering;

use wshub::Config;
use wshub::connection::{Action, Connection, Context};
use wshub::frame::{self, MessageKind};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::ALLOCATIONS;

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Allocations made by broadcasting `rounds` messages to `receivers` open
/// connections and writing them out, after a warm-up.
fn allocations_per_broadcast(receivers: usize) -> f64 {
    let config = Config::default();
    let ctx = Context { config: &config, now: 0, at_capacity: false };
    let mut cork = Vec::with_capacity(wshub::send_queue::CORK_BYTES);
    let mut sink = std::io::sink();
    let mut conns: Vec<Connection> = (0..receivers)
        .map(|_| {
            let mut conn = Connection::new(0, true);
            let _ = conn.receive(&mut UPGRADE.to_vec(), &ctx);
            conn.queue.write_to(&mut sink, &mut cork).unwrap();
            conn
        })
        .collect();
    let mut broadcast = |payload: &[u8]| {
        let frame = frame::encode_message(MessageKind::Binary, payload);
        for conn in conns.iter_mut() {
            assert!(matches!(conn.enqueue(frame.clone(), &ctx), Action::Nothing));
        }
        for conn in conns.iter_mut() {
            conn.queue.write_to(&mut sink, &mut cork).unwrap();
        }
    };
    for _ in 0..3 {
        broadcast(b"warm-up: queues reach their steady capacity");
    }
    let rounds = 50;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..rounds {
        broadcast(&[i as u8; 64]);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / rounds as f64
}

#[test]
fn a_broadcast_allocates_one_frame_whatever_the_number_of_receivers() {
    for receivers in [1, 100, 2000] {
        assert_eq!(allocations_per_broadcast(receivers), 1.0, "{receivers} receivers");
    }
}
