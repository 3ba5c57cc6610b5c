//! The hub under abuse, one test per attack (scaled down, same shape): memory
//! pressure, unfinished messages, floods, an unread log pipe, connection
//! floods, slow readers at shutdown, ping bursts, slow consumers that read
//! late, and rate limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wshub::{Config, Exit};

/// A connection from a chosen loopback source address.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// True if the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0))
        || matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn memory_pressure_is_bounded_and_memory_goes_back_afterwards() {
    // 24 clients each echo 65,000-byte messages to themselves and never read.
    // Per-client queues may hold 4 MiB each (96 MiB in all); the hub-wide
    // budget of 8 MiB must hold instead, and memory must be given back.
    const BUDGET: f64 = 8.0 * 1024.0 * 1024.0;
    let mut bin = Binary::start(&["--max-buffered-bytes", "8388608", "--queue-bytes", "4194304"]);
    // RSS says what the hub holds only when it runs natively: under
    // qemu-user it is the emulator's, whose translation cache never
    // shrinks. What the hub counts (`wshub_held_bytes`) is checked always.
    let native = !emulated();
    let baseline = if native { bin.rss_bytes() } else { 0 };
    let payload = vec![0x42u8; 65_000];
    let frame = masked_frame(0x82, &payload);
    let attackers: Vec<_> = (0..24)
        .map(|i| {
            let addr = bin.addr;
            let frame = frame.clone();
            thread::spawn(move || {
                let mut ws = RawWs::connect_small_window(addr, &format!("/ws?topic=self{i}"));
                ws.stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                for _ in 0..120 {
                    if ws.stream.write_all(&frame).is_err() {
                        break;
                    }
                }
                ws
            })
        })
        .collect();
    let (mut peak_rss, mut peak_held) = (0, 0.0f64);
    let mut sample = |bin: &Binary| {
        if native {
            peak_rss = peak_rss.max(bin.rss_bytes());
        }
        peak_held = peak_held.max(bin.metric("wshub_held_bytes"));
    };
    let mut attackers: Vec<RawWs> = attackers
        .into_iter()
        .map(|t| {
            sample(&bin);
            t.join().unwrap()
        })
        .collect();
    sample(&bin);
    bin.wait_for_log("over --max-buffered-bytes");
    // Whoever was dropped for the budget learns it with 1013 when it reads.
    let mut over_budget = 0;
    for ws in attackers.iter_mut() {
        ws.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        if let Some(Some(1013)) = read_close_code(ws) {
            over_budget += 1;
        }
    }
    eprintln!("baseline {baseline} B, peak {peak_rss} B RSS, peak {peak_held} B held, {over_budget} clients got 1013");
    assert!(over_budget > 0, "no client got 1013");
    // The budget is enforced after each read: one read and one frame over.
    assert!(peak_held <= BUDGET + 2.0 * 65_536.0 + 65_000.0, "the hub held {peak_held} B over an 8 MiB budget");
    if native {
        assert!(
            peak_rss < baseline + (48 << 20),
            "RSS peaked at {peak_rss} B from {baseline} B: the budget did not hold"
        );
    }
    drop(attackers);
    // After the pressure, what the hub holds goes back to nothing, and
    // (natively) RSS returns close to the baseline.
    wait_until("held bytes back to nothing", || bin.metric("wshub_held_bytes") < 64.0 * 1024.0);
    if native {
        wait_until("RSS back near its baseline", || bin.rss_bytes() < baseline + (6 << 20));
    }
    // And the hub still works.
    let mut ok = RawWs::connect(bin.addr, "/ws");
    ok.send_frame(0x81, b"fine");
    assert_eq!(ok.read_frame().payload, b"fine");
}

/// Reads frames until a close frame (its code) or the end of the stream.
/// `None` once the stream ends or goes quiet for the read timeout.
fn read_close_code(ws: &mut RawWs) -> Option<Option<u16>> {
    loop {
        match ws.try_read_frame_timeout() {
            Ok(Some(frame)) if frame.opcode == 8 => return Some(frame.close_code()),
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => return None,
        }
    }
}

#[test]
fn an_unfinished_message_is_closed_1008_after_the_message_timeout() {
    let hub = Hub::start(Config { message_timeout: Duration::from_millis(500), ..Config::default() });
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x01, &[b'x'; 1000]); // the first fragment, never finished
    // Keep talking (pings), which keeps the idle timeout away, not this one.
    let started = Instant::now();
    let code = loop {
        raw.send_frame(0x89, b"still here");
        let frame = raw.read_frame();
        if frame.opcode == 8 {
            break frame.close_code();
        }
        assert!(started.elapsed() < PATIENCE, "never closed");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(1008));
    assert!(started.elapsed() >= Duration::from_millis(500));
    wait_until("counted", || hub.publisher.stats().exited(Exit::Policy) == 1);
}

#[test]
fn a_flooding_client_does_not_starve_a_quiet_one() {
    let hub = Hub::start(Config { no_echo: true, ..Config::default() });
    // The flooder writes zero-length continuation frames of one endless
    // message, then 64-byte messages, as fast as the hub reads them.
    let addr = hub.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut ws = RawWs::connect(addr, "/ws?topic=flood");
            let mut burst = masked_frame(0x01, b"start");
            for _ in 0..10_000 {
                burst.extend(masked_frame(0x00, b""));
            }
            let messages: Vec<u8> = (0..1000).flat_map(|_| masked_frame(0x82, &[7; 64])).collect();
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = if round % 2 == 0 { &burst } else { &messages };
                if ws.stream.write_all(bytes).is_err() {
                    break;
                }
                if round % 2 == 0 {
                    ws.send_frame(0x80, b""); // finish the message
                }
                round += 1;
            }
        })
    };
    let mut a = client(&hub, "/ws?topic=quiet");
    let mut b = client(&hub, "/ws?topic=quiet");
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let sent = Instant::now();
        a.send(tungstenite::Message::text(format!("q{i}"))).unwrap();
        assert_eq!(text(&mut b), format!("q{i}"), "every quiet message, in order");
        worst = worst.max(sent.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooder.join().unwrap();
    // Generous, for a loaded 2-core machine with three busy threads: the
    // point is that the quiet client is served at all while the flooder
    // floods (before the fix it waited for the flooder's whole backlog).
    // The rule itself (one share per turn) is pinned in the hub's sans-IO
    // tests.
    assert!(worst < Duration::from_secs(5), "a quiet round trip took {worst:?}");
}

#[test]
fn an_unread_log_pipe_neither_stalls_nor_kills_the_hub() {
    // Debug logging writes a line per connection; nobody reads stderr. (The
    // connections come as fast as the test makes them: no rate limit.)
    let mut bin = Binary::start(&["--log-level", "debug", "--connection-rate-per-ip", "0"]);
    let addr = bin.addr;
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3000 {
        assert_eq!(status_of(&http(addr, healthz)), 200);
    }
    // Now the reader goes away for good: the next lines hit a closed pipe.
    let log = std::mem::replace(&mut bin.log, std::io::BufReader::new(dummy_stderr()));
    drop(log);
    for _ in 0..200 {
        assert_eq!(status_of(&http(addr, healthz)), 200);
    }
    bin.signal("TERM");
    assert_eq!(bin.wait_exit().code(), Some(0), "exited cleanly, not aborted");
}

/// The stderr of a short-lived child, to stand in for the log reader we drop.
fn dummy_stderr() -> std::process::ChildStderr {
    let mut child = std::process::Command::new("true").stderr(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    child.wait().unwrap();
    stderr
}

#[test]
fn connections_per_address_and_pending_requests_are_capped() {
    let hub = Hub::start(Config { max_connections_per_ip: 4, max_pending: 6, ..Config::default() });
    // Four silent connections from 127.0.0.2 are kept; the fifth is closed.
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect_from([127, 0, 0, 2], hub.addr)).collect();
    let mut fifth = connect_from([127, 0, 0, 2], hub.addr);
    assert!(closed_within(&mut fifth, PATIENCE), "over the per-address cap: closed at once");
    for stream in held.iter_mut() {
        assert!(!closed_within(stream, Duration::from_millis(50)), "the first four stay");
    }
    // Two more silent ones elsewhere reach 6 pending; a seventh is closed.
    held.push(connect_from([127, 0, 0, 3], hub.addr));
    held.push(connect_from([127, 0, 0, 3], hub.addr));
    let mut seventh = connect_from([127, 0, 0, 4], hub.addr);
    assert!(closed_within(&mut seventh, PATIENCE), "over --max-pending: closed at once");
    // A pending connection that finishes its request frees a place.
    held[4].write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let mut head = [0u8; 12];
    held[4].read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let real = RawWs::connect(hub.addr, "/ws");
    drop(real);
    wait_until("both refusals counted", || hub.publisher.stats().exited(Exit::Refused) == 2);
}

#[test]
fn connection_rate_per_address_is_capped_before_any_work() {
    let hub = Hub::start(Config { connection_rate_per_ip: 5, ..Config::default() });
    // A burst of five from 127.0.0.5 is kept; the sixth is closed at once.
    let mut held: Vec<TcpStream> = (0..5).map(|_| connect_from([127, 0, 0, 5], hub.addr)).collect();
    let mut sixth = connect_from([127, 0, 0, 5], hub.addr);
    assert!(closed_within(&mut sixth, PATIENCE), "over the rate: closed at once");
    for stream in held.iter_mut() {
        assert!(!closed_within(stream, Duration::from_millis(50)), "the first five stay");
    }
    let mut other = connect_from([127, 0, 0, 6], hub.addr);
    assert!(!closed_within(&mut other, Duration::from_millis(50)), "other addresses have their own rate");
    wait_until("the refusal counted", || hub.publisher.stats().exited(Exit::Refused) == 1);
    // The bucket refills at five a second: soon one more is let in.
    wait_until("a connection let in after the refill", || {
        let mut later = connect_from([127, 0, 0, 5], hub.addr);
        !closed_within(&mut later, Duration::from_millis(50))
    });
}

#[test]
fn shutdown_drains_a_slow_reader_for_the_whole_shutdown_timeout() {
    let mut bin = Binary::start(&["--shutdown-timeout", "30"]);
    let mut slow = RawWs::connect_small_window(bin.addr, "/ws?topic=t");
    const COUNT: usize = 40;
    for i in 0..COUNT {
        let mut body = vec![b'x'; 60_000];
        body[0] = i as u8;
        let mut request =
            format!("POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        request.extend_from_slice(&body);
        assert_eq!(status_of(&http(bin.addr, &request)), 200);
    }
    bin.signal("TERM");
    // Read slowly: about 600 KB/s, so the 2.4 MB take about 4 s (longer
    // than the old 2-second linger that cut such readers off).
    let mut received = 0;
    let code = loop {
        let frame = slow.read_frame();
        if frame.opcode == 8 {
            break frame.close_code();
        }
        assert_eq!(frame.payload[0], received as u8, "in order");
        received += 1;
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(received, COUNT, "everything queued was delivered");
    assert_eq!(code, Some(1001));
    assert_eq!(bin.wait_exit().code(), Some(0));
}

#[test]
fn a_burst_of_pings_gets_a_pong_not_a_slow_consumer_drop() {
    let hub = Hub::start(Config { queue_messages: 8, ..Config::default() });
    let mut raw = RawWs::connect(hub.addr, "/ws");
    let burst: Vec<u8> = (0..300u32).flat_map(|i| masked_frame(0x89, &i.to_be_bytes())).collect();
    raw.send_raw(&burst);
    raw.send_frame(0x81, b"after the pings");
    let mut pongs = Vec::new();
    loop {
        let frame = raw.read_frame();
        match frame.opcode {
            0xA => pongs.push(frame.payload),
            0x1 => {
                assert_eq!(frame.payload, b"after the pings");
                break;
            }
            other => panic!("unexpected frame {other} (a close for a slow consumer?)"),
        }
    }
    assert!(!pongs.is_empty() && pongs.len() <= 300);
    assert_eq!(pongs.last().unwrap(), &299u32.to_be_bytes(), "the latest ping is answered");
}

#[test]
fn a_slow_consumer_that_reads_late_still_gets_its_1013() {
    let hub = Hub::start(Config { queue_messages: 8, ..Config::default() });
    let mut slow = RawWs::connect_small_window(hub.addr, "/ws?topic=t");
    let mut reader = client(&hub, "/ws?topic=t");
    let mut n = 0;
    while hub.publisher.stats().exited(Exit::SlowConsumer) == 0 {
        hub.publish_and_wait(&mut reader, "t", vec![n as u8; 16 * 1024]);
        n += 1;
        assert!(n < 100_000, "never dropped");
    }
    // Longer than the old 2-second linger, shorter than --write-timeout.
    thread::sleep(Duration::from_secs(3));
    let (_, code) = slow.read_until_close();
    assert_eq!(code, Some(1013));
}

#[test]
fn rate_limits_count_messages_and_throttle_instead_of_disconnecting() {
    // A burst of 60 at 20 messages a second: the burst allowance is one
    // second's worth (20), the other 40 follow at the rate, 2 s in all. In
    // bytes: 30 x 1000 B at 10,000 B/s leaves 19 to follow, 1.9 s. Times are
    // measured from before the burst was sent, so a slow machine only makes
    // them longer.
    let cases = [
        (Config { rate_limit_messages: 20, ..Config::default() }, 60, 1, Duration::from_millis(1950)),
        (Config { rate_limit_bytes: 10_000, ..Config::default() }, 30, 1000, Duration::from_millis(1850)),
    ];
    for (config, count, size, at_least) in cases {
        let hub = Hub::start(config);
        let mut raw = RawWs::connect(hub.addr, "/ws");
        let burst: Vec<u8> = (0..count).flat_map(|i| masked_frame(0x82, &vec![i as u8; size])).collect();
        let sent = Instant::now();
        raw.send_raw(&burst);
        for i in 0..count {
            let frame = raw.read_frame();
            assert_eq!((frame.opcode, frame.payload), (2, vec![i as u8; size]), "in order, no close");
        }
        let took = sent.elapsed();
        assert!(took >= at_least, "not throttled by messages: all {count} came back in {took:?}");
        // Throttled, not disconnected: it goes on at the rate.
        raw.send_frame(0x81, b"next");
        assert_eq!(raw.read_frame().payload, b"next");
        assert_eq!(hub.publisher.stats().exits.iter().sum::<u64>(), 0);
    }
}
