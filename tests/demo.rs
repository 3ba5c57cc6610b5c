//! The `--demo` page in headless Chromium, driven the way a person would:
//! type topics, click Connect, see a publish arrive, type and send a
//! message, and see the close code when the hub goes away. Clicks and typing
//! are real input events sent over the DevTools protocol; a screenshot is
//! written to `target/demo-screenshot.png`.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::chromium::{self, Browser};
use common::*;
use serde_json::{Value, json};
use wshub::Config;

/// A DevTools protocol session with one page.
struct Page {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Attaches to the first page of the Chromium listening on `port`.
    fn attach(port: u16) -> Page {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut url = None;
        // The page target appears once Chromium has opened its window.
        wait_until("Chromium lists its page", || {
            let targets: Value = serde_json::from_str(&get_json(addr, "/json/list")).unwrap_or(Value::Null);
            url = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
            url.is_some()
        });
        let url = url.unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let (ws, _) = tungstenite::client::client(url.as_str(), stream).expect("DevTools WebSocket");
        Page { ws, next_id: 1 }
    }

    /// Calls a DevTools method and returns its result (events in between
    /// are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.ws.send(tungstenite::Message::text(request.to_string())).unwrap();
        loop {
            let tungstenite::Message::Text(text) = self.ws.read().expect("DevTools read") else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }));
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    fn text_of(&mut self, selector: &str) -> String {
        self.eval(&format!("document.querySelector({selector:?}).textContent")).as_str().unwrap_or("").to_string()
    }

    /// Waits until `check` holds for the page, within `PATIENCE`.
    fn wait_for(&mut self, what: &str, mut check: impl FnMut(&mut Page) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A real mouse click in the middle of the element.
    fn click(&mut self, selector: &str) {
        let center = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (center[0].as_f64().unwrap(), center[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            let event = json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 });
            self.call("Input.dispatchMouseEvent", event);
        }
    }

    /// Clicks into a text field and types `text`.
    fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.call("Input.insertText", json!({ "text": text }));
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = decode_base64(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

/// A GET to Chromium's DevTools HTTP endpoint, which keeps the connection
/// open: read the head, then exactly `Content-Length` bytes.
fn get_json(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let symbols: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(symbols.len() * 3 / 4);
    for chunk in symbols.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &v)| n | (v as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn the_demo_page_connects_receives_sends_and_shows_the_close_code() {
    if !chromium::available() {
        return;
    }
    let mut hub = Hub::start(Config { demo: true, ..Config::default() });
    let browser = Browser::open(&format!("http://{}/", hub.addr), "demo", true);
    let mut page = Page::attach(browser.devtools_port.unwrap());
    // The target may still show about:blank (itself "complete") at first.
    page.wait_for("the page to load", |p| {
        p.eval("document.readyState === 'complete' && document.querySelector('#state') !== null") == true
    });
    assert_eq!(page.text_of("#state"), "not connected");

    page.type_into("#topics", "news, sensors.t1");
    page.click("#connect");
    page.wait_for("the connection to open", |p| p.text_of("#state") == "open");

    // A publish on one of its topics shows up in the log.
    assert_eq!(
        status_of(&http(
            hub.addr,
            b"POST /publish/sensors.t1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\n21.5"
        )),
        200
    );
    page.wait_for("the publish to show", |p| p.text_of("#log").contains("\u{2190} 21.5"));

    // A message typed on the page reaches another client on its topics.
    let mut listener = RawWs::connect(hub.addr, "/ws?topic=news");
    page.type_into("#message", "typed in the browser");
    page.click("#send");
    assert_eq!(listener.read_frame().payload, b"typed in the browser");

    // The hub shuts down: the page shows close code 1001.
    hub.stop().unwrap();
    page.wait_for("the close code", |p| p.text_of("#state") == "closed 1001");
    assert!(page.text_of("#log").contains("closed with code 1001"));

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo-screenshot.png");
    page.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "a real screenshot");
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn without_demo_there_is_no_page() {
    let hub = Hub::default();
    assert_eq!(status_of(&http(hub.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")), 404);
    let demo = Hub::start(Config { demo: true, ..Config::default() });
    let response = http(demo.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status_of(&response), 200);
    assert!(
        response.contains("Content-Type: text/html; charset=utf-8") && response.contains("<title>wshub demo</title>")
    );
}

#[cfg(feature = "tls")]
#[test]
fn the_demo_page_over_https_connects_with_wss() {
    if !chromium::available() {
        return;
    }
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wshub-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
    let config = Config {
        demo: true,
        tls_cert: Some(dir.join("cert.pem")),
        tls_key: Some(dir.join("key.pem")),
        ..Config::default()
    };
    let hub = Hub::start(config);
    // A self-signed certificate: the browser is told to accept it.
    let url = format!("https://{}/", hub.addr);
    let browser = Browser::open_with(&url, "demo-tls", true, &["--ignore-certificate-errors"]);
    let mut page = Page::attach(browser.devtools_port.unwrap());
    page.wait_for("the page to load", |p| {
        p.eval("document.readyState === 'complete' && document.querySelector('#state') !== null") == true
    });
    page.click("#connect");
    page.wait_for("the wss connection to open", |p| p.text_of("#state") == "open");
    assert!(page.text_of("#log").contains("connecting to wss://"), "{}", page.text_of("#log"));
    hub.publisher.publish("all", "over wss").unwrap();
    page.wait_for("the message over wss", |p| p.text_of("#log").contains("\u{2190} over wss"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy on 127.0.0.1 in front of the hub whose connections the test
/// can cut, as a Wi-Fi roam or a cellular drop would.
struct Proxy {
    addr: std::net::SocketAddr,
    live: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let live: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
        let conns = live.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, live }
    }

    /// Cuts every connection through the proxy.
    fn cut(&self) {
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn an_event_source_resumes_across_two_drops_with_every_message_once_in_order() {
    if !chromium::available() {
        return;
    }
    let hub = Hub::start(Config { demo: true, history: 1000, ..Config::default() });
    let proxy = Proxy::start(hub.addr);
    let browser = Browser::open(&format!("http://{}/?topics=feed&sse=1&connect=1", proxy.addr), "sse", true);
    let mut page = Page::attach(browser.devtools_port.unwrap());
    page.wait_for("the stream to open", |p| {
        p.eval("document.readyState === 'complete' && document.querySelector('#state') !== null") == true
            && p.text_of("#state") == "open (SSE)"
    });
    let received = |p: &mut Page| p.eval("window.received.length").as_u64().unwrap_or(0);
    let mut sent = Vec::new();
    let mut publish = |n: usize| {
        for _ in 0..n {
            let message = format!("reading {}", sent.len());
            hub.publisher.publish("feed", message.as_str()).unwrap();
            sent.push(message);
        }
    };
    publish(5);
    page.wait_for("the first messages", |p| received(p) == 5);
    for _ in 0..2 {
        // The link drops; messages published meanwhile are kept by the hub.
        proxy.cut();
        page.wait_for("the page to see the drop", |p| p.text_of("#state") == "reconnecting");
        publish(5);
        // EventSource reconnects by itself with Last-Event-ID.
        page.wait_for("the stream to reopen", |p| p.text_of("#state") == "open (SSE)");
        publish(2);
    }
    let total = sent.len() as u64;
    page.wait_for("every message", |p| received(p) >= total);
    let got: Vec<String> = page
        .eval("window.received.map((e) => e.data)")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, sent, "every message exactly once, in order");
    let ids = page.eval("window.received.map((e) => e.id)");
    let seqs: Vec<u64> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().split('-').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(!page.text_of("#log").contains("gap"), "a complete resume needs no gap notice");
    wait_until("two complete resumes", || hub.publisher.stats().resumes_complete >= 2);
}
