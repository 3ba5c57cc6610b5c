//! The hub: every connection, its subscriptions, and the rules that span
//! connections, without I/O of its own.
//!
//! The driver hands the hub what happened (a connection accepted, bytes
//! read, the peer gone, a socket writable, the time) and the hub decides:
//! who is admitted, who receives a broadcast (`--no-echo` included), when a
//! queue is written early (at half its bound, so a burst cannot overflow a
//! client that keeps up), when a connection closes and how (last bytes,
//! half-close, linger), and how a shutdown drains. It writes through each
//! client's [`Transport`], so tests run it on in-memory transports with a
//! clock they set. Every connection leaves through one exit path,
//! [`Hub::remove`] / `end`, which logs once, counts, and frees its state.

use std::io;
use std::net::SocketAddr;

use log::debug;
use slab::Slab;

use crate::admission::Admission;
use crate::config::Config;
use crate::connection::{Action, Connection, Context, Millis, Reason};
use crate::frame::SharedFrame;
use crate::stats::Stats;
use crate::subscriptions::Subscriptions;
use crate::topic::Topic;
use crate::transport::Transport;

/// The id of a client: its slab key, and the driver's `mio::Token`.
pub type ClientId = usize;

struct Client<T> {
    transport: T,
    conn: Connection,
    /// Listed in `Hub::dirty`: has queued bytes to write this turn.
    dirty: bool,
    /// Subscribed and counted against `--max-connections`.
    subscribed: bool,
    /// The transport pushed back; nothing is written until it is writable.
    blocked: bool,
    /// Its reason to end was recorded (logged and counted) already.
    ended: bool,
}

impl<T> Client<T> {
    fn mark_dirty(&mut self, key: ClientId, dirty: &mut Vec<ClientId>) {
        if !self.dirty && self.conn.wants_write() {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

pub struct Hub<T> {
    config: Config,
    clients: Slab<Client<T>>,
    subscriptions: Subscriptions,
    admission: Admission,
    stats: Stats,
    /// Where small frames are gathered for one write (see `send_queue`).
    cork: Vec<u8>,
    /// Clients with bytes queued during this turn.
    dirty: Vec<ClientId>,
    /// Actions produced while the hub was being walked, applied after.
    deferred: Vec<(ClientId, Action)>,
    /// Transports of removed clients, for the driver to deregister and drop.
    closed: Vec<(ClientId, T)>,
    shutdown_deadline: Option<Millis>,
}

impl<T: Transport> Hub<T> {
    pub fn new(config: Config) -> Hub<T> {
        Hub {
            config,
            clients: Slab::new(),
            subscriptions: Subscriptions::default(),
            admission: Admission::default(),
            stats: Stats::default(),
            cork: Vec::with_capacity(crate::send_queue::CORK_BYTES),
            dirty: Vec::new(),
            deferred: Vec::new(),
            closed: Vec::new(),
            shutdown_deadline: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The id the next [`insert`](Hub::insert) will use (to register the
    /// socket under it first).
    pub fn next_id(&self) -> ClientId {
        self.clients.vacant_key()
    }

    /// A new connection from `peer`, accepted at `now`.
    pub fn insert(&mut self, transport: T, peer: SocketAddr, now: Millis) -> ClientId {
        self.stats.accepted += 1;
        let client = Client {
            transport,
            conn: Connection::new(now, peer),
            dirty: false,
            subscribed: false,
            blocked: false,
            ended: false,
        };
        let id = self.clients.insert(client);
        debug!("{peer}: connected");
        id
    }

    /// The transport of a connection, for the driver to read from.
    pub fn transport(&mut self, id: ClientId) -> Option<&mut T> {
        self.clients.get_mut(id).map(|c| &mut c.transport)
    }

    pub fn contains(&self, id: ClientId) -> bool {
        self.clients.contains(id)
    }

    /// Connections of any kind.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The transport pushed back and waits to be writable.
    pub fn is_blocked(&self, id: ClientId) -> bool {
        self.clients.get(id).is_some_and(|c| c.blocked)
    }

    /// Feeds bytes read from a connection to its state machine and acts on
    /// what it says.
    pub fn receive(&mut self, id: ClientId, input: &mut [u8], now: Millis) {
        self.stats.bytes_in += input.len() as u64;
        let mut pos = 0;
        while pos < input.len() {
            let Hub { clients, config, admission, .. } = self;
            let Some(client) = clients.get_mut(id) else {
                return;
            };
            let ctx = Context { config, now, admission };
            let (used, action) = client.conn.receive(&mut input[pos..], &ctx);
            pos += used;
            let stalled = used == 0 && matches!(action, Action::Nothing);
            self.apply(id, action, now);
            if stalled {
                // Cannot happen (every call consumes or acts), but a loop that
                // makes no progress must not hang the hub.
                log::error!("connection state machine made no progress; dropping the rest of the read");
                break;
            }
        }
        self.mark_dirty(id);
    }

    /// The peer closed its sending side (EOF).
    pub fn peer_closed(&mut self, id: ClientId) {
        self.remove(id, Reason::ConnectionLost(io::ErrorKind::UnexpectedEof));
    }

    /// Reading or writing the connection failed.
    pub fn lost(&mut self, id: ClientId, kind: io::ErrorKind) {
        self.remove(id, Reason::ConnectionLost(kind));
    }

    /// The transport can take bytes again.
    pub fn writable(&mut self, id: ClientId, now: Millis) {
        if let Some(client) = self.clients.get_mut(id) {
            client.blocked = false;
            self.write(id, now);
        }
    }

    /// Queues `frame` to every subscriber of `topic` (an HTTP publish or a
    /// `Publisher`); returns how many.
    pub fn publish(&mut self, topic: &Topic, frame: SharedFrame, now: Millis) -> usize {
        self.stats.published += 1;
        let (subscriptions, mut fanout) = self.fanout(now);
        let receivers = subscriptions.for_each_subscriber(topic, |id| fanout.deliver(id, &frame));
        self.apply_deferred(now);
        receivers
    }

    /// End of a loop turn: writes every client that has bytes queued, so a
    /// burst leaves in one system call per client.
    pub fn flush(&mut self, now: Millis) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            if let Some(client) = self.clients.get_mut(id) {
                client.dirty = false;
            }
            self.write(id, now);
        }
        dirty.clear();
        // Keep the list's memory for the next turn.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// The coarse sweep: applies every connection's deadlines.
    pub fn tick(&mut self, now: Millis) {
        let Hub { clients, config, admission, deferred, dirty, .. } = self;
        let ctx = Context { config, now, admission };
        for (id, client) in clients.iter_mut() {
            match client.conn.tick(&ctx) {
                Action::Nothing => {}
                action => deferred.push((id, action)),
            }
            client.mark_dirty(id, dirty);
        }
        self.apply_deferred(now);
    }

    /// Starts a graceful shutdown: open clients get what is queued for them,
    /// then close 1001; everything else is dropped. The driver stops
    /// accepting and runs until [`shutdown_complete`](Hub::shutdown_complete).
    pub fn begin_shutdown(&mut self, now: Millis) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(now.saturating_add(self.config.shutdown_timeout.as_millis() as Millis));
        let Hub { clients, config, admission, deferred, .. } = self;
        let ctx = Context { config, now, admission };
        for (id, client) in clients.iter_mut() {
            match client.conn.shut_down(&ctx) {
                Action::Nothing => {}
                action => deferred.push((id, action)),
            }
        }
        self.apply_deferred(now);
        self.flush(now);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// Shutting down, and every connection is gone or the time is up.
    pub fn shutdown_complete(&self, now: Millis) -> bool {
        self.shutdown_deadline.is_some_and(|deadline| self.clients.is_empty() || now >= deadline)
    }

    /// When the shutdown gives up on connections still open.
    pub fn shutdown_deadline(&self) -> Option<Millis> {
        self.shutdown_deadline
    }

    /// Transports of connections that were removed since the last call: the
    /// driver deregisters them, and dropping them closes the sockets.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, (ClientId, T)> {
        self.closed.drain(..)
    }

    /// A snapshot of the counters, with the gauges computed now (a walk over
    /// the connections: for scrapes and tests, not per message).
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        for (_, client) in &self.clients {
            if client.conn.is_open() {
                stats.open += 1;
            } else if client.conn.is_closing() {
                stats.closing += 1;
            } else {
                stats.pending += 1;
            }
            stats.queued_bytes += client.conn.queued_bytes() as u64;
        }
        stats.topics = self.subscriptions.topic_count() as u64;
        stats
    }

    fn apply(&mut self, id: ClientId, action: Action, now: Millis) {
        match action {
            Action::Nothing => {}
            Action::Subscribe(topics) => {
                if let Some(client) = self.clients.get_mut(id) {
                    client.subscribed = true;
                    self.admission.joined();
                    self.stats.upgrades += 1;
                    self.subscriptions.subscribe(id, &topics);
                    debug!("{}: upgraded, topics {topics:?}", client.conn.peer());
                }
            }
            Action::Broadcast(frame) => {
                self.stats.messages_in += 1;
                self.broadcast_from(id, frame, now);
            }
            Action::Publish(topic, frame) => {
                let receivers = self.publish(&topic, frame, now);
                if let Some(client) = self.clients.get_mut(id) {
                    client.conn.published(receivers, now);
                    debug!("{}: published to {topic} ({receivers} receivers)", client.conn.peer());
                }
                self.mark_dirty(id);
            }
            Action::Closing(reason) => {
                self.end(id, reason);
                self.mark_dirty(id);
            }
            Action::Drop(reason) => self.remove(id, reason),
        }
    }

    /// Records why a connection ends (once: one log line, one count) and
    /// takes it out of the hub's fan-out; its last bytes may still be sent.
    fn end(&mut self, id: ClientId, reason: Reason) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        if !client.ended {
            client.ended = true;
            self.stats.count_exit(reason.exit());
            if let Reason::Rejected(rejection) = reason {
                self.stats.count_rejection(rejection.status);
            }
            log::log!(reason.level(), "{}: {reason}", client.conn.peer());
        }
        if client.subscribed {
            client.subscribed = false;
            self.admission.left();
            self.subscriptions.unsubscribe(id);
        }
    }

    /// The exit path: ends the connection for `reason` (unless it already
    /// ended for another) and frees it.
    pub fn remove(&mut self, id: ClientId, reason: Reason) {
        self.end(id, reason);
        if let Some(client) = self.clients.try_remove(id) {
            self.closed.push((id, client.transport));
        }
    }

    /// Queues a client's message to every client on its topics.
    fn broadcast_from(&mut self, sender: ClientId, frame: SharedFrame, now: Millis) {
        let no_echo = self.config.no_echo;
        let (subscriptions, mut fanout) = self.fanout(now);
        subscriptions.for_each_peer(sender, |id| {
            if !(no_echo && id == sender) {
                fanout.deliver(id, &frame);
            }
        });
        self.apply_deferred(now);
    }

    /// The subscriptions, and the rest of the hub a broadcast writes to,
    /// borrowed apart.
    fn fanout(&mut self, now: Millis) -> (&mut Subscriptions, Fanout<'_, T>) {
        let fanout = Fanout {
            clients: &mut self.clients,
            dirty: &mut self.dirty,
            deferred: &mut self.deferred,
            cork: &mut self.cork,
            stats: &mut self.stats,
            ctx: Context { config: &self.config, now, admission: &self.admission },
        };
        (&mut self.subscriptions, fanout)
    }

    fn apply_deferred(&mut self, now: Millis) {
        while let Some((id, action)) = self.deferred.pop() {
            self.apply(id, action, now);
        }
    }

    fn mark_dirty(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(id) {
            client.mark_dirty(id, &mut self.dirty);
        }
    }

    fn write(&mut self, id: ClientId, now: Millis) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        if let Err(e) = write_client(client, &mut self.cork, now, &mut self.stats) {
            debug!("{}: write: {e}", client.conn.peer());
            self.remove(id, Reason::ConnectionLost(e.kind()));
        }
    }
}

/// What a broadcast needs of the hub while the subscriptions are walked.
struct Fanout<'a, T> {
    clients: &'a mut Slab<Client<T>>,
    dirty: &'a mut Vec<ClientId>,
    /// Actions of clients that overflowed, applied after the walk.
    deferred: &'a mut Vec<(ClientId, Action)>,
    cork: &'a mut Vec<u8>,
    stats: &'a mut Stats,
    ctx: Context<'a>,
}

impl<T: Transport> Fanout<'_, T> {
    /// Queues `frame` to one client.
    fn deliver(&mut self, id: ClientId, frame: &SharedFrame) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if !client.conn.is_open() {
            return;
        }
        match client.conn.enqueue(SharedFrame::clone(frame), &self.ctx) {
            Action::Nothing => self.stats.deliveries += 1,
            action => self.deferred.push((id, action)),
        }
        // Writes wait for the end of the turn so that a burst leaves in one
        // system call, but a burst must not overflow a client that is keeping
        // up: at half its bound, the queue is written right away (unless its
        // transport is known to be full).
        let config = self.ctx.config;
        let conn = &client.conn;
        let half_full =
            conn.queued_frames() * 2 >= config.queue_messages || conn.queued_bytes() * 2 >= config.queue_bytes;
        if conn.is_open()
            && half_full
            && let Err(e) = write_client(client, self.cork, self.ctx.now, self.stats)
        {
            self.deferred.push((id, Action::Drop(Reason::ConnectionLost(e.kind()))));
        }
        client.mark_dirty(id, self.dirty);
    }
}

/// Writes as much of the client's queue as its transport takes, then, once
/// the last bytes of a closing connection are out, shuts its writing half.
fn write_client<T: Transport>(
    client: &mut Client<T>,
    cork: &mut Vec<u8>,
    now: Millis,
    stats: &mut Stats,
) -> io::Result<()> {
    if client.blocked {
        return Ok(());
    }
    let written = client.conn.transmit(&mut client.transport, cork, now)?;
    stats.bytes_out += written as u64;
    // Whatever is left was refused: wait for a writable event (edge-triggered:
    // a full socket reports writable again when it drains).
    client.blocked = client.conn.wants_write() || client.transport.has_pending_output();
    if client.conn.wants_shutdown() && !client.blocked {
        client.transport.shutdown_write()?;
        client.conn.shutdown_done(now);
    }
    Ok(())
}
