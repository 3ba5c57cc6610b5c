//! Who may connect and publish: the Origin policy (same-origin by default,
//! `--allowed-origins` lists), the names the hub answers browsers by (DNS
//! rebinding), the credential-free loopback rule (proxies, IPv4-mapped
//! peers), and receive-only clients.

mod common;

use common::*;
use wshub::{Config, OriginPolicy};

/// The status of an upgrade that carries `Origin: origin` (Host: localhost).
fn upgrade_status(hub: &Hub, origin: Option<&str>) -> u16 {
    upgrade_status_as(hub.addr, "localhost", origin)
}

/// The status of an upgrade asking for `host`, with `Origin: origin`.
fn upgrade_status_as(addr: std::net::SocketAddr, host: &str, origin: Option<&str>) -> u16 {
    let mut request = upgrade_request("/ws").replace("Host: test\r\n", &format!("Host: {host}\r\n"));
    if let Some(origin) = origin {
        request = request.replace("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"));
    }
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
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
    assert_eq!(upgrade_status(&hub, Some("http://localhost")), 101, "same origin");
    assert_eq!(upgrade_status(&hub, Some("http://localhost:8443")), 403, "same host, other port");
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
    assert_eq!(upgrade_status(&hub, Some("http://localhost")), 403, "a list replaces same-origin");
    assert_eq!(upgrade_status(&hub, None), 101);
    let any = Hub::start(Config { allowed_origins: OriginPolicy::parse("*").unwrap(), ..Config::default() });
    assert_eq!(upgrade_status(&any, Some("https://anyone.example")), 101);
}

#[test]
fn a_browser_page_cannot_publish_cross_site_or_without_credentials() {
    let publish = |origin: &str| {
        format!(
            "POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n{origin}Authorization: Bearer s\r\n\r\nx"
        )
    };
    let hub = Hub::start(Config { publish_token: Some("s".into()), ..Config::default() });
    assert_eq!(status_of(&http(hub.addr, publish("Origin: https://evil.example\r\n").as_bytes())), 403);
    assert_eq!(status_of(&http(hub.addr, publish("Origin: http://localhost\r\n").as_bytes())), 200);
    assert_eq!(status_of(&http(hub.addr, publish("").as_bytes())), 200);
    // Without a token, loopback may publish, but not a page in a browser.
    let open = Hub::default();
    let page = "POST /publish/t HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nContent-Length: 1\r\n\r\nx";
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
    let publish = b"POST /publish/all HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi";
    let health = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    // The public port: /ws only.
    let mut ws = RawWs::connect(hub.addr, "/ws");
    assert_eq!(status_of(&http(hub.addr, publish)), 404);
    assert_eq!(status_of(&http(hub.addr, health)), 404);
    // The admin port: /publish and /healthz, no /ws.
    assert_eq!(upgrade_status_at(admin, None), 404);
    assert_eq!(status_of(&http(admin, health)), 200);
    let response = http(admin, publish);
    assert!(response.contains("{\"receivers\": 1, \"id\": \""), "{response}");
    assert_eq!(ws.read_frame().payload, b"hi");
}

fn upgrade_status_at(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let mut request = upgrade_request("/ws");
    if let Some(origin) = origin {
        request = request.replace("Host: test\r\n", &format!("Host: test\r\nOrigin: {origin}\r\n"));
    }
    status_of(&http(addr, request.as_bytes()))
}

#[test]
fn dns_rebinding_is_refused_unless_the_name_is_allowed() {
    // A page at rebind.evil.example whose name now points at the hub is
    // same-origin with itself; its requests carry its own name in Host.
    let hub = Hub::default();
    let port = hub.addr.port();
    let (host, origin) = (format!("rebind.evil.example:{port}"), format!("http://rebind.evil.example:{port}"));
    assert_eq!(upgrade_status_as(hub.addr, &host, Some(&origin)), 403, "/ws from the rebound page");
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(status_of(&http(hub.addr, metrics.as_bytes())), 403, "a same-origin GET: no Origin, same Host");
    let fetch = format!("GET /metrics HTTP/1.1\r\nHost: localhost:{port}\r\nSec-Fetch-Site: same-origin\r\n\r\n");
    assert_eq!(status_of(&http(hub.addr, fetch.as_bytes())), 403, "Sec-Fetch-*: a page, even by a good name");
    // The names the hub is known by.
    let by_ip = format!("127.0.0.1:{port}");
    assert_eq!(upgrade_status_as(hub.addr, &by_ip, Some(&format!("http://{by_ip}"))), 101);
    let lan = Hub::start(Config { allowed_hosts: vec!["hub.lan".into()], ..Config::default() });
    let lan_host = format!("hub.lan:{}", lan.addr.port());
    assert_eq!(upgrade_status_as(lan.addr, &lan_host, Some(&format!("http://{lan_host}"))), 101, "--allowed-hosts");
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {lan_host}\r\n\r\n");
    assert_eq!(status_of(&http(lan.addr, metrics.as_bytes())), 200);
}

#[test]
fn the_origin_scheme_must_be_the_listeners() {
    let hub = Hub::default();
    assert_eq!(upgrade_status(&hub, Some("https://localhost")), 403, "an https page on a plain hub");
    assert_eq!(upgrade_status(&hub, Some("http://localhost:80")), 101);
}

#[test]
fn a_same_host_proxy_does_not_make_everyone_loopback() {
    let hub = Hub::default();
    let publish = |extra: &str| {
        let request = format!("POST /publish/t HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 1\r\n\r\nx");
        status_of(&http(hub.addr, request.as_bytes()))
    };
    assert_eq!(publish(""), 200);
    for header in
        ["X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9", "X-Real-IP: 203.0.113.9", "Via: 1.1 proxy"]
    {
        assert_eq!(publish(&format!("{header}\r\n")), 403, "{header}");
    }
    assert_eq!(publish("X-Request-Id: 7\r\n"), 200, "other headers change nothing");
}

#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_loopback() {
    // Bound to [::], an IPv4 client from 127.0.0.1 arrives as ::ffff:127.0.0.1.
    let server = match wshub::Server::bind(Config { listen: "[::]:0".parse().unwrap(), ..Config::default() }) {
        Ok(server) => server,
        Err(e) => return eprintln!("no IPv6 here ({e}): nothing to test"),
    };
    let port = server.local_addr().port();
    let publisher = server.publisher();
    let thread = std::thread::spawn(move || server.run());
    let request = b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(status_of(&http(([127, 0, 0, 1], port).into(), request)), 200);
    publisher.shutdown();
    thread.join().unwrap().unwrap();
}

#[test]
fn an_origin_that_is_not_text_and_a_repeated_token_are_bad_requests() {
    let hub = Hub::default();
    let mut request = upgrade_request("/ws").into_bytes();
    let at = request.len() - 2;
    request.splice(at..at, b"Origin: http://\xff\r\n".iter().copied());
    assert_eq!(status_of(&http(hub.addr, &request)), 400, "not an absent Origin");
    let twice = upgrade_request("/ws?token=&token=abc");
    assert_eq!(status_of(&http(hub.addr, twice.as_bytes())), 400);
}
