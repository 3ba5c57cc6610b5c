//! `GET /metrics` read by a real Prometheus text parser (the
//! `prometheus_client` Python package, which `.ci/run` installs), with the
//! counters checked against what the test did.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use wshub::{Config, Exit};

/// Parses exposition text with `prometheus_client.parser` and returns every
/// sample as `name{label="value",...}` (labels sorted) -> value. Panics if
/// the parser refuses the text.
fn parse(text: &str) -> HashMap<String, f64> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.documentation, family.name
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{family.type} {s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text (pip install prometheus_client?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (kind, rest) = line.split_once(' ').unwrap();
        let (name, value) = rest.rsplit_once(' ').unwrap();
        assert!(["counter", "gauge"].contains(&kind), "{line}");
        samples.insert(name.to_string(), value.parse().unwrap());
    }
    samples
}

fn scrape(addr: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&response), 200, "{response}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
    (body.to_string(), parse(body))
}

#[test]
fn counters_match_what_happened() {
    // Publishes come over new connections as fast as the test makes them.
    let hub = Hub::start(Config { queue_messages: 8, connection_rate_per_ip: 0, ..Config::default() });
    // N = 3 clients on topic t (one of them never reads), and one on u.
    let mut slow = RawWs::connect_small_window(hub.addr, "/ws?topic=t");
    let mut reader = client(&hub, "/ws?topic=t");
    let mut talker = RawWs::connect(hub.addr, "/ws?topic=t");
    let _other = RawWs::connect(hub.addr, "/ws?topic=u");
    // M = 5 messages from a client, each delivered to the 3 clients on t.
    for i in 0..5u8 {
        talker.send_frame(0x81, &[b'a' + i]);
        assert_eq!(text(&mut reader), ((b'a' + i) as char).to_string());
        assert_eq!(talker.read_frame().payload, [b'a' + i], "its own echo");
    }
    // K = 2 + 1 rejections: two 404s and a 405.
    for request in [&b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"[..], b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"] {
        assert_eq!(status_of(&http(hub.addr, request)), 404);
    }
    assert_eq!(status_of(&http(hub.addr, b"POST /ws HTTP/1.1\r\nHost: t\r\n\r\n")), 405);
    // One slow-consumer drop: publish over HTTP until the stalled client goes.
    let mut http_publishes = 0;
    while hub.publisher.stats().exited(Exit::SlowConsumer) == 0 {
        let body = vec![b'x'; 16 * 1024];
        let mut request =
            format!("POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        request.extend_from_slice(&body);
        assert_eq!(status_of(&http(hub.addr, &request)), 200);
        http_publishes += 1;
        let _ = next_message(&mut reader);
        let _ = talker.read_frame();
        assert!(http_publishes < 10_000, "never dropped");
    }
    let (_, code) = slow.read_until_close();
    assert_eq!(code, Some(1013));
    wait_until("the slow client is gone", || hub.publisher.stats().open == 3);

    let (text, m) = scrape(hub.addr);
    let get = |name: &str| *m.get(name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    assert_eq!(get(r#"wshub_connections{state="open"}"#), 3.0);
    assert_eq!(get("wshub_upgrades_total{}"), 4.0);
    assert_eq!(get("wshub_messages_received_total{}"), 5.0);
    assert_eq!(get("wshub_http_publishes_total{}"), http_publishes as f64);
    assert_eq!(get("wshub_messages_published_total{}"), http_publishes as f64);
    // 5 messages x 3 receivers, then each publish to t's receivers (the slow
    // one until its queue filled).
    assert!(get("wshub_deliveries_total{}") >= (15 + 2 * http_publishes) as f64);
    assert_eq!(get(r#"wshub_http_rejections_total{status="404"}"#), 2.0);
    assert_eq!(get(r#"wshub_http_rejections_total{status="405"}"#), 1.0);
    assert_eq!(get(r#"wshub_disconnects_total{code="1013",reason="slow_consumer"}"#), 1.0);
    assert_eq!(get(r#"wshub_disconnects_total{reason="rejected"}"#), 3.0);
    assert_eq!(get(r#"wshub_disconnects_total{reason="http_done"}"#), http_publishes as f64, "answered publishes");
    assert_eq!(get("wshub_topics{}"), 2.0);
    // Accepted: 4 clients, 3 rejected requests, every publish, and this scrape.
    assert_eq!(get("wshub_connections_accepted_total{}"), (4 + 3 + http_publishes + 1) as f64);
    assert!(get("wshub_received_bytes_total{}") > 0.0 && get("wshub_sent_bytes_total{}") > 0.0);
    assert_eq!(get("wshub_held_bytes_limit{}"), (64 * 1024 * 1024) as f64);
    assert!(get("process_resident_memory_bytes{}") > 1e6);
    assert!(get("process_open_fds{}") >= 4.0, "the listener and three clients at least");
    assert!(get("process_cpu_seconds_total{}") > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = get("process_start_time_seconds{}");
    assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");
    assert_eq!(get(r#"wshub_build_info{version="0.1.0"}"#), 1.0);
}

/// One unlabelled sample, read without the parser (which takes a Python
/// start per call), for polling.
fn gauge(addr: std::net::SocketAddr, name: &str) -> f64 {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let line = response.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `process_open_fds` is counted from the hub's own books (listing
/// `/proc/self/fd` cost 10 ms a scrape at 10,000 clients), and
/// `wshub_queued_bytes` is summed once a second: both still follow what
/// happens.
#[test]
fn open_fds_and_queued_bytes_follow_the_connections() {
    // Queues large enough to hold more than the kernel's socket buffers.
    let config = Config { queue_bytes: 64 << 20, max_message_size: 256 << 10, ..Config::default() };
    let hub = Hub::start(config);
    let fds = || gauge(hub.addr, "process_open_fds");
    let before = fds();
    let mut clients: Vec<RawWs> = (0..30).map(|_| RawWs::connect(hub.addr, "/ws?topic=t")).collect();
    // Each scrape counts its own connection, so the difference is exact once
    // the previous scrape's connection is gone.
    wait_until("30 more descriptors", || fds() == before + 30.0);
    // A client that does not read: its queue fills, and the gauge shows it.
    let stalled = RawWs::connect_small_window(hub.addr, "/ws?topic=s");
    // Whatever the kernel's buffers take first (up to tcp_wmem's 4 MiB);
    // at most 64 x 256 KiB, under the queue's bounds.
    let mut sent = 0;
    wait_until("queued bytes show", || {
        if sent < 64 {
            hub.publisher.publish("s", vec![7u8; 256 << 10]).unwrap();
            sent += 1;
        }
        gauge(hub.addr, "wshub_queued_bytes") > 0.0
    });
    for client in &mut clients {
        client.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(client.expect_close(), Some(1000));
    }
    drop(clients);
    wait_until("the descriptors back", || fds() == before + 1.0);
    let _ = stalled.stream.shutdown(std::net::Shutdown::Both);
}

#[test]
fn metrics_follow_the_publish_access_rule_and_the_admin_listener() {
    let locked = Hub::start(Config { publish_token: Some("s3cret".into()), ..Config::default() });
    let ask = |hub: &Hub, auth: &str| {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
        status_of(&http(hub.addr, request.as_bytes()))
    };
    assert_eq!(ask(&locked, ""), 401);
    assert_eq!(ask(&locked, "Authorization: Bearer s3cret\r\n"), 200);
    let open = Hub::default();
    assert_eq!(ask(&open, ""), 200, "loopback, nothing configured");
    assert_eq!(ask(&open, "Origin: http://test\r\n"), 403, "not from a browser page");

    let config = Config { admin_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() };
    let hub = Hub::start(config);
    assert_eq!(status_of(&http(hub.addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")), 404);
    let (_, m) = scrape(hub.admin.unwrap());
    assert!(m.contains_key(r#"wshub_connections{state="open"}"#));
}

#[cfg(feature = "redis")]
#[test]
fn redis_figures_parse_and_count() {
    if !common::redis::available() {
        return;
    }
    let redis = common::redis::Redis::start();
    let hub = Hub::start(Config { redis: Some(redis.parsed_url()), ..Config::default() });
    let mut reader = client(&hub, "/ws?topic=t");
    wait_until("the hub on wshub:t", || redis.numsub("wshub:t") == 1);
    for i in 0..3 {
        hub.publisher.publish("t", format!("m{i}")).unwrap();
        assert_eq!(text(&mut reader), format!("m{i}"));
    }
    assert_eq!(redis.publish("wshub:t", "from a backend"), 1);
    assert_eq!(text(&mut reader), "from a backend");
    // PUBLISH replies come on the other link, in their own time.
    let confirmed = || scrape(hub.addr).1.get("wshub_redis_publishes_total{}") == Some(&3.0);
    wait_until("Redis confirming the three PUBLISHes", confirmed);
    let (text, m) = scrape(hub.addr);
    let get = |name: &str| *m.get(name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    assert_eq!(get(r#"wshub_redis_up{link="subscriber"}"#), 1.0);
    assert_eq!(get(r#"wshub_redis_up{link="publisher"}"#), 1.0);
    assert_eq!(get(r#"wshub_redis_connects_total{link="publisher"}"#), 1.0);
    assert_eq!(get(r#"wshub_redis_failures_total{link="subscriber"}"#), 0.0);
    assert_eq!(get(r#"wshub_redis_unshared_total{reason="unavailable"}"#), 0.0);
    assert_eq!(get("wshub_redis_received_total{}"), 1.0, "its own three came back and were ignored");
    assert_eq!(get("wshub_redis_invalid_total{}"), 0.0);
    assert_eq!(get("wshub_redis_channels{}"), 1.0);
}
