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
//! With `--redis`, the hub also hands every message it accepts to its
//! [`Bridge`], tells it when topics appear and disappear, and delivers what
//! other hubs sent (`redis_received`).

use std::io;
use std::net::SocketAddr;

use log::debug;
use slab::Slab;

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::config::Config;
use crate::connection::{Action, Connection, Context, Millis, Reason};
use crate::frame::{self, SharedFrame};
use crate::http;
use crate::metrics::{self, Extras};
use crate::process::ProcessMetrics;
use crate::reason::LogLimiter;
use crate::redis::Bridge;
#[cfg(feature = "redis")]
use crate::redis::{Incoming, Role};
use crate::stats::Stats;
use crate::subscriptions::Subscriptions;
use crate::topic::Topic;
use crate::transport::{TlsFailure, Transport};

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
    /// Still sending its HTTP request (counted against `--max-pending`).
    pending: bool,
    /// Bytes of unfinished input it held when last looked at (its share of
    /// `Hub::inbound`; a request head or message is far below 4 GiB).
    inbound: u32,
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
    /// Bytes of unfinished input held by all connections (request heads,
    /// publish bodies, partly received messages).
    inbound: usize,
    /// The most held since memory was last handed back to the system.
    peak_held: usize,
    /// Log lines of connection endings, rate-limited per reason.
    log_limit: LogLimiter,
    process_probe: Option<fn() -> Option<ProcessMetrics>>,
    /// With `--redis`: messages shared with other hubs.
    bridge: Option<Bridge>,
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
            inbound: 0,
            peak_held: 0,
            log_limit: LogLimiter::default(),
            process_probe: None,
            bridge: None,
        }
    }

    /// Shares topics with other hubs through Redis (`--redis`).
    pub fn set_bridge(&mut self, bridge: Bridge) {
        self.bridge = Some(bridge);
    }

    /// The Redis bridge, for the driver to move its bytes.
    #[cfg(feature = "redis")]
    pub fn bridge(&mut self) -> Option<&mut Bridge> {
        self.bridge.as_mut()
    }

    /// Bytes read from a Redis link: messages from other hubs are delivered
    /// to the clients here.
    #[cfg(feature = "redis")]
    pub fn redis_received(&mut self, role: Role, bytes: &[u8], now: Millis) {
        // Out of the hub while it delivers, and back before any client is
        // removed (a removal may unsubscribe a channel).
        let Some(mut bridge) = self.bridge.take() else { return };
        bridge.received(role, bytes, now, &mut |incoming| self.deliver_heard(incoming, now));
        self.bridge = Some(bridge);
        self.apply_deferred(now);
        self.enforce_budget(now);
    }

    /// Queues a message heard from Redis to the clients that get it through
    /// its channel: for a hub's message sent to several topics, those for
    /// whom this channel's topic is the first of them they hold.
    #[cfg(feature = "redis")]
    fn deliver_heard(&mut self, incoming: Incoming<'_>, now: Millis) {
        let frame = frame::encode_message(incoming.kind, incoming.payload);
        let topic = incoming.topic;
        let (subscriptions, mut fanout) = self.fanout(now);
        let mut deliver = |id| fanout.deliver(id, &frame);
        match incoming.envelope {
            Some(envelope) => {
                let earlier = envelope.topics().take_while(|t| *t != topic);
                subscriptions.for_each_first_holder(topic, earlier, &mut deliver)
            }
            None => subscriptions.for_each_first_holder(topic, std::iter::empty(), &mut deliver),
        };
    }

    /// Verifies `/ws` and publish tokens with these keys (JWT).
    pub fn set_verifier(&mut self, verifier: Option<Verifier>) {
        self.admission.set_verifier(verifier);
    }

    /// Whether tokens are checked: the driver then keeps the wall clock.
    pub fn verifies_tokens(&self) -> bool {
        self.admission.verifies_tokens()
    }

    /// Where `/metrics` gets the process figures (`process_*`): the driver
    /// passes [`crate::process::sample`]; without a probe they are left out.
    pub fn set_process_probe(&mut self, probe: fn() -> Option<ProcessMetrics>) {
        self.process_probe = Some(probe);
    }

    /// The wall-clock time token claims are judged by (seconds since the
    /// epoch); `now` stays the monotonic clock for every deadline.
    pub fn set_unix_now(&mut self, unix_now: u64) {
        self.admission.set_unix_now(unix_now);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The id the next [`insert`](Hub::insert) will use (to register the
    /// socket under it first).
    pub fn next_id(&self) -> ClientId {
        self.clients.vacant_key()
    }

    /// Whether a connection just accepted from `peer` may stay (per-address
    /// and pending limits). A refused one is counted and logged here; the
    /// driver closes it at once.
    pub fn admit(&mut self, peer: SocketAddr, now: Millis) -> bool {
        match self.admission.connection(&self.config, peer, now) {
            Ok(()) => true,
            Err(why) => {
                self.refused(peer, why, now);
                false
            }
        }
    }

    /// A connection the driver could not keep (refused at `accept`, or out
    /// of file descriptors): counted and logged like any other ending.
    pub fn refused(&mut self, peer: SocketAddr, why: &'static str, now: Millis) {
        self.stats.accepted += 1;
        self.record_exit(peer, Reason::Refused(why), now);
    }

    /// A new connection accepted on the admin listener.
    pub fn insert_admin(&mut self, transport: T, peer: SocketAddr, now: Millis) -> ClientId {
        let id = self.insert(transport, peer, now);
        self.clients[id].conn.set_admin();
        id
    }

    /// A new connection from `peer`, accepted at `now`.
    pub fn insert(&mut self, transport: T, peer: SocketAddr, now: Millis) -> ClientId {
        self.stats.accepted += 1;
        self.admission.connected(&self.config, peer, now);
        let client = Client {
            transport,
            conn: Connection::new(now, peer),
            dirty: false,
            subscribed: false,
            blocked: false,
            ended: false,
            pending: true,
            inbound: 0,
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
    #[cfg(test)]
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
        self.sync(id);
        self.mark_dirty(id);
        self.enforce_budget(now);
    }

    /// The transport read bytes it keeps for now (a partial TLS record):
    /// count them against `--max-buffered-bytes`.
    pub fn transport_read(&mut self, id: ClientId, now: Millis) {
        if self.clients.get(id).is_some_and(|c| c.transport.buffered_bytes() > 0 || c.inbound > 0) {
            self.sync(id);
            self.enforce_budget(now);
        }
    }

    /// Brings the hub's books up to date with a connection's state: what it
    /// holds of unfinished input, and whether its request is still pending.
    fn sync(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(id) else { return };
        // Unfinished input, the transport's own included (a partial TLS
        // record, decrypted bytes not read yet): all of it counts.
        let held = client.conn.inbound_bytes() + client.transport.buffered_bytes();
        let inbound = u32::try_from(held).unwrap_or(u32::MAX);
        self.inbound = self.inbound + inbound as usize - client.inbound as usize;
        client.inbound = inbound;
        if client.pending && !client.conn.is_requesting() {
            client.pending = false;
            self.admission.request_done();
        }
    }

    /// Bytes the hub holds for clients: frames alive (each counted once,
    /// however many queues share it) and unfinished input.
    pub fn held_bytes(&self) -> usize {
        crate::frame::held_frame_bytes() + self.inbound + self.bridge.as_ref().map_or(0, Bridge::buffered_bytes)
    }

    /// Over `--max-buffered-bytes`: drops the clients holding the most (a
    /// walk over the connections per drop, only while over the bound, which
    /// the bound makes rare) until the hub is back under it.
    fn enforce_budget(&mut self, now: Millis) {
        let held = self.held_bytes();
        self.peak_held = self.peak_held.max(held);
        if held <= self.config.max_buffered_bytes {
            return;
        }
        // Bounded work per call; the next event continues if need be.
        for _ in 0..64 {
            if self.held_bytes() <= self.config.max_buffered_bytes {
                return;
            }
            let biggest = self
                .clients
                .iter()
                .filter(|(_, c)| !c.ended)
                .map(|(id, c)| (id, c.conn.queued_bytes() + c.inbound as usize))
                .max_by_key(|&(_, bytes)| bytes);
            let Some((id, bytes)) = biggest else { return };
            if bytes == 0 {
                return;
            }
            let Hub { clients, config, admission, .. } = self;
            let ctx = Context { config, now, admission };
            let action = clients[id].conn.overloaded(&ctx);
            self.apply(id, action, now);
        }
    }

    /// True once after a burst of memory use has passed (the hub held over
    /// 4 MiB, and now holds under a quarter of that peak): a good moment to
    /// give freed memory back to the system.
    pub fn take_trim_hint(&mut self) -> bool {
        let held = self.held_bytes();
        if self.peak_held > 4 << 20 && held < self.peak_held / 4 {
            self.peak_held = held;
            return true;
        }
        false
    }

    /// While a client is over its inbound rate limit: when the driver may
    /// read it again.
    pub fn throttled_until(&self, id: ClientId) -> Option<Millis> {
        self.clients.get(id).and_then(|c| c.conn.throttled_until(&self.config))
    }

    /// The peer closed its sending side (EOF).
    pub fn peer_closed(&mut self, id: ClientId, now: Millis) {
        self.remove(id, Reason::ConnectionLost(io::ErrorKind::UnexpectedEof), now);
    }

    /// Reading or writing the connection failed.
    pub fn lost(&mut self, id: ClientId, error: &io::Error, now: Millis) {
        let reason = match TlsFailure::of(error) {
            Some(failure) => Reason::TlsFailed(failure.0),
            None => Reason::ConnectionLost(error.kind()),
        };
        self.remove(id, reason, now);
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
        if let Some(bridge) = &mut self.bridge {
            share(bridge, std::iter::once(topic), &frame, now);
        }
        drop(frame);
        self.apply_deferred(now);
        self.enforce_budget(now);
        receivers
    }

    /// End of a loop turn: writes every client that has bytes queued, so a
    /// burst leaves in one system call per client.
    pub fn flush(&mut self, now: Millis) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            // One slab lookup per client (this loop runs once per delivery
            // at low rates).
            let Some(client) = self.clients.get_mut(id) else { continue };
            client.dirty = false;
            if let Err(e) = write_client(client, &mut self.cork, now, &mut self.stats) {
                debug!("{}: write: {e}", client.conn.peer());
                self.remove(id, Reason::ConnectionLost(e.kind()), now);
            }
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
        self.enforce_budget(now);
        self.admission.sweep(&self.config, now);
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

    /// Shutting down, and every connection is gone (and every message
    /// shared with Redis), or the time is up.
    pub fn shutdown_complete(&self, now: Millis) -> bool {
        let drained = self.clients.is_empty() && self.bridge.as_ref().is_none_or(Bridge::drained);
        self.shutdown_deadline.is_some_and(|deadline| drained || now >= deadline)
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
        stats.held_bytes = self.held_bytes() as u64;
        stats.redis = self.bridge.as_ref().map(Bridge::stats);
        stats
    }

    fn apply(&mut self, id: ClientId, action: Action, now: Millis) {
        match action {
            Action::Nothing => {}
            Action::Subscribe(topics, publish_mask) => {
                if let Some(client) = self.clients.get_mut(id) {
                    client.subscribed = true;
                    self.admission.joined();
                    self.stats.upgrades += 1;
                    let bridge = &mut self.bridge;
                    self.subscriptions.subscribe(id, &topics, publish_mask, |topic| {
                        if let Some(bridge) = bridge {
                            bridge.topic_added(topic, now);
                        }
                    });
                    debug!("{}: upgraded, topics {topics:?}", client.conn.peer());
                }
            }
            Action::Broadcast(frame) => {
                self.stats.messages_in += 1;
                self.broadcast_from(id, frame, now);
            }
            Action::Metrics => {
                let extras = Extras {
                    buffered_bytes_limit: self.config.max_buffered_bytes as u64,
                    dropped_log_lines: crate::logger::dropped_log_lines(),
                    process: self.process_probe.and_then(|probe| probe()),
                };
                let text = metrics::render(&self.stats(), &extras);
                if let Some(client) = self.clients.get_mut(id) {
                    client.conn.answer(http::response(200, metrics::CONTENT_TYPE, &text), now);
                }
                self.apply(id, Action::Closing(Reason::HttpDone), now);
            }
            Action::Publish(topic, frame) => {
                self.stats.http_publishes += 1;
                let receivers = self.publish(&topic, frame, now);
                if let Some(client) = self.clients.get_mut(id) {
                    client.conn.published(receivers, now);
                    debug!("{}: published to {topic} ({receivers} receivers)", client.conn.peer());
                }
                self.apply(id, Action::Closing(Reason::HttpDone), now);
            }
            Action::Closing(reason) => {
                self.end(id, reason, now);
                self.sync(id);
                self.mark_dirty(id);
            }
            Action::Drop(reason) => self.remove(id, reason, now),
        }
    }

    /// Records why a connection ends (once: one log line, one count) and
    /// takes it out of the hub's fan-out; its last bytes may still be sent.
    fn end(&mut self, id: ClientId, reason: Reason, now: Millis) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let first = !std::mem::replace(&mut client.ended, true);
        let peer = client.conn.peer();
        if client.subscribed {
            client.subscribed = false;
            self.admission.left();
            let bridge = &mut self.bridge;
            self.subscriptions.unsubscribe(id, |topic| {
                if let Some(bridge) = bridge {
                    bridge.topic_removed(topic, now);
                }
            });
        }
        if first {
            self.record_exit(peer, reason, now);
        }
    }

    /// Counts an ending and logs it (rate-limited per reason).
    fn record_exit(&mut self, peer: SocketAddr, reason: Reason, now: Millis) {
        let exit = reason.exit();
        self.stats.count_exit(exit);
        if let Reason::Rejected(rejection) = reason {
            self.stats.count_rejection(rejection.status);
        }
        let level = reason.level();
        if log::log_enabled!(level)
            && let Some(suppressed) = self.log_limit.admit(exit, now)
        {
            let (label, code, status) = (exit.label(), reason.close_code(), reason.http_status());
            if suppressed > 0 {
                log::log!(level, peer:% = peer, reason = label, code = code, status = status, suppressed = suppressed;
                    "{peer}: {reason} ({suppressed} more like it were not logged)");
            } else {
                log::log!(level, peer:% = peer, reason = label, code = code, status = status; "{peer}: {reason}");
            }
        }
    }

    /// The exit path: ends the connection for `reason` (unless it already
    /// ended for another) and frees it.
    pub fn remove(&mut self, id: ClientId, reason: Reason, now: Millis) {
        self.end(id, reason, now);
        if let Some(client) = self.clients.try_remove(id) {
            self.inbound -= client.inbound as usize;
            if client.pending {
                self.admission.request_done();
            }
            self.admission.disconnected(&self.config, client.conn.peer(), now);
            self.closed.push((id, client.transport));
        }
    }

    /// Queues a client's message to every client on its topics.
    fn broadcast_from(&mut self, sender: ClientId, frame: SharedFrame, now: Millis) {
        if let Some(bridge) = &mut self.bridge {
            share(bridge, self.subscriptions.publish_topics(sender), &frame, now);
        }
        let no_echo = self.config.no_echo;
        let (subscriptions, mut fanout) = self.fanout(now);
        subscriptions.for_each_peer(sender, |id| {
            if !(no_echo && id == sender) {
                fanout.deliver(id, &frame);
            }
        });
        drop(frame);
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
            self.remove(id, Reason::ConnectionLost(e.kind()), now);
        }
    }
}

/// Hands a message this hub accepted to Redis, for the other hubs. Kept
/// out of line: inlined, it cost the local fan-out loop five instructions
/// per delivery (callgrind), with Redis off.
#[inline(never)]
fn share<'t>(bridge: &mut Bridge, topics: impl Iterator<Item = &'t Topic> + Clone, frame: &SharedFrame, now: Millis) {
    if let Some((kind, payload)) = frame::message_parts(frame) {
        bridge.publish(topics, kind, payload, now);
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
    // Records a TLS transport could not send yet go first.
    if client.transport.has_pending_output() {
        match client.transport.flush_pending() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                client.blocked = true;
                return Ok(());
            }
            other => other?,
        }
    }
    let written = client.conn.transmit(&mut client.transport, cork, now)?;
    stats.bytes_out += written as u64;
    // Whatever is left was refused: wait for a writable event (edge-triggered:
    // a full socket reports writable again when it drains).
    client.blocked = client.conn.wants_write() || client.transport.has_pending_output();
    if client.conn.wants_shutdown() && !client.blocked {
        client.transport.shutdown_write()?;
        client.conn.shutdown_done(now);
        // A TLS close_notify the socket had no room for goes out (and the
        // TCP half-close after it) when the socket is writable again.
        client.blocked = client.transport.has_pending_output();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::frame::{MessageKind, encode_client, encode_message};
    use crate::memory_transport::MemoryTransport;
    use crate::reason::Exit;

    fn upgrade(path: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes()
    }

    fn peer(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16))
    }

    /// Connects and upgrades a client on `transport`; returns its id after
    /// its 101 was written (and taken off the transport).
    fn join(hub: &mut Hub<MemoryTransport>, path: &str, transport: &MemoryTransport, now: Millis) -> ClientId {
        let id = hub.insert(transport.clone(), peer(hub.len()), now);
        hub.receive(id, &mut upgrade(path), now);
        hub.flush(now);
        let response = String::from_utf8(transport.take_sent()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        id
    }

    fn send(hub: &mut Hub<MemoryTransport>, id: ClientId, first: u8, payload: &[u8], now: Millis) {
        hub.receive(id, &mut encode_client(first, payload, [9, 8, 7, 6]), now);
    }

    /// Server frames in `bytes`, as (opcode, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 2 {
            let (len, head) = match rest[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
                n => (usize::from(n), 2),
            };
            out.push((rest[0] & 0x0f, rest[head..head + len].to_vec()));
            rest = &rest[head + len..];
        }
        assert!(rest.is_empty(), "a partial frame was sent");
        out
    }

    fn close_code(frame: &(u8, Vec<u8>)) -> u16 {
        assert_eq!(frame.0, 8, "not a close frame: {frame:?}");
        u16::from_be_bytes([frame.1[0], frame.1[1]])
    }

    #[test]
    fn no_echo_skips_only_the_sender() {
        for no_echo in [false, true] {
            let mut hub = Hub::new(Config { no_echo, ..Config::default() });
            let (a, b) = (MemoryTransport::new(), MemoryTransport::new());
            let sender = join(&mut hub, "/ws", &a, 0);
            join(&mut hub, "/ws", &b, 0);
            send(&mut hub, sender, 0x81, b"hi", 0);
            hub.flush(0);
            assert_eq!(frames(&b.take_sent()), [(1, b"hi".to_vec())]);
            let echoed = frames(&a.take_sent());
            assert_eq!(echoed.is_empty(), no_echo, "no_echo={no_echo}: {echoed:?}");
            assert_eq!(hub.stats().messages_in, 1);
            assert_eq!(hub.stats().deliveries, if no_echo { 1 } else { 2 });
        }
    }

    #[test]
    fn capacity_is_counted_as_clients_come_and_go() {
        let mut hub = Hub::new(Config { max_connections: 2, ..Config::default() });
        let first = join(&mut hub, "/ws", &MemoryTransport::new(), 0);
        join(&mut hub, "/ws", &MemoryTransport::new(), 0);
        let refused = MemoryTransport::new();
        let id = hub.insert(refused.clone(), peer(9), 0);
        hub.receive(id, &mut upgrade("/ws"), 0);
        hub.flush(0);
        assert!(String::from_utf8(refused.take_sent()).unwrap().starts_with("HTTP/1.1 503 "));
        assert!(refused.is_write_shut(), "half-closed after the answer");
        assert_eq!(hub.stats().rejected_with(503), 1);
        // An HTTP request that is not an upgrade does not count.
        assert_eq!(hub.stats().open, 2);
        hub.peer_closed(first, 0);
        join(&mut hub, "/ws", &MemoryTransport::new(), 0);
        assert_eq!(hub.stats().open, 2);
        assert_eq!(hub.stats().exited(Exit::ConnectionLost), 1);
    }

    #[test]
    fn a_queue_at_half_its_bound_is_written_before_the_turn_ends() {
        let mut hub = Hub::new(Config { queue_messages: 8, ..Config::default() });
        let t = MemoryTransport::new();
        join(&mut hub, "/ws", &t, 0);
        let calls = t.write_calls();
        let topic = Topic::new("all").unwrap();
        for i in 0..3u8 {
            hub.publish(&topic, encode_message(MessageKind::Binary, &[i]), 0);
        }
        assert_eq!(t.write_calls(), calls, "below half: writes wait for the end of the turn");
        hub.publish(&topic, encode_message(MessageKind::Binary, &[3]), 0);
        assert_eq!(t.write_calls(), calls + 1, "at half: written at once, in one call");
        assert_eq!(frames(&t.take_sent()).len(), 4);
        // The same by bytes.
        let mut hub = Hub::new(Config { queue_bytes: 1000, ..Config::default() });
        let t = MemoryTransport::new();
        join(&mut hub, "/ws", &t, 0);
        let calls = t.write_calls();
        hub.publish(&topic, encode_message(MessageKind::Binary, &[0; 300]), 0);
        assert_eq!(t.write_calls(), calls);
        hub.publish(&topic, encode_message(MessageKind::Binary, &[0; 300]), 0);
        assert_eq!(t.write_calls(), calls + 1);
    }

    #[test]
    fn close_sequence_last_bytes_then_half_close_then_linger() {
        let mut hub = Hub::new(Config::default());
        let t = MemoryTransport::new();
        let id = join(&mut hub, "/ws", &t, 0);
        send(&mut hub, id, 0x88, &1000u16.to_be_bytes(), 0);
        hub.flush(0);
        let sent = frames(&t.take_sent());
        assert_eq!(close_code(&sent[0]), 1000);
        assert!(t.is_write_shut());
        assert!(hub.contains(id), "lingers for the peer's EOF");
        assert_eq!(hub.stats().closing, 1);
        // The peer's EOF ends it without a second count.
        hub.peer_closed(id, 0);
        assert!(!hub.contains(id));
        assert_eq!(hub.take_closed().count(), 1, "the transport goes back to the driver");
        assert_eq!(hub.stats().exited(Exit::ClientClosed), 1);
        assert_eq!(hub.stats().exited(Exit::ConnectionLost), 0);

        // No EOF: dropped when the linger ends, still counted once.
        let t = MemoryTransport::new();
        let id = join(&mut hub, "/ws", &t, 0);
        send(&mut hub, id, 0x88, &[], 1_000);
        hub.flush(1_000);
        let linger = crate::connection::CLOSE_LINGER.as_millis() as Millis;
        hub.tick(1_000 + linger - 1);
        assert!(hub.contains(id));
        hub.tick(1_000 + linger);
        assert!(!hub.contains(id));
        assert_eq!(hub.stats().exited(Exit::ClientClosed), 2);
        assert_eq!(hub.stats().exited(Exit::LingerTimeout), 0);
    }

    #[test]
    fn a_slow_reader_still_gets_its_close_frame_within_the_write_timeout() {
        let config = Config { queue_messages: 4, write_timeout: Duration::from_secs(10), ..Config::default() };
        let mut hub = Hub::new(config);
        let t = MemoryTransport::new();
        let id = join(&mut hub, "/ws", &t, 0);
        // The peer stops reading; the fifth message overflows its queue.
        t.set_room(0);
        let topic = Topic::new("all").unwrap();
        for i in 0..5u8 {
            hub.publish(&topic, encode_message(MessageKind::Binary, &[i; 100]), 0);
        }
        hub.flush(0);
        assert_eq!(hub.stats().exited(Exit::SlowConsumer), 1);
        // Three seconds later (past the old 2 s linger) it reads.
        hub.tick(3_000);
        assert!(hub.contains(id), "waiting for the slow reader, within --write-timeout");
        t.grant(100_000);
        hub.writable(id, 3_000);
        let sent = frames(&t.take_sent());
        assert_eq!(close_code(sent.last().unwrap()), 1013);
        assert!(t.is_write_shut());
        // A reader that never comes back is dropped at the write timeout.
        let t = MemoryTransport::new();
        let stuck = join(&mut hub, "/ws", &t, 4_000);
        t.set_room(0);
        for i in 0..5u8 {
            hub.publish(&topic, encode_message(MessageKind::Binary, &[i; 100]), 4_000);
        }
        hub.flush(4_000);
        hub.tick(13_999);
        assert!(hub.contains(stuck));
        hub.tick(14_000);
        assert!(!hub.contains(stuck));
    }

    #[test]
    fn shutdown_flushes_queues_then_closes_1001_within_the_deadline() {
        let config = Config { shutdown_timeout: Duration::from_secs(5), ..Config::default() };
        let mut hub = Hub::new(config);
        let idle = MemoryTransport::new();
        let slow = MemoryTransport::new();
        join(&mut hub, "/ws", &idle, 0);
        let slow_id = join(&mut hub, "/ws", &slow, 0);
        slow.set_room(0);
        let topic = Topic::new("all").unwrap();
        hub.publish(&topic, encode_message(MessageKind::Text, b"queued"), 0);
        hub.flush(0);
        let _ = idle.take_sent();
        let pending = hub.insert(MemoryTransport::new(), peer(7), 0);

        hub.begin_shutdown(100);
        assert!(!hub.contains(pending), "a connection still in its request is dropped");
        assert_eq!(close_code(&frames(&idle.take_sent())[0]), 1001);
        assert!(!hub.shutdown_complete(100));
        // Draining goes on past the close linger (2 s), up to the deadline.
        hub.tick(3_000);
        assert!(hub.contains(slow_id));
        slow.grant(1_000);
        hub.writable(slow_id, 3_000);
        let sent = frames(&slow.take_sent());
        assert_eq!(sent[0], (1, b"queued".to_vec()), "what was queued goes first");
        assert_eq!(close_code(&sent[1]), 1001);
        assert_eq!(hub.stats().exited(Exit::ShuttingDown), 3);
        assert!(!hub.shutdown_complete(3_000));
        assert!(hub.shutdown_complete(5_100), "the deadline ends it whoever is left");
        let ids: Vec<ClientId> = (0..10).filter(|&i| hub.contains(i)).collect();
        for id in ids {
            hub.peer_closed(id, 0);
        }
        assert!(hub.shutdown_complete(3_001), "everyone gone ends it early");
    }

    #[test]
    fn one_deadline_covers_a_publish_head_and_its_body() {
        let mut hub = Hub::new(Config { handshake_timeout: Duration::from_secs(10), ..Config::default() });
        let t = MemoryTransport::new();
        let id = hub.insert(t.clone(), peer(1), 0);
        hub.receive(
            id,
            &mut b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n".to_vec(),
            8_000,
        );
        hub.receive(id, &mut b"12345".to_vec(), 9_000);
        hub.tick(9_999);
        assert!(hub.contains(id));
        hub.tick(10_000);
        assert!(!hub.contains(id), "the body does not get a fresh timeout");
        assert_eq!(hub.stats().exited(Exit::HandshakeTimeout), 1);
    }

    #[test]
    fn exit_path_counts_once_and_frees_everything() {
        let mut hub = Hub::new(Config::default());
        let t = MemoryTransport::new();
        let id = join(&mut hub, "/ws?topic=a&topic=b", &t, 0);
        assert_eq!(hub.stats().topics, 2);
        send(&mut hub, id, 0x91, b"rsv", 0); // RSV1 without an extension
        hub.flush(0);
        assert_eq!(close_code(&frames(&t.take_sent())[0]), 1002);
        assert_eq!(hub.stats().topics, 0, "unsubscribed as soon as it ends");
        assert_eq!(hub.stats().open, 0);
        hub.lost(id, &io::ErrorKind::ConnectionReset.into(), 0);
        hub.lost(id, &io::ErrorKind::ConnectionReset.into(), 0);
        let stats = hub.stats();
        assert_eq!(stats.exited(Exit::ProtocolError), 1);
        assert_eq!(stats.exited(Exit::ConnectionLost), 0);
        assert_eq!((stats.open, stats.pending, stats.closing, stats.queued_bytes), (0, 0, 0, 0));
        assert_eq!(stats.accepted, 1);
        assert!(hub.is_empty());
    }

    /// A transport that accepts nothing and says so with `Ok(0)`.
    struct Refusing(usize);

    impl Write for Refusing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0 += 1;
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Refusing {
        fn receive(&mut self, _: &mut [u8]) -> io::Result<crate::transport::Input> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_that_takes_nothing_is_back_pressure_not_an_error() {
        let mut hub = Hub::new(Config::default());
        let id = hub.insert(Refusing(0), peer(1), 0);
        hub.receive(id, &mut upgrade("/ws"), 0);
        hub.flush(0);
        assert!(hub.contains(id), "not dropped");
        assert!(hub.is_blocked(id), "waits for writable");
        hub.flush(0);
        assert_eq!(hub.transport(id).map(|t| t.0), Some(1), "no retry until writable");
        assert_eq!(hub.stats().open, 1);
    }
}
