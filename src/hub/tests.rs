//! The hub driven without sockets: in-memory transports, a clock the test
//! sets, and the driver's turn played by [`turn`].
use std::io::{self, Write};
use std::time::Duration;

use super::*;
use crate::frame::{MessageKind, SharedFrame, encode_client, encode_message};
use crate::memory_transport::MemoryTransport;
use crate::reason::Exit;
use crate::topic::Topic;

pub(super) fn upgrade(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

pub(super) fn peer(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16))
}

/// Connects and upgrades a client on `transport`; returns its id after
/// its 101 was written (and taken off the transport).
pub(super) fn join(hub: &mut Hub<MemoryTransport>, path: &str, transport: &MemoryTransport, now: Millis) -> ClientId {
    let id = hub.insert(transport.clone(), peer(hub.len()), now);
    hub.receive(id, &mut upgrade(path), now);
    hub.flush(now);
    let response = String::from_utf8(transport.take_sent()).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    id
}

pub(super) fn send(hub: &mut Hub<MemoryTransport>, id: ClientId, first: u8, payload: &[u8], now: Millis) {
    hub.receive(id, &mut encode_client(first, payload, [9, 8, 7, 6]), now);
}

/// Server frames in `bytes`, as (opcode, payload).
pub(super) fn frames_of(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let (len, head) = match rest[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (usize::from(n), 2),
        };
        out.push((rest[0] & 0x0f, rest[head..head + len].to_vec()));
        rest = &rest[head + len..];
    }
    assert!(rest.is_empty(), "a partial frame was sent");
    out
}

pub(super) fn close_code(frame: &(u8, Vec<u8>)) -> u16 {
    assert_eq!(frame.0, 8, "not a close frame: {frame:?}");
    u16::from_be_bytes([frame.1[0], frame.1[1]])
}

#[test]
fn no_echo_skips_only_the_sender() {
    for no_echo in [false, true] {
        let mut hub = Hub::new(Config { no_echo, ..Config::default() });
        let (a, b) = (MemoryTransport::new(), MemoryTransport::new());
        let sender = join(&mut hub, "/ws", &a, 0);
        join(&mut hub, "/ws", &b, 0);
        send(&mut hub, sender, 0x81, b"hi", 0);
        hub.flush(0);
        assert_eq!(frames_of(&b.take_sent()), [(1, b"hi".to_vec())]);
        let echoed = frames_of(&a.take_sent());
        assert_eq!(echoed.is_empty(), no_echo, "no_echo={no_echo}: {echoed:?}");
        assert_eq!(hub.stats().messages_in, 1);
        assert_eq!(hub.stats().deliveries, if no_echo { 1 } else { 2 });
    }
}

#[test]
fn capacity_is_counted_as_clients_come_and_go() {
    let mut hub = Hub::new(Config { max_connections: 2, ..Config::default() });
    let first = join(&mut hub, "/ws", &MemoryTransport::new(), 0);
    join(&mut hub, "/ws", &MemoryTransport::new(), 0);
    let refused = MemoryTransport::new();
    let id = hub.insert(refused.clone(), peer(9), 0);
    hub.receive(id, &mut upgrade("/ws"), 0);
    hub.flush(0);
    assert!(String::from_utf8(refused.take_sent()).unwrap().starts_with("HTTP/1.1 503 "));
    assert!(refused.is_write_shut(), "half-closed after the answer");
    assert_eq!(hub.stats().rejected_with(503), 1);
    // An HTTP request that is not an upgrade does not count.
    assert_eq!(hub.stats().open, 2);
    hub.peer_closed(first, 0);
    join(&mut hub, "/ws", &MemoryTransport::new(), 0);
    assert_eq!(hub.stats().open, 2);
    assert_eq!(hub.stats().exited(Exit::ConnectionLost), 1);
}

#[test]
fn a_queue_at_half_its_bound_is_written_before_the_turn_ends() {
    let mut hub = Hub::new(Config { queue_messages: 8, ..Config::default() });
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    let calls = t.write_calls();
    let topic = Topic::new("all").unwrap();
    for i in 0..3u8 {
        hub.publish(&topic, encode_message(MessageKind::Binary, &[i]), 0);
    }
    assert_eq!(t.write_calls(), calls, "below half: writes wait for the end of the turn");
    hub.publish(&topic, encode_message(MessageKind::Binary, &[3]), 0);
    assert_eq!(t.write_calls(), calls + 1, "at half: written at once, in one call");
    assert_eq!(frames_of(&t.take_sent()).len(), 4);
    // The same by bytes.
    let mut hub = Hub::new(Config { queue_bytes: 1000, ..Config::default() });
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    let calls = t.write_calls();
    hub.publish(&topic, encode_message(MessageKind::Binary, &[0; 300]), 0);
    assert_eq!(t.write_calls(), calls);
    hub.publish(&topic, encode_message(MessageKind::Binary, &[0; 300]), 0);
    assert_eq!(t.write_calls(), calls + 1);
}

#[test]
fn close_sequence_last_bytes_then_half_close_then_linger() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    send(&mut hub, id, 0x88, &1000u16.to_be_bytes(), 0);
    hub.flush(0);
    let sent = frames_of(&t.take_sent());
    assert_eq!(close_code(&sent[0]), 1000);
    assert!(t.is_write_shut());
    assert!(hub.contains(id), "lingers for the peer's EOF");
    assert_eq!(hub.stats().closing, 1);
    // The peer's EOF ends it without a second count.
    hub.peer_closed(id, 0);
    assert!(!hub.contains(id));
    assert_eq!(hub.take_closed().count(), 1, "the transport goes back to the driver");
    assert_eq!(hub.stats().exited(Exit::ClientClosed), 1);
    assert_eq!(hub.stats().exited(Exit::ConnectionLost), 0);

    // No EOF: dropped when the linger ends, still counted once.
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    send(&mut hub, id, 0x88, &[], 1_000);
    hub.flush(1_000);
    let linger = crate::connection::CLOSE_LINGER.as_millis() as Millis;
    hub.handle_timeout(1_000 + linger - 1);
    assert!(hub.contains(id));
    hub.handle_timeout(1_000 + linger);
    assert!(!hub.contains(id));
    assert_eq!(hub.stats().exited(Exit::ClientClosed), 2);
    assert_eq!(hub.stats().exited(Exit::LingerTimeout), 0);
}

#[test]
fn a_slow_reader_still_gets_its_close_frame_within_the_write_timeout() {
    let config = Config { queue_messages: 4, write_timeout: Duration::from_secs(10), ..Config::default() };
    let mut hub = Hub::new(config);
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    // The peer stops reading; the fifth message overflows its queue.
    t.set_room(0);
    let topic = Topic::new("all").unwrap();
    for i in 0..5u8 {
        hub.publish(&topic, encode_message(MessageKind::Binary, &[i; 100]), 0);
    }
    hub.flush(0);
    assert_eq!(hub.stats().exited(Exit::SlowConsumer), 1);
    // Three seconds later (past the old 2 s linger) it reads.
    hub.handle_timeout(3_000);
    assert!(hub.contains(id), "waiting for the slow reader, within --write-timeout");
    t.grant(100_000);
    hub.writable(id, 3_000);
    let sent = frames_of(&t.take_sent());
    assert_eq!(close_code(sent.last().unwrap()), 1013);
    assert!(t.is_write_shut());
    // A reader that never comes back is dropped at the write timeout.
    let t = MemoryTransport::new();
    let stuck = join(&mut hub, "/ws", &t, 4_000);
    t.set_room(0);
    for i in 0..5u8 {
        hub.publish(&topic, encode_message(MessageKind::Binary, &[i; 100]), 4_000);
    }
    hub.flush(4_000);
    hub.handle_timeout(13_999);
    assert!(hub.contains(stuck));
    hub.handle_timeout(14_000);
    assert!(!hub.contains(stuck));
}

#[test]
fn shutdown_flushes_queues_then_closes_1001_within_the_deadline() {
    let config = Config { shutdown_timeout: Duration::from_secs(5), ..Config::default() };
    let mut hub = Hub::new(config);
    let idle = MemoryTransport::new();
    let slow = MemoryTransport::new();
    join(&mut hub, "/ws", &idle, 0);
    let slow_id = join(&mut hub, "/ws", &slow, 0);
    slow.set_room(0);
    let topic = Topic::new("all").unwrap();
    hub.publish(&topic, encode_message(MessageKind::Text, b"queued"), 0);
    hub.flush(0);
    let _ = idle.take_sent();
    let pending = hub.insert(MemoryTransport::new(), peer(7), 0);

    hub.begin_shutdown(100);
    assert!(!hub.contains(pending), "a connection still in its request is dropped");
    assert_eq!(close_code(&frames_of(&idle.take_sent())[0]), 1001);
    assert!(!hub.shutdown_complete(100));
    // Draining goes on past the close linger (2 s), up to the deadline.
    hub.handle_timeout(3_000);
    assert!(hub.contains(slow_id));
    slow.grant(1_000);
    hub.writable(slow_id, 3_000);
    let sent = frames_of(&slow.take_sent());
    assert_eq!(sent[0], (1, b"queued".to_vec()), "what was queued goes first");
    assert_eq!(close_code(&sent[1]), 1001);
    assert_eq!(hub.stats().exited(Exit::ShuttingDown), 3);
    assert!(!hub.shutdown_complete(3_000));
    assert!(hub.shutdown_complete(5_100), "the deadline ends it whoever is left");
    let ids: Vec<ClientId> = (0..10).filter(|&i| hub.contains(i)).collect();
    for id in ids {
        hub.peer_closed(id, 0);
    }
    assert!(hub.shutdown_complete(3_001), "everyone gone ends it early");
}

#[test]
fn one_deadline_covers_a_publish_head_and_its_body() {
    let mut hub = Hub::new(Config { handshake_timeout: Duration::from_secs(10), ..Config::default() });
    let t = MemoryTransport::new();
    let id = hub.insert(t.clone(), peer(1), 0);
    hub.receive(id, &mut b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n".to_vec(), 8_000);
    hub.receive(id, &mut b"12345".to_vec(), 9_000);
    hub.handle_timeout(9_999);
    assert!(hub.contains(id));
    hub.handle_timeout(10_000);
    assert!(!hub.contains(id), "the body does not get a fresh timeout");
    assert_eq!(hub.stats().exited(Exit::HandshakeTimeout), 1);
}

#[test]
fn exit_path_counts_once_and_frees_everything() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws?topic=a&topic=b", &t, 0);
    assert_eq!(hub.stats().topics, 2);
    send(&mut hub, id, 0x91, b"rsv", 0); // RSV1 without an extension
    hub.flush(0);
    assert_eq!(close_code(&frames_of(&t.take_sent())[0]), 1002);
    assert_eq!(hub.stats().topics, 0, "unsubscribed as soon as it ends");
    assert_eq!(hub.stats().open, 0);
    hub.lost(id, &io::ErrorKind::ConnectionReset.into(), 0);
    hub.lost(id, &io::ErrorKind::ConnectionReset.into(), 0);
    let stats = hub.stats();
    assert_eq!(stats.exited(Exit::ProtocolError), 1);
    assert_eq!(stats.exited(Exit::ConnectionLost), 0);
    assert_eq!((stats.open, stats.pending, stats.closing, stats.queued_bytes), (0, 0, 0, 0));
    assert_eq!(stats.accepted, 1);
    assert!(hub.is_empty());
}

/// A transport that accepts nothing and says so with `Ok(0)`.
struct Refusing(usize);

impl Write for Refusing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        self.0 += 1;
        Ok(0)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Refusing {
    fn receive(&mut self, _: &mut [u8]) -> io::Result<crate::transport::Input> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_writer_that_takes_nothing_is_back_pressure_not_an_error() {
    let mut hub = Hub::new(Config::default());
    let id = hub.insert(Refusing(0), peer(1), 0);
    hub.receive(id, &mut upgrade("/ws"), 0);
    hub.flush(0);
    assert!(hub.contains(id), "not dropped");
    assert!(hub.is_blocked(id), "waits for writable");
    hub.flush(0);
    assert_eq!(hub.transport(id).map(|t| t.0), Some(1), "no retry until writable");
    assert_eq!(hub.stats().open, 1);
}

/// One turn of the driver: reads in the hub's order (one share each, as
/// the driver's 64 KiB buffer allows), deadlines, end-of-turn writes.
pub(super) fn turn(hub: &mut Hub<MemoryTransport>, now: Millis) {
    let mut scratch = vec![0u8; 64 * 1024];
    while let Some(id) = hub.next_read() {
        let result = hub.transport(id).unwrap().receive(&mut scratch);
        hub.received(id, result, &mut scratch, now);
    }
    hub.handle_timeout(now);
    hub.flush(now);
}

pub(super) fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_client(first, payload, [1, 2, 3, 4])
}

#[test]
fn a_flooder_gets_two_shares_per_turn_and_a_quiet_client_is_served_in_the_first() {
    let mut hub = Hub::new(Config { no_echo: true, ..Config::default() });
    let (flooder, quiet, listener) = (MemoryTransport::new(), MemoryTransport::new(), MemoryTransport::new());
    let flood = join(&mut hub, "/ws?topic=flood", &flooder, 0);
    let talker = join(&mut hub, "/ws?topic=quiet", &quiet, 0);
    join(&mut hub, "/ws?topic=quiet", &listener, 0);
    let frames: Vec<u8> = (0..20_000).flat_map(|_| masked(0x82, &[7; 64])).collect(); // 1.4 MB
    flooder.push_input(&frames);
    quiet.push_input(&masked(0x81, b"quiet"));
    hub.readable(flood, false);
    hub.readable(talker, false);
    turn(&mut hub, 1);
    assert_eq!(frames_of(&listener.take_sent()), [(1, b"quiet".to_vec())], "served in the first turn");
    assert_eq!(flooder.reads(), 2, "two shares");
    assert!(flooder.unread() > frames.len() - 2 * 70 * 1024);
    assert_eq!(hub.poll_timeout(), Some(0), "the flooder's rest waits for the next turn, at once");
    for round in 2..=5 {
        turn(&mut hub, round);
        assert_eq!(flooder.reads(), 2 * round as usize, "two shares per turn");
    }
}

#[test]
fn rate_limits_count_messages_and_resume_where_they_stopped() {
    let mut hub = Hub::new(Config { rate_limit_messages: 100, no_echo: true, ..Config::default() });
    let (sender, receiver) = (MemoryTransport::new(), MemoryTransport::new());
    let id = join(&mut hub, "/ws", &sender, 0);
    join(&mut hub, "/ws", &receiver, 0);
    // A thousand messages in one read.
    let burst: Vec<u8> = (0..1000u16).flat_map(|i| masked(0x82, &i.to_be_bytes())).collect();
    sender.push_input(&burst);
    hub.readable(id, false);
    turn(&mut hub, 0);
    let got = frames_of(&receiver.take_sent());
    assert_eq!(got.len(), 100, "the burst: one second's worth, not the whole read");
    assert_eq!(got[99].1, 99u16.to_be_bytes());
    assert_eq!(sender.unread(), 0, "the read took it all: the rest waits in the hub");
    assert!(hub.stats().held_bytes >= 900 * 8, "held input counts in the budget");
    // One more message per 10 ms, exactly on time, from where it stopped.
    assert_eq!(hub.poll_timeout(), Some(10));
    turn(&mut hub, 9);
    assert!(receiver.take_sent().is_empty());
    turn(&mut hub, 10);
    assert_eq!(frames_of(&receiver.take_sent()), [(2, 100u16.to_be_bytes().to_vec())]);
    assert_eq!(sender.reads(), 1, "its socket is not read while it is over");
    turn(&mut hub, 500);
    let got = frames_of(&receiver.take_sent());
    assert_eq!(got.first().map(|f| f.1.clone()), Some(101u16.to_be_bytes().to_vec()), "in order");
    assert_eq!(got.len(), 49, "one per 10 ms: 101 to 149 by t=500");
    assert_eq!(hub.stats().exits.iter().sum::<u64>(), 0, "throttled, never closed");
}

#[test]
fn a_sub_second_message_timeout_closes_on_time() {
    let mut hub = Hub::new(Config { message_timeout: Duration::from_millis(500), ..Config::default() });
    let t = MemoryTransport::new();
    let id = join(&mut hub, "/ws", &t, 0);
    send(&mut hub, id, 0x01, b"the first fragment, never finished", 1_000);
    // The loop wakes when the hub says; the close comes at 1,500 exactly
    // (not at the next one-second sweep, 0.95 s late, as it did).
    let mut now = 1_000;
    let sent = loop {
        now = hub.poll_timeout().unwrap().max(now);
        assert!(now <= 1_500, "not woken by 1,500");
        hub.handle_timeout(now);
        hub.flush(now);
        let sent = t.take_sent();
        if !sent.is_empty() {
            break sent;
        }
    };
    assert_eq!(now, 1_500);
    assert_eq!(close_code(&frames_of(&sent)[0]), 1008);
}

#[test]
fn an_idle_hub_sleeps_until_its_next_deadline() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    let mut now = 0;
    let mut wakeups = 0;
    while now < 60_000 {
        let next = hub.poll_timeout().expect("something is always scheduled");
        assert!(next > now || wakeups == 0, "no busy wake-up at {now}: next {next}");
        now = next;
        hub.handle_timeout(now);
        hub.flush(now);
        wakeups += 1;
    }
    // Housekeeping once a second, and the ping at 54 s.
    assert!(wakeups <= 62, "{wakeups} wake-ups in a minute");
    assert_eq!(frames_of(&t.take_sent()), [(9, Vec::new())], "one ping");
}

#[test]
fn what_a_transport_keeps_after_a_write_counts_in_the_budget() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::keeping_refused();
    let id = join(&mut hub, "/ws", &t, 0);
    let before = hub.held_bytes();
    t.set_room(0);
    hub.publish(&Topic::new("all").unwrap(), encode_message(MessageKind::Binary, &[5; 20_000]), 0);
    hub.flush(0);
    // The transport took the frame (its queue is empty: the frame is freed)
    // and keeps its bytes, as a TLS stream keeps refused records.
    assert!(hub.held_bytes() >= before + 20_000, "held {} after the write", hub.held_bytes());
    t.grant(1 << 20);
    hub.writable(id, 1);
    assert!(hub.held_bytes() <= before, "and not once they are out: {}", hub.held_bytes());
    assert_eq!(frames_of(&t.take_sent()).len(), 1);
}

#[test]
fn queue_slots_count_in_the_budget() {
    let mut hub = Hub::new(Config::default());
    let t = MemoryTransport::new();
    join(&mut hub, "/ws", &t, 0);
    t.set_room(0);
    let frame = encode_message(MessageKind::Binary, b"x");
    let before = hub.held_bytes();
    for _ in 0..100 {
        hub.publish(&Topic::new("all").unwrap(), SharedFrame::clone(&frame), 0);
    }
    hub.flush(0);
    let slots = 100 * std::mem::size_of::<SharedFrame>();
    assert!(hub.held_bytes() >= before + slots, "{} < {before} + {slots}", hub.held_bytes());
}

#[test]
fn the_publisher_inbox_counts_in_the_budget() {
    let mut hub: Hub<MemoryTransport> = Hub::new(Config::default());
    let inbox = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    hub.count_inbox(std::sync::Arc::clone(&inbox));
    let before = hub.held_bytes();
    inbox.store(30_000, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(hub.held_bytes(), before + 30_000);
}

/// What an idle connection costs the hub, besides its socket and kernel
/// buffers: its slab entry (connection state and marks included). The
/// permessage-deflate choice is four bits of the marks, so negotiating
/// compression adds nothing here.
#[test]
fn an_idle_client_is_small() {
    let client = std::mem::size_of::<super::Client<MemoryTransport>>();
    let connection = std::mem::size_of::<crate::connection::Connection>();
    eprintln!("Client<MemoryTransport> {client} B, Connection {connection} B");
    assert!(connection <= 232, "Connection grew to {connection} bytes");
}
