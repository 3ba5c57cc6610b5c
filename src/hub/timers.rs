//! When the hub needs the driver to wake it: [`Hub::poll_timeout`] says
//! when, [`Hub::handle_timeout`] does what is due (quinn-proto's shape).
//!
//! Each connection has one entry in a heap, at its earliest deadline
//! (`Connection::next_deadline`: the request's, the ping or idle one, an
//! unfinished message's, the token's expiry, a stalled queue's, the
//! linger's). A deadline that moves later (the client spoke, the queue
//! moved) costs nothing: the entry comes due, the connection has nothing to
//! do, and it is filed again at its new deadline. One that moves earlier (a
//! message started, a queue stalled, a close began) is filed when that
//! happens, and the older entry, whose time no longer matches the
//! connection's, is skipped when it comes up. So there is no periodic walk
//! over all connections, and a sub-second `--message-timeout` is kept to
//! the granularity below. A housekeeping step runs once a second (and sums
//! the send queues' bytes for the `wshub_queued_bytes` gauge).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Hub;
use crate::connection::{Action, Context};
use crate::stats::Stats;
use crate::subscriptions::ClientId;
use crate::time::{Millis, NEVER};
use crate::transport::Transport;

/// Deadlines are rounded up to this, so that timers due together wake the
/// loop once.
const GRANULARITY: Millis = 10;
/// How often housekeeping runs (forgetting idle sources, the stats
/// snapshot for `Publisher::stats`).
const HOUSEKEEPING: Millis = 1000;

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Millis, ClientId)>>,
    /// When housekeeping is next due.
    housekeeping: Millis,
    /// Housekeeping ran since the driver last took a snapshot.
    snapshot_due: bool,
    /// Bytes in all send queues, as housekeeping last summed them.
    pub queued_bytes: u64,
}

impl Timers {
    /// Gives back the heap's memory after a peak.
    pub(super) fn shrink(&mut self) {
        self.heap.shrink_to_fit();
    }
}

impl<T: Transport> Hub<T> {
    /// Files the connection at its earliest deadline, if that is earlier
    /// than where it is filed now.
    pub(super) fn schedule(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(id) else { return };
        let due = client.conn.next_deadline(&self.config);
        if due == NEVER {
            return;
        }
        let due = due.div_ceil(GRANULARITY).saturating_mul(GRANULARITY);
        if due < client.timer {
            client.timer = due;
            self.timers.heap.push(Reverse((due, id)));
        }
    }

    /// When the hub next needs [`handle_timeout`](Hub::handle_timeout): the
    /// earliest connection deadline, rate-limit resume, delayed write, housekeeping, the
    /// end of a shutdown, or a Redis link's timer; at once (0) while clients
    /// wait for their next read. `None`: nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if !self.reads.now.is_empty() || !self.reads.next.is_empty() || !self.writes.dirty.is_empty() {
            return Some(0);
        }
        let connection = self.timers.heap.peek().map(|Reverse((due, _))| *due);
        let throttled = self.reads.throttled.peek().map(|Reverse((due, _))| *due);
        let redis = self.bridge.as_ref().map(|b| b.next_deadline());
        let write = self.writes.next_due();
        [connection, throttled, write, Some(self.timers.housekeeping), self.shutdown_deadline, redis]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does what is due at `now`: resumes throttled clients, lists delayed
    /// writes that are due, applies the connections' deadlines, runs the
    /// Redis links' timers and, once a second, housekeeping.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.resume_throttled(now);
        self.delayed_writes_due(now);
        while let Some(&Reverse((due, id))) = self.timers.heap.peek() {
            if due > now {
                break;
            }
            self.timers.heap.pop();
            let Hub { clients, config, admission, writes, inflater, .. } = self;
            let Some(client) = clients.get_mut(id) else { continue };
            if client.timer != due {
                continue; // filed again, earlier or later, since
            }
            client.timer = NEVER;
            let action = client.conn.tick(&Context { config, now, admission, inflater });
            client.mark_dirty(id, writes, now);
            if !matches!(action, Action::Nothing) {
                self.apply(id, action, now);
            }
            self.schedule(id);
        }
        if let Some(bridge) = &mut self.bridge {
            bridge.handle_timeout(now);
        }
        if now >= self.timers.housekeeping {
            self.timers.housekeeping = now + HOUSEKEEPING;
            self.timers.snapshot_due = true;
            self.admission.sweep(&self.config, now);
            self.history.expire(now);
            // One walk a second (about 0.1 ms at 20,000 connections), so
            // that a scrape costs nothing per connection.
            self.timers.queued_bytes = self.clients.iter().map(|(_, c)| c.conn.queued_bytes() as u64).sum();
        }
        self.apply_deferred(now);
        self.enforce_budget(now);
    }

    /// The hub's figures, once per housekeeping step (for
    /// `Publisher::stats`, refreshed at least once a second).
    pub fn take_snapshot(&mut self) -> Option<Stats> {
        std::mem::take(&mut self.timers.snapshot_due).then(|| self.stats())
    }
}
