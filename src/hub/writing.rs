//! The write side: a turn's deliveries leave at its end, one gathering
//! system call per client; a client whose transport pushed back waits for
//! its writable event; a closing client's writing half is shut once its
//! last bytes are out.
//!
//! With `--write-delay`, a client's data frames wait until the oldest has
//! waited the delay, so a steady stream leaves in fewer, fuller writes.
//! Every client waits the same delay, so due times come in the order
//! clients are listed: one FIFO holds them all (no timer per client, no
//! scan), and its front is the hub's next write deadline. What cannot wait
//! (a pong, a close, an HTTP answer, a queue that already fills one write)
//! goes at the end of the turn as without a delay; a queue at half its
//! bound is still written at once (`fanout`).

use std::collections::VecDeque;
use std::io;

use log::debug;

use super::{Client, Flags, Hub};
use crate::config::Config;
use crate::connection::Reason;
use crate::stats::Stats;
use crate::subscriptions::ClientId;
use crate::time::Millis;
use crate::transport::Transport;

/// Who writes when.
#[derive(Debug)]
pub(super) struct Writes {
    /// Clients to write at the end of this turn.
    pub dirty: Vec<ClientId>,
    /// `--write-delay` in milliseconds (0: none).
    pub delay: Millis,
    /// Clients whose write is delayed, with when it is due, in that order.
    /// An entry may outlive its reason (the client was written early, or
    /// left): its flag says whether it still stands.
    pub delayed: VecDeque<(Millis, ClientId)>,
}

impl Writes {
    pub fn new(config: &Config) -> Writes {
        Writes { dirty: Vec::new(), delay: crate::time::millis(config.write_delay), delayed: VecDeque::new() }
    }

    /// When the next delayed write is due.
    pub fn next_due(&self) -> Option<Millis> {
        self.delayed.front().map(|&(due, _)| due)
    }
}

impl<T: Transport> Hub<T> {
    /// Lists the clients whose delayed write is due at `now` for this
    /// turn's writes. From then on a stall counts against
    /// `--write-timeout`: a delayed client is not a stalled one.
    pub(super) fn delayed_writes_due(&mut self, now: Millis) {
        let Hub { clients, writes, .. } = self;
        while let Some(&(due, id)) = writes.delayed.front() {
            if due > now {
                break;
            }
            writes.delayed.pop_front();
            let Some(client) = clients.get_mut(id) else { continue };
            if !client.flags.replace(Flags::DELAYED, false) {
                continue; // an entry of a client that left; the id is reused
            }
            if !client.flags.has(Flags::BLOCKED) {
                client.conn.write_due(now);
            }
            client.list_for_this_turn(id, &mut writes.dirty);
        }
    }

    /// The transport can take bytes again. (Edge-triggered readiness also
    /// reports writable beside a client's input; a client whose write is
    /// delayed keeps waiting unless it was blocked.)
    pub fn writable(&mut self, id: ClientId, now: Millis) {
        if let Some(client) = self.clients.get_mut(id) {
            let was_blocked = client.flags.replace(Flags::BLOCKED, false);
            if !was_blocked && client.flags.has(Flags::DELAYED) && !client.transport.has_pending_output() {
                return;
            }
            self.write(id, now);
        }
    }

    /// End of a loop turn: writes every client that has bytes queued, so a
    /// burst leaves in one system call per client; clients whose read left
    /// more are read next turn.
    pub fn flush(&mut self, now: Millis) {
        let mut dirty = std::mem::take(&mut self.writes.dirty);
        for &id in &dirty {
            // One slab lookup per client (this loop runs once per delivery
            // at low rates), and the books only when a write can change
            // them.
            let Some(client) = self.clients.get_mut(id) else { continue };
            client.flags.set(Flags::DIRTY, false);
            let result = write_client(client, &mut self.cork, now, &mut self.stats);
            if result.is_err() || client.wants_books_after_write() {
                self.after_write(id, result, now);
            }
        }
        dirty.clear();
        // Keep the list's memory for the next turn.
        if self.writes.dirty.is_empty() {
            self.writes.dirty = dirty;
        }
        self.next_turn();
    }

    pub(super) fn mark_dirty(&mut self, id: ClientId, now: Millis) {
        if let Some(client) = self.clients.get_mut(id) {
            client.mark_dirty(id, &mut self.writes, now);
        }
    }

    pub(super) fn write(&mut self, id: ClientId, now: Millis) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let result = write_client(client, &mut self.cork, now, &mut self.stats);
        self.after_write(id, result, now);
    }

    /// After a write: a failed one ends the connection; otherwise the books
    /// (what the transport keeps changes with writes: refused TLS records),
    /// and the deadlines a write can bring forward (a stalled queue, a
    /// linger that starts).
    #[inline(never)]
    pub(super) fn after_write(&mut self, id: ClientId, result: io::Result<()>, now: Millis) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if let Err(e) = result {
            debug!("{}: write: {e}", client.conn.peer());
            self.remove(id, Reason::failed(&e), now);
            return;
        }
        let watch = client.flags.has(Flags::BLOCKED) || client.conn.is_closing();
        let replaying = client.flags.has(Flags::REPLAYING) && !client.flags.has(Flags::BLOCKED);
        self.sync(id);
        if watch {
            self.schedule(id);
        }
        if replaying {
            self.refill(id, now);
        }
    }
}

impl<T: Transport> Client<T> {
    /// Whether a write may have changed what the hub counts of this client
    /// (it holds something, its transport keeps bytes) or brought a
    /// deadline forward (it is blocked, or closing).
    #[inline]
    fn wants_books_after_write(&self) -> bool {
        self.held != 0
            || self.transport.buffered_bytes() != 0
            || self.flags.has(Flags::BLOCKED | Flags::REPLAYING)
            || self.conn.is_closing()
    }
}

/// Writes as much of the client's queue as its transport takes, then, once
/// the last bytes of a closing connection are out, shuts its writing half.
pub(super) fn write_client<T: Transport>(
    client: &mut Client<T>,
    cork: &mut Vec<u8>,
    now: Millis,
    stats: &mut Stats,
) -> io::Result<()> {
    if client.flags.has(Flags::BLOCKED) {
        return Ok(());
    }
    // Records a TLS transport could not send yet go first.
    if client.transport.has_pending_output() {
        match client.transport.flush_pending() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                client.flags.set(Flags::BLOCKED, true);
                return Ok(());
            }
            other => other?,
        }
    }
    let written = client.conn.transmit(&mut client.transport, cork, now)?;
    stats.bytes_out += written as u64;
    // Whatever is left was refused: wait for a writable event (edge-triggered:
    // a full socket reports writable again when it drains).
    let blocked = client.conn.wants_write() || client.transport.has_pending_output();
    client.flags.set(Flags::BLOCKED, blocked);
    if client.conn.wants_shutdown() && !blocked {
        client.transport.shutdown_write()?;
        client.conn.shutdown_done(now);
        // A TLS close_notify the socket had no room for goes out (and the
        // TCP half-close after it) when the socket is writable again.
        client.flags.set(Flags::BLOCKED, client.transport.has_pending_output());
    }
    Ok(())
}
