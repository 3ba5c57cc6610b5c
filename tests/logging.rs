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

#[cfg(feature = "jwt")]
#[test]
fn a_slow_reader_gets_whole_lines_never_torn_ones() {
    // Long JSON lines (a token's 5,000-byte `sub`, logged at debug with each
    // upgrade) into a one-page pipe read slowly: a non-blocking write of
    // more than the pipe holds is taken in part (as a stream socket,
    // journald's, takes part of a long write).
    const SECRET: &[u8] = b"a secret of at least thirty-two bytes, for HS256";
    let dir = std::env::temp_dir().join(format!("wshub-torn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug"]);
    command.args(["--jwt-secret-file", secret.to_str().unwrap()]);
    command.env("WSHUB_CONNECTION_RATE_PER_IP", "0").stderr(std::process::Stdio::piped());
    let mut child = KillOnDrop(command.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor this test owns.
        let set = unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(set >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    }
    let mut lines = std::io::BufReader::new(stderr);
    let addr: std::net::SocketAddr = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut lines, &mut line).unwrap() > 0, "exited before listening");
        if let Some(rest) = line.split("listening on ws://").nth(1) {
            break rest.split("/ws").next().unwrap().parse().unwrap();
        }
    };
    // A slow reader, reading all along (512 bytes a millisecond), until the
    // hub has been quiet a while (it is killed then: the pipe ends).
    let slow = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let mut chunk = [0u8; 512];
        while let Ok(n @ 1..) = std::io::Read::read(&mut lines, &mut chunk) {
            rest.extend_from_slice(&chunk[..n]);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        rest
    });
    let claims = format!(r#"{{"sub":"{}","subscribe":["*"]}}"#, "s".repeat(5000));
    let path = format!("/ws?token={}", common::jwt::hs256_with(SECRET, &claims));
    let clients: Vec<RawWs> = (0..100).map(|_| RawWs::connect(addr, &path)).collect();
    drop(clients);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(child);
    let rest = slow.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&rest);
    let mut subs = 0;
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("a torn line ({e}): {line}"));
        if event.get("sub").is_some() {
            subs += 1;
        }
    }
    assert!(subs >= 1, "some upgrade lines got through, whole: {subs}");
}

/// A child process killed when the test ends, however it ends.
#[cfg(feature = "jwt")]
struct KillOnDrop(std::process::Child);

#[cfg(feature = "jwt")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
