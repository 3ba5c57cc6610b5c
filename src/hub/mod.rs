//! The hub: every connection, its subscriptions, and the rules that span
//! connections, without I/O of its own.
//!
//! The driver hands the hub what happened (a connection accepted, a socket
//! readable or writable, bytes read, the time) and asks what to do next:
//! whom to read ([`Hub::next_read`], one share each per turn, so a flooder
//! cannot starve anyone), and when to wake it ([`Hub::poll_timeout`]; then
//! [`Hub::handle_timeout`]). The hub decides everything else: who is
//! admitted, who receives a broadcast (`--no-echo` included), when a queue
//! is written (at the end of a turn, or at half its bound so a burst cannot
//! overflow a client that keeps up), when a connection closes and how (last
//! bytes, half-close, linger), who is over its rate or over the memory
//! budget, and how a shutdown drains. It writes through each client's
//! [`Transport`], so tests run it on in-memory transports with a clock they
//! set. Every connection leaves through one exit path, [`Hub::remove`] /
//! `end`, which logs once, counts, and frees its state. With `--redis`, the
//! hub also hands every message it accepts to its [`Bridge`], tells it when
//! topics appear and disappear, and delivers what other hubs sent.
//!
//! `reading` is the read side and its fairness and rate limits, `writing`
//! the end-of-turn writes, `fanout` the deliveries, `timers` the deadlines,
//! `budget` the memory accounting.

mod budget;
mod fanout;
mod reading;
mod replay;
mod timers;
mod writing;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_delay_tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use log::debug;
use slab::Slab;

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::config::Config;
use crate::connection::{Action, Connection, Context, Reason};
use crate::deflate::{Compressor, Inflater};
use crate::history::{History, Limits, MessageId};
use crate::metrics::{self, Extras};
use crate::process::ProcessMetrics;
use crate::reason::LogLimiter;
use crate::redis::Bridge;
use crate::stats::Stats;
use crate::subscriptions::Subscriptions;
use crate::time::{Millis, NEVER};
use crate::topic::Topic;
use crate::transport::Transport;

pub use crate::subscriptions::ClientId;

use reading::Reads;
use timers::Timers;
use writing::Writes;

/// A client's marks, one bit each (an idle connection is small).
#[derive(Debug, Clone, Copy, Default)]
struct Flags(u16);

impl Flags {
    /// Listed in `Writes::dirty`: has queued bytes to write this turn.
    const DIRTY: u16 = 1;
    /// Subscribed and counted against `--max-connections`.
    const SUBSCRIBED: u16 = 1 << 1;
    /// The transport pushed back; nothing is written until it is writable.
    const BLOCKED: u16 = 1 << 2;
    /// Its reason to end was recorded (logged and counted) already.
    const ENDED: u16 = 1 << 3;
    /// Still sending its HTTP request (counted against `--max-pending`).
    const PENDING: u16 = 1 << 4;
    /// Listed to be read (this turn or the next).
    const READ_LISTED: u16 = 1 << 5;
    /// Over its inbound rate: not read until its resume time.
    const THROTTLED: u16 = 1 << 6;
    /// The peer closed its side: read on to its EOF.
    const PEER_CLOSED: u16 = 1 << 7;
    /// Listed in `Writes::delayed` (`--write-delay`): its write is due at
    /// the listed time, or earlier if something cannot wait.
    const DELAYED: u16 = 1 << 8;
    /// Bits 9 to 12: the client negotiated compression, with this
    /// `server_max_window_bits` less 7 (1 to 8); 0: it did not.
    const DEFLATE_SHIFT: u16 = 9;
    const DEFLATE_MASK: u16 = 0xf << Flags::DEFLATE_SHIFT;
    /// A Server-Sent Events client (`/sse`).
    const SSE: u16 = 1 << 13;
    /// Being replayed what it missed (`replay`): live deliveries reach it
    /// through the history until the replay catches up.
    const REPLAYING: u16 = 1 << 14;
    /// Any of the marks that make a delivery more than a pointer copy.
    const SPECIAL: u16 = Flags::DEFLATE_MASK | Flags::SSE | Flags::REPLAYING;

    /// The client is not a plain WebSocket client keeping up: one test per
    /// delivery for all the rest.
    #[inline]
    fn special(self) -> bool {
        self.0 & Flags::SPECIAL != 0
    }

    /// The client negotiated compression. Always false without the
    /// `deflate` feature, so the fan-out loop's test compiles away.
    #[inline]
    fn compresses(self) -> bool {
        cfg!(feature = "deflate") && self.0 & Flags::DEFLATE_MASK != 0
    }

    /// The client's compression window bits (8 to 15), or 0 without
    /// compression.
    fn deflate_window(self) -> u8 {
        match (self.0 & Flags::DEFLATE_MASK) >> Flags::DEFLATE_SHIFT {
            0 => 0,
            bits => bits as u8 + 7,
        }
    }

    fn set_deflate_window(&mut self, bits: u8) {
        let field = if bits == 0 { 0 } else { u16::from(bits.clamp(8, 15) - 7) << Flags::DEFLATE_SHIFT };
        self.0 = (self.0 & !Flags::DEFLATE_MASK) | field;
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u16, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Sets `bit`; returns whether it was set before.
    fn replace(&mut self, bit: u16, on: bool) -> bool {
        let was = self.has(bit);
        self.set(bit, on);
        was
    }
}

struct Client<T> {
    transport: T,
    conn: Connection,
    flags: Flags,
    /// Bytes it held when last looked at (its share of `Budget::clients`; a
    /// request head, a message or a queue's slots are far below 4 GiB).
    held: u32,
    /// The time of its entry in the timers (`NEVER`: none).
    timer: Millis,
}

impl<T> Client<T> {
    /// It has bytes to send: it is written at the end of this turn, or,
    /// with `--write-delay`, once its oldest unwritten frame has waited the
    /// delay (unless what it has cannot wait: see
    /// [`Connection::may_wait`]).
    #[inline(always)]
    fn mark_dirty(&mut self, key: ClientId, writes: &mut Writes, now: Millis) {
        if writes.delay != 0 && !self.flags.has(Flags::DIRTY) && self.conn.wants_write() && self.conn.may_wait() {
            if !self.flags.replace(Flags::DELAYED, true) {
                writes.delayed.push_back((now.saturating_add(writes.delay), key));
            }
            return;
        }
        self.list_for_this_turn(key, &mut writes.dirty);
    }

    /// Lists it (once) for the writes at the end of this turn, if it has
    /// bytes to send.
    #[inline]
    fn list_for_this_turn(&mut self, key: ClientId, dirty: &mut Vec<ClientId>) {
        if !self.flags.has(Flags::DIRTY) && self.conn.wants_write() {
            self.flags.set(Flags::DIRTY, true);
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
    /// Who is written at the end of this turn, and who later.
    writes: Writes,
    /// Actions produced while the hub was being walked, applied after.
    deferred: Vec<(ClientId, Action)>,
    /// Transports of removed clients, for the driver to deregister and drop.
    closed: Vec<(ClientId, T)>,
    /// Who is read this turn and the next, and who waits out a rate limit.
    reads: Reads,
    /// When each connection next needs its deadlines looked at.
    timers: Timers,
    shutdown_deadline: Option<Millis>,
    budget: budget::Budget,
    /// Log lines of connection endings, rate-limited per reason.
    log_limit: LogLimiter,
    process_probe: Option<fn() -> Option<ProcessMetrics>>,
    /// Descriptors the process held at startup, besides connections.
    base_fds: u64,
    /// With `--redis`: messages shared with other hubs.
    bridge: Option<Bridge>,
    /// Bytes waiting in the `Publisher` inbox, for the budget.
    inbox: Option<Arc<AtomicUsize>>,
    /// permessage-deflate: compresses each broadcast at most once, for
    /// every client that negotiated it.
    compressor: Compressor,
    /// Inflates every client's compressed messages.
    inflater: Inflater,
    /// This run's epoch, and the last message id given (`history`).
    epoch: u64,
    seq: u64,
    /// Recent messages per topic (`--history`).
    history: History,
    /// Clients being replayed what they missed, and where each stands.
    replays: HashMap<ClientId, replay::Replay>,
}

impl<T: Transport> Hub<T> {
    pub fn new(config: Config) -> Hub<T> {
        let writes = Writes::new(&config);
        let history = History::new(Limits {
            per_topic: config.history,
            bytes: config.history_bytes,
            ttl: crate::time::millis(config.history_ttl),
        });
        Hub {
            config,
            clients: Slab::new(),
            subscriptions: Subscriptions::default(),
            admission: Admission::default(),
            stats: Stats::default(),
            cork: Vec::with_capacity(crate::send_queue::CORK_BYTES),
            writes,
            deferred: Vec::new(),
            closed: Vec::new(),
            reads: Reads { redis_budget: reading::REDIS_DELIVERIES_PER_TURN, ..Reads::default() },
            timers: Timers::default(),
            shutdown_deadline: None,
            budget: budget::Budget::default(),
            log_limit: LogLimiter::default(),
            process_probe: None,
            base_fds: 0,
            bridge: None,
            inbox: None,
            compressor: Compressor::default(),
            inflater: Inflater::default(),
            epoch: crate::history::new_epoch(),
            seq: 0,
            history,
            replays: HashMap::new(),
        }
    }

    /// Counts the `Publisher` inbox's bytes in `--max-buffered-bytes`.
    pub fn count_inbox(&mut self, held: Arc<AtomicUsize>) {
        self.inbox = Some(held);
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
    /// `base_fds` is what the process holds besides connections (listeners,
    /// the poll, the waker, standard streams, the log), counted once at
    /// startup: `process_open_fds` adds the connections and Redis sockets
    /// to it.
    pub fn set_process_probe(&mut self, probe: fn() -> Option<ProcessMetrics>, base_fds: u64) {
        self.process_probe = Some(probe);
        self.base_fds = base_fds;
    }

    /// Sockets the hub owns: its connections (removed ones until the driver
    /// drops them) and the Redis links that are not down.
    fn open_sockets(&self) -> u64 {
        let redis = self.bridge.as_ref().map_or(0, Bridge::sockets);
        (self.clients.len() + self.closed.len() + redis) as u64
    }

    /// The wall-clock time token claims are judged by (seconds since the
    /// epoch); `now` stays the monotonic clock for every deadline.
    pub fn set_unix_now(&mut self, unix_now: u64) {
        self.admission.set_unix_now(unix_now);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The id of the last message accepted (`<epoch>-0` before any).
    pub fn current_id(&self) -> MessageId {
        MessageId { epoch: self.epoch, seq: self.seq }
    }

    /// The id the next [`insert`](Hub::insert) will use (to register the
    /// socket under it first).
    pub fn next_id(&self) -> ClientId {
        self.clients.vacant_key()
    }

    /// Whether a connection just accepted from `peer` may stay (per-address
    /// limits, connection rate, pending requests). A refused one is counted
    /// and logged here; the driver closes it at once.
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
        let client =
            Client { transport, conn: Connection::new(now, peer), flags: Flags(Flags::PENDING), held: 0, timer: NEVER };
        let id = self.clients.insert(client);
        self.budget.peak_clients = self.budget.peak_clients.max(self.clients.len());
        self.budget.drain_peak = self.budget.drain_peak.max(self.clients.len());
        self.schedule(id);
        debug!("{peer}: connected");
        id
    }

    /// The transport of a connection, for the driver to read from.
    pub fn transport(&mut self, id: ClientId) -> Option<&mut T> {
        self.clients.get_mut(id).map(|c| &mut c.transport)
    }

    #[cfg(test)]
    pub fn is_blocked(&self, id: ClientId) -> bool {
        self.clients.get(id).is_some_and(|c| c.flags.has(Flags::BLOCKED))
    }

    #[cfg(test)]
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

    /// Starts a graceful shutdown: open clients get what is queued for them,
    /// then close 1001; everything else is dropped. The driver stops
    /// accepting and runs until [`shutdown_complete`](Hub::shutdown_complete).
    pub fn begin_shutdown(&mut self, now: Millis) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(now.saturating_add(crate::time::millis(self.config.shutdown_timeout)));
        let Hub { clients, config, admission, deferred, inflater, .. } = self;
        let ctx = Context { config, now, admission, inflater };
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

    /// Transports of connections that were removed since the last call: the
    /// driver deregisters them, and dropping them closes the sockets.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, (ClientId, T)> {
        self.closed.drain(..)
    }

    /// A snapshot of the counters and gauges, for `/metrics`,
    /// `Publisher::stats` and tests. O(1) but for the Redis links: the
    /// connection gauges are kept as connections change, and the bytes in
    /// send queues are summed by housekeeping once a second (a walk over
    /// 20,000 connections per scrape would make scraping cost what the
    /// hub's size is).
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.open = self.admission.ws_clients() as u64;
        stats.pending = self.admission.pending() as u64;
        // Everything else is answered or closing.
        stats.closing = (self.clients.len() as u64).saturating_sub(stats.open + stats.pending);
        stats.queued_bytes = self.timers.queued_bytes;
        stats.topics = self.subscriptions.topic_count() as u64;
        stats.held_bytes = self.held_bytes() as u64;
        stats.inflated_messages = self.inflater.inflated();
        stats.history_messages = self.history.len() as u64;
        stats.history_bytes = self.history.bytes() as u64;
        stats.history_evictions = self.history.evictions();
        stats.compression_memory_bytes = (self.compressor.held_bytes() + self.inflater.held_bytes()) as u64;
        stats.redis = self.bridge.as_ref().map(Bridge::stats);
        stats
    }

    fn apply(&mut self, id: ClientId, action: Action, now: Millis) {
        match action {
            Action::Nothing => {}
            Action::Subscribe(joined) => {
                let crate::connection::Joined { topics, publish_mask, deflate_window, sse, resume } = joined;
                if let Some(client) = self.clients.get_mut(id) {
                    client.flags.set(Flags::SUBSCRIBED, true);
                    client.flags.set_deflate_window(deflate_window);
                    client.flags.set(Flags::SSE, sse);
                    if deflate_window != 0 {
                        self.stats.compression_clients += 1;
                    }
                    if sse {
                        self.stats.sse_clients += 1;
                    }
                    self.admission.joined();
                    self.stats.upgrades += 1;
                    let bridge = &mut self.bridge;
                    self.subscriptions.subscribe(id, &topics, publish_mask, |topic| {
                        if let Some(bridge) = bridge {
                            bridge.topic_added(topic, now);
                        }
                    });
                    if log::log_enabled!(log::Level::Debug) {
                        let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
                        debug!("{}: upgraded, topics {}", client.conn.peer(), names.join(", "));
                    }
                    self.start_replay(id, topics, sse, resume, now);
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
                    process: self.process_probe.and_then(|probe| probe()).map(|mut process| {
                        // Counted, not listed: listing /proc/self/fd costs
                        // O(descriptors) (10 ms at 10,000 clients).
                        process.open_fds = self.base_fds + self.open_sockets();
                        process
                    }),
                };
                let text = metrics::render(&self.stats(), &extras);
                if let Some(client) = self.clients.get_mut(id) {
                    let action = client.conn.answer(metrics::CONTENT_TYPE, &text, now);
                    self.apply(id, action, now);
                }
            }
            Action::Publish(topic, frame) => {
                self.stats.http_publishes += 1;
                let (receivers, message) = self.publish(&topic, frame, now);
                if let Some(client) = self.clients.get_mut(id) {
                    debug!("{}: published to {topic} ({receivers} receivers)", client.conn.peer());
                    let action = client.conn.published(receivers, message, now);
                    self.apply(id, action, now);
                }
            }
            Action::Closing(reason) => {
                self.end(id, reason, now);
                self.sync(id);
                self.mark_dirty(id, now);
            }
            Action::Drop(reason) => self.remove(id, reason, now),
        }
    }

    fn apply_deferred(&mut self, now: Millis) {
        while let Some((id, action)) = self.deferred.pop() {
            self.apply(id, action, now);
        }
    }

    /// Records why a connection ends (once: one log line, one count) and
    /// takes it out of the hub's fan-out; its last bytes may still be sent.
    fn end(&mut self, id: ClientId, reason: Reason, now: Millis) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let first = !client.flags.replace(Flags::ENDED, true);
        let peer = client.conn.peer();
        if client.flags.replace(Flags::SUBSCRIBED, false) {
            self.admission.left();
            if client.flags.compresses() {
                self.stats.compression_clients -= 1;
            }
            if client.flags.has(Flags::SSE) {
                self.stats.sse_clients -= 1;
            }
            if client.flags.replace(Flags::REPLAYING, false) {
                self.replays.remove(&id);
            }
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
            let text = crate::logger::ShortText::of(peer);
            let peer_field = text.as_str();
            if suppressed > 0 {
                log::log!(level, peer = peer_field, reason = label, code = code, status = status, suppressed = suppressed;
                    "{peer}: {reason} ({suppressed} more like it were not logged)");
            } else {
                log::log!(level, peer = peer_field, reason = label, code = code, status = status; "{peer}: {reason}");
            }
        }
    }

    /// The exit path: ends the connection for `reason` (unless it already
    /// ended for another) and frees it.
    pub fn remove(&mut self, id: ClientId, reason: Reason, now: Millis) {
        self.end(id, reason, now);
        if let Some(client) = self.clients.try_remove(id) {
            self.budget.clients -= client.held as usize;
            if client.flags.has(Flags::PENDING) {
                self.admission.request_done();
            }
            self.admission.disconnected(&self.config, client.conn.peer(), now);
            self.closed.push((id, client.transport));
        }
    }
}
