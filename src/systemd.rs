//! systemd without libsystemd: socket activation (`LISTEN_FDS`) and
//! readiness notification (`NOTIFY_SOCKET`). Both are tiny protocols
//! (sd_listen_fds(3), sd_notify(3)): an inherited descriptor at fd 3, and
//! one datagram per state change.

use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The listening socket systemd passed to this process, if it did: when
/// `LISTEN_PID` names this process and `LISTEN_FDS` is at least 1, fd 3.
/// Further sockets are not used (the admin listener binds its own address).
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    if count > 1 {
        log::warn!("systemd passed {count} sockets; using the first (fd 3) for /ws");
    }
    // SAFETY: by the socket activation protocol, fd 3 is a descriptor this
    // process inherited for exactly this use (LISTEN_PID names us) and
    // nothing else in the process owns or closes it; it is taken here once,
    // at bind, so the listener is its only owner.
    let listener = unsafe { TcpListener::from_raw_fd(FIRST_FD) };
    // Not a TCP socket (a Unix or UDP socket unit by mistake): say so.
    let addr = listener.local_addr().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("socket from systemd (fd 3) is not a TCP listener: {e}"))
    })?;
    listener.set_nonblocking(true)?;
    log::info!("using the listening socket systemd passed ({addr}) instead of binding --listen");
    Ok(Some(listener))
}

/// Tells systemd about a state change (`READY=1`, `STOPPING=1`, ...) when
/// `NOTIFY_SOCKET` is set; a no-op otherwise. Failures are logged, never
/// fatal: the hub serves whether or not anyone listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: '@' stands for the leading NUL byte.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        log::warn!("could not notify systemd ({state}): {e}");
    }
}
