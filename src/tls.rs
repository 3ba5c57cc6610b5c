//! TLS on the listener (`wss://`): rustls driven from the same readiness
//! events as plain TCP, no threads, no blocking.
//!
//! A `TlsStream` is a transport like a TCP socket: reading decrypts into the
//! caller's buffer (the driver's shared 64 KiB read buffer), writing
//! encrypts the plaintext the connection's queue hands it, as late as
//! possible; frames stay shared plaintext in the queues. Records rustls
//! could not put on the wire yet (a full socket) are "pending output": the
//! hub waits for a writable event and flushes them before anything else.
//! Handshake failures and plaintext on the TLS port surface as read errors,
//! so they end through the hub's one exit path, logged (rate-limited) and
//! counted; a stalled handshake is bound by `--handshake-timeout` because
//! the connection is still in its request phase.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Most plaintext handed to rustls per write: one full TLS record.
const RECORD: usize = 16 * 1024;

/// The server's TLS settings from PEM files: a certificate chain (leaf
/// first) and its private key; TLS 1.2 and 1.3 with ring's safe defaults;
/// ALPN `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One TLS connection over a non-blocking TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let tls = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        Ok(TlsStream { tcp, tls })
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Puts pending records on the wire until none are left or the socket
    /// is full (`WouldBlock`).
    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Sends what rustls has to say (handshake messages, alerts) without
    /// failing the read that produced it: a full socket keeps it pending.
    fn flush_quietly(&mut self) {
        let _ = self.flush_records();
    }
}

impl Read for TlsStream {
    /// Decrypts into `buf` until it is full or the socket is drained, so a
    /// short read means "drained", as with TCP (readiness is edge-triggered).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                // close_notify received: the peer's clean EOF.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A TCP EOF without close_notify: most clients end so, and
                // WebSocket frames its own ending; an EOF like TCP's.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) if filled > 0 => {
                    // Deliver what came first; the error comes back next read.
                    let _ = e;
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.tcp) {
                // TCP EOF: the reader reports it (without close_notify, as
                // UnexpectedEof) on the next turn of the loop.
                Ok(0) if filled > 0 => return Ok(filled),
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // rustls queued an alert for the peer: send it.
                        self.flush_quietly();
                        return if filled > 0 {
                            Ok(filled)
                        } else {
                            Err(io::Error::new(io::ErrorKind::InvalidData, e))
                        };
                    }
                    if self.tls.wants_write() {
                        self.flush_quietly();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    /// Encrypts up to one record of `buf`; refuses (`WouldBlock`) while
    /// earlier records are still waiting for the socket, so the plaintext
    /// waits in the connection's queue (shared frames), not in rustls.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        let n = self.tls.writer().write(&buf[..buf.len().min(RECORD)])?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.flush_records() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

impl TlsStream {
    /// `close_notify`, then the TCP half-close once every record is out.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        self.flush_records()?;
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    pub fn has_pending_output(&self) -> bool {
        self.tls.wants_write()
    }

    pub fn flush_pending(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}
