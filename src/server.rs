//! The mio driver: one thread, one `Poll`, readiness and time in, calls to
//! the [`Hub`] out.
//!
//! It only moves bytes and time: it accepts, registers sockets, reads the
//! clients the hub names ([`Hub::next_read`]) into one shared scratch
//! buffer and hands the bytes over, tells the hub when a socket is
//! writable, lets it write what the turn queued ([`Hub::flush`]), and
//! sleeps until [`Hub::poll_timeout`] (or its own few deadlines: accepts
//! paused, the systemd watchdog). Everything the hub decides lives in
//! `hub/` and below, where tests reach it without sockets. With `--redis`,
//! `server/redis.rs` moves the bytes of the two Redis links the same way.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::auth::Verifier;
use crate::config::Config;
use crate::frame::{self, MessageKind};
use crate::hub::Hub;
use crate::log_limit::LineLimiter;
use crate::publisher::{Message, Publisher, Shared};
use crate::redis::Role;
use crate::time::Millis;
use crate::transport::Transport;

#[cfg(not(feature = "redis"))]
mod no_redis;
#[cfg(feature = "redis")]
mod redis;
mod stream;
#[cfg(not(feature = "redis"))]
use no_redis as redis;
use redis::RedisSockets;
use stream::Stream;

const LISTENER: Token = Token(usize::MAX - 1);
const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// The Redis links' sockets, indexed by `Role`.
const REDIS_TOKENS: [Token; 2] = [Token(usize::MAX - 5), Token(usize::MAX - 6)];
const REDIS_SUBSCRIBER: Token = REDIS_TOKENS[Role::Subscriber as usize];
const REDIS_PUBLISHER: Token = REDIS_TOKENS[Role::Publisher as usize];

/// The one read buffer of the loop; connections keep only leftovers.
const SCRATCH_BYTES: usize = 64 * 1024;
/// How long accepting pauses when the kernel is out of memory for sockets
/// (or out of descriptors without a reserve to refuse with).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections refused per turn while out of descriptors; more wait a turn.
const REFUSALS_PER_TURN: usize = 64;

/// A bound hub, ready to [`run`](Server::run). It holds no connection state
/// yet, so it can be moved to the thread that will run it.
pub struct Server {
    config: Config,
    /// JWT keys, loaded at bind so a bad key file stops startup.
    verifier: Option<Verifier>,
    /// TLS certificate and key, loaded at bind likewise.
    tls: Option<TlsConfig>,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// `--admin-listen`: the listener for `/publish` and `/healthz`.
    admin: Option<(TcpListener, SocketAddr)>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    shared: Arc<Shared>,
    /// `--redis`: where Redis is, resolved at bind.
    redis: Option<RedisSockets>,
}

/// The running loop. Its frames are `Rc`s (no atomic reference counting on
/// the hot path), so it lives and dies on the thread that called `run`.
struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    shared: Arc<Shared>,
    hub: Hub<Stream>,
    /// TLS settings, when the listener speaks TLS.
    tls: Option<TlsConfig>,
    scratch: Vec<u8>,
    /// A descriptor kept free to accept-and-close with when the process is
    /// out of descriptors, so waiting peers learn at once instead of
    /// stalling in the backlog.
    reserve_fd: Option<File>,
    started: Instant,
    now: Millis,
    accept_paused_until: Option<Millis>,
    /// Warnings that accepting fails: one a minute, with a count.
    accept_warnings: LineLimiter,
    /// systemd's watchdog, when it asked for one.
    watchdog: crate::systemd::Watchdog,
    /// With `--redis`: the sockets of the two links.
    redis: Option<RedisSockets>,
}

impl Server {
    /// Binds the listening socket and prepares the loop; nothing runs yet.
    /// A setting that does not load (a key, a certificate, the Redis
    /// address) is an `InvalidInput` error naming it, before any socket is
    /// opened.
    pub fn bind(config: Config) -> io::Result<Server> {
        let Loaded { verifier, tls, redis } = Loaded::from(&config)?;
        // Before anything else opens a descriptor: fd 3 is checked as it
        // was inherited.
        let inherited = if config.systemd { crate::systemd::inherited_listener()? } else { None };
        let poll = Poll::new()?;
        let mut listener = match inherited {
            Some(listener) => TcpListener::from_std(listener),
            None => bind_listener(config.listen, config.reuse_port)?,
        };
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let admin = match config.admin_listen {
            Some(addr) => {
                let mut admin = TcpListener::bind(addr)?;
                let admin_addr = admin.local_addr()?;
                poll.registry().register(&mut admin, ADMIN_LISTENER, Interest::READABLE)?;
                Some((admin, admin_addr))
            }
            None => None,
        };
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let signals = if config.handle_signals {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            use signal_hook_mio::v1_0::Signals;
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let bounds = crate::publisher::Bounds {
            messages: config.publisher_queue,
            bytes: config.max_buffered_bytes / 8,
            max_message: config.max_message_size,
        };
        let shared = Shared::new(waker, bounds);
        // With --redis, `Publisher::stats` has Redis figures from the start.
        shared.lock().stats.redis = config.redis.as_ref().map(|_| Default::default());
        Ok(Server { config, verifier, tls, poll, listener, local_addr, admin, signals, shared, redis })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, with `--admin-listen`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// A handle for publishing and shutting down from other threads.
    pub fn publisher(&self) -> Publisher {
        Publisher { shared: Arc::clone(&self.shared) }
    }

    /// Runs the loop on the calling thread until a graceful shutdown ends.
    pub fn run(self) -> io::Result<()> {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        info!("wshub {} listening on {scheme}://{}/ws", env!("CARGO_PKG_VERSION"), self.local_addr);
        if let Some((_, admin)) = &self.admin {
            info!("admin routes (/publish, /healthz) on http://{admin}");
        }
        let systemd = self.config.systemd;
        let bridge = self.redis.as_ref().map(|redis| redis.bridge(&self.config));
        let mut hub = Hub::new(self.config);
        hub.count_inbox(self.shared.held());
        if let Some(bridge) = bridge {
            hub.set_bridge(bridge);
        }
        hub.set_verifier(self.verifier);
        let mut event_loop = EventLoop {
            poll: self.poll,
            listener: Some(self.listener),
            admin_listener: self.admin.map(|(listener, _)| listener),
            signals: self.signals,
            shared: self.shared,
            hub,
            tls: self.tls,
            scratch: vec![0; SCRATCH_BYTES],
            reserve_fd: File::open("/dev/null").ok(),
            started: Instant::now(),
            now: 0,
            accept_paused_until: None,
            accept_warnings: LineLimiter::new(60_000, 1),
            watchdog: if systemd { crate::systemd::Watchdog::from_env() } else { Default::default() },
            redis: self.redis,
        };
        // Everything but connections is open now: counted once.
        event_loop.hub.set_process_probe(crate::process::sample, crate::process::count_open_fds());
        if systemd {
            crate::systemd::notify("READY=1");
        }
        let result = event_loop.run();
        let mut inbox = event_loop.shared.lock();
        inbox.closed = true;
        inbox.messages.clear();
        inbox.stats = event_loop.hub.stats();
        drop(inbox);
        match &result {
            Ok(()) => info!("shut down"),
            Err(e) => log::error!("event loop failed: {e}"),
        }
        result
    }
}

impl EventLoop {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let wait = self.wait();
            match self.poll.poll(&mut events, wait) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = self.started.elapsed().as_millis() as Millis;
            if self.hub.verifies_tokens() {
                let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                self.hub.set_unix_now(unix_now);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    ADMIN_LISTENER => self.accept(true),
                    WAKER => self.drain_inbox(),
                    SIGNALS => self.on_signals(),
                    REDIS_SUBSCRIBER | REDIS_PUBLISHER => {
                        let role = if event.token() == REDIS_SUBSCRIBER { Role::Subscriber } else { Role::Publisher };
                        if let Some(redis) = self.redis.as_mut() {
                            redis.ready(role, event, &mut self.hub, self.now);
                        }
                    }
                    Token(id) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.hub.readable(id, event.is_read_closed() || event.is_error());
                        }
                        if event.is_writable() {
                            self.hub.writable(id, self.now);
                        }
                    }
                }
            }
            // One share each, in the order the hub says.
            while let Some(id) = self.hub.next_read() {
                let Some(transport) = self.hub.transport(id) else { continue };
                let result = transport.receive(&mut self.scratch);
                self.hub.received(id, result, &mut self.scratch, self.now);
            }
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
                self.accept(false);
                self.accept(true);
            }
            self.hub.handle_timeout(self.now);
            if let Some(redis) = self.redis.as_mut() {
                redis.turn(self.poll.registry(), &mut self.hub, &mut self.scratch, self.now);
            }
            self.hub.flush(self.now);
            if let Some(stats) = self.hub.take_snapshot() {
                self.shared.lock().stats = stats;
                // A log line the stream took part of is finished now.
                log::logger().flush();
                if self.hub.take_trim_hint() {
                    give_memory_back();
                }
            }
            self.watchdog.pet(self.now);
            self.reap();
            if self.hub.shutdown_complete(self.now) {
                if !self.hub.is_empty() {
                    info!("shutdown timeout: dropping {} connection(s) still open", self.hub.len());
                }
                return Ok(());
            }
        }
    }

    /// How long the loop may sleep: until the hub's next deadline, or the
    /// driver's own (accepts paused, a Redis socket with more to read, the
    /// systemd watchdog).
    fn wait(&self) -> Option<Duration> {
        let mut next = self.hub.poll_timeout();
        let mut fold = |t: Millis| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(resume) = self.accept_paused_until {
            fold(resume);
        }
        if self.redis.as_ref().is_some_and(RedisSockets::wants_turn) {
            fold(self.now);
        }
        if let Some(due) = self.watchdog.due() {
            fold(due);
        }
        next.map(|t| Duration::from_millis(t.saturating_sub(self.now)))
    }

    /// Accepts what waits on the public listener, or on the admin one.
    fn accept(&mut self, admin: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let mut refusals = 0;
        loop {
            let listener = if admin { self.admin_listener.as_ref() } else { self.listener.as_ref() };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    if !self.hub.admit(addr, self.now) {
                        // Closed at once: dropping the stream closes it.
                        continue;
                    }
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!("{addr}: TCP_NODELAY: {e}");
                    }
                    let id = self.hub.next_id();
                    // Both directions, once: edge-triggered EPOLLOUT fires only
                    // after a socket was full (the one time the hub waits for
                    // it), so registering it up front costs no wake-ups, and
                    // changing the interest when a client blocks would cost an
                    // epoll_ctl each time (measured: same syscalls, same
                    // instruction count per delivery either way).
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(id), interest) {
                        warn!("{addr}: cannot register connection: {e}");
                        continue;
                    }
                    // The admin listener stays plain HTTP (it is for loopback).
                    let stream = match &self.tls {
                        Some(tls) if !admin => match wrap_tls(stream, tls) {
                            Ok(stream) => stream,
                            Err(e) => {
                                warn!("{addr}: cannot start TLS: {e}");
                                continue;
                            }
                        },
                        _ => Stream::Plain(stream),
                    };
                    if admin {
                        self.hub.insert_admin(stream, addr, self.now);
                    } else {
                        self.hub.insert(stream, addr, self.now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) && self.reserve_fd.is_some() && refusals < REFUSALS_PER_TURN => {
                    // Free the reserve, accept the waiting peer with it and
                    // close it at once (it learns now, instead of timing out
                    // in the backlog), then take the reserve back.
                    refusals += 1;
                    self.reserve_fd = None;
                    let waiting = listener.accept();
                    let refused = waiting.map(|(stream, addr)| {
                        drop(stream);
                        addr
                    });
                    self.reserve_fd = File::open("/dev/null").ok();
                    match refused {
                        Ok(addr) => self.hub.refused(addr, "out of file descriptors", self.now),
                        // accept reports EMFILE before it looks at the
                        // backlog: only this accept tells that nobody is
                        // waiting. The next connection wakes us again.
                        Err(_) => return,
                    }
                }
                // A peer that was gone before we accepted it (accept(2): treat
                // these like EAGAIN and retry), a bounded number per turn.
                Err(e) if is_peer_gone(&e) && refusals < REFUSALS_PER_TURN => {
                    refusals += 1;
                    debug!("accept: {e}");
                }
                Err(e) => {
                    // Out of descriptors or memory (the pending connections
                    // stay in the backlog), or an error retrying cannot cure:
                    // retrying at once would spin. Try again shortly (said at
                    // most once a minute).
                    let pause = ACCEPT_BACKOFF.as_millis() as u64;
                    let text = format_args!("cannot accept: {e}; pausing accepts for {pause} ms at a time");
                    self.accept_warnings.log(log::Level::Warn, self.now, text);
                    let resource = is_out_of_descriptors(&e) || is_out_of_memory(&e);
                    let backoff = if refusals > 0 && resource { 0 } else { ACCEPT_BACKOFF.as_millis() as Millis };
                    self.accept_paused_until = Some(self.now + backoff);
                    return;
                }
            }
        }
    }

    /// Deregisters the sockets of removed connections; dropping closes them.
    fn reap(&mut self) {
        for (_, mut stream) in self.hub.take_closed() {
            let _ = self.poll.registry().deregister(stream.tcp());
        }
    }

    fn drain_inbox(&mut self) {
        let (messages, shutdown) = {
            let mut inbox = self.shared.lock();
            (self.shared.take(&mut inbox), inbox.shutdown_requested)
        };
        for (topic, message) in messages {
            let frame = match &message {
                Message::Text(text) => frame::encode_message(MessageKind::Text, text.as_bytes()),
                Message::Binary(bytes) => frame::encode_message(MessageKind::Binary, bytes),
            };
            self.hub.publish(&topic, frame, self.now);
        }
        if shutdown {
            self.begin_shutdown("shutdown requested by a Publisher");
        }
    }

    fn on_signals(&mut self) {
        let mut stop = None;
        let mut reload = false;
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                match signal {
                    signal_hook::consts::SIGHUP => reload = true,
                    signal_hook::consts::SIGINT => stop = Some("SIGINT"),
                    _ => stop = Some("SIGTERM"),
                }
            }
        }
        if reload {
            self.reload_tls();
        }
        if let Some(name) = stop {
            self.begin_shutdown(name);
        }
    }

    /// SIGHUP: reads the certificate and key again (an ACME client renewed
    /// them). New handshakes use the new pair; open connections keep theirs.
    /// A file that does not load keeps the old pair, and the log says why.
    fn reload_tls(&mut self) {
        if self.tls.is_none() {
            info!("SIGHUP: no TLS certificate to reload");
            return;
        }
        let systemd = self.hub.config().systemd;
        if systemd {
            // Type=notify-reload wants the monotonic time with RELOADING=1.
            let usec = crate::systemd::monotonic_usec();
            crate::systemd::notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
        match load_tls(self.hub.config()) {
            Ok(Some(tls)) => {
                self.tls = Some(tls);
                info!("SIGHUP: reloaded the TLS certificate and key");
            }
            Ok(None) => {}
            Err(e) => warn!("SIGHUP: keeping the current TLS certificate: {e}"),
        }
        if systemd {
            crate::systemd::notify("READY=1");
        }
    }

    /// Stops accepting; the hub closes every client with 1001 after what is
    /// already queued for it.
    fn begin_shutdown(&mut self, why: &str) {
        if self.hub.is_shutting_down() {
            return;
        }
        info!(
            "{why}: shutting down ({} connection(s), at most {} ms)",
            self.hub.len(),
            self.hub.config().shutdown_timeout.as_millis() as u64
        );
        self.shared.lock().shutdown_requested = true;
        if self.hub.config().systemd {
            crate::systemd::notify("STOPPING=1");
        }
        if let Some(mut admin) = self.admin_listener.take() {
            let _ = self.poll.registry().deregister(&mut admin);
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.hub.begin_shutdown(self.now);
    }
}

/// Everything the settings name, loaded and checked in one step at
/// startup: the settings together, the JWT keys, the TLS certificate and
/// key (and client CA), the Redis address (resolved once) and its CAs.
struct Loaded {
    verifier: Option<Verifier>,
    tls: Option<TlsConfig>,
    redis: Option<RedisSockets>,
}

impl Loaded {
    fn from(config: &Config) -> io::Result<Loaded> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        config.validate().map_err(invalid)?;
        let verifier = Verifier::from_config(config).map_err(invalid)?;
        let tls = load_tls(config).map_err(invalid)?;
        let redis = RedisSockets::for_config(config)?;
        Ok(Loaded { verifier, tls, redis })
    }
}

/// Binds the listener; with `--reuse-port`, with `SO_REUSEPORT` set, so
/// that several hubs share the port and the kernel spreads connections
/// among them.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    if !reuse_port {
        return TcpListener::bind(addr);
    }
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The backlog mio uses.
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The network errors accept(2) passes on from a connection that failed
/// before it was accepted.
fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

fn is_out_of_memory(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM))
}

/// Hands freed heap memory back to the system after a burst. glibc keeps
/// what a burst freed (measured: 804 MB RSS stayed after an attack's clients
/// were gone); `malloc_trim` returns free pages at the top of the heap and
/// in the middle of it (`MADV_DONTNEED`).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own heap
    // under its own lock; it is safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(feature = "tls")]
type TlsConfig = Arc<rustls::ServerConfig>;
#[cfg(not(feature = "tls"))]
type TlsConfig = std::convert::Infallible;

/// The TLS settings `--tls-cert`/`--tls-key` (and `--tls-client-ca`) name,
/// if any.
fn load_tls(config: &Config) -> Result<Option<TlsConfig>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) if config.tls_client_ca.is_some() => Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
        (None, None) => Ok(None),
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => crate::tls::server_config(cert, key, config.tls_client_ca.as_deref()).map(Some),
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => Err("this wshub was built without the `tls` feature; --tls-* flags need it".into()),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

#[cfg(feature = "tls")]
fn wrap_tls(tcp: mio::net::TcpStream, config: &TlsConfig) -> io::Result<Stream> {
    Ok(Stream::Tls(Box::new(crate::tls::TlsStream::new(tcp, config)?)))
}

#[cfg(not(feature = "tls"))]
fn wrap_tls(_tcp: mio::net::TcpStream, config: &TlsConfig) -> io::Result<Stream> {
    match *config {}
}
