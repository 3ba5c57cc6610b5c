//! The read side: whom the driver reads, in what order, and what happens to
//! the bytes.
//!
//! Fairness: a turn reads every ready client once (one share of the loop's
//! buffer; for TLS, one socket read of ciphertext), then, in a second
//! round, those whose read may have left more; what is left after that
//! waits for the next turn. So a flooder gets at most two shares of each
//! turn however it frames its data, and a busy publisher's messages still
//! leave in batches (one share of 16 KiB messages is four; a turn's writes
//! carrying twice as many frames halved the `writev` calls per delivery at
//! 16 KiB). Readiness is edge-triggered, so a listed client stays listed
//! until a read drains it.
//!
//! Rate limits (`--rate-limit-*`) count messages, not reads: input is
//! processed message by message until the client is over its rate; the
//! rest of the read waits in the connection (bounded by one read, counted
//! in the budget) and the socket is not read until the client is back
//! under, when the held input is processed first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;

use super::{Flags, Hub};
use crate::connection::{Action, Context, Reason};
use crate::subscriptions::ClientId;
use crate::time::Millis;
use crate::transport::{Input, Transport};

/// Reads of one client per turn, at most.
const SHARES_PER_TURN: u8 = 2;

/// Who is read, and who waits out a rate limit.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// To read this turn, in order.
    pub(super) now: VecDeque<ClientId>,
    /// Their share left more: read in the second round, or next turn.
    pub(super) next: Vec<ClientId>,
    /// The round of this turn being read (0 or 1).
    pub(super) round: u8,
    /// Over their inbound rate, by when they may be read again.
    pub(super) throttled: BinaryHeap<Reverse<(Millis, ClientId)>>,
    /// Deliveries messages from Redis may still make this turn.
    pub(super) redis_budget: usize,
}

/// Deliveries (frames queued) that messages heard from Redis may make per
/// loop turn, summed over both links: Redis input waits its turn like any
/// client's. 64 messages to 1,000 subscribers take a few milliseconds.
pub(super) const REDIS_DELIVERIES_PER_TURN: usize = 64 * 1024;

impl Reads {
    /// Gives back the lists' memory after a peak.
    pub(super) fn shrink(&mut self) {
        self.now.shrink_to_fit();
        self.next.shrink_to_fit();
        self.throttled.shrink_to_fit();
    }
}

impl<T: Transport> Hub<T> {
    /// The driver saw the client's socket readable (or closed by the peer,
    /// `peer_closed`: then it is read on to its EOF).
    pub fn readable(&mut self, id: ClientId, peer_closed: bool) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if peer_closed {
            client.flags.set(Flags::PEER_CLOSED, true);
        }
        if client.flags.has(Flags::THROTTLED) || client.flags.replace(Flags::READ_LISTED, true) {
            return;
        }
        self.reads.now.push_back(id);
    }

    /// The next client to read this turn: the driver reads one share from
    /// its transport and hands the result to [`received`](Hub::received).
    pub fn next_read(&mut self) -> Option<ClientId> {
        loop {
            while let Some(id) = self.reads.now.pop_front() {
                if let Some(client) = self.clients.get_mut(id) {
                    client.flags.set(Flags::READ_LISTED, false);
                    return Some(id);
                }
            }
            if self.reads.round + 1 >= SHARES_PER_TURN || self.reads.next.is_empty() {
                return None;
            }
            self.reads.round += 1;
            self.reads.now.extend(self.reads.next.drain(..));
        }
    }

    /// The turn is over: who still has more is read first next turn.
    pub(super) fn next_turn(&mut self) {
        self.reads.round = 0;
        self.reads.redis_budget = REDIS_DELIVERIES_PER_TURN;
        self.reads.now.extend(self.reads.next.drain(..));
    }

    /// What one read of the client's transport gave; `buf` holds the bytes.
    pub fn received(&mut self, id: ClientId, result: io::Result<Input>, buf: &mut [u8], now: Millis) {
        match result {
            Ok(Input::Eof) => self.peer_closed(id, now),
            Ok(Input::Bytes { len, more }) => {
                if len > 0 {
                    self.receive(id, &mut buf[..len], now);
                } else {
                    self.transport_read(id, now);
                }
                let Some(client) = self.clients.get_mut(id) else { return };
                if client.flags.has(Flags::THROTTLED) || client.flags.has(Flags::READ_LISTED) {
                    return;
                }
                if more {
                    // Not drained: after everyone else had their turn.
                    client.flags.set(Flags::READ_LISTED, true);
                    self.reads.next.push(id);
                } else if client.flags.has(Flags::PEER_CLOSED) {
                    // Drained, and the peer closed: its EOF is next.
                    client.flags.set(Flags::READ_LISTED, true);
                    self.reads.now.push_back(id);
                }
            }
            // A transport may have taken bytes without yielding any (a
            // partial TLS record): keep the budget's books right.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.transport_read(id, now),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.readable(id, false),
            Err(e) => self.lost(id, &e, now),
        }
    }

    /// Feeds bytes read from a connection to its state machine and acts on
    /// what it says, until the input is used up or the client is over its
    /// rate (the rest is held for when it is back under).
    pub fn receive(&mut self, id: ClientId, input: &mut [u8], now: Millis) {
        self.stats.bytes_in += input.len() as u64;
        let used = self.process(id, input, now);
        if used < input.len()
            && let Some(client) = self.clients.get_mut(id)
        {
            client.conn.hold_input(&input[used..]);
        }
        self.after_input(id, now);
    }

    /// Runs the input through the connection; returns how much was used
    /// (all of it, unless the client went over its rate).
    fn process(&mut self, id: ClientId, input: &mut [u8], now: Millis) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            let Hub { clients, config, admission, inflater, .. } = self;
            let Some(client) = clients.get_mut(id) else {
                return input.len();
            };
            let ctx = Context { config, now, admission, inflater };
            let (used, action) = client.conn.receive(&mut input[pos..], &ctx);
            pos += used;
            let message = matches!(action, Action::Broadcast(_));
            let stalled = used == 0 && matches!(action, Action::Nothing);
            self.apply(id, action, now);
            if stalled {
                // Cannot happen (every call consumes or acts), but a loop that
                // makes no progress must not hang the hub.
                log::error!("connection state machine made no progress; dropping the rest of the read");
                return input.len();
            }
            if message && self.throttle(id, now) {
                return pos;
            }
        }
        pos
    }

    /// After input: the books, the writes it caused, its deadlines, the
    /// budget.
    fn after_input(&mut self, id: ClientId, now: Millis) {
        self.sync(id);
        self.mark_dirty(id, now);
        self.schedule(id);
        self.enforce_budget(now);
    }

    /// If the client is over its inbound rate: marks it throttled and
    /// schedules its resume (once). Cheap without rate limits.
    fn throttle(&mut self, id: ClientId, now: Millis) -> bool {
        let Some(client) = self.clients.get_mut(id) else { return false };
        let Some(resume) = client.conn.throttled_until(&self.config).filter(|&t| t > now) else {
            return false;
        };
        if !client.flags.replace(Flags::THROTTLED, true) {
            self.reads.throttled.push(Reverse((resume, id)));
        }
        true
    }

    /// Throttled clients whose time has come: their held input first, then
    /// their socket (next turn: what waited there all along is read).
    pub(super) fn resume_throttled(&mut self, now: Millis) {
        while let Some(&Reverse((resume, id))) = self.reads.throttled.peek() {
            if resume > now {
                break;
            }
            self.reads.throttled.pop();
            let Some(client) = self.clients.get_mut(id) else { continue };
            client.flags.set(Flags::THROTTLED, false);
            let mut held = client.conn.take_held_input();
            if !held.is_empty() {
                let used = self.process(id, &mut held, now);
                if let Some(client) = self.clients.get_mut(id) {
                    client.conn.hold_input(&held[used..]);
                }
                self.after_input(id, now);
            }
            if let Some(client) = self.clients.get_mut(id)
                && !client.flags.has(Flags::THROTTLED)
                && !client.flags.replace(Flags::READ_LISTED, true)
            {
                self.reads.next.push(id);
            }
        }
    }

    /// The transport read bytes it keeps for now (a partial TLS record):
    /// count them against `--max-buffered-bytes`.
    pub fn transport_read(&mut self, id: ClientId, now: Millis) {
        if self.clients.get(id).is_some_and(|c| c.transport.buffered_bytes() > 0 || c.held > 0) {
            self.sync(id);
            self.enforce_budget(now);
        }
    }

    /// The peer closed its sending side (EOF).
    pub fn peer_closed(&mut self, id: ClientId, now: Millis) {
        let Some(client) = self.clients.get(id) else { return };
        // A persistent HTTP connection closed between requests: done.
        let reason = if client.conn.is_between_requests() {
            Reason::HttpDone
        } else {
            Reason::ConnectionLost(io::ErrorKind::UnexpectedEof)
        };
        self.remove(id, reason, now);
    }

    /// Reading or writing the connection failed.
    pub fn lost(&mut self, id: ClientId, error: &io::Error, now: Millis) {
        self.remove(id, Reason::failed(error), now);
    }
}
