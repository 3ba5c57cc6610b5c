//! wshub: a WebSocket publish/subscribe hub on one thread and one mio loop.
//!
//! The protocol lives in I/O-free modules driven with bytes and a clock:
//! `http` (requests, routes, responses), `frame` and `utf8` (RFC 6455
//! framing), `connection` (one connection's state machine), `send_queue`
//! (bounded per-client queues), `admission` (who may connect), `hub` (every
//! connection and the hub-wide rules, over any `transport`),
//! `subscriptions` (topics), and `redis` (sharing topics with other hubs).
//! `server` is the thin mio driver around them;
//! [`Publisher`] lets other threads publish into the loop.
//!
//! The public API is [`Config`], [`Server`], [`Publisher`], [`Message`],
//! [`PublishError`], [`Topic`], [`Stats`] (with [`RedisStats`]) and
//! [`RedisUrl`].
//!
//! No `unsafe` except where a system call has no safe wrapper, each allowed
//! where it stands with its `SAFETY:` reason: `malloc_trim` (memory back
//! after a burst), the systemd socket (checking and adopting fd 3), the
//! monotonic clock for `RELOADING=1`, and `O_NONBLOCK` on stderr when
//! `/proc` is missing.
#![deny(unsafe_code)]

mod admission;
mod auth;
mod authority;
mod config;
mod connection;
mod deflate;
#[cfg(any(feature = "tls", feature = "jwt"))]
mod der;
mod frame;
mod history;
mod http;
mod hub;
mod log_limit;
mod logger;
mod metrics;
mod origin;
mod process;
mod publisher;
mod reason;
mod redis;
mod send_queue;
mod server;
mod sse;
mod stats;
mod subscriptions;
mod systemd;
mod time;
#[cfg(feature = "tls")]
mod tls;
mod topic;
mod transport;
mod utf8;

pub use config::{Command, Config, usage};
pub use logger::{LogFormat, dropped_log_lines, init as init_logger};
pub use origin::OriginPolicy;
pub use publisher::{Message, PublishError, Publisher};
pub use reason::Exit;
pub use redis::{LinkLoss, RedisStats, RedisUrl};
pub use server::Server;
pub use stats::Stats;
pub use topic::{Topic, TopicError};

/// Internals for this crate's integration tests, benchmarks and fuzz
/// targets: the sans-IO core and the helpers that drive it (the `testing`
/// feature). Not a stable API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing {
    pub use crate::admission::Admission;
    #[cfg(feature = "jwt")]
    pub use crate::auth::{Verifier, parse_json};
    pub use crate::connection::{Action, Connection, Context, Reason};
    pub use crate::deflate::{Compressor, InflateError, Inflater};
    pub use crate::frame::{
        Event, FrameDecoder, MessageKind, SharedFrame, compressed_parts, encode_client, encode_message,
    };
    pub use crate::history::MessageId;
    pub use crate::http::{
        Request, head_complete as http_head_complete, parse_request, plausible_start as http_plausible_start,
    };
    pub use crate::hub::{ClientId, Hub};
    pub use crate::memory_transport::MemoryTransport;
    #[cfg(feature = "redis")]
    pub use crate::redis::{Bridge, Incoming, Role};
    pub use crate::send_queue::CORK_BYTES;
    pub use crate::time::Millis;
    #[cfg(feature = "tls")]
    pub use crate::tls::{TlsSession, test_peer};
    pub use crate::transport::{Input, TlsFailure, Transport};
}

#[cfg(any(test, feature = "testing"))]
mod memory_transport;

/// Compiles the README's Rust example as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// The same for the protocol page's embedding example.
#[cfg(doctest)]
#[doc = include_str!("../docs/protocol.md")]
struct ProtocolExample;
