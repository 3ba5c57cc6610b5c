//! systemd integration with real parts: readiness (`READY=1`, `STOPPING=1`)
//! read from a datagram socket the test owns, and socket activation through
//! `systemd-socket-activate` (Debian's `systemd` package), which passes the
//! listening socket as fd 3 the way systemd does.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use common::*;

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn notify_socket_test(socket: UnixDatagram, notify_socket: &str) {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0"]).env("NOTIFY_SOCKET", notify_socket);
    let mut bin = Binary::spawn(command);
    assert_eq!(recv(&socket), "READY=1");
    // Ready means serving.
    let _ws = RawWs::connect(bin.addr, "/ws");
    bin.signal("TERM");
    assert_eq!(recv(&socket), "STOPPING=1");
    assert!(bin.wait_exit().success());
}

#[test]
fn ready_and_stopping_go_to_the_notify_socket() {
    let path = std::env::temp_dir().join(format!("wshub-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    notify_socket_test(socket, path.to_str().unwrap());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("wshub-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    notify_socket_test(socket, &format!("@{name}"));
}

#[test]
fn socket_activation_uses_the_inherited_socket() {
    if !std::path::Path::new("/usr/bin/systemd-socket-activate").exists() {
        assert!(
            std::env::var_os("WSHUB_SKIP_SYSTEMD").is_some(),
            "needs systemd-socket-activate (apt-get install systemd), or WSHUB_SKIP_SYSTEMD=1 to skip"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // systemd-socket-activate listens, and starts wshub (same PID, fd 3) at
    // the first connection. --listen names an address wshub must not bind.
    let mut command = Command::new("systemd-socket-activate");
    command.args(["-l", &addr.to_string()]).args(wshub_argv()).args(["--listen", "127.0.0.1:9"]);
    let first = std::thread::spawn(move || {
        let mut ws = None;
        wait_until("systemd-socket-activate listens", || {
            ws = std::net::TcpStream::connect(addr).ok();
            ws.is_some()
        });
        RawWs::upgrade(ws.unwrap(), "/ws")
    });
    let mut bin = Binary::spawn(command);
    assert_eq!(bin.addr, addr, "it serves the inherited socket, not --listen");
    let mut early = first.join().expect("the connection that started it is served");
    let mut later = RawWs::connect(addr, "/ws");
    later.send_frame(0x81, b"hello");
    assert_eq!(early.read_frame().payload, b"hello");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
    // Nothing listens there now: the socket went with the hub.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn listen_fds_for_another_process_are_ignored() {
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0"]).env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
    let mut bin = Binary::spawn(command);
    let _ws = RawWs::connect(bin.addr, "/ws");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    if !std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        assert!(std::env::var_os("WSHUB_SKIP_SYSTEMD").is_some(), "needs systemd-analyze (apt-get install systemd)");
        return;
    }
    // The units as shipped, with ExecStart pointing at this build.
    let dir = std::env::temp_dir().join(format!("wshub-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    for name in ["wshub.service", "wshub.socket"] {
        let text = std::fs::read_to_string(contrib.join(name)).unwrap();
        std::fs::write(dir.join(name), text.replace("/usr/local/bin/wshub", env!("CARGO_BIN_EXE_wshub"))).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args([dir.join("wshub.socket"), dir.join("wshub.service")])
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && complaints.trim().is_empty(), "{complaints}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the hub with fd 3 set up by `setup` (a bash redirection, or
/// nothing: fd 3 closed) and `LISTEN_FDS=1` naming it; returns the exit
/// status and what it printed, or panics if it keeps running.
fn run_with_fd3(setup: &str) -> (std::process::ExitStatus, String) {
    let script = format!("{setup}; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\" --listen 127.0.0.1:0");
    let mut command = Command::new("bash");
    command.args(["-c", &script, "wshub"]).args(wshub_argv());
    let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // Still running: it adopted the wrong socket.
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

#[test]
fn an_inherited_fd_3_that_is_not_a_listening_tcp_socket_stops_startup() {
    let tcp_peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = format!("exec 3<>/dev/tcp/127.0.0.1/{}", tcp_peer.local_addr().unwrap().port());
    for (setup, why) in [
        ("exec 3>&-", "is not open"),
        ("exec 3</dev/null", "is not a socket"),
        (connected.as_str(), "is not listening"),
    ] {
        let (status, log) = run_with_fd3(setup);
        assert!(!status.success() && status.code().is_some(), "{setup}: exited with an error ({status}): {log}");
        // (Under qemu-user a closed fd 3 may hold the emulator's own file.)
        let said = log.contains(why) || (emulated() && why == "is not open" && log.contains("is not a socket"));
        assert!(log.contains("LISTEN_FDS: fd 3") && said, "{setup}: says why: {log}");
        assert!(!log.contains("listening on"), "{setup}: never claimed to listen: {log}");
    }
}

#[test]
fn a_datagram_socket_from_systemd_stops_startup() {
    if !std::path::Path::new("/usr/bin/systemd-socket-activate").exists() {
        assert!(std::env::var_os("WSHUB_SKIP_SYSTEMD").is_some(), "needs systemd-socket-activate");
        return;
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = Command::new("systemd-socket-activate");
    command.args(["--datagram", "-l", &format!("127.0.0.1:{port}")]).args(wshub_argv());
    let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
    // A datagram socket starts the program at the first datagram.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !log.contains("LISTEN_FDS") && std::time::Instant::now() < deadline {
        udp.send_to(b"wake", ("127.0.0.1", port)).unwrap();
        if let Ok(line) = received.recv_timeout(std::time::Duration::from_millis(100)) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("is not a stream socket"), "{log}");
}

#[test]
fn the_watchdog_is_petted_at_half_its_interval() {
    let path = std::env::temp_dir().join(format!("wshub-watchdog-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0"]).env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
    let mut bin = Binary::spawn(command);
    assert_eq!(recv(&socket), "READY=1");
    // At 200 ms each: a few in a second (the first at once).
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(recv(&socket), "WATCHDOG=1");
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(450), "not faster than every 200 ms");
    bin.signal("TERM");
    let mut rest = recv(&socket);
    while rest == "WATCHDOG=1" {
        rest = recv(&socket);
    }
    assert_eq!(rest, "STOPPING=1");
    assert!(bin.wait_exit().success());
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "tls")]
#[test]
fn a_reload_is_announced_with_reloading_then_ready() {
    use wshub::testing::test_peer::{TEST_CERT_PEM, TEST_KEY_PEM};
    let dir = std::env::temp_dir().join(format!("wshub-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, path) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("notify"));
    std::fs::write(&cert, TEST_CERT_PEM).unwrap();
    std::fs::write(&key, TEST_KEY_PEM).unwrap();
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = wshub_command();
    command.args(["--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    command.env("NOTIFY_SOCKET", &path);
    let mut bin = Binary::spawn(command);
    assert_eq!(recv(&socket), "READY=1");
    bin.signal("HUP");
    let reloading = recv(&socket);
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec > 0);
    assert_eq!(recv(&socket), "READY=1", "ready again after the reload");
    bin.signal("TERM");
    assert_eq!(recv(&socket), "STOPPING=1");
    assert!(bin.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}
