//! TLS as a client, over a non-blocking socket: the `rediss://` links. Two
//! connections per hub, not thousands, so rustls' buffered API (its own
//! 64 KiB buffers each way) is the simple choice; it is a [`Transport`] like
//! the listener's connections, so the Redis driver reads and writes it as
//! it does plain TCP.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ClientConnection, Error};

use crate::transport::{Input, TlsFailure, Transport};

pub struct TlsClientStream {
    tcp: TcpStream,
    tls: ClientConnection,
}

impl TlsClientStream {
    pub fn new(tcp: TcpStream, config: &Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<TlsClientStream> {
        let tls = ClientConnection::new(Arc::clone(config), name).map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        Ok(TlsClientStream { tcp, tls })
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}

impl Transport for TlsClientStream {
    /// Decrypted bytes if rustls has some, else one socket read processed
    /// (`more`: come back, there may be more where that came from).
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        for _ in 0..2 {
            match self.tls.reader().read(buf) {
                Ok(0) => return Ok(Input::Eof),
                Ok(len) => return Ok(Input::Bytes { len, more: true }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(Input::Eof);
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert rustls queued, if the socket takes it.
                let _ = self.tls.write_tls(&mut self.tcp);
                return Err(failure_of(&e).into());
            }
        }
        // Records without data (a handshake message): nothing yet, more may come.
        Ok(Input::Bytes { len: 0, more: true })
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        let _ = self.flush_pending();
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    fn has_pending_output(&self) -> bool {
        self.tls.wants_write()
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp)?;
        }
        Ok(())
    }
}

/// The label of a failure, seen from the client's side (two links: the
/// line is the bridge's, rate-limited there).
fn failure_of(e: &Error) -> TlsFailure {
    TlsFailure(match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is of an unknown issuer (SSL_CERT_FILE names the trusted CAs)"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not for this host name",
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate expired"
        }
        Error::InvalidCertificate(_) => "the server's certificate was refused",
        Error::AlertReceived(_) => "the server sent a fatal alert",
        Error::PeerIncompatible(_) => "no protocol version or cipher suite in common",
        _ => "TLS error",
    })
}

impl Write for TlsClientStream {
    /// Hands plaintext to rustls (as much as its buffer takes) and puts its
    /// records on the wire; `WouldBlock` when neither moves.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = self.tls.writer().write(buf)?;
        match self.flush_pending() {
            Ok(()) => Ok(taken),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && taken > 0 => Ok(taken),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}
