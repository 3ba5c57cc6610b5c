//! Scale-out through Redis pub/sub, without I/O: hubs share the messages
//! they accept over per-topic channels (`--redis`, `--redis-prefix`).
//!
//! `resp` is the wire protocol, `envelope` the format a message travels in
//! between hubs, `link` one connection's state (handshake, liveness,
//! back-off), `bridge` the hub's two links and its channels, `url` the
//! `--redis` URL. The driver's side (sockets) is `server/redis.rs`.

mod bridge;
mod envelope;
mod link;
pub mod resp;
mod url;

pub use bridge::{Bridge, Incoming, RedisStats, Role, Unshared};
pub use url::RedisUrl;
