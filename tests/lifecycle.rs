//! The library handle, graceful shutdown, and the binary's command line.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use wshub::{Config, Exit, Message, PublishError, Publisher, Server};

#[test]
fn publisher_is_a_thread_safe_handle() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Publisher>();

    let hub = Hub::default();
    let mut news = client(&hub, "/ws?topic=news");
    let mut other = client(&hub, "/ws?topic=other");
    let publisher = hub.publisher.clone();
    std::thread::spawn(move || {
        publisher.publish("news", "from a thread").unwrap();
        publisher.publish("news", Message::Binary(vec![1, 2, 3])).unwrap();
        publisher.publish("other", "done").unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(text(&mut news), "from a thread");
    assert_eq!(next_message(&mut news), tungstenite::Message::binary(vec![1u8, 2, 3]));
    assert_eq!(text(&mut other), "done");

    assert!(matches!(hub.publisher.publish("bad topic", "x"), Err(PublishError::InvalidTopic(_))));
    let too_big = "x".repeat(Config::default().max_message_size + 1);
    assert_eq!(hub.publisher.publish("news", too_big), Err(PublishError::TooLarge));
}

#[test]
fn a_full_publisher_queue_refuses_without_queueing() {
    let config = Config { publisher_queue: 2, listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let server = Server::bind(config).unwrap();
    let publisher = server.publisher();
    // The loop is not running yet, so nothing drains the queue.
    publisher.publish("t", "one").unwrap();
    publisher.publish("t", "two").unwrap();
    assert_eq!(publisher.publish("t", "three"), Err(PublishError::Full));
    let thread = std::thread::spawn(move || server.run());
    wait_until("the loop drained the queue", || publisher.publish("t", "again").is_ok());
    publisher.shutdown();
    thread.join().unwrap().unwrap();
    assert_eq!(publisher.stats().published, 3, "one, two and again; three was refused");
}

#[test]
fn stats_count_what_happened() {
    let mut hub = Hub::default();
    let mut a = client(&hub, "/ws?topic=t");
    let mut b = client(&hub, "/ws?topic=t&topic=u");
    for i in 0..5 {
        a.send(tungstenite::Message::text(format!("m{i}"))).unwrap();
        assert_eq!(text(&mut b), format!("m{i}"));
    }
    assert_eq!(status_of(&http(hub.addr, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")), 404);
    let mut bad = RawWs::connect(hub.addr, "/ws");
    bad.send_raw(&[0x81, 0x00]); // unmasked
    assert_eq!(bad.expect_close(), Some(1002));
    wait_until("the counters", || {
        let s = hub.publisher.stats();
        s.messages_in == 5 && s.rejected_with(404) == 1 && s.exited(Exit::ProtocolError) == 1
    });
    let s = hub.publisher.stats();
    assert_eq!((s.open, s.upgrades, s.accepted), (2, 3, 4));
    assert_eq!(s.deliveries, 10, "each message to a and b");
    assert_eq!(s.topics, 2);
    assert!(s.bytes_in > 0 && s.bytes_out > 0);
    drop(a);
    hub.stop().unwrap();
    let s = hub.publisher.stats();
    assert_eq!(s.open, 0, "final snapshot after run returned");
    assert_eq!(s.exited(Exit::ShuttingDown) + s.exited(Exit::ConnectionLost), 2);
}

#[test]
fn after_its_close_reply_the_hub_half_closes_and_lingers_for_the_peer() {
    let hub = Hub::default();
    let mut raw = RawWs::connect(hub.addr, "/ws");
    raw.send_frame(0x88, &1000u16.to_be_bytes());
    assert_eq!(raw.expect_close(), Some(1000));
    // Our side is still open: the hub has sent its FIN and waits for ours
    // (how long it waits is checked without sockets in hub.rs's tests).
    assert!(raw.wait_closed(), "FIN after the close frame");
    drop(raw);
    wait_until("gone after our FIN", || {
        let stats = hub.publisher.stats();
        stats.exited(Exit::ClientClosed) == 1 && stats.closing == 0 && stats.open == 0
    });
}

#[test]
fn publisher_shutdown_flushes_queues_then_closes_1001() {
    let mut hub = Hub::start(Config { max_message_size: 1 << 20, ..Config::default() });
    let mut raw = RawWs::connect(hub.addr, "/ws?topic=t");
    // More than the socket buffers hold, so part of it waits in the queue.
    for i in 0..3u8 {
        hub.publisher.publish("t", vec![i; 1 << 20]).unwrap();
    }
    let publisher = hub.publisher.clone();
    let stopper = std::thread::spawn(move || hub.stop());
    for i in 0..3u8 {
        let frame = raw.read_frame();
        assert_eq!((frame.opcode, frame.payload.len(), frame.payload[0]), (2, 1 << 20, i));
    }
    assert_eq!(raw.expect_close(), Some(1001));
    assert!(stopper.join().unwrap().is_ok(), "run() returns Ok after shutdown");
    assert_eq!(publisher.publish("t", "late"), Err(PublishError::Closed));
}

fn http_publish(addr: SocketAddr, topic: &str, body: &[u8]) -> String {
    let mut req =
        format!("POST /publish/{topic} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(body);
    http(addr, &req)
}

#[test]
fn sigterm_delivers_what_was_queued_then_1001_then_exits_0() {
    let mut bin = Binary::start(&["--max-message-size", "1048576"]);
    let mut raw = RawWs::connect(bin.addr, "/ws");
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for _ in 0..3 {
        assert_eq!(status_of(&http_publish(bin.addr, "all", &body)), 200);
    }
    bin.signal("TERM");
    for _ in 0..3 {
        let frame = raw.read_frame();
        assert_eq!(frame.payload, body);
    }
    assert_eq!(raw.expect_close(), Some(1001));
    let status = bin.wait_exit();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    bin.log.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("SIGTERM"), "{rest}");
}

#[test]
fn sigint_stops_accepting_and_exits_within_the_shutdown_timeout() {
    let mut bin = Binary::start(&["--shutdown-timeout", "1"]);
    // A client that never reads nor answers the close keeps the hub waiting
    // until --shutdown-timeout.
    let mut stubborn = TcpStream::connect(bin.addr).unwrap();
    stubborn.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let _ = stubborn.read(&mut buf).unwrap();
    let started = Instant::now();
    bin.signal("INT");
    assert_eq!(bin.wait_exit().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(TcpStream::connect(bin.addr).is_err(), "no longer accepting");
}

/// CPU seconds used so far by a process (utime + stime, in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
fn out_of_file_descriptors_refuses_at_once_without_spinning_then_recovers() {
    let mut bin = Binary::start_with_fd_limit(32);
    // More connections than descriptors: the hub keeps what it can and
    // closes the rest at once (a reserved descriptor to accept-and-close
    // with) instead of leaving them to time out in the backlog.
    let mut held: Vec<RawWs> = Vec::new();
    for _ in 0..12 {
        held.push(RawWs::connect(bin.addr, "/ws"));
    }
    let mut extra: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(bin.addr).unwrap()).collect();
    let mut refused = 0;
    for stream in extra.iter_mut() {
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            _ => {}
        }
    }
    assert!(refused >= 10, "only {refused} of 30 were closed at once");
    let mut line = String::new();
    loop {
        line.clear();
        assert!(bin.log.read_line(&mut line).unwrap() > 0, "wshub exited");
        if line.contains("out of file descriptors") {
            break;
        }
    }
    let before = cpu_seconds(bin.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(bin.child.id()) - before;
    assert!(used < 0.5, "the loop spun while out of descriptors: {used} CPU-s in 1 s");
    // Held clients still work.
    held[0].send_frame(0x81, b"still here");
    assert_eq!(held[0].read_frame().payload, b"still here");
    // Freeing descriptors lets new connections in again.
    drop(held);
    drop(extra);
    wait_until("accepting again", || {
        let response = http(bin.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        response.starts_with("HTTP/1.1 200")
    });
    bin.signal("TERM");
    assert_eq!(bin.wait_exit().code(), Some(0));
}

#[test]
fn command_line_help_version_and_bad_values() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = wshub_command();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let help = run(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in ["--listen", "--max-message-size", "--no-echo", "--publish-token", "--shutdown-timeout"] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    let version = run(&["--version"], &[]);
    assert!(String::from_utf8(version.stdout).unwrap().starts_with("wshub "));

    let bad = run(&["--max-connections", "lots"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--max-connections"));

    let bad_env = run(&[], &[("WSHUB_LISTEN", "not-an-address")]);
    assert_eq!(bad_env.status.code(), Some(2));
    assert!(String::from_utf8(bad_env.stderr).unwrap().contains("WSHUB_LISTEN"));
}
