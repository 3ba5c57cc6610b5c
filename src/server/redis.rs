//! The driver's side of `--redis`: two sockets that move the bridge's bytes.
//!
//! Everything Redis means (handshake, channels, envelopes, liveness,
//! back-off) is decided in `crate::redis`; this opens a socket when the
//! bridge asks for one, reads into the loop's scratch buffer, writes what
//! the bridge has to send, and closes the socket of a link the bridge gave
//! up. Sockets are non-blocking like every other: a Redis that stops reading
//! only fills the bridge's bounded buffer. A link's socket is a [`Stream`]
//! like a client's: plain TCP, or with `rediss://` TLS as a client (rustls'
//! buffers are bounded at 64 KiB each way), read and written through the
//! same transport seam.

use std::io::{self, Write};
use std::net::SocketAddr;

use log::{debug, info};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry};

use super::stream::Stream;
use crate::config::Config;
use crate::hub::Hub;
use crate::redis::{Bridge, LinkLoss, RedisUrl, Role};
use crate::time::Millis;
use crate::transport::{Input, Transport};

/// Reads per socket per turn before the others get theirs (64 KiB each).
const READS_PER_TURN: usize = 16;

pub(super) struct RedisSockets {
    url: RedisUrl,
    /// With `rediss://`: the client settings and the name the server's
    /// certificate must carry.
    #[cfg(feature = "tls")]
    tls: Option<ClientTls>,
    /// Where Redis is (resolved at startup); attempts go round them.
    addrs: Vec<SocketAddr>,
    attempts: usize,
    conns: [Option<Conn>; 2],
}

struct Conn {
    stream: Stream,
    /// The TCP connection is established.
    connected: bool,
    /// The socket took less than offered: wait for a writable event.
    blocked: bool,
    /// Read its share this turn without draining it: read again next turn.
    read_again: bool,
}

impl RedisSockets {
    /// With `--redis`: Redis' addresses, looked up now, once (a lookup
    /// would block the loop): give an address, or a name that stays put.
    pub(super) fn for_config(config: &Config) -> io::Result<Option<RedisSockets>> {
        let Some(url) = &config.redis else { return Ok(None) };
        #[cfg(not(feature = "tls"))]
        if url.tls {
            let why = "this wshub was built without the `tls` feature; rediss:// needs it";
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("--redis: cannot resolve {}: {e}", url.host))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("--redis: {} has no address", url.host)));
        }
        Ok(Some(RedisSockets {
            url: url.clone(),
            #[cfg(feature = "tls")]
            tls: client_tls(url)?,
            addrs,
            attempts: 0,
            conns: [None, None],
        }))
    }

    /// The hub's side of the links, for `config`.
    pub(super) fn bridge(&self, config: &Config) -> Bridge {
        let url = self.url.clone();
        info!("sharing topics through {url} (channel prefix {:?})", config.redis_prefix);
        // Bounded within the memory budget: an eighth of it.
        let out_limit = (config.max_buffered_bytes / 8).max(64 * 1024);
        Bridge::new(url, &config.redis_prefix, hub_id(), out_limit, config.max_message_size)
    }

    /// Readiness of a Redis socket.
    pub(super) fn ready(&mut self, role: Role, event: &Event, hub: &mut Hub<Stream>, now: Millis) {
        let Some(conn) = self.conns[role as usize].as_mut() else { return };
        if !conn.connected {
            match established(conn.stream.tcp()) {
                Ok(true) => conn.connected = true,
                Ok(false) => return,
                Err(e) => return lost(hub, role, &e, now),
            }
        }
        if event.is_writable() {
            conn.blocked = false;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            // Read in `turn`, after the clients had their shares: what a
            // client sent this turn is written before what Redis floods in.
            conn.read_again = true;
        }
    }

    /// Reads a share of what Redis sent: first what the last turn's delivery
    /// budget left, and the socket only once that is through (Redis' own
    /// buffer holds the rest meanwhile).
    fn read(&mut self, role: Role, hub: &mut Hub<Stream>, scratch: &mut [u8], now: Millis) {
        let Some(conn) = self.conns[role as usize].as_mut() else { return };
        conn.read_again = false;
        let paused = |hub: &mut Hub<Stream>| hub.bridge().is_some_and(|b| b.is_paused(role));
        if paused(hub) {
            hub.redis_received(role, &[], now);
            if paused(hub) {
                conn.read_again = true;
                return;
            }
        }
        for _ in 0..READS_PER_TURN {
            match conn.stream.receive(scratch) {
                Ok(Input::Eof) => return lost(hub, role, &io::Error::from(io::ErrorKind::UnexpectedEof), now),
                Ok(Input::Bytes { len, more }) => {
                    hub.redis_received(role, &scratch[..len], now);
                    if hub.bridge().is_none_or(|b| b.is_down(role)) {
                        return;
                    }
                    if paused(hub) {
                        break;
                    }
                    if !more {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return lost(hub, role, &e, now),
            }
        }
        conn.read_again = true;
    }

    /// Once per turn: reads on where a share was left, closes the sockets of
    /// links the bridge gave up, opens those it asks for, writes what it
    /// has to send.
    pub(super) fn turn(&mut self, registry: &Registry, hub: &mut Hub<Stream>, scratch: &mut [u8], now: Millis) {
        for role in Role::BOTH {
            if self.conns[role as usize].as_ref().is_some_and(|c| c.read_again) {
                self.read(role, hub, scratch, now);
            }
        }
        for role in Role::BOTH {
            let Some(bridge) = hub.bridge() else { return };
            if bridge.is_down(role)
                && let Some(mut conn) = self.conns[role as usize].take()
            {
                let _ = registry.deregister(conn.stream.tcp());
            }
            if self.conns[role as usize].is_none() && bridge.connect_due(role, now) {
                self.connect(role, registry, hub, now);
            }
            self.write(role, hub, now);
        }
    }

    /// A socket read its share without draining: the loop must come back
    /// at once (the bridge's own timers are in the hub's `poll_timeout`).
    pub(super) fn wants_turn(&self) -> bool {
        self.conns.iter().flatten().any(|c| c.read_again)
    }

    fn connect(&mut self, role: Role, registry: &Registry, hub: &mut Hub<Stream>, now: Millis) {
        let addr = self.addrs[self.attempts % self.addrs.len()];
        self.attempts += 1;
        let opened = TcpStream::connect(addr).and_then(|mut tcp| {
            registry.register(&mut tcp, super::REDIS_TOKENS[role as usize], Interest::READABLE | Interest::WRITABLE)?;
            if let Err(e) = tcp.set_nodelay(true) {
                debug!("redis {}: TCP_NODELAY: {e}", role.label());
            }
            self.stream(tcp)
        });
        match opened {
            Ok(stream) => {
                let conn = Conn { stream, connected: false, blocked: false, read_again: false };
                self.conns[role as usize] = Some(conn);
            }
            Err(e) => lost(hub, role, &e, now),
        }
    }

    /// What a new connection speaks: plain RESP, or RESP over TLS.
    fn stream(&self, tcp: TcpStream) -> io::Result<Stream> {
        #[cfg(feature = "tls")]
        if let Some((config, name)) = &self.tls {
            return Ok(Stream::TlsClient(Box::new(crate::tls::TlsClientStream::new(tcp, config, name.clone())?)));
        }
        Ok(Stream::Plain(tcp))
    }

    /// Writes what the bridge has to send (a TLS link's records first).
    fn write(&mut self, role: Role, hub: &mut Hub<Stream>, now: Millis) {
        let Some(conn) = self.conns[role as usize].as_mut() else { return };
        let Some(bridge) = hub.bridge() else { return };
        while conn.connected && !conn.blocked {
            let result = if conn.stream.has_pending_output() {
                conn.stream.flush_pending().map(|()| 0)
            } else {
                let bytes = bridge.transmit(role);
                if bytes.is_empty() {
                    return;
                }
                conn.stream.write(bytes)
            };
            match result {
                Ok(n) => bridge.sent(role, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return bridge.lost(role, LinkLoss::of(&e), &e.to_string(), now),
            }
        }
    }
}

/// `rediss://`: servers are checked against the system's CA bundle, or the
/// PEM file `SSL_CERT_FILE` names (OpenSSL's convention), read at startup.
#[cfg(feature = "tls")]
type ClientTls = (std::sync::Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>);

#[cfg(feature = "tls")]
fn client_tls(url: &RedisUrl) -> io::Result<Option<ClientTls>> {
    if !url.tls {
        return Ok(None);
    }
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let ca_file = std::env::var_os("SSL_CERT_FILE").unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let config = crate::tls::client_config(std::path::Path::new(&ca_file)).map_err(invalid)?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
        .map_err(|e| invalid(format!("--redis: {} is not a name TLS can check: {e}", url.host)))?;
    Ok(Some((config, name)))
}

/// Whether a non-blocking connect finished; an error if it failed.
fn established(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn lost(hub: &mut Hub<Stream>, role: Role, e: &io::Error, now: Millis) {
    if let Some(bridge) = hub.bridge() {
        bridge.lost(role, LinkLoss::of(e), &e.to_string(), now);
    }
}

/// A random id for this hub's envelopes, so it knows its own messages when
/// Redis hands them back. std's hasher keys are seeded from the system's
/// random source; no dependency needed for 64 random bits.
fn hub_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::time::{SystemTime, UNIX_EPOCH};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish()
}
