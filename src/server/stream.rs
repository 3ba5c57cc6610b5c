//! What the driver's sockets carry: plain TCP, TLS as a server (the
//! listener's clients, `wss://`), or TLS as a client (`rediss://`). One
//! [`Transport`], so the hub and the Redis driver read and write them alike.

use std::io::{self, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::transport::{Input, Transport};

pub enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
    #[cfg(all(feature = "tls", feature = "redis"))]
    TlsClient(Box<crate::tls::TlsClientStream>),
}

/// The same expression for every kind of stream.
macro_rules! each {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Stream::Plain($s) => $body,
            #[cfg(feature = "tls")]
            Stream::Tls($s) => $body,
            #[cfg(all(feature = "tls", feature = "redis"))]
            Stream::TlsClient($s) => $body,
        }
    };
}

impl Stream {
    /// The socket under it, for readiness registration.
    #[inline]
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.tcp(),
            #[cfg(all(feature = "tls", feature = "redis"))]
            Stream::TlsClient(tls) => tls.tcp(),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.write(buf))
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        each!(self, s => s.write_vectored(bufs))
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush())
    }
}

impl Transport for Stream {
    #[inline]
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        each!(self, s => s.receive(buf))
    }

    #[inline]
    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.shutdown(Shutdown::Write),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.shutdown_write(),
            #[cfg(all(feature = "tls", feature = "redis"))]
            Stream::TlsClient(tls) => tls.shutdown_write(),
        }
    }

    #[inline]
    fn has_pending_output(&self) -> bool {
        each!(self, s => s.has_pending_output())
    }

    #[inline]
    fn flush_pending(&mut self) -> io::Result<()> {
        each!(self, s => s.flush_pending())
    }

    #[inline]
    fn buffered_bytes(&self) -> usize {
        each!(self, s => s.buffered_bytes())
    }
}
