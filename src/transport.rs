//! The byte pipe under a connection.
//!
//! The hub writes a client's queue through this trait and the driver reads
//! through it, so what carries the bytes (plain TCP today; TLS, which must
//! encrypt on the way out and may hold output of its own, later) changes
//! nothing in `Connection`, the send queue, the cork path or the hub. Tests
//! plug in an in-memory transport.

use std::io::{self, Read, Write};
use std::net::Shutdown;

/// A non-blocking, bidirectional byte stream.
///
/// `read` returns `Ok(0)` at the peer's EOF and `WouldBlock` when nothing is
/// there; `write` may return `WouldBlock` or accept fewer bytes than offered,
/// even none: both are back-pressure.
pub trait Transport: Read + Write {
    /// Ends our sending side (after the last queued bytes): a TCP FIN, and
    /// for TLS a `close_notify` first.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Output the transport itself still holds (TLS records not yet on the
    /// wire). Plain TCP holds none.
    fn has_pending_output(&self) -> bool {
        false
    }
}

impl Transport for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
