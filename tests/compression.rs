//! permessage-deflate over real sockets: what the upgrade answers, what
//! compressing and plain receivers get, client messages sent compressed,
//! and every way a compressed message can be bad.
#![cfg(feature = "deflate")]

mod common;

use common::*;
use wshub::Config;
use wshub::testing::{Compressor, Inflater, MessageKind, compressed_parts};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The `Sec-WebSocket-Extensions` value of a response head, if any.
fn extensions(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_string())
    })
}

/// A JSON telemetry message of about `len` bytes, different for each `seq`.
fn telemetry(seq: u32, len: usize) -> String {
    let mut out = format!("{{\"gateway\":\"edge-7\",\"seq\":{seq},\"readings\":[");
    let mut i = 0u32;
    while out.len() < len {
        let value = (seq * 31 + i * 17) % 1000;
        out.push_str(&format!(
            "{{\"sensor\":\"temp-{}\",\"value\":{}.{},\"unit\":\"C\"}},",
            i % 8,
            value / 10,
            value % 10
        ));
        i += 1;
    }
    out.push_str("{}]}");
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    Inflater::default().inflate(payload, 1 << 24, <[u8]>::to_vec).expect("valid deflate data")
}

/// `payload` compressed the way a client with no context takeover would
/// send it (without the sync flush's tail).
fn deflate(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    let frame = Compressor::default().compress(kind, payload, 1).expect("it shrinks");
    compressed_parts(&frame).expect("compressed").1.to_vec()
}

#[test]
fn the_upgrade_answers_the_first_offer_it_can_honour() {
    let hub = Hub::default();
    let answer = |headers: &str| extensions(&RawWs::connect_with(hub.addr, "/ws", headers).1);
    // What browsers send.
    assert_eq!(answer(OFFER).as_deref(), Some(ANSWER));
    // No offer, another extension, a malformed offer: no extension, still 101.
    assert_eq!(answer(""), None);
    assert_eq!(answer("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"), None);
    assert_eq!(answer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n"), None);
    assert_eq!(answer("Sec-WebSocket-Extensions: permessage-deflate; bogus\r\n"), None);
    assert_eq!(answer("Sec-WebSocket-Extensions: permessage-deflate;;\r\n"), None);
    // A declined offer falls back to the next one, in one header or across two.
    let two = "Sec-WebSocket-Extensions: permessage-deflate; mystery=1, permessage-deflate\r\n";
    assert_eq!(answer(two).as_deref(), Some(ANSWER));
    let split = "Sec-WebSocket-Extensions: foo\r\nSec-WebSocket-Extensions: permessage-deflate\r\n";
    assert_eq!(answer(split).as_deref(), Some(ANSWER));
    // A smaller server window is honoured and repeated in the answer.
    let window =
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9; client_max_window_bits=10\r\n";
    assert_eq!(answer(window), Some(format!("{ANSWER}; server_max_window_bits=9")));
}

#[test]
fn no_compression_never_accepts_and_then_rsv1_is_a_protocol_error() {
    let hub = Hub::start(Config { compression: false, ..Config::default() });
    let (mut ws, head) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    assert_eq!(extensions(&head), None);
    ws.send_frame(0xC1, &deflate(MessageKind::Text, "hello hello hello".repeat(10).as_bytes()));
    assert_eq!(ws.expect_close(), Some(1002));
}

#[test]
fn one_compressed_frame_for_every_compressing_receiver_and_the_plain_one_for_the_rest() {
    let hub = Hub::default();
    let (mut a, _) = RawWs::connect_with(hub.addr, "/ws?topic=t", OFFER);
    let (mut b, _) = RawWs::connect_with(hub.addr, "/ws?topic=t", OFFER);
    let mut plain = RawWs::connect(hub.addr, "/ws?topic=t");
    wait_until("three subscribers", || hub.publisher.stats().open == 3);
    for seq in 0..5 {
        let message = telemetry(seq, 1024);
        hub.publisher.publish("t", message.as_str()).unwrap();
        let (fa, fb, fp) = (a.read_frame(), b.read_frame(), plain.read_frame());
        assert!(fa.rsv1 && fa.fin && fa.opcode == 1, "{fa:?}");
        assert_eq!(fa, fb, "byte-identical compressed frames");
        assert!(fa.payload.len() * 100 <= message.len() * 35, "{} of {} bytes", fa.payload.len(), message.len());
        assert_eq!(inflate(&fa.payload), message.as_bytes());
        assert!(!fp.rsv1);
        assert_eq!(fp.payload, message.as_bytes());
    }
    // Stats are a snapshot of the hub's last housekeeping (about a second).
    wait_until("counted", || hub.publisher.stats().compressed_deliveries == 10);
    let stats = hub.publisher.stats();
    assert_eq!(stats.compressed_messages, 5, "compressed once per message");
    assert_eq!(stats.compression_clients, 2);
}

#[test]
fn short_and_incompressible_messages_go_plain_to_everyone() {
    let hub = Hub::start(Config { compression_min_size: 200, ..Config::default() });
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    wait_until("subscribed", || hub.publisher.stats().open == 1);
    let short = "x".repeat(199);
    hub.publisher.publish("all", short.as_str()).unwrap();
    let frame = ws.read_frame();
    assert!(!frame.rsv1);
    assert_eq!(frame.payload, short.as_bytes());
    let long = "x".repeat(200);
    hub.publisher.publish("all", long.as_str()).unwrap();
    let frame = ws.read_frame();
    assert!(frame.rsv1, "at the minimum size it is compressed");
    assert_eq!(inflate(&frame.payload), long.as_bytes());
    // Random bytes do not shrink.
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..2048)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    hub.publisher.publish("all", noise.clone()).unwrap();
    let frame = ws.read_frame();
    assert!(!frame.rsv1 && frame.opcode == 2);
    assert_eq!(frame.payload, noise);
}

#[test]
fn a_small_server_window_gets_compressed_only_what_fits_it() {
    let hub = Hub::default();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n";
    let (mut small, _) = RawWs::connect_with(hub.addr, "/ws", offer);
    let (mut full, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    wait_until("subscribed", || hub.publisher.stats().open == 2);
    for len in [512, 513] {
        let message = "abcd".repeat(len / 4) + &"e".repeat(len % 4);
        hub.publisher.publish("all", message.as_str()).unwrap();
        let (s, f) = (small.read_frame(), full.read_frame());
        assert!(f.rsv1);
        assert_eq!(s.rsv1, len <= 512, "a {len}-byte message for a 512-byte window");
        let got = if s.rsv1 { inflate(&s.payload) } else { s.payload };
        assert_eq!(got, message.as_bytes());
    }
}

#[test]
fn compressed_client_messages_reach_plain_receivers_exactly_whole_or_fragmented() {
    let hub = Hub::default();
    let (mut sender, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    let mut plain = RawWs::connect(hub.addr, "/ws");
    let message = telemetry(7, 3000);
    let body = deflate(MessageKind::Text, message.as_bytes());
    sender.send_frame(0xC1, &body);
    let got = plain.read_frame();
    assert_eq!((got.rsv1, got.opcode), (false, 1));
    assert_eq!(got.payload, message.as_bytes());
    // Fragmented: RSV1 on the first frame only; a ping in between.
    let (first, rest) = body.split_at(body.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    sender.send_frame(0x41, first);
    sender.send_frame(0x00, second);
    sender.send_frame(0x89, b"between");
    sender.send_frame(0x80, third);
    assert_eq!(plain.read_frame().payload, message.as_bytes());
    // Binary too; and the sender, which negotiated, gets it compressed.
    let binary: Vec<u8> = (0..4000u32).map(|i| (i % 7) as u8).collect();
    sender.send_frame(0xC2, &deflate(MessageKind::Binary, &binary));
    let got = plain.read_frame();
    assert_eq!((got.opcode, &got.payload), (2, &binary));
    // The sender's own copies: the first message, the second, the binary.
    let mut echoed = Vec::new();
    while echoed.len() < 3 {
        let frame = sender.read_frame();
        if frame.opcode == 0xA {
            assert!(!frame.rsv1, "a pong is never compressed");
            assert_eq!(frame.payload, b"between");
            continue;
        }
        assert!(frame.rsv1);
        echoed.push(inflate(&frame.payload));
    }
    assert_eq!(echoed, [message.as_bytes(), message.as_bytes(), &binary[..]]);
    wait_until("counted", || hub.publisher.stats().inflated_messages == 3);
}

#[test]
fn a_deflate_bomb_is_closed_with_1009_without_inflating_past_the_limit() {
    let hub = Hub::start(Config { max_message_size: 65_536, ..Config::default() });
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    let bomb = deflate(MessageKind::Binary, &vec![0u8; 16 << 20]);
    assert!(bomb.len() < 65_536, "a 16 MiB message in {} bytes", bomb.len());
    ws.send_frame(0xC2, &bomb);
    let (data, code) = ws.read_until_close();
    assert!(data.is_empty());
    assert_eq!(code, Some(1009));
    // The inflater's buffer stopped at the limit and was let go.
    wait_until("counted", || hub.publisher.stats().compression_memory_bytes > 0);
    let stats = hub.publisher.stats();
    assert!(stats.compression_memory_bytes < 128 * 1024, "{} bytes", stats.compression_memory_bytes);
    assert!(stats.held_bytes < 256 * 1024, "{} bytes held", stats.held_bytes);
    // The hub goes on.
    let (mut next, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    next.send_frame(0x81, b"still here");
    assert_eq!(next.read_frame().payload, b"still here");
}

#[test]
fn bad_compressed_data_and_bad_utf8_inside_are_closed_with_1007() {
    let hub = Hub::default();
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    ws.send_frame(0xC1, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(ws.expect_close(), Some(1007));
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    let mut not_utf8 = b"valid until here: ".repeat(8);
    not_utf8.extend_from_slice(&[0xc3, 0x28]);
    ws.send_frame(0xC1, &deflate(MessageKind::Text, &not_utf8));
    assert_eq!(ws.expect_close(), Some(1007));
    // RSV1 on a continuation frame is a protocol error.
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    ws.send_frame(0x01, b"first");
    ws.send_frame(0xC0, b"second");
    assert_eq!(ws.expect_close(), Some(1002));
}

#[test]
fn close_frames_are_never_compressed() {
    let hub = Hub::default();
    let (mut ws, _) = RawWs::connect_with(hub.addr, "/ws", OFFER);
    ws.send_frame(0x88, &1000u16.to_be_bytes());
    let frame = ws.read_frame();
    assert_eq!((frame.opcode, frame.rsv1), (8, false));
    assert_eq!(frame.close_code(), Some(1000));
}
