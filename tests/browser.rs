//! A real browser against the hub: headless Chromium loads a page from an
//! allowed origin that connects with a token and receives a publish; the same
//! page served from another origin is refused at the upgrade.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`; `.ci/run` installs it).
//! Set `WSHUB_SKIP_BROWSER=1` to skip on a machine without it.
#![cfg(feature = "jwt")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::chromium::{self, Browser};
use common::jwt::hs256_with;
use common::*;
use wshub::{Config, OriginPolicy};

const SECRET: &str = "a browser-test secret of at least 32 bytes";

fn hs256(claims: &str) -> String {
    hs256_with(SECRET.as_bytes(), claims)
}

/// The page: connects to the hub and reports every event back to the server
/// it came from, so the test sees what the page saw.
fn page(hub: SocketAddr, token: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>wshub browser test</title>
<script>
function report(what) {{ fetch("/report?" + encodeURIComponent(what)); }}
const ws = new WebSocket("ws://{hub}/ws?topic=news&token={token}");
ws.onopen = () => report("open");
ws.onmessage = (e) => report("message:" + e.data);
ws.onclose = (e) => report("close:" + e.code);
</script>"#
    )
}

/// The page's HTML, filled in once the hub's address is known.
type Html = Arc<Mutex<String>>;

/// Serves the page on a port of its own (its own origin) and forwards the
/// page's reports.
fn serve_page(html: Html, reports: Sender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let html = html.lock().unwrap().clone();
            if !answer(stream, &html, &reports) {
                return;
            }
        }
    });
    addr
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The next report from the page, within `PATIENCE` (a cold Chromium start
/// on a loaded machine takes seconds).
fn next_report(reports: &Receiver<String>) -> String {
    reports.recv_timeout(PATIENCE).expect("the page reported nothing in time")
}

#[test]
fn a_page_from_an_allowed_origin_connects_with_a_token_and_another_origin_is_refused() {
    if !chromium::available() {
        return;
    }
    let (allowed_tx, allowed_reports) = channel();
    let (other_tx, other_reports) = channel();
    let token = hs256(r#"{"sub":"browser","subscribe":["news"]}"#);
    let secret = std::env::temp_dir().join(format!("wshub-browser-secret-{}", std::process::id()));
    std::fs::write(&secret, SECRET).unwrap();

    // The hub's policy names the allowed page's origin, and the page names
    // the hub: serve first, fill the HTML in once the hub is up.
    let (allowed_html, other_html) = (Html::default(), Html::default());
    let allowed = serve_page(allowed_html.clone(), allowed_tx);
    let other = serve_page(other_html.clone(), other_tx);
    let policy = OriginPolicy::parse(&format!("http://{allowed}")).unwrap();
    let hub =
        Hub::start(Config { jwt_secret_file: Some(secret.clone()), allowed_origins: policy, ..Config::default() });
    *allowed_html.lock().unwrap() = page(hub.addr, &token);
    *other_html.lock().unwrap() = page(hub.addr, &token);

    let started = Instant::now();
    let _browser = Browser::open(&format!("http://{allowed}/"), "allowed", false);
    assert_eq!(next_report(&allowed_reports), "open", "the allowed page connects");
    hub.publisher.publish("news", "hello, browser").unwrap();
    assert_eq!(next_report(&allowed_reports), "message:hello, browser");
    eprintln!("allowed origin: connected and received in {:?}", started.elapsed());

    let _refused = Browser::open(&format!("http://{other}/"), "other", false);
    // A refused upgrade is an abnormal closure (1006) for the page.
    assert_eq!(next_report(&other_reports), "close:1006", "the other origin is refused");
    let _ = std::fs::remove_file(&secret);
}

/// Answers one request of the allowed page's server; false when the test
/// is over.
fn answer(mut stream: TcpStream, html: &str, reports: &Sender<String>) -> bool {
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return true;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let body = match path.strip_prefix("/report?") {
        Some(report) => {
            if reports.send(percent_decode(report)).is_err() {
                return false;
            }
            ""
        }
        None if path == "/" => html,
        None => "",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    true
}

/// The compression page: reports the negotiated extensions, sends one
/// message (Chromium compresses it), and reports each message it gets.
fn compression_page(hub: SocketAddr, outgoing: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>wshub compression test</title>
<script>
function report(what) {{ fetch("/report?" + encodeURIComponent(what)); }}
const ws = new WebSocket("ws://{hub}/ws?topic=telemetry");
ws.onopen = () => {{ report("open:" + ws.extensions); ws.send({outgoing:?}); }};
ws.onmessage = (e) => report("message:" + e.data);
ws.onclose = (e) => report("close:" + e.code);
</script>"#
    )
}

#[test]
fn a_page_negotiates_compression_and_both_directions_arrive_intact() {
    if !chromium::available() {
        return;
    }
    let (tx, reports) = channel();
    let html = Html::default();
    let origin = serve_page(html.clone(), tx);
    let policy = OriginPolicy::parse(&format!("http://{origin}")).unwrap();
    let hub = Hub::start(Config { allowed_origins: policy, ..Config::default() });
    let telemetry = |seq: u32| {
        let readings: Vec<String> = (0..24)
            .map(|i| format!(r#"{{"sensor":"temp-{i}","value":{}.{},"unit":"C"}}"#, 20 + seq % 7, i % 10))
            .collect();
        format!(r#"{{"gateway":"edge-3","seq":{seq},"readings":[{}]}}"#, readings.join(","))
    };
    let from_page = telemetry(0);
    *html.lock().unwrap() = compression_page(hub.addr, &from_page);
    let mut listener = RawWs::connect(hub.addr, "/ws?topic=telemetry");

    let _browser = Browser::open(&format!("http://{origin}/"), "compression", false);
    let open = next_report(&reports);
    assert!(open.starts_with("open:permessage-deflate"), "{open}");
    assert!(open.contains("server_no_context_takeover") && open.contains("client_no_context_takeover"), "{open}");
    // What the page sent, compressed by Chromium, reaches a plain client exactly.
    let frame = listener.read_frame();
    assert!(!frame.rsv1);
    assert_eq!(String::from_utf8(frame.payload).unwrap(), from_page);
    assert_eq!(next_report(&reports), format!("message:{from_page}"), "its own message, back compressed");
    for seq in 1..=3 {
        let message = telemetry(seq);
        hub.publisher.publish("telemetry", message.as_str()).unwrap();
        assert_eq!(next_report(&reports), format!("message:{message}"));
    }
    wait_until("the page's deliveries were compressed", || {
        let stats = hub.publisher.stats();
        stats.compressed_deliveries >= 4 && stats.inflated_messages >= 1
    });
}
