//! systemd without libsystemd: socket activation (`LISTEN_FDS`) and
//! readiness notification (`NOTIFY_SOCKET`). Both are tiny protocols
//! (sd_listen_fds(3), sd_notify(3)): an inherited descriptor at fd 3, and
//! one datagram per state change.

use std::io;
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::time::Millis;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// fd 3 was taken by this process already: it has one owner, once.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// The listening socket systemd passed to this process, if it did: when
/// `LISTEN_PID` names this process and `LISTEN_FDS` is at least 1, fd 3.
/// Further sockets are not used (the admin listener binds its own address).
///
/// fd 3 is checked through a borrowed descriptor before anything owns it:
/// it must be open, a stream socket of an Internet family, and listening.
/// Anything else (fd 3 absent, so that it is now some descriptor of our
/// own; a UDP, Unix, connected or non-listening socket, which would make
/// `accept` fail forever) stops startup with an error that says which.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let ours = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    if !ours || count == 0 {
        return Ok(None);
    }
    let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS: fd 3 {why}"));
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(refuse("was taken by this process already (one server per socket)".into()));
    }
    if count > 1 {
        log::warn!("systemd passed {count} sockets; using the first (fd 3) for /ws");
    }
    // SAFETY: fcntl(F_GETFD) reads a descriptor's flags; on a descriptor
    // that is not open it fails with EBADF and touches nothing.
    #[allow(unsafe_code)]
    if unsafe { libc::fcntl(FIRST_FD, libc::F_GETFD) } == -1 {
        return Err(refuse(format!("is not open: {}", io::Error::last_os_error())));
    }
    // SAFETY: fd 3 was just seen open, and nothing closes it while it is
    // borrowed here (startup runs on one thread, before the loop).
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_FD) };
    let socket = socket2::SockRef::from(&borrowed);
    let kind = socket.r#type().map_err(|e| refuse(format!("is not a socket: {e}")))?;
    if kind != socket2::Type::STREAM {
        return Err(refuse("is not a stream socket (a UDP or datagram socket unit?)".into()));
    }
    let addr = socket.local_addr().map_err(|e| refuse(format!("has no address: {e}")))?;
    let Some(addr) = addr.as_socket() else {
        return Err(refuse("is not a TCP socket (a Unix socket unit?)".into()));
    };
    if !socket.is_listener().map_err(|e| refuse(format!("cannot be inspected: {e}")))? {
        return Err(refuse("is not listening (ListenStream= in the socket unit?)".into()));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    // SAFETY: fd 3 is an open, listening TCP socket passed for exactly this
    // use (LISTEN_PID names us); `ADOPTED` makes this the only owner ever.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(FIRST_FD) };
    log::info!("using the listening socket systemd passed ({addr}) instead of binding --listen");
    Ok(Some(listener))
}

/// `WATCHDOG=1` at half the interval systemd asked for (`WATCHDOG_USEC`,
/// for this process when `WATCHDOG_PID` says so): a loop that stops turning
/// stops petting, and systemd restarts the service.
#[derive(Debug, Default)]
pub struct Watchdog {
    /// Half of `WATCHDOG_USEC`, in the loop's milliseconds.
    every: Option<Millis>,
    next: Millis,
}

impl Watchdog {
    /// From the environment systemd set (nothing to do when unset).
    pub fn from_env() -> Watchdog {
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse::<u32>() == Ok(std::process::id()));
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()).filter(|&u| u > 0);
        let every = usec.filter(|_| ours).map(|usec| (usec / 2000).max(1));
        Watchdog { every, next: 0 }
    }

    /// When the next `WATCHDOG=1` is due.
    pub fn due(&self) -> Option<Millis> {
        self.every.map(|_| self.next)
    }

    /// Sends `WATCHDOG=1` when it is due.
    pub fn pet(&mut self, now: Millis) {
        if let Some(every) = self.every
            && now >= self.next
        {
            notify("WATCHDOG=1");
            self.next = now + every;
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, which `RELOADING=1` carries
/// (`MONOTONIC_USEC=`) so that systemd can tell this reload from an old one.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the value we own and
    // passes by a valid pointer; it reads nothing else.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
    if ok { ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000 } else { 0 }
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
