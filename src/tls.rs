//! TLS on the listener (`wss://`): rustls driven from the same readiness
//! events as plain TCP, no threads, no blocking.
//!
//! A `TlsStream` is a transport like a TCP socket: reading decrypts into the
//! caller's buffer (the driver's shared 64 KiB read buffer), writing
//! encrypts the plaintext the connection's queue hands it, one record at a
//! time, as late as possible; frames stay shared plaintext in the queues.
//! rustls' unbuffered API keeps an idle connection small: TLS bytes are read
//! and records encrypted in buffers the thread shares, and a connection
//! holds a buffer only for what is left over (a partial record, records a
//! full socket refused: its "pending output", flushed first on the next
//! writable event).
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
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::{RootCertStore, ServerConfig};

/// Most plaintext handed to rustls per write: one full TLS record.
const RECORD: usize = 16 * 1024;

/// The server's TLS settings from PEM files: a certificate chain (leaf
/// first) and its private key; TLS 1.2 and 1.3 with ring's safe defaults;
/// ALPN `http/1.1`. With `client_ca`, clients must present a certificate
/// chained to one of the CA certificates in that file.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| format!("--tls-client-ca {}: {e}", path.display());
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side, for `rediss://`: servers are checked against the PEM
/// certificates in `ca_file` (a system bundle, or a private CA).
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("rediss:// trust store {}: {e}", ca_file.display());
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))?;
    // A system bundle may hold a certificate webpki cannot use: skip it.
    roots.add_parsable_certificates(certs.flatten());
    if roots.is_empty() {
        return Err(bad(&"no usable certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One TLS connection over a non-blocking TCP socket, on rustls'
/// unbuffered API: the connection owns no buffer while it is idle. Bytes are
/// read into, and records encrypted in, buffers shared by the whole thread;
/// only what is left over (a partial record, records the socket refused,
/// plaintext the caller had no room for) is kept per connection, and freed
/// as soon as it is used up.
pub struct TlsStream {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// Received TLS bytes not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet.
    outgoing: Vec<u8>,
    /// Decrypted bytes the caller had no room for.
    plaintext: Vec<u8>,
    /// The handshake finished and was accounted for (client subject logged).
    handshake_done: bool,
    /// TCP EOF seen, or close_notify received.
    eof: bool,
}

/// Most TLS bytes read from a socket per call, and the size of the
/// thread's shared read and encryption buffers.
const SCRATCH: usize = 64 * 1024;
/// Record overhead allowance for encryption (header, tag, content type).
const OVERHEAD: usize = 64;
/// Most plaintext encrypted and sent per write: four full records.
const BATCH: usize = 4 * RECORD;

thread_local! {
    /// Shared by every TLS connection of the loop's thread.
    static SCRATCH_IN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Puts `outgoing` on the wire until it is empty (then frees it) or the
/// socket is full (`WouldBlock`).
fn flush(tcp: &mut TcpStream, outgoing: &mut Vec<u8>) -> io::Result<()> {
    while !outgoing.is_empty() {
        match tcp.write(outgoing) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                outgoing.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    *outgoing = Vec::new();
    Ok(())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let tls = UnbufferedServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        Ok(TlsStream {
            tcp,
            tls,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plaintext: Vec::new(),
            handshake_done: false,
            eof: false,
        })
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    fn peer(&self) -> String {
        self.tcp.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string())
    }

    /// With `--tls-client-ca`: who connected, by the certificate's subject.
    fn log_client_subject(&self) {
        if let Some(leaf) = self.tls.peer_certificates().and_then(|certs| certs.first()) {
            log::info!(
                "{}: client certificate {}",
                self.peer(),
                subject(leaf).as_deref().unwrap_or("(subject unreadable)")
            );
        }
    }

    fn flush_records(&mut self) -> io::Result<()> {
        flush(&mut self.tcp, &mut self.outgoing)
    }

    /// Sends `bytes` (encrypted), keeping what the socket refuses.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut sent = 0;
        if self.outgoing.is_empty() {
            while sent < bytes.len() {
                match self.tcp.write(&bytes[sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.outgoing.extend_from_slice(&bytes[sent..]);
        Ok(())
    }

    /// Runs rustls over the received bytes in `buffer` until it needs more:
    /// decrypted data goes to `self.plaintext`, handshake records out to the
    /// peer. Returns how many bytes of `buffer` were used up.
    fn process(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let TlsStream { tcp, tls, outgoing, plaintext, eof, .. } = self;
        let mut used = 0;
        loop {
            let status = tls.process_tls_records(&mut buffer[used..]);
            let discard = status.discard;
            let mut more = true;
            match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        plaintext.extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut record = vec![0; 1024];
                    let n = loop {
                        match encode.encode(&mut record) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(need)) => record.resize(need.required_size, 0),
                            Err(e) => return Err(io::Error::other(e.to_string())),
                        }
                    };
                    outgoing.extend_from_slice(&record[..n]);
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    match flush(tcp, outgoing) {
                        Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                        _ => {}
                    }
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    *eof = true;
                    more = false;
                }
                // Needs more bytes, or has nothing more to say until we write.
                _ => more = false,
            }
            used += discard;
            if !more {
                break;
            }
        }
        if !self.handshake_done && !self.tls.is_handshaking() {
            self.handshake_done = true;
            self.log_client_subject();
        }
        Ok(used)
    }

    /// Reads what the socket has and processes it; false when it had nothing.
    fn receive(&mut self) -> io::Result<bool> {
        SCRATCH_IN.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // Leftover bytes of a partial record go first. The buffer only
            // grows (zeroed once), so a read costs no fill.
            let kept = std::mem::take(&mut self.incoming);
            let start = kept.len();
            if scratch.len() < start + SCRATCH {
                scratch.resize(start + SCRATCH, 0);
            }
            scratch[..start].copy_from_slice(&kept);
            let n = match self.tcp.read(&mut scratch[start..start + SCRATCH]) {
                Ok(0) => {
                    self.eof = true;
                    0
                }
                Ok(n) => n,
                Err(e) => {
                    self.incoming = kept;
                    return Err(e);
                }
            };
            let end = start + n;
            let used = self.process(&mut scratch[..end])?;
            if used < end {
                self.incoming = scratch[used..end].to_vec();
            }
            Ok(n > 0)
        })
    }

    /// Hands out decrypted bytes; frees the buffer once it is used up.
    fn take_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let n = self.plaintext.len().min(buf.len());
        buf[..n].copy_from_slice(&self.plaintext[..n]);
        if n == self.plaintext.len() {
            self.plaintext = Vec::new();
        } else {
            self.plaintext.drain(..n);
        }
        n
    }
}

impl Read for TlsStream {
    /// Decrypts into `buf` until it is full or the socket is drained, so a
    /// short read means "drained", as with TCP (readiness is edge-triggered).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.take_plaintext(buf);
        while filled < buf.len() && !self.eof {
            match self.receive() {
                Ok(_) => filled += self.take_plaintext(&mut buf[filled..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) if filled > 0 && e.kind() != io::ErrorKind::WouldBlock => {
                    // Deliver what came first; the failure shows on the next read.
                    self.eof = true;
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl Write for TlsStream {
    /// Encrypts up to `BATCH` bytes of `buf` as full records and sends them
    /// in one go; refuses (`WouldBlock`) while earlier records wait for the
    /// socket, so plaintext waits in the connection's queue (shared frames).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.encrypt_and_send(&buf[..buf.len().min(BATCH)])
    }

    /// Gathers the queue's frames into full records (the 16 KiB cork is one
    /// record), as plain TCP gathers them into one `writev`.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
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
            self.encrypt_and_send(&plain)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

impl TlsStream {
    /// Encrypts `plain` (at most `BATCH` bytes) into records in the
    /// thread's shared buffer and sends them with one write; what the socket
    /// refuses is kept as pending output. Returns `plain.len()`.
    fn encrypt_and_send(&mut self, plain: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        // Whatever rustls has to send first (session tickets, a key update).
        self.process(&mut [])?;
        self.flush_records()?;
        let status = self.tls.process_tls_records(&mut []);
        let mut traffic = match status.state.map_err(tls_error)? {
            ConnectionState::WriteTraffic(traffic) => traffic,
            // Not ready for application data (still handshaking).
            _ => return Err(io::ErrorKind::WouldBlock.into()),
        };
        let encrypted = SCRATCH_OUT.with(|scratch| {
            let mut out = scratch.borrow_mut();
            let need = plain.len() + plain.len().div_ceil(RECORD).max(1) * OVERHEAD;
            if out.len() < need {
                out.resize(need, 0);
            }
            let mut at = 0;
            for record in plain.chunks(RECORD) {
                loop {
                    match traffic.encrypt(record, &mut out[at..]) {
                        Ok(n) => {
                            at += n;
                            break;
                        }
                        Err(EncryptError::InsufficientSize(more)) => {
                            let len = at + more.required_size;
                            out.resize(len, 0);
                        }
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    }
                }
            }
            Ok(at)
        })?;
        SCRATCH_OUT.with(|scratch| self.send(&scratch.borrow()[..encrypted]))?;
        Ok(plain.len())
    }

    /// `close_notify`, then the TCP half-close once every record is out.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.flush_records()?;
        self.process(&mut [])?;
        self.flush_records()?;
        let status = self.tls.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = status.state {
            let mut alert = vec![0; 64];
            if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                self.send(&alert[..n])?;
                // The queue was empty, so the socket has room for an alert;
                // if it has not, the peer misses only the close_notify.
                match self.flush_records() {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
        }
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    pub fn has_pending_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    pub fn flush_pending(&mut self) -> io::Result<()> {
        self.flush_records()
    }

    /// What this connection holds beyond its TLS state: a partial record,
    /// undelivered plaintext, refused records (counted by the global budget).
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }
}

/// The subject of a certificate as `CN=…, O=…, OU=…` (the attributes a
/// device fleet names its devices by), read from the DER without an X.509
/// crate: Certificate → tbsCertificate → the sixth field, `subject`.
fn subject(cert: &[u8]) -> Option<String> {
    let mut outer = Der(cert);
    let mut tbs = Der(Der(outer.take(0x30)?).take(0x30)?);
    if tbs.0.first() == Some(&0xa0) {
        tbs.take(0xa0)?; // version
    }
    tbs.take(0x02)?; // serial number
    tbs.take(0x30)?; // signature algorithm
    tbs.take(0x30)?; // issuer
    tbs.take(0x30)?; // validity
    let mut name = Der(tbs.take(0x30)?);
    let mut parts = Vec::new();
    while !name.0.is_empty() {
        let mut set = Der(name.take(0x31)?);
        while !set.0.is_empty() {
            let mut pair = Der(set.take(0x30)?);
            let oid = pair.take(0x06)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            let value = pair.any()?;
            parts.push(format!("{label}={}", String::from_utf8_lossy(value)));
        }
    }
    Some(parts.join(", "))
}

/// A cursor over DER elements (definite lengths, up to 64 KiB).
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn take(&mut self, tag: u8) -> Option<&'a [u8]> {
        if *self.0.first()? != tag {
            return None;
        }
        self.any()
    }

    /// The contents of the next element, whatever its tag.
    fn any(&mut self) -> Option<&'a [u8]> {
        let [_, first, rest @ ..] = self.0 else { return None };
        let (len, rest) = match *first {
            n if n < 0x80 => (n as usize, rest),
            0x81 => (*rest.first()? as usize, rest.get(1..)?),
            0x82 => ((*rest.first()? as usize) << 8 | *rest.get(1)? as usize, rest.get(2..)?),
            _ => return None,
        };
        let contents = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subject_of_a_real_certificate() {
        // `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256
        //  -nodes -subj "/O=Fleet/OU=Sensors/CN=device-17"`
        let pem = b"-----BEGIN CERTIFICATE-----
MIIBwTCCAWegAwIBAgIUY32oZt5WCOKlr3TbZeOoJMdso8MwCgYIKoZIzj0EAwIw
NjEOMAwGA1UECgwFRmxlZXQxEDAOBgNVBAsMB1NlbnNvcnMxEjAQBgNVBAMMCWRl
dmljZS0xNzAeFw0yNjExMjYwMjM5MzZaFw0zNjExMjMwMjM5MzZaMDYxDjAMBgNV
BAoMBUZsZWV0MRAwDgYDVQQLDAdTZW5zb3JzMRIwEAYDVQQDDAlkZXZpY2UtMTcw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQlN4d2ThJ3i+OFBliOpnWmixPDQ+Q1
CJQjcawKR7N5vCijagbUEhP1qhZAISXam1ddsSwAugeBWYYnKP6RPrSRo1MwUTAd
BgNVHQ4EFgQUkYX5E+DgjP6mnngZrJlxaNgJroowHwYDVR0jBBgwFoAUkYX5E+Dg
jP6mnngZrJlxaNgJroowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiEAhVJOVyGvJEMmmOUf6srJmn0txrGQka7mMSnUWaqwXTECID5XZ7do+Q8RWhT+
+b4jZ9+B2UI+niccUPvIMhifxRaQ
-----END CERTIFICATE-----
";
        let der = CertificateDer::from_pem_slice(pem).unwrap();
        assert_eq!(subject(&der).as_deref(), Some("O=Fleet, OU=Sensors, CN=device-17"));
        for cut in 0..der.len() {
            let _ = subject(&der[..cut]); // never panics on a prefix
        }
        assert_eq!(subject(&[0x30, 0x00]), None, "truncated input is refused, not a panic");
    }
}
