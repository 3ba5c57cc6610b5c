//! Scale-out through Redis pub/sub, without I/O: hubs share the messages
//! they accept over per-topic channels (`--redis`, `--redis-prefix`).
//!
//! `resp` is the wire protocol, `envelope` the format a message travels in
//! between hubs, `link` one connection's state (handshake, liveness,
//! back-off), `bridge` the hub's two links and its channels, `url` the
//! `--redis` URL. The driver's side (sockets) is `server/redis.rs`. Without
//! the `redis` feature only the types the rest of the hub names remain, and
//! `--redis` is refused at startup.

#[cfg(feature = "redis")]
mod bridge;
// Only its `Envelope` type is named without the feature.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod envelope;
#[cfg(feature = "redis")]
mod link;
#[cfg(not(feature = "redis"))]
mod off;
#[cfg(feature = "redis")]
pub mod resp;
mod url;

#[cfg(feature = "redis")]
pub use bridge::Bridge;
#[cfg(not(feature = "redis"))]
pub use off::Bridge;
pub use url::RedisUrl;

#[cfg(feature = "redis")]
use crate::frame::MessageKind;

/// The two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber = 0,
    Publisher = 1,
}

impl Role {
    pub const BOTH: [Role; 2] = [Role::Subscriber, Role::Publisher];

    pub fn label(self) -> &'static str {
        match self {
            Role::Subscriber => "subscriber",
            Role::Publisher => "publisher",
        }
    }
}

/// Why PUBLISH commands did not reach Redis, in counter order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unshared {
    /// The publisher link was down.
    Unavailable = 0,
    /// Its outgoing buffer was full (Redis slow, or not reading).
    BufferFull = 1,
    /// Written, but the link broke before Redis confirmed it.
    Unconfirmed = 2,
    /// Redis answered with an error.
    Refused = 3,
}

impl Unshared {
    pub const ALL: [Unshared; 4] =
        [Unshared::Unavailable, Unshared::BufferFull, Unshared::Unconfirmed, Unshared::Refused];

    pub fn label(self) -> &'static str {
        match self {
            Unshared::Unavailable => "unavailable",
            Unshared::BufferFull => "buffer_full",
            Unshared::Unconfirmed => "unconfirmed",
            Unshared::Refused => "refused",
        }
    }
}

/// Why a link that was up went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLoss {
    /// Redis closed the connection (an EOF or a reset): a restart, `CLIENT
    /// KILL`, `timeout`, or `client-output-buffer-limit` on a subscriber
    /// that read too slowly.
    Closed = 0,
    /// Redis did not answer in time.
    Timeout = 1,
    /// A socket or TLS error, a reply the hub could not read, or commands
    /// piling up unsent.
    Error = 2,
}

impl LinkLoss {
    pub const ALL: [LinkLoss; 3] = [LinkLoss::Closed, LinkLoss::Timeout, LinkLoss::Error];

    pub fn label(self) -> &'static str {
        match self {
            LinkLoss::Closed => "closed",
            LinkLoss::Timeout => "timeout",
            LinkLoss::Error => "error",
        }
    }

    /// The cause an I/O error on a link's socket stands for.
    #[cfg(feature = "redis")]
    pub fn of(e: &std::io::Error) -> LinkLoss {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => LinkLoss::Closed,
            std::io::ErrorKind::TimedOut => LinkLoss::Timeout,
            _ => LinkLoss::Error,
        }
    }
}

/// What the bridge has done, for `/metrics` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Per link, `[subscriber, publisher]`: up now (gauge).
    pub up: [bool; 2],
    /// Per link: handshakes completed (counter).
    pub connects: [u64; 2],
    /// Per link: connections failed or lost (counter).
    pub failures: [u64; 2],
    /// Per link, by [`LinkLoss`]: links that were up and went down (counter).
    pub lost: [[u64; 3]; 2],
    /// PUBLISH commands Redis confirmed (counter).
    pub published: u64,
    /// PUBLISH commands that did not reach Redis (counter), by reason:
    /// `[unavailable, buffer_full, unconfirmed, refused]`.
    pub unshared: [u64; 4],
    /// Messages from other hubs (or other publishers) delivered here (counter).
    pub received: u64,
    /// Messages heard that were not envelopes nor valid messages (counter).
    pub invalid: u64,
    /// Messages heard over `--max-message-size`, dropped (counter).
    pub oversize: u64,
    /// Channels this hub needs (gauge).
    pub channels: u64,
    /// Bytes held by the links: unsent commands, unread replies (gauge).
    pub buffered_bytes: u64,
}

/// A message from Redis for local delivery.
#[cfg(feature = "redis")]
pub struct Incoming<'a> {
    /// The channel's topic.
    pub topic: &'a str,
    pub kind: MessageKind,
    pub payload: &'a [u8],
    /// The sender's topics, in order, when it came from a hub.
    pub envelope: Option<envelope::Envelope<'a>>,
}
