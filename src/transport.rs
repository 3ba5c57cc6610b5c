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

/// What the driver accepts: a plain TCP connection, or TLS over one.
pub enum Stream {
    Plain(mio::net::TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
}

impl Stream {
    /// The socket under it, for readiness registration.
    #[inline]
    pub fn tcp(&mut self) -> &mut mio::net::TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.tcp(),
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write_vectored(bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.write_vectored(bufs),
        }
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl Transport for Stream {
    #[inline]
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.shutdown(Shutdown::Write),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.shutdown_write(),
        }
    }

    #[inline]
    fn has_pending_output(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.has_pending_output(),
        }
    }

    #[inline]
    fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.flush_pending(),
        }
    }

    #[inline]
    fn buffered_bytes(&self) -> usize {
        match self {
            Stream::Plain(_) => 0,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.buffered_bytes(),
        }
    }
}

impl Transport for mio::net::TcpStream {
    #[inline]
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
