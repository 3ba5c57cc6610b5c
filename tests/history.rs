//! Message ids, per-topic history, Server-Sent Events and resume, over real
//! sockets: what an `EventSource` or `curl -N` sees, and what a WebSocket
//! client asking for `?last=N` gets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use wshub::Config;

/// One event as a client parses it (`id:` alone is a resume point).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: Option<String>,
    kind: Option<String>,
    data: Option<String>,
}

/// A Server-Sent Events client reading the stream by hand.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    head: String,
}

impl Sse {
    fn connect(addr: SocketAddr, target: &str, headers: &str) -> Sse {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{headers}\r\n").unwrap();
        let mut sse = Sse { stream, buf: Vec::new(), head: String::new() };
        loop {
            if let Some(end) = sse.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                sse.head = String::from_utf8(sse.buf.drain(..end + 4).collect()).unwrap();
                return sse;
            }
            sse.fill();
        }
    }

    fn status(&self) -> u16 {
        status_of(&self.head)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "stream closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next event or resume point (comments skipped).
    fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut event = Event { id: None, kind: None, data: None };
                for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with(':')) {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.kind = Some(value.to_string()),
                        "data" => {
                            event.data = Some(match event.data.take() {
                                Some(data) => format!("{data}\n{value}"),
                                None => value.to_string(),
                            })
                        }
                        _ => panic!("unexpected line {line:?}"),
                    }
                }
                if event.id.is_none() && event.kind.is_none() && event.data.is_none() {
                    continue; // only comments
                }
                return event;
            }
            self.fill();
        }
    }

    /// The data events up to the next resume point, and its id.
    fn until_resume_point(&mut self) -> (Vec<Event>, String) {
        let mut events = Vec::new();
        loop {
            let event = self.next();
            if event.data.is_none() && event.kind.is_none() {
                return (events, event.id.unwrap());
            }
            events.push(event);
        }
    }

    /// True once the hub has closed the stream.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn history(n: usize) -> Config {
    Config { history: n, ..Config::default() }
}

/// Publishes over HTTP; the id the hub answers.
fn publish(hub: &Hub, topic: &str, body: &str) -> String {
    let request =
        format!("POST /publish/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let response = http(hub.addr, request.as_bytes());
    assert_eq!(status_of(&response), 200, "{response}");
    let id = response.split("\"id\": \"").nth(1).and_then(|rest| rest.split('"').next()).expect("an id");
    id.to_string()
}

fn data(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_deref().unwrap_or("")).collect()
}

#[test]
fn events_carry_ids_topics_and_every_line_of_the_payload() {
    let hub = Hub::default();
    let mut sse = Sse::connect(hub.addr, "/sse?topic=news&topic=sport", "");
    assert_eq!(sse.status(), 200);
    assert!(sse.head.contains("Content-Type: text/event-stream"), "{}", sse.head);
    // Right after the headers: the current id, with no data.
    let first = sse.next();
    assert_eq!((first.kind.as_deref(), first.data.as_deref()), (None, None));
    let epoch = first.id.unwrap().split('-').next().unwrap().to_string();
    let id1 = publish(&hub, "news", "line one\nline two");
    let e = sse.next();
    assert_eq!(e, Event { id: Some(id1.clone()), kind: Some("news".into()), data: Some("line one\nline two".into()) });
    assert!(id1.starts_with(&format!("{epoch}-")));
    // CR, CRLF, a trailing newline, an empty message.
    publish(&hub, "sport", "a\r\nb\rc\n");
    assert_eq!(sse.next().data.as_deref(), Some("a\nb\nc\n"));
    publish(&hub, "sport", "");
    assert_eq!(sse.next().data.as_deref(), Some(""));
    // Binary is skipped; the next text message still arrives.
    hub.publisher.publish("news", vec![0u8, 159, 146, 150]).unwrap();
    let id4 = publish(&hub, "news", "after binary");
    let e = sse.next();
    assert_eq!((e.id.as_deref(), e.data.as_deref()), (Some(id4.as_str()), Some("after binary")));
    // Ids count across topics, one per message.
    let seq = |id: &str| id.split('-').nth(1).unwrap().parse::<u64>().unwrap();
    assert_eq!(seq(&id4), seq(&id1) + 4);
    wait_until("counted", || hub.publisher.stats().sse_binary_skipped == 1);
}

#[test]
fn a_message_through_two_topics_is_one_event_with_one_id() {
    let hub = Hub::start(history(10));
    let mut sender = client(&hub, "/ws?topic=a&topic=b");
    let mut sse = Sse::connect(hub.addr, "/sse?topic=a&topic=b", "");
    sse.next();
    sender.send(tungstenite::Message::text("both")).unwrap();
    assert_eq!(text(&mut sender), "both");
    let e = sse.next();
    assert_eq!(e.data.as_deref(), Some("both"));
    let id = e.id.unwrap();
    // A resume from before it replays it once.
    let seq: u64 = id.split('-').nth(1).unwrap().parse().unwrap();
    let before = format!("{}-{}", id.split('-').next().unwrap(), seq - 1);
    let mut again = Sse::connect(hub.addr, "/sse?topic=a&topic=b", &format!("Last-Event-ID: {before}\r\n"));
    let (events, resume) = again.until_resume_point();
    assert_eq!(data(&events), ["both"]);
    assert_eq!(resume, id);
}

#[test]
fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed_then_the_live_stream() {
    let hub = Hub::start(history(100));
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t", "");
    let start = sse.next().id.unwrap();
    publish(&hub, "t", "1");
    let seen = sse.next().id.unwrap();
    drop(sse);
    publish(&hub, "t", "2");
    publish(&hub, "other", "not mine");
    publish(&hub, "t", "3");
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t", &format!("Last-Event-ID: {seen}\r\n"));
    let (events, resume) = sse.until_resume_point();
    assert_eq!(data(&events), ["2", "3"]);
    // The resume point is the hub's current id: that of "3", the last message.
    assert_eq!(Some(resume), events.last().unwrap().id.clone());
    let live = publish(&hub, "t", "4");
    assert_eq!(sse.next().id, Some(live));
    // A client that saw no message resumes from the id it got first.
    let mut fresh = Sse::connect(hub.addr, "/sse?topic=t", &format!("Last-Event-ID: {start}\r\n"));
    let (events, _) = fresh.until_resume_point();
    assert_eq!(data(&events), ["1", "2", "3", "4"]);
    wait_until("counted", || hub.publisher.stats().resumes_complete == 2);
}

#[test]
fn since_in_the_query_resumes_and_the_header_wins_over_it() {
    let hub = Hub::start(history(100));
    let first = publish(&hub, "t", "1");
    let second = publish(&hub, "t", "2");
    publish(&hub, "t", "3");
    let mut sse = Sse::connect(hub.addr, &format!("/sse?topic=t&since={first}"), "");
    assert_eq!(data(&sse.until_resume_point().0), ["2", "3"]);
    let mut sse =
        Sse::connect(hub.addr, &format!("/sse?topic=t&since={first}"), &format!("Last-Event-ID: {second}\r\n"));
    assert_eq!(data(&sse.until_resume_point().0), ["3"]);
}

#[test]
fn what_cannot_be_proven_complete_starts_with_a_gap_event() {
    let hub = Hub::start(history(2));
    let first = publish(&hub, "t", "1");
    for n in 2..=4 {
        publish(&hub, "t", &n.to_string());
    }
    let (epoch, seq) = first.split_once('-').unwrap();
    let current = format!("{epoch}-{}", seq.parse::<u64>().unwrap() + 3);
    let gap = Event { id: None, kind: Some("wshub/gap".into()), data: Some(current.clone()) };
    // Evicted after the id (the history keeps 2 per topic), another epoch,
    // an id from the future, and a Last-Event-ID that is not an id.
    let future = format!("{epoch}-{}", seq.parse::<u64>().unwrap() + 100);
    for last in [first.as_str(), "1234abcd-1", future.as_str(), "not an id"] {
        let mut sse = Sse::connect(hub.addr, "/sse?topic=t", &format!("Last-Event-ID: {last}\r\n"));
        assert_eq!(sse.status(), 200);
        let (events, resume) = sse.until_resume_point();
        assert_eq!(events[0], gap, "{last}");
        assert_eq!(data(&events[1..]), ["3", "4"], "{last}: then what it still has");
        assert_eq!(resume, current);
    }
    wait_until("counted", || hub.publisher.stats().resumes_gap == 4);
}

#[test]
fn malformed_since_and_last_are_bad_requests() {
    let hub = Hub::start(history(10));
    for target in ["/sse?since=xyz", "/sse?since=1-2-3", "/sse?last=abc", "/sse?last=-1", "/ws?last=x"] {
        let response = http(hub.addr, format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        if target.starts_with("/ws") {
            // /ws checks the upgrade first; with the upgrade headers it is a 400 too.
            let request = upgrade_request(target);
            assert_eq!(status_of(&http(hub.addr, request.as_bytes())), 400, "{target}");
        } else {
            assert_eq!(status_of(&response), 400, "{target}");
        }
    }
    let response = http(hub.addr, b"POST /sse HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status_of(&response), 405);
}

#[test]
fn last_n_replays_each_topics_last_messages_on_sse_and_websocket() {
    let hub = Hub::start(history(3));
    for n in 1..=5 {
        publish(&hub, "a", &format!("a{n}"));
        publish(&hub, "b", &format!("b{n}"));
    }
    let mut sse = Sse::connect(hub.addr, "/sse?topic=a&topic=b&last=2", "");
    assert_eq!(data(&sse.until_resume_point().0), ["a4", "b4", "a5", "b5"]);
    // Above --history it is served as --history.
    let mut ws = client(&hub, "/ws?topic=a&last=50");
    assert_eq!([text(&mut ws), text(&mut ws), text(&mut ws)], ["a3", "a4", "a5"]);
    // However large the count.
    let mut big = Sse::connect(hub.addr, "/sse?topic=a&last=12345678901", "");
    assert_eq!(data(&big.until_resume_point().0), ["a3", "a4", "a5"]);
    publish(&hub, "a", "live");
    assert_eq!(text(&mut ws), "live");
}

#[test]
fn history_older_than_its_ttl_is_evicted() {
    let hub = Hub::start(Config { history: 10, history_ttl: Duration::from_secs(1), ..Config::default() });
    publish(&hub, "t", "old");
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t&last=5", "");
    assert_eq!(data(&sse.until_resume_point().0), ["old"], "kept at first");
    wait_until("evicted by age", || hub.publisher.stats().history_evictions[2] == 1);
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t&last=5", "");
    assert_eq!(sse.until_resume_point().0, []);
}

#[test]
fn sse_is_admitted_like_websocket() {
    let hub = Hub::default();
    let mut refused = Sse::connect(hub.addr, "/sse", "Origin: http://evil.example\r\n");
    assert_eq!(refused.status(), 403);
    assert!(refused.closed());
    let bad_topic = Sse::connect(hub.addr, "/sse?topic=a%20b", "");
    assert_eq!(bad_topic.status(), 400);
    let full = Hub::start(Config { max_connections: 1, ..Config::default() });
    let mut first = Sse::connect(full.addr, "/sse", "");
    first.next();
    assert_eq!(Sse::connect(full.addr, "/sse", "").status(), 503, "SSE clients count against --max-connections");
    assert_eq!(upgrade_status_at(full.addr), 503, "and WebSocket clients with them");
}

fn upgrade_status_at(addr: SocketAddr) -> u16 {
    status_of(&http(addr, upgrade_request("/ws").as_bytes()))
}

#[test]
fn a_slow_sse_consumer_is_dropped_then_resumes_with_nothing_lost() {
    let hub = Hub::start(Config { history: 1000, queue_messages: 8, ..history(1000) });
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&hub.addr.into()).unwrap();
    let mut slow: TcpStream = socket.into();
    slow.write_all(b"GET /sse?topic=t HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    wait_until("subscribed", || hub.publisher.stats().sse_clients == 1);
    // A reader that keeps up records the ids.
    let mut fast = Sse::connect(hub.addr, "/sse?topic=t", "");
    fast.next();
    let payload = "x".repeat(2000);
    let mut ids = Vec::new();
    for _ in 0..200 {
        hub.publisher.publish("t", payload.as_str()).unwrap();
        ids.push(fast.next().id.unwrap());
        if hub.publisher.stats().sse_clients == 1 {
            break;
        }
    }
    wait_until("the slow consumer is dropped", || hub.publisher.stats().sse_clients == 1);
    // It read nothing; it resumes from the first id it would have seen.
    let (epoch, seq) = ids[0].split_once('-').unwrap();
    let before = format!("{epoch}-{}", seq.parse::<u64>().unwrap() - 1);
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t", &format!("Last-Event-ID: {before}\r\n"));
    let (events, _) = sse.until_resume_point();
    let got: Vec<String> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(got, ids, "every message, once, in order, with no gap");
}

#[test]
fn a_replay_larger_than_the_queue_streams_as_the_queue_drains() {
    let hub = Hub::start(Config { queue_messages: 8, ..history(500) });
    for n in 0..300 {
        hub.publisher.publish("t", format!("m{n}")).unwrap();
    }
    wait_until("kept", || hub.publisher.stats().history_messages == 300);
    let mut ws = client(&hub, "/ws?topic=t&last=300");
    for n in 0..300 {
        assert_eq!(text(&mut ws), format!("m{n}"));
    }
    hub.publisher.publish("t", "live").unwrap();
    assert_eq!(text(&mut ws), "live");
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t&last=301", "");
    let (events, _) = sse.until_resume_point();
    assert_eq!(events.len(), 301);
    let stats = hub.publisher.stats();
    assert_eq!(stats.exited(wshub::Exit::SlowConsumer), 0, "never a slow-consumer drop");
}

#[test]
fn memory_pressure_evicts_history_before_any_client() {
    let hub = Hub::start(Config { max_buffered_bytes: 512 * 1024, history_bytes: 64 << 20, ..history(10_000) });
    let mut reader = client(&hub, "/ws?topic=t");
    let payload = vec![b'y'; 4096];
    for _ in 0..400 {
        hub.publish_and_wait_text(&mut reader, "t", &payload);
    }
    wait_until("evicted for memory", || hub.publisher.stats().history_evictions[3] > 0);
    let stats = hub.publisher.stats();
    assert!(stats.held_bytes <= 512 * 1024, "{}", stats.held_bytes);
    assert_eq!(stats.exited(wshub::Exit::OverBudget), 0, "no client was dropped");
    reader.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(text(&mut reader), "still here");
}

trait PublishText {
    fn publish_and_wait_text(&self, reader: &mut Client, topic: &str, payload: &[u8]);
}

impl PublishText for Hub {
    fn publish_and_wait_text(&self, reader: &mut Client, topic: &str, payload: &[u8]) {
        let text = String::from_utf8(payload.to_vec()).unwrap();
        self.publisher.publish(topic, text.as_str()).unwrap();
        assert_eq!(common::text(reader), text);
    }
}

#[test]
fn an_idle_stream_gets_comments_and_is_never_an_idle_timeout() {
    let hub = Hub::start(Config {
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..Config::default()
    });
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t", "");
    sse.next();
    // Well past the idle timeout, with comments on the way.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        sse.fill();
    }
    assert!(sse.buf.windows(2).filter(|w| w == b":\n").count() >= 2, "{:?}", String::from_utf8_lossy(&sse.buf));
    sse.buf.clear();
    let id = publish(&hub, "t", "still open");
    assert_eq!(sse.next().id, Some(id));
}

#[test]
fn a_shutdown_ends_the_stream_after_what_is_queued() {
    let mut hub = Hub::default();
    let mut sse = Sse::connect(hub.addr, "/sse?topic=t", "");
    sse.next();
    hub.publisher.publish("t", "last words").unwrap();
    assert_eq!(sse.next().data.as_deref(), Some("last words"));
    hub.stop().unwrap();
    assert!(sse.closed());
}
