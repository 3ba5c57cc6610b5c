//! The byte pipe under a connection.
//!
//! The hub writes a client's queue through this trait and the driver reads
//! through it, so what carries the bytes (plain TCP, or TLS, which must
//! decrypt on the way in, encrypt on the way out and may hold output of its
//! own) changes nothing in `Connection`, the send queue, the cork path or
//! the hub. Tests plug in an in-memory transport.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;

/// What one [`Transport::receive`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `len` bytes are in the buffer (none, for TLS records that carried no
    /// data). `more`: the read did not drain the socket (it filled its
    /// share), so the connection must be read again, on a later turn:
    /// readiness is edge-triggered and no new event will come for it.
    Bytes { len: usize, more: bool },
    /// The peer's EOF.
    Eof,
}

/// Why a connection's TLS failed, as a fixed label for the one
/// (rate-limited) log line and counter of its end. Carried inside the
/// `io::Error` (`InvalidData`) its transport returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFailure(pub &'static str);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl From<TlsFailure> for io::Error {
    fn from(failure: TlsFailure) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, failure)
    }
}

impl TlsFailure {
    /// The failure an I/O error carries, if it is one.
    pub fn of(e: &io::Error) -> Option<TlsFailure> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<TlsFailure>()).copied()
    }
}

/// A non-blocking, bidirectional byte stream.
///
/// `write` may return `WouldBlock` or accept fewer bytes than offered, even
/// none: both are back-pressure.
pub trait Transport: Write {
    /// One read's worth of input (at most `buf.len()` bytes, and for TLS at
    /// most one socket read of ciphertext): a turn's share of one client.
    /// `WouldBlock` when the socket is drained and nothing came.
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input>;

    /// Ends our sending side (after the last queued bytes): a TCP FIN, and
    /// for TLS a `close_notify` first.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Output the transport itself still holds (TLS records not yet on the
    /// wire). Plain TCP holds none.
    fn has_pending_output(&self) -> bool {
        false
    }

    /// Puts that output on the wire (`WouldBlock`: the socket is full).
    fn flush_pending(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Bytes the transport holds for this connection (TLS leftovers), so
    /// that `--max-buffered-bytes` counts them. Plain TCP holds none.
    fn buffered_bytes(&self) -> usize {
        0
    }
}

/// One `read` of a socket: a full buffer means more may wait.
pub fn receive_plain(socket: &mut impl Read, buf: &mut [u8]) -> io::Result<Input> {
    loop {
        return match socket.read(buf) {
            Ok(0) => Ok(Input::Eof),
            Ok(len) => Ok(Input::Bytes { len, more: len == buf.len() }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

impl Transport for mio::net::TcpStream {
    #[inline]
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        receive_plain(self, buf)
    }

    #[inline]
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
