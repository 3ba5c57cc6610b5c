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
