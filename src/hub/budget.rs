//! `--max-buffered-bytes`: one account of everything the hub holds for
//! clients, and what happens over it.
//!
//! Frames count where they are made, once however many queues share them
//! (`frame::held_frame_bytes`), and the queues' slots where their capacity
//! changes (`send_queue::held_slot_bytes`). Each connection's own share
//! (unfinished input, input held over its rate, and what its transport
//! keeps: a partial TLS record, undelivered plaintext, records a full
//! socket refused) is brought up to date by [`Hub::sync`] after every read,
//! and after every write that can change it. The Redis links add their
//! buffers, the `Publisher` inbox its messages (each bounded at an eighth
//! of the budget by its owner).

use std::sync::atomic::Ordering;

use super::{Flags, Hub};
use crate::connection::Context;
use crate::redis::Bridge;
use crate::subscriptions::ClientId;
use crate::time::Millis;
use crate::transport::Transport;

/// What is counted outside the frames.
#[derive(Debug, Default)]
pub(super) struct Budget {
    /// The connections' shares, summed.
    pub clients: usize,
    /// The most held since memory was last handed back to the system.
    pub peak: usize,
    /// The most connections since then.
    pub peak_clients: usize,
    /// The most connections since the hub was last empty: a burst whose
    /// tail left after the last trim is trimmed once all are gone.
    pub drain_peak: usize,
}

/// A drop in connections worth handing memory back for: from at least this
/// many to under half.
const CONNECTION_PEAK: usize = 256;

impl<T: Transport> Hub<T> {
    /// Brings the hub's books up to date with a connection: its share of
    /// the budget, and whether its request is still pending.
    pub(super) fn sync(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(id) else { return };
        let held = client.conn.held_bytes() + client.transport.buffered_bytes();
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        self.budget.clients = self.budget.clients + held as usize - client.held as usize;
        client.held = held;
        let requesting = client.conn.is_requesting();
        if client.flags.has(Flags::PENDING) && !requesting {
            client.flags.set(Flags::PENDING, false);
            self.admission.request_done();
        } else if requesting && !client.flags.has(Flags::PENDING) && !client.flags.has(Flags::ENDED) {
            // A persistent HTTP connection waits for its next request: it
            // counts against --max-pending again until that one is done.
            client.flags.set(Flags::PENDING, true);
            self.admission.request_started();
        }
    }

    /// Bytes the hub holds for clients: frames alive (each counted once,
    /// however many queues share it), the connections' shares, the Redis
    /// links' buffers and the `Publisher` inbox.
    pub fn held_bytes(&self) -> usize {
        crate::frame::held_frame_bytes()
            + crate::send_queue::held_slot_bytes()
            + self.budget.clients
            + self.bridge.as_ref().map_or(0, Bridge::buffered_bytes)
            + self.inbox.as_ref().map_or(0, |held| held.load(Ordering::Relaxed))
            + self.compressor.held_bytes()
            + self.inflater.held_bytes()
            + self.history.held_bytes()
    }

    /// Over `--max-buffered-bytes`: drops the clients holding the most (a
    /// walk over the connections per drop, only while over the bound, which
    /// the bound makes rare) until the hub is back under it.
    pub(super) fn enforce_budget(&mut self, now: Millis) {
        let held = self.held_bytes();
        self.budget.peak = self.budget.peak.max(held);
        if held <= self.config.max_buffered_bytes {
            return;
        }
        // History goes before any client: its frames are freed as far as no
        // queue holds them too.
        while self.held_bytes() > self.config.max_buffered_bytes
            && self.history.evict_oldest(crate::history::Eviction::Memory)
        {}
        // Bounded work per call; the next event continues if need be.
        for _ in 0..64 {
            if self.held_bytes() <= self.config.max_buffered_bytes {
                return;
            }
            let biggest = self
                .clients
                .iter()
                .filter(|(_, c)| !c.flags.has(Flags::ENDED))
                .map(|(id, c)| (id, c.conn.queued_bytes() + c.held as usize))
                .max_by_key(|&(_, bytes)| bytes);
            let Some((id, bytes)) = biggest else { return };
            if bytes == 0 {
                return;
            }
            let Hub { clients, config, admission, inflater, .. } = self;
            let ctx = Context { config, now, admission, inflater };
            let action = clients[id].conn.overloaded(&ctx);
            self.apply(id, action, now);
        }
    }

    /// True once after a burst has passed: of memory use (the hub held over
    /// 4 MiB, and now holds under a quarter of that peak), or of connections
    /// (at least 256, and now under half as many, or none). The hub then shrinks its
    /// own tables, and it is a good moment to give freed memory back to the
    /// system (TLS sessions and buffers of connections that left).
    pub fn take_trim_hint(&mut self) -> bool {
        let held = self.held_bytes();
        let clients = self.clients.len();
        let after_bytes = self.budget.peak > 4 << 20 && held < self.budget.peak / 4;
        let after_connections = (self.budget.peak_clients >= CONNECTION_PEAK && clients < self.budget.peak_clients / 2)
            || (clients == 0 && self.budget.drain_peak >= CONNECTION_PEAK);
        if !(after_bytes || after_connections) {
            return false;
        }
        self.budget.peak = held;
        self.budget.peak_clients = clients;
        if clients == 0 {
            self.budget.drain_peak = 0;
        }
        self.shrink();
        true
    }

    /// Shrinks the hub's tables to what is in use now (a walk over the
    /// connections, once per trim).
    fn shrink(&mut self) {
        self.clients.shrink_to_fit();
        let ids = self.clients.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        self.subscriptions.shrink_to(ids);
        self.admission.shrink();
        self.writes.dirty.shrink_to_fit();
        self.writes.delayed.shrink_to_fit();
        self.timers.shrink();
        self.reads.shrink();
        self.deferred.shrink_to_fit();
        self.closed.shrink_to_fit();
        self.history.shrink();
        self.replays.shrink_to_fit();
    }
}
