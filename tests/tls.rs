//! `wss://`: the hub's behaviour over TLS, with a certificate generated here
//! (rcgen) and rustls clients that trust only it.
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::CertificateDer;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use wshub::{Config, Exit};

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files.
struct Cert {
    der: CertificateDer<'static>,
    config: Config,
    cert_pem: String,
    key_pem: String,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn cert() -> Cert {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wshub-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert_pem, key_pem) = (certified.cert.pem(), certified.key_pair.serialize_pem());
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let config = Config { tls_cert: Some(cert_path), tls_key: Some(key_path), ..Config::default() };
    Cert { der: certified.cert.der().clone(), config, cert_pem, key_pem }
}

/// A client session that trusts only `cert`, for `localhost`.
fn client_session(cert: &Cert) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
}

fn tls_connect(addr: SocketAddr, cert: &Cert) -> TlsClient {
    let conn = client_session(cert);
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn wss(hub: &Hub, cert: &Cert, path: &str) -> tungstenite::WebSocket<TlsClient> {
    wss_at(hub.addr, cert, path)
}

fn wss_at(addr: SocketAddr, cert: &Cert, path: &str) -> tungstenite::WebSocket<TlsClient> {
    let stream = tls_connect(addr, cert);
    let (ws, response) = tungstenite::client::client(format!("wss://localhost{path}"), stream).expect("wss upgrade");
    assert_eq!(response.status(), 101);
    ws
}

fn next_text(ws: &mut tungstenite::WebSocket<TlsClient>) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => panic!("binary {b:?}"),
            _ => continue,
        }
    }
}

/// Reads until the hub closes; returns the close code it sent, if any.
fn close_code(ws: &mut tungstenite::WebSocket<TlsClient>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn broadcast_and_topics_over_wss() {
    let cert = cert();
    let hub = Hub::start(cert.config.clone());
    let mut a = wss(&hub, &cert, "/ws?topic=t");
    let mut b = wss(&hub, &cert, "/ws?topic=t");
    let mut other = wss(&hub, &cert, "/ws?topic=u");
    a.send(Message::text("over TLS")).unwrap();
    assert_eq!(next_text(&mut a), "over TLS");
    assert_eq!(next_text(&mut b), "over TLS");
    // Many messages, some larger than one TLS record, in order.
    for i in 0..200 {
        let body = format!("{i:04}{}", "x".repeat(i * 150));
        hub.publisher.publish("t", body.clone()).unwrap();
        assert_eq!(next_text(&mut b), body);
    }
    hub.publisher.publish("u", "for u").unwrap();
    assert_eq!(next_text(&mut other), "for u");
}

#[test]
fn close_codes_and_shutdown_over_wss() {
    let cert = cert();
    let mut hub = Hub::start(Config { max_message_size: 1000, ..cert.config.clone() });
    let mut ws = wss(&hub, &cert, "/ws");
    ws.send(Message::binary(vec![0u8; 2000])).unwrap();
    assert_eq!(close_code(&mut ws), Some(1009));
    let mut polite = wss(&hub, &cert, "/ws");
    polite.close(Some(CloseFrame { code: CloseCode::from(4000), reason: "bye".into() })).unwrap();
    assert_eq!(close_code(&mut polite), Some(4000), "the hub echoes the client's code");
    let mut staying = wss(&hub, &cert, "/ws");
    hub.publisher.publish("all", "before shutdown").unwrap();
    assert_eq!(next_text(&mut staying), "before shutdown");
    hub.stop().unwrap();
    assert_eq!(close_code(&mut staying), Some(1001));
}

#[test]
fn a_slow_consumer_over_tls_is_dropped_not_the_hub() {
    let cert = cert();
    let hub = Hub::start(Config { queue_messages: 8, ..cert.config.clone() });
    let _stalled = wss(&hub, &cert, "/ws?topic=t");
    let mut reader = wss(&hub, &cert, "/ws?topic=t");
    let mut n = 0;
    while hub.publisher.stats().exited(Exit::SlowConsumer) == 0 {
        let body = format!("{n}{}", "y".repeat(16 * 1024));
        hub.publisher.publish("t", body.clone()).unwrap();
        assert_eq!(next_text(&mut reader), body, "the reader keeps getting everything");
        n += 1;
        assert!(n < 100_000, "never dropped");
    }
}

#[test]
fn idle_clients_and_stalled_handshakes_are_dropped_in_time() {
    let cert = cert();
    let config = Config {
        idle_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_millis(500),
        // Room for a TLS handshake on a loaded machine (a debug build).
        handshake_timeout: Duration::from_secs(3),
        ..cert.config.clone()
    };
    let hub = Hub::start(config);
    // Upgraded over TLS, then silent (pings unanswered): dropped.
    let mut silent = tls_connect(hub.addr, &cert);
    silent.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = silent.read_to_end(&mut sink);
    assert!(String::from_utf8_lossy(&sink).starts_with("HTTP/1.1 101"), "upgraded first");
    assert!(started.elapsed() < PATIENCE);
    // A TCP connection that never finishes its TLS handshake.
    let mut stalled = TcpStream::connect(hub.addr).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00, 0x50]).unwrap(); // a record header, no body
    assert_eq!(stalled.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed by --handshake-timeout");
    wait_until("both counted", || {
        let stats = hub.publisher.stats();
        stats.exited(Exit::IdleTimeout) == 1 && stats.exited(Exit::HandshakeTimeout) == 1
    });
}

#[test]
fn plaintext_http_on_the_tls_port_gets_no_http_answer() {
    let cert = cert();
    let hub = Hub::start(cert.config.clone());
    let mut plain = TcpStream::connect(hub.addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&reply));
    // What comes back, if anything, is a TLS alert record.
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
    wait_until("counted as a TLS error", || hub.publisher.stats().exited(Exit::TlsError) == 1);
    // The hub goes on serving TLS clients.
    let mut ws = wss(&hub, &cert, "/ws");
    ws.send(Message::text("still fine")).unwrap();
    assert_eq!(next_text(&mut ws), "still fine");
}

#[test]
fn bad_certificate_files_stop_startup() {
    let cert = cert();
    let bind = |config: Config| wshub::Server::bind(Config { listen: "127.0.0.1:0".parse().unwrap(), ..config });
    let only_cert = Config { tls_key: None, ..cert.config.clone() };
    assert!(bind(only_cert).err().unwrap().to_string().contains("go together"));
    let swapped = Config { tls_cert: cert.config.tls_key.clone(), ..cert.config.clone() };
    assert!(bind(swapped).is_err());
    let missing = Config { tls_key: Some("/nonexistent/key.pem".into()), ..cert.config.clone() };
    assert!(bind(missing).err().unwrap().to_string().contains("/nonexistent/key.pem"));
}

#[test]
fn sighup_reloads_the_certificate_while_connections_stay_open() {
    let first = cert();
    let (cert_path, key_path) = (first.config.tls_cert.clone().unwrap(), first.config.tls_key.clone().unwrap());
    let mut bin = Binary::start(&["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()]);
    let mut before = wss_at(bin.addr, &first, "/ws");

    // Renewed in place, as an ACME client does, then SIGHUP.
    let second = cert();
    std::fs::write(&cert_path, &second.cert_pem).unwrap();
    std::fs::write(&key_path, &second.key_pem).unwrap();
    bin.signal("HUP");
    bin.wait_for_log("reloaded the TLS certificate");
    let mut after = wss_at(bin.addr, &second, "/ws");
    let refused = tungstenite::client::client("wss://localhost/ws", tls_connect(bin.addr, &first));
    assert!(refused.is_err(), "new handshakes present the new certificate");
    after.send(Message::text("after the reload")).unwrap();
    assert_eq!(next_text(&mut before), "after the reload", "the connection from before stays open");

    // A bad file keeps the current pair.
    std::fs::write(&key_path, "not a key").unwrap();
    bin.signal("HUP");
    bin.wait_for_log("keeping the current TLS certificate");
    let mut still = wss_at(bin.addr, &second, "/ws");
    still.send(Message::text("still served")).unwrap();
    assert_eq!(next_text(&mut still), "still served");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

/// A client TLS stream presenting `identity` (a chain and its key), if any.
fn tls_connect_as(
    addr: SocketAddr,
    server: &Cert,
    identity: Option<(Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn client_certificates_must_chain_to_the_client_ca() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_named = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        (params.self_signed(&key).unwrap(), key)
    };
    let (fleet_ca, fleet_key) = ca_named("Fleet CA");
    let (other_ca, other_key) = ca_named("Some other CA");
    let device = |cn: &str, ca: &rcgen::Certificate, ca_key: &KeyPair, expired: bool| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::OrganizationName, "Fleet");
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, ca, ca_key).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Some((vec![cert.der().clone()], key))
    };
    let server = cert();
    let ca_file = server.config.tls_cert.as_ref().unwrap().with_file_name("client-ca.pem");
    std::fs::write(&ca_file, fleet_ca.pem()).unwrap();
    let (cert_path, key_path) = (server.config.tls_cert.clone().unwrap(), server.config.tls_key.clone().unwrap());
    let mut bin = Binary::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--tls-client-ca",
        ca_file.to_str().unwrap(),
    ]);
    let upgrade =
        |stream: TlsClient| tungstenite::client::client("wss://localhost/ws", stream).map_err(|e| e.to_string());

    let (mut ws, _) = upgrade(tls_connect_as(bin.addr, &server, device("device-17", &fleet_ca, &fleet_key, false)))
        .expect("a device of the fleet connects");
    ws.send(Message::text("from device-17")).unwrap();
    assert_eq!(next_text(&mut ws), "from device-17");
    let line = bin.wait_for_log("client certificate");
    assert!(line.contains("CN=device-17") && line.contains("O=Fleet"), "the subject is logged: {line}");

    for (what, identity) in [
        ("signed by another CA", device("intruder", &other_ca, &other_key, false)),
        ("expired", device("old-device", &fleet_ca, &fleet_key, true)),
        ("no certificate", None),
    ] {
        assert!(upgrade(tls_connect_as(bin.addr, &server, identity)).is_err(), "{what}: refused");
        bin.wait_for_log("TLS failed");
    }
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[test]
fn a_partial_tls_record_counts_in_the_memory_budget() {
    let cert = cert();
    let hub = Hub::start(cert.config.clone());
    let mut client = tls_connect(hub.addr, &cert);
    client.conn.complete_io(&mut client.sock).unwrap();
    wait_until("the handshake is done on both sides", || hub.publisher.stats().pending == 1);
    let before = hub.publisher.stats().held_bytes;
    // An application-data record header announcing 16 KiB, and half of it.
    client.sock.write_all(&[0x17, 0x03, 0x03, 0x40, 0x00]).unwrap();
    client.sock.write_all(&[0u8; 8 * 1024]).unwrap();
    wait_until("the hub counts what it holds", || hub.publisher.stats().held_bytes >= before + 8 * 1024);
}

// The audit's pre-authentication crash: half of a post-handshake message
// (rustls keeps it, joined in place, and needs it back on every call) and
// then anything the hub writes. Each variant must leave the hub serving.

use wshub::testing::test_peer::{self, APPLICATION_DATA, HANDSHAKE, RecordPeer};

/// The hub binary on TLS with the test certificate (a crash shows as the
/// process gone, whatever its panic setting).
fn tls_binary(extra: &[&str]) -> (Binary, Cert) {
    let cert = test_cert();
    let (cert_path, key_path) = (cert.config.tls_cert.clone().unwrap(), cert.config.tls_key.clone().unwrap());
    let mut args = vec!["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_string).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Binary::start(&args), cert)
}

/// [`test_peer::TEST_CERT_PEM`] as the hub's files, and trusted by `wss`.
fn test_cert() -> Cert {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wshub-tls-peer-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, test_peer::TEST_CERT_PEM).unwrap();
    std::fs::write(&key_path, test_peer::TEST_KEY_PEM).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(test_peer::TEST_CERT_PEM.as_bytes()).unwrap();
    let config = Config { tls_cert: Some(cert_path), tls_key: Some(key_path), ..Config::default() };
    Cert { der, config, cert_pem: test_peer::TEST_CERT_PEM.into(), key_pem: test_peer::TEST_KEY_PEM.into() }
}

/// A record peer connected to `addr`, its handshake done.
fn record_peer(addr: SocketAddr) -> (TcpStream, RecordPeer) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let peer = RecordPeer::connect(&mut tcp).expect("TLS handshake");
    (tcp, peer)
}

/// Half of a KeyUpdate's header: two of its four bytes.
const HALF_A_MESSAGE: &[u8] = &[24, 0];

/// Application data from the hub until `needle` is in it.
fn read_until(tcp: &mut TcpStream, peer: &mut RecordPeer, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.windows(needle.len()).any(|w| w == needle) {
        let data = peer.read_application_data(tcp).unwrap_or_else(|| panic!("connection ended: {got:?}"));
        got.extend(data);
    }
    got
}

#[test]
fn half_a_handshake_message_then_the_answer_to_a_request_keeps_the_hub_up() {
    let (bin, cert) = tls_binary(&[]);
    for request in ["GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let (mut tcp, mut peer) = record_peer(bin.addr);
        let mut flight = peer.seal(APPLICATION_DATA, request.as_bytes());
        flight.extend(peer.seal(HANDSHAKE, HALF_A_MESSAGE));
        tcp.write_all(&flight).unwrap();
        let answer = read_until(&mut tcp, &mut peer, b"\r\n\r\n");
        assert!(answer.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&answer));
    }
    // Still serving.
    let mut ws = wss_at(bin.addr, &cert, "/ws");
    ws.send(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut ws), "after");
}

#[test]
fn half_a_handshake_message_then_a_broadcast_and_a_shutdown_keep_the_hub_whole() {
    let (mut bin, cert) = tls_binary(&[]);
    let (mut tcp, mut peer) = record_peer(bin.addr);
    tcp.write_all(&peer.seal(APPLICATION_DATA, upgrade_request("/ws?topic=t").as_bytes())).unwrap();
    read_until(&mut tcp, &mut peer, b"\r\n\r\n");
    tcp.write_all(&peer.seal(HANDSHAKE, HALF_A_MESSAGE)).unwrap();
    // A broadcast to the upgraded client: the hub encrypts with the half
    // message kept.
    let mut sender = wss_at(bin.addr, &cert, "/ws?topic=t");
    sender.send(Message::text("to everyone")).unwrap();
    assert_eq!(next_text(&mut sender), "to everyone");
    read_until(&mut tcp, &mut peer, b"to everyone");
    // The shutdown: a close frame (encrypted), then close_notify.
    bin.signal("TERM");
    let close = read_until(&mut tcp, &mut peer, &1001u16.to_be_bytes());
    assert_eq!(close[0], 0x88, "a close frame: {close:?}");
    assert_eq!(peer.read_application_data(&mut tcp), None, "nothing after the close frame");
    assert_eq!(peer.alerts, [vec![1, 0]], "close_notify after the close frame");
    assert_eq!(bin.wait_exit().code(), Some(0), "exited cleanly");
}

#[test]
fn a_flood_of_tiny_records_is_cut_off_without_starving_others() {
    let (mut bin, cert) = tls_binary(&["--no-echo"]);
    let (mut tcp, mut peer) = record_peer(bin.addr);
    tcp.write_all(&peer.seal(APPLICATION_DATA, upgrade_request("/ws?topic=flood").as_bytes())).unwrap();
    read_until(&mut tcp, &mut peer, b"\r\n\r\n");
    // A continuation-free text frame sent one byte per record: 23 bytes of
    // TLS (an AEAD open each) per byte of data.
    let frame = masked_frame(0x81, &[b'x'; 60_000]);
    let flood: Vec<u8> = frame.iter().flat_map(|b| peer.seal(APPLICATION_DATA, std::slice::from_ref(b))).collect();
    let flooder = std::thread::spawn(move || {
        // Until the hub cuts it off (true), or for as long as a test waits.
        tcp.set_write_timeout(Some(PATIENCE)).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if tcp.write_all(&flood).is_err() {
                return true;
            }
        }
        false
    });
    let mut a = wss_at(bin.addr, &cert, "/ws?topic=quiet");
    let mut b = wss_at(bin.addr, &cert, "/ws?topic=quiet");
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let sent = Instant::now();
        a.send(Message::text(format!("q{i}"))).unwrap();
        assert_eq!(next_text(&mut b), format!("q{i}"));
        worst = worst.max(sent.elapsed());
    }
    assert!(flooder.join().unwrap(), "the flooder was never cut off");
    let line = bin.wait_for_log("TLS failed");
    assert!(line.contains("records almost empty"), "{line}");
    // Generous for a loaded machine (the rule is pinned in sans-IO tests).
    assert!(worst < Duration::from_secs(5), "a quiet round trip took {worst:?}");
}

#[test]
fn a_page_must_be_https_to_be_same_origin_with_a_tls_hub() {
    let cert = cert();
    let hub = Hub::start(cert.config.clone());
    let status = |origin: &str| {
        let mut stream = tls_connect(hub.addr, &cert);
        let request =
            upgrade_request("/ws").replace("Host: test\r\n", &format!("Host: localhost\r\nOrigin: {origin}\r\n"));
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        status_of(&String::from_utf8_lossy(&head))
    };
    assert_eq!(status("https://localhost"), 101);
    assert_eq!(status("http://localhost:443"), 403, "an http page on a TLS hub");
    assert_eq!(status("http://localhost"), 403);
}

#[test]
fn a_tls_failure_after_data_counts_as_a_tls_error() {
    let cert = test_cert();
    let hub = Hub::start(cert.config.clone());
    let mut listener = wss(&hub, &cert, "/ws");
    let (mut tcp, mut peer) = record_peer(hub.addr);
    let mut flight = peer.seal(APPLICATION_DATA, upgrade_request("/ws").as_bytes());
    let mut bad = peer.seal(APPLICATION_DATA, &masked_frame(0x81, b"never"));
    let last = bad.len() - 1;
    bad[last] ^= 1; // a record that fails to decrypt, right after the request
    flight.extend(bad);
    tcp.write_all(&flight).unwrap();
    wait_until("counted as a TLS error", || hub.publisher.stats().exited(Exit::TlsError) == 1);
    assert_eq!(hub.publisher.stats().exited(Exit::ConnectionLost), 0);
    assert_eq!(hub.publisher.stats().upgrades, 2, "the request before the bad record was served");
    listener.send(Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut listener), "still here");
}

/// A TCP stream that counts the reads that returned bytes.
struct CountingTcp(TcpStream, Arc<std::sync::atomic::AtomicUsize>);

impl Read for CountingTcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n > 0 {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl Write for CountingTcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `--write-delay` over TLS: a steady stream arrives whole and in order in
/// a few full records instead of one record per message.
#[test]
fn a_steady_stream_with_a_write_delay_leaves_in_few_records_over_tls() {
    const COUNT: u32 = 60;
    let cert = cert();
    let hub = Hub::start(Config { write_delay: Duration::from_millis(100), ..cert.config.clone() });
    let conn = client_session(&cert);
    let tcp = TcpStream::connect(hub.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = rustls::StreamOwned::new(conn, CountingTcp(tcp, Arc::clone(&reads)));
    let (mut ws, _) = tungstenite::client::client("wss://localhost/ws?topic=feed", stream).expect("wss upgrade");
    let before = reads.load(std::sync::atomic::Ordering::Relaxed);
    let publisher = hub.publisher.clone();
    let feed = std::thread::spawn(move || {
        for i in 0..COUNT {
            publisher.publish("feed", format!("{i:03} of the feed")).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for i in 0..COUNT {
        match ws.read().unwrap() {
            Message::Text(text) => assert_eq!(text.as_str(), format!("{i:03} of the feed"), "in order"),
            other => panic!("{other:?}"),
        }
    }
    feed.join().unwrap();
    let reads = reads.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(reads <= 15, "{reads} reads for {COUNT} messages");
}

/// After a peak of connections the hub gives memory back: its own tables
/// shrink, no TLS session cache pins the heap (resumption is by stateless
/// tickets), and freed pages go back to the system (RSS stayed 3.4 MiB up
/// after 3,000 TLS clients left, twice its baseline after 1,000).
#[test]
fn memory_goes_back_after_a_peak_of_tls_connections() {
    if emulated() {
        return; // the RSS under an emulator is the emulator's
    }
    let limits = ["--max-connections-per-ip", "5000", "--connection-rate-per-ip", "0", "--max-pending", "5000"];
    let (hub, cert) = tls_binary(&limits);
    let baseline = hub.rss_bytes();
    // 3,000 clients upgraded over TLS; the test keeps only their sockets
    // (the hub keeps its side of each session).
    let sockets: Vec<TcpStream> = (0..3000)
        .map(|_| {
            let ws = wss_at(hub.addr, &cert, "/ws");
            let stream: TlsClient = ws.into_inner();
            stream.sock
        })
        .collect();
    let peak = hub.rss_bytes();
    drop(sockets);
    let mut last = 0;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        last = hub.rss_bytes();
        if last < baseline + (2 << 20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last < baseline + (2 << 20),
        "RSS: {} KiB before, {} KiB with 3,000 clients, {} KiB after",
        baseline >> 10,
        peak >> 10,
        last >> 10
    );
    eprintln!("RSS: {} KiB before, {} KiB with 3,000 clients, {} KiB after", baseline >> 10, peak >> 10, last >> 10);
}
