//! Who may connect and publish: the Origin policy (same-origin by default,
//! `--allowed-origins` lists) and receive-only clients.

mod common;

use common::*;
use wshub::{Config, OriginPolicy};

/// The status of an upgrade that carries `Origin: origin` (Host: test).
fn upgrade_status(hub: &Hub, origin: Option<&str>) -> u16 {
    let mut request = upgrade_request("/ws");
    if let Some(origin) = origin {
        request = request.replace("Host: test\r\n", &format!("Host: test\r\nOrigin: {origin}\r\n"));
    }
    let mut stream = std::net::TcpStream::connect(hub.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).unwrap();
    status_of(&String::from_utf8_lossy(&head))
}

#[test]
fn by_default_only_same_origin_pages_and_non_browsers_connect() {
    let hub = Hub::default();
    assert_eq!(upgrade_status(&hub, None), 101, "no Origin: not a browser");
    assert_eq!(upgrade_status(&hub, Some("http://test")), 101, "same origin");
    assert_eq!(upgrade_status(&hub, Some("http://test:8443")), 403, "same host, other port");
    assert_eq!(upgrade_status(&hub, Some("http://evil.example")), 403, "cross-site");
    assert_eq!(upgrade_status(&hub, Some("null")), 403);
}

#[test]
fn allowed_origins_admit_exact_and_wildcard_origins() {
    let policy = OriginPolicy::parse("https://app.example.com,https://*.example.org").unwrap();
    let hub = Hub::start(Config { allowed_origins: policy, ..Config::default() });
    assert_eq!(upgrade_status(&hub, Some("https://app.example.com")), 101);
    assert_eq!(upgrade_status(&hub, Some("https://eu.example.org")), 101, "wildcard subdomain");
    assert_eq!(upgrade_status(&hub, Some("https://example.org")), 403);
    assert_eq!(upgrade_status(&hub, Some("http://test")), 403, "a list replaces same-origin");
    assert_eq!(upgrade_status(&hub, None), 101);
    let any = Hub::start(Config { allowed_origins: OriginPolicy::parse("*").unwrap(), ..Config::default() });
    assert_eq!(upgrade_status(&any, Some("https://anyone.example")), 101);
}

#[test]
fn a_browser_page_cannot_publish_cross_site_or_without_credentials() {
    let publish = |origin: &str| {
        format!(
            "POST /publish/t HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\n{origin}Authorization: Bearer s\r\n\r\nx"
        )
    };
    let hub = Hub::start(Config { publish_token: Some("s".into()), ..Config::default() });
    assert_eq!(status_of(&http(hub.addr, publish("Origin: https://evil.example\r\n").as_bytes())), 403);
    assert_eq!(status_of(&http(hub.addr, publish("Origin: http://test\r\n").as_bytes())), 200);
    assert_eq!(status_of(&http(hub.addr, publish("").as_bytes())), 200);
    // Without a token, loopback may publish, but not a page in a browser.
    let open = Hub::default();
    let page = "POST /publish/t HTTP/1.1\r\nHost: test\r\nOrigin: http://test\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(status_of(&http(open.addr, page.as_bytes())), 403);
}

#[test]
fn receive_only_clients_get_1008_for_a_data_frame() {
    let hub = Hub::start(Config { no_client_publish: true, ..Config::default() });
    let mut listener = RawWs::connect(hub.addr, "/ws");
    let mut talker = RawWs::connect(hub.addr, "/ws");
    talker.send_frame(0x81, b"may I?");
    assert_eq!(talker.expect_close(), Some(1008));
    // The application still publishes; pings are still answered.
    listener.send_frame(0x89, b"ping");
    assert_eq!(listener.read_frame().opcode, 0xA);
    hub.publisher.publish("all", "from the application").unwrap();
    assert_eq!(listener.read_frame().payload, b"from the application");
}

#[test]
fn an_admin_listener_takes_the_admin_routes_off_the_public_port() {
    let config = Config { admin_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() };
    let hub = Hub::start(config);
    let admin = hub.admin.expect("an admin address");
    let publish = b"POST /publish/all HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi";
    let health = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    // The public port: /ws only.
    let mut ws = RawWs::connect(hub.addr, "/ws");
    assert_eq!(status_of(&http(hub.addr, publish)), 404);
    assert_eq!(status_of(&http(hub.addr, health)), 404);
    // The admin port: /publish and /healthz, no /ws.
    assert_eq!(upgrade_status_at(admin, None), 404);
    assert_eq!(status_of(&http(admin, health)), 200);
    let response = http(admin, publish);
    assert!(response.ends_with("{\"receivers\": 1}\n"), "{response}");
    assert_eq!(ws.read_frame().payload, b"hi");
}

fn upgrade_status_at(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let mut request = upgrade_request("/ws");
    if let Some(origin) = origin {
        request = request.replace("Host: test\r\n", &format!("Host: test\r\nOrigin: {origin}\r\n"));
    }
    status_of(&http(addr, request.as_bytes()))
}
