//! The mio driver: one thread, one `Poll`, every connection in a slab.
//!
//! It only moves bytes and time: readiness becomes reads into one shared
//! scratch buffer fed to the connection's state machine, and the actions that
//! come back become hub fan-out, queue writes, and drops. Writes are deferred
//! to the end of each loop turn, so a burst of messages reaches each receiver
//! in one gathering system call. Deadlines are applied by a coarse sweep (at
//! most once a second) instead of a timer per connection.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Action, Connection, Context, Millis, Reason};
use crate::frame::{self, MessageKind, SharedFrame};
use crate::hub::{ClientId, Hub};
use crate::publisher::{Message, Publisher, Shared};
use crate::topic::Topic;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// The one read buffer of the loop; connections keep only leftovers.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads per readiness event before other connections get a turn.
const READS_PER_TURN: usize = 8;
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

struct Client {
    stream: TcpStream,
    conn: Connection,
    /// Listed in `Server::dirty`: has queued bytes to write this turn.
    dirty: bool,
    /// Subscribed in the hub and counted against `--max-connections`.
    subscribed: bool,
    /// The last write stopped at `WouldBlock`; cleared by a writable event.
    blocked: bool,
}

impl Client {
    /// Lists the client for this turn's writes if it has bytes queued.
    fn mark_dirty(&mut self, key: ClientId, dirty: &mut Vec<ClientId>) {
        if !self.dirty && !self.conn.queue.is_empty() {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

/// A bound hub, ready to [`run`](Server::run). It holds no connection state
/// yet, so it can be moved to the thread that will run it.
pub struct Server {
    config: Config,
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    shared: Arc<Shared>,
}

/// The running loop. Its frames are `Rc`s (no atomic reference counting on
/// the hot path), so it lives and dies on the thread that called `run`.
struct EventLoop {
    config: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    shared: Arc<Shared>,
    clients: Slab<Client>,
    hub: Hub,
    ws_clients: usize,
    scratch: Vec<u8>,
    /// Where small frames are gathered for one `write` (see `send_queue`).
    cork: Vec<u8>,
    /// Clients with bytes queued during this turn.
    dirty: Vec<ClientId>,
    /// Clients whose reads were cut short for fairness.
    read_again: Vec<ClientId>,
    /// Actions produced while the hub was being walked, applied after.
    deferred: Vec<(ClientId, Action)>,
    started: Instant,
    now: Millis,
    accept_paused_until: Option<Millis>,
    shutdown_deadline: Option<Millis>,
}

impl Server {
    /// Binds the listening socket and prepares the loop; nothing runs yet.
    pub fn bind(config: Config) -> io::Result<Server> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let signals = if config.handle_signals {
            use signal_hook_mio::v1_0::Signals;
            let mut signals = Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
            poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let shared = Shared::new(waker, config.publisher_queue, config.max_message_size);
        Ok(Server { config, poll, listener, local_addr, signals, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for publishing and shutting down from other threads.
    pub fn publisher(&self) -> Publisher {
        Publisher { shared: Arc::clone(&self.shared) }
    }

    /// Runs the loop on the calling thread until a graceful shutdown ends.
    pub fn run(self) -> io::Result<()> {
        info!("wshub {} listening on ws://{}/ws", env!("CARGO_PKG_VERSION"), self.local_addr);
        let mut event_loop = EventLoop {
            poll: self.poll,
            listener: Some(self.listener),
            signals: self.signals,
            shared: self.shared,
            clients: Slab::new(),
            hub: Hub::default(),
            ws_clients: 0,
            scratch: vec![0; SCRATCH_BYTES],
            cork: Vec::with_capacity(crate::send_queue::CORK_BYTES),
            dirty: Vec::new(),
            read_again: Vec::new(),
            deferred: Vec::new(),
            started: Instant::now(),
            now: 0,
            accept_paused_until: None,
            shutdown_deadline: None,
            config: self.config,
        };
        let result = event_loop.run();
        let mut inbox = event_loop.shared.lock();
        inbox.closed = true;
        inbox.messages.clear();
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
        let tick = tick_interval(&self.config);
        let mut next_tick = tick;
        loop {
            let mut wait = Duration::from_millis(next_tick.saturating_sub(self.now));
            if let Some(resume) = self.accept_paused_until {
                wait = wait.min(Duration::from_millis(resume.saturating_sub(self.now)));
            }
            if !self.read_again.is_empty() {
                wait = Duration::ZERO;
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = self.started.elapsed().as_millis() as Millis;

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_inbox(),
                    SIGNALS => self.on_signals(),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // A short read means the socket is drained, unless
                            // the peer also closed: then read on to the EOF.
                            self.read_client(key, event.is_read_closed() || event.is_error());
                        }
                        if event.is_writable() {
                            if let Some(client) = self.clients.get_mut(key) {
                                client.blocked = false;
                            }
                            self.flush_client(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.read_client(key, true);
            }
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
                self.accept();
            }
            self.flush_dirty();
            if self.now >= next_tick {
                self.tick();
                self.flush_dirty();
                next_tick = self.now + tick;
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.clients.is_empty() {
                    return Ok(());
                }
                if self.now >= deadline {
                    info!("shutdown timeout: dropping {} connection(s) still open", self.clients.len());
                    return Ok(());
                }
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    let entry = self.clients.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!("{addr}: TCP_NODELAY: {e}");
                    }
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(key), interest) {
                        warn!("{addr}: cannot register connection: {e}");
                        continue;
                    }
                    let conn = Connection::new(self.now, addr.ip().is_loopback());
                    entry.insert(Client { stream, conn, dirty: false, subscribed: false, blocked: false });
                    debug!("{addr}: connected");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    // The pending connection stays in the backlog; retrying at
                    // once would spin. Try again shortly.
                    warn!("cannot accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF.as_millis() as Millis);
                    return;
                }
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    fn read_client(&mut self, key: ClientId, until_would_block: bool) {
        for _ in 0..READS_PER_TURN {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            match client.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = if client.conn.is_closing() { "closed" } else { "peer went away" };
                    debug!("{}: {reason}", peer(&client.stream));
                    self.remove(key);
                    return;
                }
                Ok(n) => {
                    self.receive(key, n);
                    if n < SCRATCH_BYTES && !until_would_block {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read: {e}", peer(&client.stream));
                    self.remove(key);
                    return;
                }
            }
        }
        // Not drained yet (edge-triggered: no new event will come): resume
        // after the others had their turn.
        if self.clients.contains(key) {
            self.read_again.push(key);
        }
    }

    /// Feeds `scratch[..n]` to the client's state machine.
    fn receive(&mut self, key: ClientId, n: usize) {
        let mut pos = 0;
        while pos < n {
            let at_capacity = self.ws_clients >= self.config.max_connections;
            let ctx = Context { at_capacity, ..context(&self.config, self.now) };
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let (used, action) = client.conn.receive(&mut self.scratch[pos..n], &ctx);
            pos += used;
            let stalled = used == 0 && matches!(action, Action::Nothing);
            self.apply(key, action);
            if stalled {
                // Cannot happen (every call consumes or acts), but a loop that
                // makes no progress must not hang the hub.
                log::error!("connection state machine made no progress; dropping the rest of the read");
                break;
            }
        }
        self.mark_dirty(key);
    }

    fn apply(&mut self, key: ClientId, action: Action) {
        match action {
            Action::Nothing => {}
            Action::Subscribe(topics) => {
                if let Some(client) = self.clients.get_mut(key) {
                    client.subscribed = true;
                    self.ws_clients += 1;
                    self.hub.subscribe(key, &topics);
                    debug!("{}: upgraded, topics {topics:?}", peer(&client.stream));
                }
            }
            Action::Broadcast(frame) => self.broadcast_from(key, frame),
            Action::Publish(topic, frame) => {
                let receivers = self.publish(&topic, frame);
                if let Some(client) = self.clients.get_mut(key) {
                    client.conn.published(receivers, self.now);
                    debug!("{}: published to {topic} ({receivers} receivers)", peer(&client.stream));
                }
                self.mark_dirty(key);
            }
            Action::Closing(reason) => {
                self.log_end(key, reason);
                self.unsubscribe(key);
                self.mark_dirty(key);
            }
            Action::Drop(reason) => {
                self.log_end(key, reason);
                self.remove(key);
            }
        }
    }

    fn log_end(&self, key: ClientId, reason: Reason) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        let level = match reason {
            Reason::SlowConsumer(_) => log::Level::Warn,
            Reason::Rejected(_) | Reason::Protocol(_) | Reason::HandshakeTimeout | Reason::IdleTimeout => {
                log::Level::Info
            }
            Reason::ClientClosed(_)
            | Reason::HttpDone
            | Reason::LingerTimeout
            | Reason::ShuttingDown
            | Reason::ConnectionLost(_) => log::Level::Debug,
        };
        if !log::log_enabled!(level) {
            return;
        }
        let peer = peer(&client.stream);
        match reason {
            Reason::Rejected(r) => log::log!(level, "{peer}: rejected with HTTP {}: {}", r.status, r.reason),
            Reason::Protocol(e) => log::log!(level, "{peer}: closing with {}: {}", u16::from(e.code), e.reason),
            Reason::SlowConsumer(why) => {
                log::log!(level, "{peer}: dropping slow consumer with 1013: {why}")
            }
            Reason::ClientClosed(code) => log::log!(level, "{peer}: client closed ({code:?})"),
            Reason::HttpDone => log::log!(level, "{peer}: HTTP request answered"),
            Reason::HandshakeTimeout => {
                log::log!(level, "{peer}: dropped: no complete request within --handshake-timeout")
            }
            Reason::IdleTimeout => log::log!(level, "{peer}: dropped: silent for --idle-timeout"),
            Reason::LingerTimeout => {
                log::log!(level, "{peer}: dropped: close not acknowledged in time")
            }
            Reason::ShuttingDown => log::log!(level, "{peer}: closing for shutdown"),
            Reason::ConnectionLost(kind) => log::log!(level, "{peer}: connection lost ({kind})"),
        }
    }

    /// Queues a client's message to every client on its topics.
    fn broadcast_from(&mut self, sender: ClientId, frame: SharedFrame) {
        let no_echo = self.config.no_echo;
        let (hub, mut fanout) = self.fanout();
        hub.for_each_peer(sender, |id| {
            if !(no_echo && id == sender) {
                fanout.deliver(id, &frame);
            }
        });
        self.apply_deferred();
    }

    /// Queues a frame to every subscriber of `topic`; returns how many.
    fn publish(&mut self, topic: &Topic, frame: SharedFrame) -> usize {
        let (hub, mut fanout) = self.fanout();
        let receivers = hub.for_each_subscriber(topic, |id| fanout.deliver(id, &frame));
        self.apply_deferred();
        receivers
    }

    /// The hub, and the rest of the loop a broadcast writes to, borrowed apart.
    fn fanout(&mut self) -> (&mut Hub, Fanout<'_>) {
        let fanout = Fanout {
            clients: &mut self.clients,
            dirty: &mut self.dirty,
            deferred: &mut self.deferred,
            cork: &mut self.cork,
            ctx: context(&self.config, self.now),
        };
        (&mut self.hub, fanout)
    }

    fn apply_deferred(&mut self) {
        while let Some((id, action)) = self.deferred.pop() {
            self.apply(id, action);
        }
    }

    fn mark_dirty(&mut self, key: ClientId) {
        if let Some(client) = self.clients.get_mut(key) {
            client.mark_dirty(key, &mut self.dirty);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(client) = self.clients.get_mut(key) {
                client.dirty = false;
            }
            self.flush_client(key);
        }
        dirty.clear();
        // Keep the list's memory for the next turn.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush_client(&mut self, key: ClientId) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.conn.write_shut || client.blocked {
            return;
        }
        match queue_write(client, &mut self.cork, self.now) {
            Ok(()) => {
                if client.conn.queue.is_empty() && client.conn.is_closing() {
                    // Our last bytes are out: close our half, then wait for
                    // the peer's EOF (or the linger deadline).
                    client.conn.write_shut = true;
                    if client.stream.shutdown(Shutdown::Write).is_err() {
                        self.remove(key);
                    }
                }
            }
            Err(e) => {
                debug!("{}: write: {e}", peer(&client.stream));
                self.remove(key);
            }
        }
    }

    fn unsubscribe(&mut self, key: ClientId) {
        if let Some(client) = self.clients.get_mut(key)
            && client.subscribed
        {
            client.subscribed = false;
            self.ws_clients -= 1;
            self.hub.unsubscribe(key);
        }
    }

    fn remove(&mut self, key: ClientId) {
        self.unsubscribe(key);
        if let Some(mut client) = self.clients.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
    }

    /// The coarse sweep: deadlines of every connection.
    fn tick(&mut self) {
        let ctx = context(&self.config, self.now);
        for (key, client) in self.clients.iter_mut() {
            match client.conn.tick(&ctx) {
                Action::Nothing => {}
                action => self.deferred.push((key, action)),
            }
            client.mark_dirty(key, &mut self.dirty);
        }
        self.apply_deferred();
    }

    fn drain_inbox(&mut self) {
        let (messages, shutdown) = {
            let mut inbox = self.shared.lock();
            (std::mem::take(&mut inbox.messages), inbox.shutdown_requested)
        };
        for (topic, message) in messages {
            let frame = match &message {
                Message::Text(text) => frame::encode_message(MessageKind::Text, text.as_bytes()),
                Message::Binary(bytes) => frame::encode_message(MessageKind::Binary, bytes),
            };
            self.publish(&topic, frame);
        }
        if shutdown {
            self.begin_shutdown("shutdown requested by a Publisher");
        }
    }

    fn on_signals(&mut self) {
        let mut received = None;
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                received = Some(signal);
            }
        }
        if let Some(signal) = received {
            let name = if signal == signal_hook::consts::SIGINT { "SIGINT" } else { "SIGTERM" };
            self.begin_shutdown(name);
        }
    }

    /// Stops accepting, then closes every client with 1001 after what is
    /// already queued for it.
    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        info!(
            "{why}: shutting down ({} connection(s), at most {:?})",
            self.clients.len(),
            self.config.shutdown_timeout
        );
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout.as_millis() as Millis);
        self.shared.lock().shutdown_requested = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let ctx = context(&self.config, self.now);
        for (key, client) in self.clients.iter_mut() {
            match client.conn.shut_down(&ctx) {
                Action::Nothing => {}
                action => self.deferred.push((key, action)),
            }
        }
        self.apply_deferred();
        self.flush_dirty();
    }
}

/// What a broadcast needs of the loop while the hub is being walked.
struct Fanout<'a> {
    clients: &'a mut Slab<Client>,
    dirty: &'a mut Vec<ClientId>,
    /// Actions of clients that overflowed, applied after the walk.
    deferred: &'a mut Vec<(ClientId, Action)>,
    cork: &'a mut Vec<u8>,
    ctx: Context<'a>,
}

impl Fanout<'_> {
    /// Queues `frame` to one client.
    fn deliver(&mut self, id: ClientId, frame: &SharedFrame) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if !client.conn.is_open() {
            return;
        }
        match client.conn.enqueue(SharedFrame::clone(frame), &self.ctx) {
            Action::Nothing => {}
            action => self.deferred.push((id, action)),
        }
        // Writes wait for the end of the turn so that a burst leaves in one
        // system call, but a burst must not overflow a client that is keeping
        // up: at half its bound, the queue is written right away (unless its
        // socket is known to be full).
        let queue = &client.conn.queue;
        let config = self.ctx.config;
        if client.conn.is_open()
            && !client.blocked
            && (queue.len() * 2 >= config.queue_messages || queue.pending_bytes() * 2 >= config.queue_bytes)
            && let Err(e) = queue_write(client, self.cork, self.ctx.now)
        {
            self.deferred.push((id, Action::Drop(Reason::ConnectionLost(e.kind()))));
        }
        client.mark_dirty(id, self.dirty);
    }
}

/// Writes as much of the client's queue as its socket takes.
fn queue_write(client: &mut Client, cork: &mut Vec<u8>, now: Millis) -> io::Result<()> {
    let written = client.conn.queue.write_to(&mut client.stream, cork)?;
    client.conn.wrote(written.bytes, now);
    // Edge-triggered: a full socket reports writable again when it drains.
    client.blocked = !written.drained;
    Ok(())
}

/// Context for everything but an upgrade (which also needs `at_capacity`).
fn context(config: &Config, now: Millis) -> Context<'_> {
    Context { config, now, at_capacity: false }
}

/// Sweep often enough that the shortest deadline is kept to about a quarter
/// of its length, and at most once a second.
fn tick_interval(config: &Config) -> Millis {
    let shortest = [config.write_timeout, config.handshake_timeout, config.ping_interval, config.idle_timeout]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1));
    (shortest.as_millis() as Millis / 4).clamp(10, 1000)
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

fn peer(stream: &TcpStream) -> String {
    stream.peer_addr().map_or_else(|_| "unknown peer".to_string(), |a| a.to_string())
}
