//! A [`TlsSession`] over a client's TCP socket: the transport of a `wss://`
//! connection.
//!
//! Reading does one socket read per call, so a client's share of a loop
//! turn is bounded by the TLS bytes it sent, however small its records;
//! `more` tells the driver to come back. Writing encrypts the plaintext the
//! connection's queue hands it, as late as possible (frames stay shared
//! plaintext in the queues). Handshake failures and plaintext on the TLS
//! port surface as read errors carrying a [`TlsFailure`](crate::transport::TlsFailure), so they end
//! through the hub's one exit path, logged (rate-limited) and counted; a
//! stalled handshake is bound by `--handshake-timeout` because the
//! connection is still in its request phase.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;

use super::session::{BATCH, READ_BYTES, TlsSession};
use crate::transport::{Input, Transport};

thread_local! {
    /// Where a gathering write joins the queue's frames into records.
    static SCRATCH_PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct TlsStream {
    tcp: TcpStream,
    session: TlsSession,
    /// The last socket read filled its share: the socket may hold more.
    more: bool,
    /// TCP EOF, or the peer's `close_notify`.
    eof: bool,
    /// A failure that came after data: reported once the data is out.
    error: Option<io::Error>,
    /// Our half-close waits for pending records to go first.
    shutdown_pending: bool,
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let session = TlsSession::new(config).map_err(io::Error::other)?;
        Ok(TlsStream { tcp, session, more: false, eof: false, error: None, shutdown_pending: false })
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Plaintext for the caller, if there is some.
    fn deliver(&mut self, buf: &mut [u8]) -> Option<Input> {
        if !self.session.has_plaintext() {
            return None;
        }
        let len = self.session.take_plaintext(buf);
        // Come back for the rest, the socket's rest, an error or the EOF.
        let more = self.session.has_plaintext() || self.more || self.error.is_some() || self.eof;
        Some(Input::Bytes { len, more })
    }

    /// With `--tls-client-ca`: who connected, by the certificate's subject.
    fn log_client(&self) {
        if let Some(subject) = self.session.client_subject() {
            let peer = self.tcp.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            log::info!("{peer}: client certificate {subject}");
        }
    }
}

impl Transport for TlsStream {
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        if let Some(input) = self.deliver(buf) {
            return Ok(input);
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.eof {
            return Ok(Input::Eof);
        }
        match self.session.read_tls(&mut self.tcp) {
            Ok(0) => self.eof = true,
            Ok(n) => self.more = n == READ_BYTES,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.more = false;
                return Err(e);
            }
            Err(e) => self.error = Some(e),
        }
        if self.session.handshake_finished() {
            self.log_client();
        }
        if self.session.peer_closed() && !self.eof {
            // RFC 8446 §6.1: answer close_notify with ours.
            self.eof = true;
            let _ = self.session.close(&mut self.tcp);
        }
        if let Some(input) = self.deliver(buf) {
            return Ok(input);
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match (self.eof, self.more) {
            (true, _) => Ok(Input::Eof),
            (false, true) => Ok(Input::Bytes { len: 0, more: true }),
            (false, false) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// `close_notify`, then the TCP half-close once every record is out
    /// (later, from [`flush_pending`](Transport::flush_pending), when the
    /// socket is full now).
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.session.close(&mut self.tcp)?;
        if self.session.has_pending_output() {
            self.shutdown_pending = true;
            return Ok(());
        }
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    fn has_pending_output(&self) -> bool {
        self.session.has_pending_output()
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        self.session.flush(&mut self.tcp)?;
        if std::mem::take(&mut self.shutdown_pending) {
            self.tcp.shutdown(std::net::Shutdown::Write)?;
        }
        Ok(())
    }

    fn buffered_bytes(&self) -> usize {
        self.session.buffered_bytes()
    }
}

impl Write for TlsStream {
    /// Encrypts up to `BATCH` bytes of `buf` as full records and sends them
    /// in one go; refuses (`WouldBlock`) while earlier records wait for the
    /// socket, so plaintext waits in the connection's queue (shared frames).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.write_plaintext(buf, &mut self.tcp)
    }

    /// Gathers the queue's frames into full records (the 16 KiB cork is one
    /// record), as plain TCP gathers them into one `writev`.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let [one] = bufs {
            return self.write(one);
        }
        SCRATCH_PLAIN.with(|plain| {
            let mut plain = plain.borrow_mut();
            plain.clear();
            for buf in bufs {
                let room = BATCH - plain.len();
                plain.extend_from_slice(&buf[..buf.len().min(room)]);
                if plain.len() == BATCH {
                    break;
                }
            }
            self.session.write_plaintext(&plain, &mut self.tcp)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.flush(&mut self.tcp)
    }
}
