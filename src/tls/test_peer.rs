//! A TLS 1.3 client for tests and fuzzing that can send any record: rustls
//! does the handshake, then the client takes the traffic secrets (rustls'
//! secret extraction, made for kTLS) and seals and opens records itself
//! with ring, in AES-128-GCM, the one cipher suite it offers. That is how a
//! test sends half a handshake message, an empty record, or a flood of
//! them, which no TLS library would send on its own.

use std::io::{self, Read, Write};
use std::sync::Arc;

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionTrafficSecrets, RootCertStore, ServerConfig};

use super::TlsSession;

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1, valid
/// until 2126. For tests only: its key is published right below.
pub const TEST_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBvzCCAWWgAwIBAgIUTw3wmWYlEK27NKd4bNHedit5XSQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMjA0MTk1MFoYDzIxMjYxMTA4
MDQxOTUwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARFkGkEmpmkMO20MU+4wMI9btEFitajtJ9qEHFHMtIQCtRjgq0x61a9
DUCDgM0Jl/7KHzWFyZbcXaNxb8q8PZXso4GSMIGPMB0GA1UdDgQWBBQYhUSygNbW
KvlaZm9ARClMdSXzPDAfBgNVHSMEGDAWgBQYhUSygNbWKvlaZm9ARClMdSXzPDAa
BgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwDAYDVR0TAQH/BAIwADAOBgNVHQ8B
Af8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwCgYIKoZIzj0EAwIDSAAwRQIh
AIAESfeKrgaoTLTnYMjK4AL8HV7zbJYkZjA1xvlkoO6vAiAVU5YEvQfPnoc8hp9i
+rgU6q7Tp+JR3YfdW1EZGTgmbA==
-----END CERTIFICATE-----
";

/// The key of [`TEST_CERT_PEM`].
pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsMbiS/ijDsWMtY7e
Wh4O09IG2tOS57kPzGyYg0bcysWhRANCAARFkGkEmpmkMO20MU+4wMI9btEFitaj
tJ9qEHFHMtIQCtRjgq0x61a9DUCDgM0Jl/7KHzWFyZbcXaNxb8q8PZXs
-----END PRIVATE KEY-----
";

/// Record content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// The hub's server settings with [`TEST_CERT_PEM`].
pub fn test_server_config() -> Arc<ServerConfig> {
    let cert = CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes()).expect("test certificate");
    let key = PrivateKeyDer::from_pem_slice(TEST_KEY_PEM.as_bytes()).expect("test key");
    super::build_server_config(vec![cert], key, None).expect("test server config")
}

/// Client settings that trust `cert`, speak TLS 1.3 with AES-128-GCM only,
/// and allow the secrets to be taken after the handshake.
pub fn record_client_config(cert: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let provider = CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..provider::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client connection to `localhost` trusting [`TEST_CERT_PEM`].
pub fn test_client() -> ClientConnection {
    let cert = CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes()).expect("test certificate");
    ClientConnection::new(record_client_config(cert), ServerName::try_from("localhost").expect("name"))
        .expect("client connection")
}

/// A socket in memory, as a [`TlsSession`] sees it: reads come from
/// `inbound` (`WouldBlock` when empty), writes go to `outbound` while it has
/// `room` (`WouldBlock` when none is left).
pub struct MemorySocket {
    pub inbound: Vec<u8>,
    pub outbound: Vec<u8>,
    pub room: usize,
}

impl Default for MemorySocket {
    fn default() -> MemorySocket {
        MemorySocket { inbound: Vec::new(), outbound: Vec::new(), room: usize::MAX }
    }
}

impl Read for MemorySocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.inbound.len().min(buf.len());
        buf[..n].copy_from_slice(&self.inbound[..n]);
        self.inbound.drain(..n);
        Ok(n)
    }
}

impl Write for MemorySocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.outbound.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs a real handshake between `server` and rustls' client through
/// `socket`, then turns the client into a record peer.
pub fn handshake_in_memory(server: &mut TlsSession, socket: &mut MemorySocket) -> io::Result<RecordPeer> {
    let mut client = test_client();
    for _ in 0..10 {
        while client.wants_write() {
            client.write_tls(&mut socket.inbound)?;
        }
        while !socket.inbound.is_empty() {
            server.read_tls(socket)?;
        }
        let out = std::mem::take(&mut socket.outbound);
        let mut rest = &out[..];
        while !rest.is_empty() && client.is_handshaking() {
            client.read_tls(&mut rest)?;
            client.process_new_packets().map_err(io::Error::other)?;
        }
        if !client.is_handshaking() && !client.wants_write() && server.handshake_finished() {
            let mut peer = RecordPeer::from_connection(client);
            peer.received(rest); // session tickets the client left unread
            return Ok(peer);
        }
        socket.outbound.extend_from_slice(rest);
    }
    Err(io::Error::other("no handshake after ten flights"))
}

/// One direction's AEAD state.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Direction {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the record client offers AES-128-GCM only");
        };
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).expect("AES-128 key"));
        let iv = iv.as_ref().try_into().expect("12-byte IV");
        Direction { key, iv, seq }
    }

    /// RFC 8446 §5.3: the IV xor the record's sequence number.
    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// The client side after the handshake, sealing and opening records itself.
pub struct RecordPeer {
    tx: Direction,
    rx: Direction,
    /// Received bytes not yet a whole record.
    input: Vec<u8>,
    /// Alerts [`read_application_data`](RecordPeer::read_application_data)
    /// passed over, in order.
    pub alerts: Vec<Vec<u8>>,
}

impl RecordPeer {
    /// Takes the traffic secrets of a client whose handshake is complete.
    pub fn from_connection(client: ClientConnection) -> RecordPeer {
        let secrets = client.dangerous_extract_secrets().expect("secrets (is the handshake done?)");
        RecordPeer {
            tx: Direction::new(secrets.tx),
            rx: Direction::new(secrets.rx),
            input: Vec::new(),
            alerts: Vec::new(),
        }
    }

    /// Handshakes over a blocking socket, then takes the secrets.
    pub fn connect(socket: &mut (impl Read + Write)) -> io::Result<RecordPeer> {
        let mut client = test_client();
        while client.is_handshaking() {
            client.complete_io(socket)?;
        }
        while client.wants_write() {
            client.write_tls(socket)?;
        }
        Ok(RecordPeer::from_connection(client))
    }

    /// One TLS 1.3 record of `content_type` carrying `content` (which may be
    /// empty, or any part of a message).
    pub fn seal(&mut self, content_type: u8, content: &[u8]) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        let len = inner.len() + AES_128_GCM.tag_len();
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self.tx.nonce();
        self.tx.key.seal_in_place_append_tag(nonce, Aad::from(header), &mut inner).expect("seal");
        let mut record = header.to_vec();
        record.extend_from_slice(&inner);
        record
    }

    /// Adds received bytes.
    pub fn received(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole record received, opened: its content type and
    /// content. `None` until one is complete.
    pub fn open(&mut self) -> Option<(u8, Vec<u8>)> {
        let len = usize::from(u16::from_be_bytes([*self.input.get(3)?, *self.input.get(4)?]));
        if self.input.len() < 5 + len {
            return None;
        }
        let header: [u8; 5] = self.input[..5].try_into().expect("five bytes");
        let mut body: Vec<u8> = self.input[5..5 + len].to_vec();
        self.input.drain(..5 + len);
        let nonce = self.rx.nonce();
        let plain = self.rx.key.open_in_place(nonce, Aad::from(header), &mut body).expect("a record we can open");
        let end = plain.iter().rposition(|&b| b != 0).expect("a content type");
        Some((plain[end], plain[..end].to_vec()))
    }

    /// Reads from a blocking socket until a record of application data
    /// comes (skipping session tickets, keeping alerts in `alerts`); `None`
    /// at EOF or a socket error.
    pub fn read_application_data(&mut self, socket: &mut impl Read) -> Option<Vec<u8>> {
        loop {
            while let Some((kind, content)) = self.open() {
                match kind {
                    APPLICATION_DATA => return Some(content),
                    ALERT => self.alerts.push(content),
                    _ => {}
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match socket.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.received(&chunk[..n]),
            }
        }
    }
}
