//! Hot-path discipline: a broadcast allocates its one shared frame, and
//! nothing per receiver, through the hub's real fan-out path (subscriptions,
//! queues, the half-full rule, the end-of-turn gathering write). Counted with
//! a global allocator in this test binary, on the test's own thread (the
//! harness' thread may allocate meanwhile on a loaded machine: seen in CI).

use wshub::testing::{Hub, MemoryTransport, MessageKind, encode_client, encode_message};
use wshub::{Config, Topic};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::thread_allocations;

const UPGRADE: &[u8] = b"GET /ws?topic=t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Allocations per message sent by a client (the first receiver) and per
/// message published by the application, to `receivers` open clients.
fn allocations_per_broadcast(receivers: usize) -> (f64, f64) {
    let mut hub: Hub<MemoryTransport> = Hub::new(Config::default());
    let ids: Vec<usize> = (0..receivers)
        .map(|i| {
            let peer = ([127, 0, 0, 1], 10_000 + i as u16).into();
            let id = hub.insert(MemoryTransport::sink(), peer, 0);
            hub.receive(id, &mut UPGRADE.to_vec(), 0);
            id
        })
        .collect();
    hub.flush(0);
    let topic = Topic::new("t").unwrap();
    let sender = ids[0];
    let from_client = |hub: &mut Hub<MemoryTransport>, i: u8| {
        let mut bytes = encode_client(0x82, &[i; 64], [1, 2, 3, 4]);
        hub.receive(sender, &mut bytes, 0);
        hub.flush(0);
        bytes
    };
    let published = |hub: &mut Hub<MemoryTransport>, i: u8| {
        hub.publish(&topic, encode_message(MessageKind::Binary, &[i; 64]), 0);
        hub.flush(0);
    };
    for i in 0..3 {
        from_client(&mut hub, i);
        published(&mut hub, i);
    }
    let rounds = 50;
    // Encoding the client's frame for the test happens outside the count.
    let inputs: Vec<Vec<u8>> = (0..rounds).map(|i| encode_client(0x82, &[i as u8; 64], [1, 2, 3, 4])).collect();
    let before = thread_allocations();
    for mut bytes in inputs {
        hub.receive(sender, &mut bytes, 0);
        hub.flush(0);
    }
    let client = (thread_allocations() - before) as f64 / rounds as f64;
    let before = thread_allocations();
    for i in 0..rounds {
        published(&mut hub, i as u8);
    }
    let publish = (thread_allocations() - before) as f64 / rounds as f64;
    let stats = hub.stats();
    assert_eq!(stats.open, receivers as u64);
    assert_eq!(stats.deliveries, (2 * (3 + rounds) * receivers) as u64, "every message reached every receiver");
    (client, publish)
}

#[test]
fn a_broadcast_allocates_one_frame_whatever_the_number_of_receivers() {
    for receivers in [1, 100, 2000] {
        assert_eq!(allocations_per_broadcast(receivers), (1.0, 1.0), "{receivers} receivers");
    }
}
