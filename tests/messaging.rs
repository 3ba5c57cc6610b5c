//! Delivery: broadcast, echo, topics, opcodes, fragments, ping, close,
//! and slow consumers. Real sockets, real clients.

mod common;

use std::thread;

use common::*;
use tungstenite::Message;
use wshub::{Config, Exit};

#[test]
fn broadcast_reaches_every_client_including_the_sender() {
    let hub = Hub::default();
    let mut clients: Vec<Client> = (0..3).map(|_| client(&hub, "/ws")).collect();
    clients[0].send(Message::text("hello all")).unwrap();
    for c in &mut clients {
        assert_eq!(text(c), "hello all");
    }
}

#[test]
fn no_echo_skips_the_sender() {
    let hub = Hub::start(Config { no_echo: true, ..Config::default() });
    let mut a = client(&hub, "/ws");
    let mut b = client(&hub, "/ws");
    a.send(Message::text("from a")).unwrap();
    b.send(Message::text("from b")).unwrap();
    // a's first message is b's: its own was not sent back.
    assert_eq!(text(&mut a), "from b");
    assert_eq!(text(&mut b), "from a");
}

#[test]
fn topics_isolate_and_multi_topic_subscribers_get_each_message_once() {
    let hub = Hub::default();
    let mut on_a = client(&hub, "/ws?topic=a");
    let mut on_b = client(&hub, "/ws?topic=b");
    let mut on_both = client(&hub, "/ws?topic=a&topic=b");
    let mut plain = client(&hub, "/ws");

    on_both.send(Message::text("to a and b")).unwrap();
    on_a.send(Message::text("to a")).unwrap();
    on_b.send(Message::text("to b")).unwrap();
    plain.send(Message::text("to all")).unwrap();

    assert_eq!(text(&mut on_a), "to a and b");
    assert_eq!(text(&mut on_a), "to a");
    assert_eq!(text(&mut on_b), "to a and b");
    assert_eq!(text(&mut on_b), "to b");
    // once each, in the order the hub received them, nothing from `all`
    let mut got: Vec<String> = (0..3).map(|_| text(&mut on_both)).collect();
    got.sort();
    assert_eq!(got, ["to a", "to a and b", "to b"]);
    assert_eq!(text(&mut plain), "to all");

    // a final marker proves nothing else was queued for the topic clients
    hub.publisher.publish("a", "end").unwrap();
    assert_eq!(text(&mut on_a), "end");
    assert_eq!(text(&mut on_both), "end");
}

#[test]
fn text_and_binary_are_preserved() {
    let hub = Hub::default();
    let mut a = client(&hub, "/ws");
    let payload: Vec<u8> = (0..=255).collect();
    a.send(Message::binary(payload.clone())).unwrap();
    a.send(Message::text("ünïcödé")).unwrap();
    assert_eq!(next_message(&mut a), Message::binary(payload));
    assert_eq!(next_message(&mut a), Message::text("ünïcödé"));
}

#[test]
fn fragmented_message_is_reassembled_around_a_ping() {
    let hub = Hub::default();
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x01, b"frag");
    raw.send_frame(0x89, b"mid");
    raw.send_frame(0x00, b"men");
    raw.send_frame(0x80, b"ted");
    assert_eq!(raw.read_frame(), RawFrame { fin: true, rsv1: false, opcode: 0xA, payload: b"mid".to_vec() });
    assert_eq!(raw.read_frame(), RawFrame { fin: true, rsv1: false, opcode: 0x1, payload: b"fragmented".to_vec() });
}

#[test]
fn large_message_split_across_reads_is_delivered_whole() {
    let hub = Hub::default();
    let mut a = client(&hub, "/ws");
    let mut raw = RawWs::connect(hub.addr, "/ws");
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let frame = masked_frame(0x82, &payload);
    for piece in frame.chunks(7_777) {
        raw.send_raw(piece);
    }
    assert_eq!(next_message(&mut a), Message::binary(payload.clone()));
    assert_eq!(raw.read_frame().payload, payload);
}

#[test]
fn ping_gets_pong() {
    let hub = Hub::default();
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x89, b"are you there");
    assert_eq!(raw.read_frame(), RawFrame { fin: true, rsv1: false, opcode: 0xA, payload: b"are you there".to_vec() });
}

#[test]
fn close_handshake_echoes_the_code_then_closes_tcp() {
    let hub = Hub::default();
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']);
    assert_eq!(raw.expect_close(), Some(1000));
    assert!(raw.wait_closed());

    // with tungstenite: a normal close completes cleanly
    let mut ws = client(&hub, "/ws");
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

#[test]
fn server_pings_a_silent_client_then_drops_it() {
    let config = Config {
        ping_interval: std::time::Duration::from_millis(200),
        idle_timeout: std::time::Duration::from_millis(1200),
        ..Config::default()
    };
    let hub = Hub::start(config);
    let mut raw = RawWs::connect(hub.addr, "/ws");
    assert_eq!(raw.read_frame().opcode, 0x9, "a ping after --ping-interval");
    assert!(raw.wait_closed(), "dropped after --idle-timeout without a pong");

    // a client that answers pings stays connected past the idle timeout
    let mut answering = client(&hub, "/ws");
    let started = std::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        if let Message::Ping(_) = answering.read().expect("still connected") {
            pings += 1;
        }
    }
    assert!(pings >= 2);
}

#[test]
fn slow_consumer_is_dropped_while_a_normal_client_gets_everything_in_order() {
    let messages = flood_count(16 * 1024, 32 * 16 * 1024) as usize;
    let config = Config { no_echo: true, queue_messages: 32, ..Config::default() };
    let hub = Hub::start(config);
    let mut slow = RawWs::connect_small_window(hub.addr, "/ws");
    let mut normal = client(&hub, "/ws");
    let mut sender = client(&hub, "/ws");

    let reader = thread::spawn(move || {
        (0..messages)
            .map(|_| match next_message(&mut normal) {
                Message::Binary(b) => u32::from_be_bytes(b[..4].try_into().unwrap()),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<u32>>()
    });
    for i in 0..messages as u32 {
        let mut payload = vec![0u8; 16 * 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        sender.send(Message::binary(payload)).unwrap();
    }
    let received = reader.join().unwrap();
    assert_eq!(received, (0..messages as u32).collect::<Vec<_>>(), "every message, in order");

    // The slow client got a gap-free prefix, then the connection ended.
    let mut expected = 0u32;
    loop {
        let frame = slow.read_frame();
        match frame.opcode {
            0x2 => {
                assert_eq!(u32::from_be_bytes(frame.payload[..4].try_into().unwrap()), expected);
                expected += 1;
            }
            0x8 => {
                assert_eq!(frame.close_code(), Some(1013));
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
        if expected as usize == messages {
            panic!("the slow client was never dropped");
        }
    }
}

/// A message of `size` bytes that starts with its sequence number.
fn numbered(i: u32, size: usize) -> Vec<u8> {
    let mut payload = vec![0x5a; size];
    payload[..4].copy_from_slice(&i.to_be_bytes());
    payload
}

fn number(frame: &RawFrame) -> u32 {
    u32::from_be_bytes(frame.payload[..4].try_into().unwrap())
}

/// How many messages of `size` bytes surely stall a client that does not
/// read: more than the kernel lets a socket's send buffer grow to (the third
/// field of `tcp_wmem`), plus the client's small window, plus `queued` bytes.
fn flood_count(size: usize, queued: usize) -> u32 {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse::<usize>().ok()))
        .unwrap_or(4 << 20);
    ((wmem_max + queued + (1 << 20)) / size + 1) as u32
}

#[test]
fn a_stalled_queue_is_dropped_after_the_write_timeout() {
    const SIZE: usize = 256 * 1024;
    let config = Config {
        write_timeout: std::time::Duration::from_millis(500),
        max_message_size: SIZE,
        queue_messages: 4096,
        queue_bytes: 1 << 30,
        ..Config::default()
    };
    let hub = Hub::start(config);
    let mut stalled = RawWs::connect_small_window(hub.addr, "/ws?topic=t");
    let mut other = client(&hub, "/ws?topic=t");
    // Below both queue bounds, above what the kernel buffers.
    let count = flood_count(SIZE, 0);
    for i in 0..count {
        hub.publish_and_wait(&mut other, "t", numbered(i, SIZE));
    }
    // Not reading is the point; the hub's sweep notices the stall.
    wait_until("the stalled client dropped", || hub.publisher.stats().exited(Exit::SlowConsumer) == 1);
    // What it had been sent arrives in order and whole, then the end.
    let mut expected = 0;
    while let Some(frame) = stalled.try_read_frame() {
        if frame.opcode == 8 {
            assert_eq!(frame.close_code(), Some(1013));
            break;
        }
        assert_eq!(number(&frame), expected, "in order, no gap");
        expected += 1;
    }
    assert!(expected < count, "dropped before everything was sent ({expected} of {count} messages)");
    // the hub is still fine for others
    hub.publisher.publish("t", "still here").unwrap();
    assert_eq!(text(&mut other), "still here");
}

#[test]
fn queue_bytes_bounds_a_client_end_to_end() {
    // A 256 KiB queue: a client that reads nothing overflows it once the
    // kernel's buffers are full and gets 1013, while a reading client gets
    // everything.
    const SIZE: usize = 64 * 1024;
    let config = Config { queue_bytes: 256 * 1024, max_message_size: SIZE, ..Config::default() };
    let hub = Hub::start(config);
    let mut stalled = RawWs::connect_small_window(hub.addr, "/ws?topic=t");
    let mut reader = client(&hub, "/ws?topic=t");
    let count = flood_count(SIZE, 256 * 1024);
    for i in 0..count {
        hub.publish_and_wait(&mut reader, "t", numbered(i, SIZE));
    }
    wait_until("the 1013 drop", || hub.publisher.stats().exited(Exit::SlowConsumer) == 1);
    let (data, code) = stalled.read_until_close();
    assert_eq!(code, Some(1013));
    for (i, frame) in data.iter().enumerate() {
        assert_eq!(number(frame), i as u32, "a gap-free prefix");
    }
    assert!((data.len() as u32) < count);
}

/// A steady stream with `--write-delay 100`: every message arrives, in
/// order, each within the delay plus scheduling, in far fewer writes than
/// messages.
#[test]
fn a_steady_stream_with_a_write_delay_arrives_whole_in_order_and_in_few_writes() {
    const COUNT: u32 = 60;
    let hub = Hub::start(Config { write_delay: std::time::Duration::from_millis(100), ..Config::default() });
    let mut ws = RawWs::connect(hub.addr, "/ws?topic=feed");
    let publisher = hub.publisher.clone();
    let start = std::time::Instant::now();
    // One message every 5 ms, each carrying its number and when it was sent.
    let feed = thread::spawn(move || {
        for i in 0..COUNT {
            let sent_at = start.elapsed().as_millis() as u64;
            let mut payload = i.to_be_bytes().to_vec();
            payload.extend_from_slice(&sent_at.to_be_bytes());
            publisher.publish("feed", payload).unwrap();
            thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    let mut worst = 0;
    for i in 0..COUNT {
        let frame = ws.read_frame();
        let got_at = start.elapsed().as_millis() as u64;
        assert_eq!(frame.opcode, 2);
        assert_eq!(frame.payload[..4], i.to_be_bytes(), "in order, none missing");
        let sent_at = u64::from_be_bytes(frame.payload[4..12].try_into().unwrap());
        worst = worst.max(got_at - sent_at);
    }
    feed.join().unwrap();
    // 300 ms of messages leave in about four writes (a reader that falls
    // behind reads even fewer times); without the delay, one per message.
    assert!(ws.reads <= 15, "{} reads for {COUNT} messages", ws.reads);
    // The delay plus scheduling on a busy machine.
    assert!(worst <= 100 + 1_000, "a message waited {worst} ms");
}
