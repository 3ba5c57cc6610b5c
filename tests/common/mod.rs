//! Helpers for the integration tests: a hub on an ephemeral 127.0.0.1 port,
//! a raw WebSocket client that can send any bytes, and a deadline-bound wait.
#![allow(dead_code)]

pub mod chromium;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod redis;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wshub::{Config, Publisher, Server};

/// Upper bound for anything a test waits for; generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A hub running on its own thread for one test.
pub struct Hub {
    pub addr: SocketAddr,
    /// The admin listener, when the config asked for one.
    pub admin: Option<SocketAddr>,
    pub publisher: Publisher,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Hub {
    pub fn start(config: Config) -> Hub {
        let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..config };
        let server = Server::bind(config).expect("bind");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let publisher = server.publisher();
        let thread = std::thread::spawn(move || server.run());
        Hub { addr, admin, publisher, thread: Some(thread) }
    }

    pub fn default() -> Hub {
        Hub::start(Config::default())
    }

    /// Asks the hub to shut down and waits for `run` to return.
    pub fn stop(&mut self) -> std::io::Result<()> {
        self.publisher.shutdown();
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }

    /// Publishes `payload` on `topic` and waits until `reader` has it, so
    /// the hub works at the pace of a client that keeps up.
    pub fn publish_and_wait(&self, reader: &mut Client, topic: &str, payload: Vec<u8>) {
        let expected = payload.clone();
        self.publisher.publish(topic, payload).unwrap();
        match next_message(reader) {
            tungstenite::Message::Binary(got) => assert_eq!(got[..], expected[..]),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// A tungstenite client, the way an application would connect.
pub type Client = tungstenite::WebSocket<TcpStream>;

pub fn client(hub: &Hub, path: &str) -> Client {
    let stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (ws, response) = tungstenite::client::client(hub.url(path), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// Reads the next data message, answering pings on the way.
pub fn next_message(ws: &mut Client) -> tungstenite::Message {
    loop {
        match ws.read().expect("read") {
            m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)) => return m,
            _ => continue,
        }
    }
}

pub fn text(ws: &mut Client) -> String {
    match next_message(ws) {
        tungstenite::Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// One request on a new connection; the response, read to the end of the
/// connection. Unless the request has a `Connection` header of its own, it
/// gets `Connection: close` (HTTP/1.1 connections otherwise stay open).
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |i| i + 2);
    let has_connection = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase().contains("\nconnection:");
    let request = match request.windows(2).position(|w| w == b"\r\n") {
        Some(line_end) if !has_connection && line_end < head_end => {
            [&request[..line_end + 2], b"Connection: close\r\n", &request[line_end + 2..]].concat()
        }
        _ => request.to_vec(),
    };
    stream.write_all(&request).unwrap();
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading response: {e}"),
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// A frame as the raw client saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, 8, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A WebSocket client that writes whatever bytes a test wants.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Reads that returned bytes (a hub write arrives in one read or more).
    pub reads: usize,
}

pub const UPGRADE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str) -> String {
    upgrade_request_with(path, "")
}

/// An upgrade request with more header lines (each ending in CRLF).
pub fn upgrade_request_with(path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
}

impl RawWs {
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade(TcpStream::connect(addr).unwrap(), path)
    }

    /// A client whose socket receive buffer is set small before connecting,
    /// so that a client that does not read stalls the hub's writes after a
    /// few KiB, whatever the host's TCP buffer tuning.
    pub fn connect_small_window(addr: SocketAddr, path: &str) -> RawWs {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        RawWs::upgrade(socket.into(), path)
    }

    pub fn upgrade(stream: TcpStream, path: &str) -> RawWs {
        RawWs::upgrade_with(stream, path, "").0
    }

    /// Connects with more request header lines; the client and the 101
    /// response's head.
    pub fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> (RawWs, String) {
        RawWs::upgrade_with(TcpStream::connect(addr).unwrap(), path, headers)
    }

    pub fn upgrade_with(mut stream: TcpStream, path: &str, headers: &str) -> (RawWs, String) {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(upgrade_request_with(path, headers).as_bytes()).unwrap();
        let mut ws = RawWs { stream, buf: Vec::new(), reads: 0 };
        let head = ws.read_until_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        (ws, head)
    }

    fn read_until_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        self.reads += 1;
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Sends a masked frame with the given first byte (FIN, RSV, opcode).
    pub fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.stream.write_all(&masked_frame(first, payload)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn read_frame(&mut self) -> RawFrame {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return frame;
            }
            self.fill();
        }
    }

    /// The next frame, or `None` once the connection is closed or reset.
    pub fn try_read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next frame: `Ok(None)` once the connection is closed, `Err(())`
    /// if nothing came within the read timeout.
    pub fn try_read_frame_timeout(&mut self) -> Result<Option<RawFrame>, ()> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(()),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads frames until a close frame; returns the data frames before it
    /// and its code.
    pub fn read_until_close(&mut self) -> (Vec<RawFrame>, Option<u16>) {
        let mut data = Vec::new();
        loop {
            let frame = self.read_frame();
            if frame.opcode == 8 {
                return (data, frame.close_code());
            }
            data.push(frame);
        }
    }

    /// Reads frames until a close frame; returns its code.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = self.read_frame();
            if frame.opcode == 8 {
                return frame.close_code();
            }
        }
    }

    /// True once the server has closed the TCP connection.
    pub fn wait_closed(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("read: {e}"),
            }
        }
        false
    }
}

pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    wshub::testing::encode_client(first, payload, [0x12, 0x34, 0x56, 0x78])
}

fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    assert_eq!(buf[0] & 0x30, 0, "RSV2 and RSV3 are never set");
    let (fin, rsv1, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x40 != 0, buf[0] & 0x0f);
    let frame = RawFrame { fin, rsv1, opcode, payload: buf[head..head + len].to_vec() };
    Some((frame, head + len))
}

/// Polls `check` until it is true or the deadline passes.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// The `wshub` binary on an ephemeral port; killed if a test fails.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: BufReader<std::process::ChildStderr>,
}

/// The words that run the wshub binary: this build's, or another one
/// (`WSHUB_TEST_BINARY`, e.g. an aarch64 cross build), behind an emulator
/// when one is named (`WSHUB_TEST_RUNNER`, e.g. `qemu-aarch64 -L
/// /usr/aarch64-linux-gnu`). `.ci/run` runs the binary-driven tests so.
pub fn wshub_argv() -> Vec<String> {
    let mut argv: Vec<String> =
        std::env::var("WSHUB_TEST_RUNNER").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    argv.push(std::env::var("WSHUB_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wshub").to_string()));
    argv
}

/// Whether the binary runs under an emulator (`WSHUB_TEST_RUNNER`): its
/// process figures (RSS, CPU) are then the emulator's, not the hub's.
pub fn emulated() -> bool {
    std::env::var("WSHUB_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// A `Command` that runs the wshub binary (through the emulator, if any).
pub fn wshub_command() -> Command {
    let argv = wshub_argv();
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

impl Binary {
    pub fn start(args: &[&str]) -> Binary {
        let mut command = wshub_command();
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Binary::spawn(command)
    }

    /// Starts wshub allowed at most `files` open file descriptors.
    pub fn start_with_fd_limit(files: u32) -> Binary {
        let mut command = Command::new("bash");
        command.args(["-c", &format!("ulimit -n {files} && exec \"$@\" --listen 127.0.0.1:0"), "wshub"]);
        command.args(wshub_argv());
        Binary::spawn(command)
    }

    pub fn spawn(mut command: Command) -> Binary {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(log.read_line(&mut line).unwrap() > 0, "wshub exited before listening");
            if let Some(rest) =
                line.split("listening on ws://").nth(1).or_else(|| line.split("listening on wss://").nth(1))
            {
                break rest.split("/ws").next().unwrap().parse().unwrap();
            }
        };
        Binary { child, addr, log }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Resident memory of the process, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024
    }

    /// One sample of `/metrics` (served to loopback when no credentials
    /// are configured): the value of the first series named `name`.
    pub fn metric(&self, name: &str) -> f64 {
        let response = http(self.addr, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(status_of(&response), 200, "{response}");
        response
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?;
                let value = match rest.strip_prefix('{') {
                    Some(labels) => labels.split_once('}')?.1,
                    None => rest,
                };
                value.strip_prefix(' ')?.trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    /// Reads log lines until one contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.log.read_line(&mut line).unwrap() > 0, "wshub exited before logging {needle:?}");
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "wshub did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
