//! `--log-format json`: one JSON object per line, with the fields a log
//! pipeline needs (peer, reason, close code, HTTP status); and plain lines
//! without timestamps under journald (`JOURNAL_STREAM`).

mod common;

use common::*;
use serde_json::Value;

#[test]
fn json_lines_carry_peer_reason_and_code() {
    let mut bin = Binary::start(&["--log-format", "json", "--allowed-origins", "https://app.example"]);
    // A protocol error (an unmasked frame): close 1002, logged at info.
    let mut ws = RawWs::connect(bin.addr, "/ws");
    let peer = ws.stream.local_addr().unwrap().to_string();
    ws.send_raw(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(ws.expect_close(), Some(1002));
    let line = bin.wait_for_log("closing with 1002");
    let event: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["target"], "wshub::hub");
    assert_eq!(event["peer"], peer.as_str());
    assert_eq!(event["reason"], "protocol_error");
    assert_eq!(event["code"], 1002);
    assert!(event.get("status").is_none(), "no HTTP status for a WebSocket close: {line}");
    assert!(event["ts"].as_str().unwrap().ends_with('Z'));

    // A refused upgrade: the HTTP status, no close code.
    let request = upgrade_request("/ws").replace("Host: test\r\n", "Host: test\r\nOrigin: https://evil.example\r\n");
    assert_eq!(status_of(&http(bin.addr, request.as_bytes())), 403);
    let line = bin.wait_for_log("rejected with HTTP 403");
    let event: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!((event["reason"].as_str(), event["status"].as_u64()), (Some("rejected"), Some(403)));
    assert!(event.get("code").is_none());
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[test]
fn under_journald_text_lines_have_no_timestamp() {
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0"]).env("JOURNAL_STREAM", "8:12345");
    let mut bin = Binary::spawn(command);
    bin.signal("TERM");
    let line = bin.wait_for_log("shutting down");
    assert!(line.starts_with("INFO  [wshub::server] SIGTERM"), "{line}");
    assert!(bin.wait_exit().success());
}

#[cfg(feature = "redis")]
#[test]
fn text_from_a_peer_cannot_forge_log_lines() {
    // A "Redis" that refuses the handshake with an error carrying a newline
    // and a terminal escape: the hub logs the error, escaped, on one line.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", fake.local_addr().unwrap());
    let mut bin = Binary::start(&["--redis", &url]);
    let (mut socket, _) = fake.accept().unwrap();
    std::io::Write::write_all(&mut socket, b"-ERR no\nINFO  [wshub::hub] 203.0.113.9: forged\x1b[2J\r\n").unwrap();
    let line = bin.wait_for_log("refused the handshake");
    assert!(line.contains("ERR no\\nINFO  [wshub::hub] 203.0.113.9: forged\\u{1b}[2J"), "escaped: {line}");
    assert!(!line.contains('\x1b'), "no raw escape: {line:?}");
    bin.signal("TERM");
    // No line of the log starts with the forged text.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut bin.log, &mut rest);
    assert!(!rest.lines().any(|l| l.contains("forged") && !l.contains("refused")), "{rest}");
    assert!(bin.wait_exit().success());
}
