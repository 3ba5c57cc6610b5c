//! Fan-out load generator for wshub and the tokio hub.
//!
//! One thread, one mio loop. N WebSocket clients connect from several
//! 127.0.0.x source addresses; client 0 also publishes. Every message carries
//! a sequence number and its send time, so each delivery yields a latency and
//! any loss or reordering is counted (it must be zero). The server's CPU time
//! and RSS are read from /proc/PID, which gives ratios that survive a noisy
//! machine: deliveries per server CPU-second and RSS per idle connection.
//!
//!   loadgen --addr 127.0.0.1:8080 --pid PID --clients N
//!           [--size BYTES] [--mode closed|rate|idle|sink] [--window W] [--rate MSGS_PER_S]
//!           [--warmup SECS] [--duration SECS] [--sources K] [--path /ws?token=...]
//!           [--tls-ca PEM] [--publish-addr ADDR] [--payload binary|json] [--deflate]
//!           [--sse] [--last-event-id ID --expect K]
//!
//! `--tls-ca`: connect over TLS (rustls, ring), trusting that certificate,
//! as server name `localhost`. `--publish-addr`: client 0 (the publisher)
//! connects there instead, e.g. to another hub sharing topics through Redis.
//! `--payload json`: text messages of JSON telemetry (a gateway's sensor
//! readings, different in every message) instead of zero-padded binary.
//! `--deflate`: every client offers permessage-deflate (the hub must accept)
//! and inflates every compressed delivery (no context takeover, one
//! inflater reset per message, like the hub), so content is checked and
//! the cost is real; `wire_bytes_per_delivery` is what crossed the socket.
//! `--sse`: every client but the publisher reads `/sse` (Server-Sent Events,
//! `--payload json`) instead of `/ws`. `--mode resume` with `--sse`: all N
//! clients connect at once with `Last-Event-ID` and each must get `--expect`
//! events; reports the time until the last has them all, the server's CPU
//! and its peak RSS (a resume storm).
//!
//! closed: at most W messages in flight (a message is done when all N clients
//! have it). rate: a fixed number of messages per second. idle: connect, wait,
//! report RSS per connection. sink: connect, then read and discard whatever
//! arrives for the duration (subscribers for someone else's stream, e.g. a
//! flood through Redis), reporting the bytes. Prints one JSON object on
//! stdout.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

const MASK: [u8; 4] = [0x5a, 0xc3, 0x17, 0x9e];
/// Handshakes in progress at once (stays under the server's listen backlog).
const CONNECT_BATCH: usize = 200;

struct Options {
    addr: SocketAddr,
    pid: u32,
    clients: usize,
    size: usize,
    mode: String,
    window: usize,
    rate: f64,
    warmup: f64,
    duration: f64,
    sources: u8,
    /// The upgrade's request target (a token in the query, for auth runs).
    path: String,
    /// Connect over TLS, trusting this PEM certificate.
    tls_ca: Option<String>,
    /// Where client 0, the publisher, connects (default: `addr`).
    publish_addr: Option<SocketAddr>,
    /// Text messages of JSON telemetry instead of binary padding.
    json: bool,
    /// Negotiate permessage-deflate and inflate what arrives compressed.
    deflate: bool,
    /// Receive through `/sse` instead of `/ws` (all but the publisher).
    sse: bool,
    /// `Last-Event-ID` of every SSE client (`--mode resume`).
    last_event_id: Option<String>,
    /// Events each client must get (`--mode resume`).
    expect: u64,
}

fn parse_options() -> Options {
    let mut o = Options {
        addr: "127.0.0.1:8080".parse().unwrap(),
        pid: 0,
        clients: 100,
        size: 64,
        mode: "closed".into(),
        window: 16,
        rate: 1000.0,
        warmup: 1.0,
        duration: 5.0,
        sources: 4,
        path: "/ws".into(),
        tls_ca: None,
        publish_addr: None,
        json: false,
        deflate: false,
        sse: false,
        last_event_id: None,
        expect: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--deflate" {
            o.deflate = true;
            continue;
        }
        if arg == "--sse" {
            o.sse = true;
            continue;
        }
        let value = args.next().unwrap_or_else(|| fail(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--addr" => o.addr = parsed(&arg, &value),
            "--pid" => o.pid = parsed(&arg, &value),
            "--clients" => o.clients = parsed(&arg, &value),
            "--size" => o.size = parsed(&arg, &value),
            "--mode" => o.mode = value,
            "--window" => o.window = parsed(&arg, &value),
            "--rate" => o.rate = parsed(&arg, &value),
            "--warmup" => o.warmup = parsed(&arg, &value),
            "--duration" => o.duration = parsed(&arg, &value),
            "--sources" => o.sources = parsed(&arg, &value),
            "--path" => o.path = value,
            "--tls-ca" => o.tls_ca = Some(value),
            "--publish-addr" => o.publish_addr = Some(parsed(&arg, &value)),
            "--last-event-id" => o.last_event_id = Some(value),
            "--expect" => o.expect = parsed(&arg, &value),
            "--payload" => match value.as_str() {
                "json" => o.json = true,
                "binary" => o.json = false,
                _ => fail("--payload is binary or json"),
            },
            _ => fail(&format!("unknown argument {arg}")),
        }
    }
    if o.size < 16 {
        fail("--size must be at least 16 (sequence number and timestamp)");
    }
    if o.sse && !o.json {
        fail("--sse needs --payload json (events carry text)");
    }
    if o.json && o.size < JSON_HEAD + 2 {
        fail("--payload json needs --size of at least 55");
    }
    o
}

fn parsed<T: std::str::FromStr>(arg: &str, value: &str) -> T {
    value.parse().unwrap_or_else(|_| fail(&format!("bad value for {arg}: {value}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

#[derive(PartialEq)]
enum State {
    Connecting,
    AwaitingUpgrade,
    Open,
}

/// A client's byte stream: plain TCP, or TLS over it (rustls' buffered
/// client: the load generator is not what is being measured).
enum Io {
    Plain(TcpStream),
    Tls(TcpStream, Box<rustls::ClientConnection>),
}

impl Io {
    /// Sends what rustls has ready, until the socket is full.
    fn flush_tls(tcp: &mut TcpStream, tls: &mut rustls::ClientConnection) -> io::Result<()> {
        while tls.wants_write() {
            match tls.write_tls(tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes progress on the socket's writable side (TLS handshake).
    fn on_writable(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(_) => Ok(()),
            Io::Tls(tcp, tls) => Io::flush_tls(tcp, tls),
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(tcp) => tcp.read(buf),
            Io::Tls(tcp, tls) => loop {
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
                    Err(_) => {}
                }
                match tls.read_tls(tcp) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {
                        tls.process_new_packets().map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                        Io::flush_tls(tcp, tls)?;
                    }
                    Err(e) => return Err(e),
                }
            },
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(tcp) => tcp.write(buf),
            Io::Tls(tcp, tls) => {
                let n = tls.writer().write(buf)?;
                Io::flush_tls(tcp, tls)?;
                if n == 0 && !buf.is_empty() { Err(ErrorKind::WouldBlock.into()) } else { Ok(n) }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_config(ca: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| fail(&format!("--tls-ca: {e}"))) {
        roots.add(cert.unwrap_or_else(|e| fail(&format!("--tls-ca: {e}")))).unwrap_or_else(|e| fail(&format!("{e}")));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail(&format!("{e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

struct Conn {
    stream: Io,
    state: State,
    /// Unparsed bytes (a frame or response head cut by a read).
    pending: Vec<u8>,
    /// Bytes to send that the socket did not take yet (publisher only).
    out: Vec<u8>,
    next_seq: u64,
    /// Reads `/sse` (events) instead of `/ws` (frames).
    sse: bool,
    /// Data events received (`--mode resume`).
    events: u64,
}

#[derive(Default)]
struct Tally {
    deliveries: u64,
    bytes: u64,
    /// Bytes read from the sockets while recording (frame headers and
    /// compressed payloads as they crossed the wire).
    wire_bytes: u64,
    lost: u64,
    reordered: u64,
    closed: u64,
    latencies_us: Vec<u32>,
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn connect(addr: SocketAddr, source: u8) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)), 0);
    socket.bind(&local.into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {} // EINPROGRESS
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn upgrade_request(addr: SocketAddr, path: &str, deflate: bool) -> Vec<u8> {
    let offer = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// `{"seq":` then 20 digits, `,"ts":` then 20 digits, `,`: where a JSON
/// message keeps its sequence number and send time.
const JSON_HEAD: usize = 53;

/// A JSON telemetry message of exactly `size` bytes: the sequence number and
/// send time, then a gateway's readings (sensor names, values, units and
/// times that change from message to message), padded with spaces.
fn json_payload(seq: u64, sent_ns: u64, size: usize, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    const SENSORS: [(&str, &str); 6] = [
        ("temperature", "C"),
        ("humidity", "%"),
        ("pressure", "hPa"),
        ("voltage", "V"),
        ("current", "A"),
        ("rssi", "dBm"),
    ];
    let mut text =
        format!("{{\"seq\":{seq:020},\"ts\":{sent_ns:020},\"gateway\":\"edge-gw-{:04}\",\"readings\":[", seq % 64);
    let mut x = seq.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut reading = String::new();
    loop {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let r = x >> 33;
        let (sensor, unit) = SENSORS[(r % 6) as usize];
        reading.clear();
        let _ = write!(
            reading,
            "{{\"sensor\":\"{sensor}-{}\",\"value\":{}.{},\"unit\":\"{unit}\",\"status\":\"{}\",\"at\":{}}},",
            r % 8,
            (r >> 3) % 100,
            (r >> 10) % 100,
            if (r >> 17).is_multiple_of(10) { "warn" } else { "ok" },
            1_764_668_400_000 + seq * 250 - (r >> 20) % 1000
        );
        if text.len() + reading.len() + 2 > size {
            break;
        }
        text.push_str(&reading);
    }
    if text.ends_with(',') {
        text.pop();
    }
    while text.len() + 2 < size {
        text.push(' ');
    }
    text.push_str("]}");
    out.extend_from_slice(&text.as_bytes()[..size]);
}

/// The sequence number and send time a message carries.
fn stamps(payload: &[u8], json: bool) -> (u64, u64) {
    if json {
        let digits = |range: std::ops::Range<usize>| {
            std::str::from_utf8(&payload[range]).ok().and_then(|d| d.parse().ok()).unwrap_or(u64::MAX)
        };
        return (digits(7..27), digits(33..53));
    }
    (u64::from_le_bytes(payload[..8].try_into().unwrap()), u64::from_le_bytes(payload[8..16].try_into().unwrap()))
}

/// Inflates a compressed message (RFC 7692: append the sync flush's tail).
fn inflate(inflater: &mut flate2::Decompress, payload: &[u8], out: &mut Vec<u8>) {
    inflater.reset(false);
    out.clear();
    let mut input = [payload, &[0, 0, 0xff, 0xff][..]].concat();
    let mut offset = 0;
    loop {
        out.reserve(4096.max(payload.len() * 4));
        let before = inflater.total_in();
        inflater
            .decompress_vec(&input[offset..], out, flate2::FlushDecompress::Sync)
            .unwrap_or_else(|e| fail(&format!("inflate: {e}")));
        offset += (inflater.total_in() - before) as usize;
        if offset >= input.len() && out.len() < out.capacity() {
            break;
        }
    }
    input.clear();
}

/// A masked data frame: sequence number, send time (ns), padding (binary),
/// or a JSON telemetry message (text).
fn message_frame(seq: u64, sent_ns: u64, size: usize, json: bool, out: &mut Vec<u8>) {
    out.push(if json { 0x81 } else { 0x82 });
    if size < 126 {
        out.push(0x80 | size as u8);
    } else if size <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(size as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    let start = out.len();
    if json {
        json_payload(seq, sent_ns, size, out);
    } else {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&sent_ns.to_le_bytes());
        out.resize(start + size, 0);
    }
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= MASK[i % 4];
    }
}

/// A Server-Sent Events request for `path`'s topics (`/ws?...` becomes
/// `/sse?...`).
fn sse_request(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Vec<u8> {
    let target = path.replacen("/ws", "/sse", 1);
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n").into_bytes()
}

/// Parses complete events from `buf`; calls `on_data` with each event's
/// data (one line: the JSON payloads have none). Returns the bytes used.
fn parse_events(buf: &[u8], mut on_data: impl FnMut(&[u8])) -> usize {
    let mut pos = 0;
    while let Some(end) = buf[pos..].windows(2).position(|w| w == b"\n\n") {
        let block = &buf[pos..pos + end + 1];
        for line in block.split(|&b| b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data: ") {
                on_data(data);
            }
        }
        pos += end + 2;
    }
    // Comments (keepalives) end with one newline: skip whole ones.
    while buf.get(pos) == Some(&b':') {
        match buf[pos..].iter().position(|&b| b == b'\n') {
            Some(end) => pos += end + 1,
            None => break,
        }
    }
    pos
}

/// Parses complete server frames from `buf`; calls `on_message` with each
/// data payload and whether it is compressed (RSV1). Returns the bytes used.
fn parse_frames(buf: &[u8], mut on_message: impl FnMut(&[u8], bool)) -> usize {
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            return pos;
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return pos,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return pos;
        }
        let opcode = b[0] & 0x0f;
        if opcode == 1 || opcode == 2 {
            on_message(&b[head..head + len], b[0] & 0x40 != 0);
        }
        pos += head + len;
    }
}

fn main() {
    let o = parse_options();
    let pid = o.pid.to_string();
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(o.clients);
    let rss_before = rss_kib(o.pid);
    let request = upgrade_request(o.addr, &o.path, o.deflate);
    let events_request = sse_request(o.addr, &o.path, o.last_event_id.as_deref());
    let resume_mode = o.mode == "resume";
    if resume_mode && !o.sse {
        fail("--mode resume needs --sse");
    }
    let storm_cpu = cpu_seconds(&pid);
    let storm_start = Instant::now();
    let tls = o.tls_ca.as_deref().map(tls_config);
    let clock = Instant::now();
    let now_ns = || clock.elapsed().as_nanos() as u64;

    // Connect everyone, CONNECT_BATCH handshakes at a time.
    let mut opened = 0;
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while opened < o.clients {
        while conns.len() < o.clients && conns.len() - opened < CONNECT_BATCH {
            let i = conns.len();
            let source = 1 + (i % o.sources.max(1) as usize) as u8;
            let addr = if i == 0 { o.publish_addr.unwrap_or(o.addr) } else { o.addr };
            let mut tcp = connect(addr, source).unwrap_or_else(|e| fail(&format!("connect #{i}: {e}")));
            poll.registry().register(&mut tcp, Token(i), Interest::READABLE | Interest::WRITABLE).expect("register");
            let stream = match &tls {
                None => Io::Plain(tcp),
                Some(config) => {
                    let name = "localhost".try_into().expect("server name");
                    let conn = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
                        .unwrap_or_else(|e| fail(&format!("TLS: {e}")));
                    Io::Tls(tcp, Box::new(conn))
                }
            };
            let sse = o.sse && (i > 0 || resume_mode);
            conns.push(Conn {
                stream,
                state: State::Connecting,
                pending: Vec::new(),
                out: Vec::new(),
                next_seq: 0,
                sse,
                events: 0,
            });
        }
        poll.poll(&mut events, Some(Duration::from_millis(100))).expect("poll");
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            if c.state == State::Connecting && event.is_writable() {
                // Over TLS the request waits in rustls until the handshake is done.
                let request = if c.sse { &events_request } else { &request };
                if let Err(e) = c.stream.write_all(request) {
                    fail(&format!("sending upgrade: {e}"));
                }
                c.state = State::AwaitingUpgrade;
            } else if event.is_writable()
                && let Err(e) = c.stream.on_writable()
            {
                fail(&format!("TLS: {e}"));
            }
            if c.state == State::AwaitingUpgrade && event.is_readable() {
                let mut buf = [0u8; 1024];
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => fail("server closed during the upgrade"),
                        Ok(n) => c.pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => fail(&format!("upgrade: {e}")),
                    }
                }
                if let Some(end) = c.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let expected: &[u8] = if c.sse { b"HTTP/1.1 200" } else { b"HTTP/1.1 101" };
                    if !c.pending.starts_with(expected) {
                        fail(&format!("upgrade refused: {}", String::from_utf8_lossy(&c.pending[..end])));
                    }
                    if o.deflate && !String::from_utf8_lossy(&c.pending[..end]).contains("permessage-deflate") {
                        fail("the server did not accept permessage-deflate");
                    }
                    c.pending.drain(..end + 4);
                    c.state = State::Open;
                    opened += 1;
                }
            }
        }
        if Instant::now() > connect_deadline {
            fail(&format!("only {opened} of {} clients connected in time", o.clients));
        }
    }

    if resume_mode {
        resume_storm(&o, &mut poll, &mut events, &mut conns, storm_start, storm_cpu);
        return;
    }

    if o.mode == "sink" {
        println!("{{\"mode\":\"sink\",\"clients\":{},\"ready\":true}}", o.clients);
        let end = Instant::now() + Duration::from_secs_f64(o.warmup + o.duration);
        let mut buf = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        while Instant::now() < end {
            poll.poll(&mut events, Some(Duration::from_millis(50))).expect("poll");
            for event in events.iter() {
                let c = &mut conns[event.token().0];
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => bytes += n as u64,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
        }
        println!("{{\"mode\":\"sink\",\"clients\":{},\"bytes\":{bytes}}}", o.clients);
        return;
    }

    if o.mode == "idle" {
        // Let the server settle (lazy frees, page faults), then read its RSS.
        std::thread::sleep(Duration::from_secs(2));
        let rss_after = rss_kib(o.pid);
        let per_conn = (rss_after.saturating_sub(rss_before) * 1024) as f64 / o.clients as f64;
        println!(
            "{{\"mode\":\"idle\",\"clients\":{},\"rss_before_kib\":{rss_before},\"rss_kib\":{rss_after},\"bytes_per_conn\":{per_conn:.0}}}",
            o.clients
        );
        return;
    }

    // Load: client 0 publishes; everyone (client 0 included) receives.
    let n = o.clients as u32;
    let window = o.window.max(1);
    let mut in_flight = 0usize;
    let mut done_count: Vec<u32> = vec![0; window];
    let mut next_seq: u64 = 0;
    let mut tally = Tally::default();
    let mut recording = false;
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(o.warmup);
    let end = warmup_end + Duration::from_secs_f64(o.duration);
    let mut cpu_server_start = 0.0;
    let mut cpu_self_start = 0.0;
    let mut window_start = start;
    let mut scratch = vec![0u8; 256 * 1024];
    let rate_interval = Duration::from_secs_f64(1.0 / o.rate.max(1e-3));
    let mut next_send = start;
    let closed_loop = o.mode == "closed";
    let mut inflater = flate2::Decompress::new(false);
    let mut inflated = Vec::new();

    loop {
        let now = Instant::now();
        if !recording && now >= warmup_end {
            recording = true;
            window_start = now;
            cpu_server_start = cpu_seconds(&pid);
            cpu_self_start = cpu_seconds("self");
        }
        if now >= end {
            break;
        }
        // Publish what the mode allows.
        let publisher = &mut conns[0];
        if closed_loop {
            while in_flight < window {
                message_frame(next_seq, now_ns(), o.size, o.json, &mut publisher.out);
                next_seq += 1;
                in_flight += 1;
            }
        } else {
            while next_send <= now {
                message_frame(next_seq, now_ns(), o.size, o.json, &mut publisher.out);
                next_seq += 1;
                next_send += rate_interval;
            }
        }
        if !publisher.out.is_empty() {
            match publisher.stream.write(&publisher.out) {
                Ok(k) => {
                    publisher.out.drain(..k);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => fail(&format!("publish: {e}")),
            }
        }

        let timeout = if closed_loop { Duration::from_millis(50) } else { next_send.saturating_duration_since(now) };
        poll.poll(&mut events, Some(timeout)).expect("poll");
        let received_ns = now_ns();
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            if c.state != State::Open || !event.is_readable() {
                continue;
            }
            loop {
                let r = c.stream.read(&mut scratch);
                let got = match r {
                    Ok(0) => {
                        tally.closed += 1;
                        c.state = State::Connecting;
                        break;
                    }
                    Ok(k) => k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        tally.closed += 1;
                        c.state = State::Connecting;
                        break;
                    }
                };
                let data: &[u8] = if c.pending.is_empty() {
                    &scratch[..got]
                } else {
                    c.pending.extend_from_slice(&scratch[..got]);
                    &c.pending
                };
                let mut messages = 0u64;
                let mut bytes = 0u64;
                let expected = &mut c.next_seq;
                let mut on_message = |payload: &[u8], compressed: bool| {
                    let payload = if compressed {
                        inflate(&mut inflater, payload, &mut inflated);
                        &inflated[..]
                    } else {
                        payload
                    };
                    if payload.len() != o.size {
                        fail(&format!("a delivery of {} bytes, not {}", payload.len(), o.size));
                    }
                    let (seq, sent) = stamps(payload, o.json);
                    if seq != *expected {
                        if seq > *expected {
                            tally.lost += seq - *expected;
                        } else {
                            tally.reordered += 1;
                        }
                    }
                    *expected = seq + 1;
                    messages += 1;
                    bytes += payload.len() as u64;
                    if recording {
                        tally.latencies_us.push((received_ns.saturating_sub(sent) / 1000) as u32);
                    }
                    if closed_loop {
                        let slot = &mut done_count[(seq % window as u64) as usize];
                        *slot += 1;
                        if *slot == n {
                            *slot = 0;
                            in_flight -= 1;
                        }
                    }
                };
                let used = if c.sse {
                    parse_events(data, |payload| on_message(payload, false))
                } else {
                    parse_frames(data, &mut on_message)
                };
                if recording {
                    tally.deliveries += messages;
                    tally.bytes += bytes;
                    tally.wire_bytes += got as u64;
                }
                if c.pending.is_empty() {
                    c.pending.extend_from_slice(&scratch[used..got]);
                } else {
                    c.pending.drain(..used);
                }
                // A short read drained the socket; a new edge comes with new data.
                if got < scratch.len() {
                    break;
                }
            }
        }
    }

    let wall = window_start.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&pid) - cpu_server_start;
    let self_cpu = cpu_seconds("self") - cpu_self_start;
    let mut lat = std::mem::take(&mut tally.latencies_us);
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let saturated = self_cpu > 0.9 * wall;
    if saturated {
        eprintln!(
            "loadgen: WARNING: the load generator itself used {self_cpu:.2} CPU-s in {wall:.2} s: it is saturated"
        );
    }
    println!(
        "{{\"mode\":\"{}\",\"clients\":{},\"size\":{},\"deliveries\":{},\"deliveries_per_s\":{:.0},\"server_cpu_s\":{:.2},\"deliveries_per_cpu_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"rss_kib\":{},\"wire_bytes_per_delivery\":{:.1},\"lost\":{},\"reordered\":{},\"closed\":{},\"loadgen_cpu_s\":{:.2},\"wall_s\":{:.2},\"loadgen_saturated\":{}}}",
        o.mode,
        o.clients,
        o.size,
        tally.deliveries,
        tally.deliveries as f64 / wall,
        server_cpu,
        if server_cpu > 0.0 { tally.deliveries as f64 / server_cpu } else { 0.0 },
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        rss_kib(o.pid),
        if tally.deliveries > 0 { tally.wire_bytes as f64 / tally.deliveries as f64 } else { 0.0 },
        tally.lost,
        tally.reordered,
        tally.closed,
        self_cpu,
        wall,
        saturated
    );
}

/// `--mode resume`: every client connected with `Last-Event-ID`; waits until
/// each has `--expect` events, then reports.
fn resume_storm(o: &Options, poll: &mut Poll, events: &mut Events, conns: &mut [Conn], start: Instant, cpu_start: f64) {
    let pid = o.pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0usize;
    let mut out_of_order = 0u64;
    // Events that arrived with the response head are already pending.
    for c in conns.iter_mut() {
        let mut last = 0u64;
        let used = parse_events(&c.pending, |data| {
            let (seq, _) = stamps(data, true);
            out_of_order += u64::from(seq <= last && last != 0);
            last = seq;
            c.events += 1;
        });
        c.pending.drain(..used);
        c.next_seq = last;
        if c.events >= o.expect {
            done += 1;
        }
    }
    while done < conns.len() && Instant::now() < deadline {
        poll.poll(events, Some(Duration::from_millis(50))).expect("poll");
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            if c.events >= o.expect {
                continue;
            }
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => c.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
            let mut last = c.next_seq;
            let mut count = 0;
            let used = parse_events(&c.pending, |data| {
                let (seq, _) = stamps(data, true);
                out_of_order += u64::from(seq <= last && last != 0);
                last = seq;
                count += 1;
            });
            c.pending.drain(..used);
            c.next_seq = last;
            let before = c.events;
            c.events += count;
            if before < o.expect && c.events >= o.expect {
                done += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&pid) - cpu_start;
    let peak = std::fs::read_to_string(format!("/proc/{}/status", o.pid))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "{{\"mode\":\"resume\",\"clients\":{},\"complete\":{done},\"expect\":{},\"seconds\":{elapsed:.3},\"server_cpu_s\":{cpu:.3},\"peak_rss_kib\":{peak},\"out_of_order\":{out_of_order}}}",
        conns.len(),
        o.expect
    );
}
