//! The write side: a turn's deliveries leave at its end, one gathering
//! system call per client; a client whose transport pushed back waits for
//! its writable event; a closing client's writing half is shut once its
//! last bytes are out.

use std::io;

use log::debug;

use super::{Client, Flags, Hub};
use crate::connection::Reason;
use crate::stats::Stats;
use crate::subscriptions::ClientId;
use crate::time::Millis;
use crate::transport::Transport;

impl<T: Transport> Hub<T> {
    /// The transport can take bytes again.
    pub fn writable(&mut self, id: ClientId, now: Millis) {
        if let Some(client) = self.clients.get_mut(id) {
            client.flags.set(Flags::BLOCKED, false);
            self.write(id, now);
        }
    }

    /// End of a loop turn: writes every client that has bytes queued, so a
    /// burst leaves in one system call per client; clients whose read left
    /// more are read next turn.
    pub fn flush(&mut self, now: Millis) {
        let mut dirty = std::mem::take(&mut self.dirty);
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
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        self.next_turn();
    }

    pub(super) fn mark_dirty(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(id) {
            client.mark_dirty(id, &mut self.dirty);
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
        self.sync(id);
        if watch {
            self.schedule(id);
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
            || self.flags.has(Flags::BLOCKED)
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
