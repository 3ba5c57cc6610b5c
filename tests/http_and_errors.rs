//! The HTTP side of the port (upgrade errors, health, publish) and the close
//! codes for protocol errors.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use wshub::{Config, Exit};

fn upgrade_with(replace: (&str, &str)) -> String {
    upgrade_request("/ws").replace(replace.0, replace.1)
}

#[test]
fn every_upgrade_error_gets_its_status() {
    let hub = Hub::default();
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed", "NOT HTTP AT ALL\r\n\r\n".into(), 400),
        ("not GET", upgrade_with(("GET", "PUT")), 405),
        ("unknown path", upgrade_with(("/ws", "/chat")), 404),
        ("no Upgrade", upgrade_with(("Upgrade: websocket\r\n", "")), 400),
        ("no Connection", upgrade_with(("Connection: Upgrade\r\n", "")), 400),
        ("no key", upgrade_with((&format!("Sec-WebSocket-Key: {UPGRADE_KEY}\r\n"), "")), 400),
        ("short key", upgrade_with((UPGRADE_KEY, "AAAA")), 400),
        ("version 8", upgrade_with(("Version: 13", "Version: 8")), 426),
        ("two versions", upgrade_with(("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Version: 13\r\n")), 400),
        ("no Host", upgrade_with(("Host: test\r\n", "")), 400),
        ("bad topic", upgrade_with(("/ws", "/ws?topic=no%20spaces")), 400),
        (
            "65 headers",
            upgrade_with(("Host: test\r\n", &(0..65).map(|i| format!("X-H{i}: v\r\n")).collect::<String>())),
            431,
        ),
        ("9 KiB head", upgrade_with(("Host: test", &format!("Host: {}", "h".repeat(9000)))), 431),
    ];
    for (name, request, status) in cases {
        let response = http(hub.addr, request.as_bytes());
        assert_eq!(status_of(&response), status, "{name}: {response}");
        if status == 426 {
            assert!(response.contains("Sec-WebSocket-Version: 13\r\n"), "{response}");
        }
    }
}

#[test]
fn upgrades_beyond_max_connections_get_503() {
    let hub = Hub::start(Config { max_connections: 2, ..Config::default() });
    let a = RawWs::connect(hub.addr, "/ws");
    let _b = RawWs::connect(hub.addr, "/ws");
    let response = http(hub.addr, upgrade_request("/ws").as_bytes());
    assert_eq!(status_of(&response), 503);
    // a slot freed is a slot available again
    drop(a);
    wait_until("a freed slot", || status_of(&http_upgrade(&hub)) == 101);
}

fn http_upgrade(hub: &Hub) -> String {
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn request_arriving_one_byte_at_a_time_is_upgraded() {
    let hub = Hub::default();
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    for byte in upgrade_request("/ws").bytes() {
        stream.write_all(&[byte]).unwrap();
    }
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
}

#[test]
fn an_unfinished_request_is_closed_after_the_handshake_timeout() {
    let hub = Hub::start(Config { handshake_timeout: Duration::from_millis(300), ..Config::default() });
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"GET /ws HTTP/1.1\r\nHost: slow").unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

#[test]
fn healthz_answers_ok() {
    let hub = Hub::default();
    let response = http(hub.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&response), 200);
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    let head = http(hub.addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&head), 200);
    assert!(head.contains("Content-Length: 3\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD gets no body: {head:?}");
}

#[test]
fn method_not_allowed_names_the_methods_of_the_path() {
    let hub = Hub::default();
    for (request, allow) in [
        (upgrade_with(("GET", "PUT")), "GET"),
        ("DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "GET, HEAD"),
        ("GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "POST"),
    ] {
        let response = http(hub.addr, request.as_bytes());
        assert_eq!(status_of(&response), 405, "{response}");
        assert!(response.contains(&format!("\r\nAllow: {allow}\r\n")), "{response}");
    }
}

#[test]
fn a_tls_client_hello_on_the_plain_port_gets_400_at_once() {
    // The handshake timeout is long: the answer must not wait for it.
    let hub = Hub::start(Config { handshake_timeout: Duration::from_secs(60), ..Config::default() });
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The start of a TLS 1.2/1.3 ClientHello record.
    stream.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("answered well before the handshake timeout");
    assert_eq!(status_of(&response), 400, "{response}");
}

#[test]
fn a_publish_body_must_arrive_within_the_same_handshake_timeout() {
    let hub = Hub::start(Config { handshake_timeout: Duration::from_millis(800), ..Config::default() });
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n").unwrap();
    // The body trickles in, a byte at a time, for longer than the timeout.
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        if stream.write_all(b"x").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "published after the deadline");
    assert!(closed || rest.is_empty(), "the connection was closed");
    wait_until("counted as a handshake timeout", || hub.publisher.stats().exited(wshub::Exit::HandshakeTimeout) == 1);
}

#[test]
fn protocol_errors_close_with_1002() {
    let hub = Hub::default();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i']),
        ("RSV1 set", masked_frame(0xC1, b"hi")),
        ("reserved opcode", masked_frame(0x83, b"")),
        ("ping over 125 bytes", masked_frame(0x89, &[0; 126])),
        ("fragmented ping", masked_frame(0x09, b"")),
        ("continuation first", masked_frame(0x80, b"x")),
        ("new message inside fragments", [masked_frame(0x01, b"a"), masked_frame(0x81, b"b")].concat()),
        ("close code 1005", masked_frame(0x88, &1005u16.to_be_bytes())),
        ("one-byte close", masked_frame(0x88, &[0x03])),
    ];
    for (name, bytes) in cases {
        let mut raw = RawWs::connect(hub.addr, "/ws");
        raw.send_raw(&bytes);
        assert_eq!(raw.expect_close(), Some(1002), "{name}");
        assert!(raw.wait_closed(), "{name}: TCP closed after the close frame");
    }
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let hub = Hub::default();
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x81, b"caf\xc3");
    assert_eq!(raw.expect_close(), Some(1007));

    // fails fast: the rest of the fragmented message never needs to arrive
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x01, b"fine so far \xed\xa0\x80");
    assert_eq!(raw.expect_close(), Some(1007));
}

#[test]
fn oversized_message_closes_with_1009() {
    let hub = Hub::start(Config { max_message_size: 1000, ..Config::default() });
    let mut raw = RawWs::connect(hub.addr, "/ws");
    // only the header is sent: the declared length is enough
    raw.send_raw(&masked_frame(0x82, &[0; 1001])[..8]);
    assert_eq!(raw.expect_close(), Some(1009));

    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x02, &[0; 600]);
    raw.send_frame(0x80, &[0; 600]);
    assert_eq!(raw.expect_close(), Some(1009));

    let mut ok = RawWs::connect(hub.addr, "/ws");
    ok.send_frame(0x82, &[5; 1000]);
    assert_eq!(ok.read_frame().payload.len(), 1000, "exactly the limit is fine");
}

fn publish_request(topic: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut req =
        format!("POST /publish/{topic} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{extra}\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(body);
    req
}

#[test]
fn publish_over_http_reaches_the_topic() {
    let hub = Hub::default();
    let mut news = client(&hub, "/ws?topic=news");
    let mut both = client(&hub, "/ws?topic=news&topic=sport");
    let mut sport = client(&hub, "/ws?topic=sport");

    let response = http(hub.addr, &publish_request("news", b"headline", ""));
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("{\"receivers\": 2, \"id\": \""), "{response}");
    assert_eq!(text(&mut news), "headline");
    assert_eq!(text(&mut both), "headline");

    let response = http(hub.addr, &publish_request("sport", b"\x00\x01", "Content-Type: application/octet-stream\r\n"));
    assert_eq!(status_of(&response), 200);
    assert_eq!(next_message(&mut sport), tungstenite::Message::binary(vec![0u8, 1]));
    assert_eq!(next_message(&mut both), tungstenite::Message::binary(vec![0u8, 1]));

    // invalid UTF-8 goes out as binary
    http(hub.addr, &publish_request("news", b"\xff", ""));
    assert_eq!(next_message(&mut news), tungstenite::Message::binary(vec![0xffu8]));

    // Expect: 100-continue is honoured
    let body = vec![b'x'; 5000];
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = publish_request("news", b"", "Expect: 100-continue\r\n");
    let head = String::from_utf8(head).unwrap().replace("Content-Length: 0", "Content-Length: 5000");
    stream.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    stream.write_all(&body).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("200 OK"), "{rest}");
    assert_eq!(text(&mut news).len(), 5000);
}

#[test]
fn publish_errors() {
    let hub = Hub::start(Config { publish_token: Some("s3cret".into()), max_message_size: 100, ..Config::default() });
    let auth = "Authorization: Bearer s3cret\r\n";
    let status = |req: Vec<u8>| status_of(&http(hub.addr, &req));
    assert_eq!(status(publish_request("t", b"x", "")), 401);
    assert_eq!(status(publish_request("t", b"x", "Authorization: Bearer wrong\r\n")), 401);
    assert_eq!(status(publish_request("t", b"x", auth)), 200);
    assert_eq!(status(publish_request("t", &[b'x'; 101], auth)), 413);
    assert_eq!(status(publish_request("bad%20topic", b"x", auth)), 400);
    assert_eq!(status(b"GET /publish/t HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()), 405);
    let chunked =
        "POST /publish/t HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(status(chunked.as_bytes().to_vec()), 411);
    assert_eq!(status(publish_request("t", b"x", "").into_iter().collect()), 401);
    let signed = String::from_utf8(publish_request("t", b"xy", auth)).unwrap().replace("Length: 2", "Length: +2");
    assert_eq!(status(signed.into_bytes()), 400, "a signed Content-Length is not a length");
    assert_eq!(
        status(publish_request("t", b"x", "Authorization: bearer s3cret\r\n")),
        200,
        "scheme is case-insensitive"
    );
}

#[test]
fn bad_clients_do_not_disturb_good_ones() {
    let hub = Hub::default();
    let mut good = client(&hub, "/ws");
    for bytes in [&b"\x81\x02hi"[..], b"\xff\xff\xff\xff", b"GET / HTTP/1.1\r\n\r\n"] {
        let mut raw = RawWs::connect(hub.addr, "/ws");
        raw.send_raw(bytes);
        let _ = raw.wait_closed();
    }
    let _ = http(hub.addr, b"\x00\x01\x02garbage\r\n\r\n");
    good.send(tungstenite::Message::text("still fine")).unwrap();
    assert_eq!(text(&mut good), "still fine");
}

/// Reads one HTTP response (head and `Content-Length` body) off a
/// persistent connection.
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.trim().parse().unwrap());
            if pending.len() >= end + 4 + length {
                let response: Vec<u8> = pending.drain(..end + 4 + length).collect();
                return String::from_utf8(response).unwrap();
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before a whole response");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// HTTP/1.1 keep-alive (RFC 9112 §9.3): a publisher reuses one connection
/// for publishes, health checks and scrapes, two requests may come in one
/// write, and `Connection: close` ends it after the answer.
#[test]
fn publishers_keep_their_connection_until_they_say_close() {
    let hub = Hub::default();
    let mut reader = client(&hub, "/ws?topic=t");
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut pending = Vec::new();
    for i in 0..3 {
        let body = format!("message {i}");
        write!(stream, "POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .unwrap();
        let response = read_response(&mut stream, &mut pending);
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(!response.contains("Connection: close"), "{response}");
        assert!(response.contains("{\"receivers\": 1, \"id\": \""), "{response}");
        assert_eq!(text(&mut reader), body);
    }
    // Two requests in one write are answered in order.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut stream, &mut pending).ends_with("\r\n\r\nok\n"));
    let metrics = read_response(&mut stream, &mut pending);
    assert!(metrics.contains("wshub_http_publishes_total 3\n"), "{metrics}");
    assert!(metrics.contains("wshub_connections_accepted_total 2\n"), "one connection for all of it: {metrics}");
    // The last one.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let last = read_response(&mut stream, &mut pending);
    assert!(last.contains("Connection: close\r\n"), "{last}");
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "closed after the answer");
    wait_until("the end counted as done", || hub.publisher.stats().exited(Exit::HttpDone) == 1);
}

/// A persistent connection nobody uses again is closed after the handshake
/// timeout, as a normal end; one that leaves between requests also ends
/// normally; an error answer always closes.
#[test]
fn idle_persistent_connections_end_normally_and_errors_close() {
    let hub = Hub::start(Config { handshake_timeout: Duration::from_millis(300), ..Config::default() });
    let mut idle = TcpStream::connect(hub.addr).unwrap();
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    assert_eq!(status_of(&read_response(&mut idle, &mut pending)), 200);
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "closed once idle for the handshake timeout");
    let mut leaves = TcpStream::connect(hub.addr).unwrap();
    leaves.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(status_of(&read_response(&mut leaves, &mut Vec::new())), 200);
    drop(leaves);
    wait_until("both counted as done", || hub.publisher.stats().exited(Exit::HttpDone) == 2);
    assert_eq!(hub.publisher.stats().exited(Exit::HandshakeTimeout), 0);
    let mut wrong = TcpStream::connect(hub.addr).unwrap();
    wrong.set_read_timeout(Some(PATIENCE)).unwrap();
    wrong.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    wrong.read_to_string(&mut response).unwrap();
    assert_eq!(status_of(&response), 404);
    assert!(response.contains("Connection: close\r\n"));
}
