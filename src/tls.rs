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
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

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

/// One TLS connection over a non-blocking TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    /// The handshake finished and was accounted for (client subject logged).
    handshake_done: bool,
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let tls = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        Ok(TlsStream { tcp, tls, handshake_done: false })
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
                        log::debug!("{}: TLS: {e}", self.peer());
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
                    if !self.handshake_done && !self.tls.is_handshaking() {
                        self.handshake_done = true;
                        self.log_client_subject();
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
