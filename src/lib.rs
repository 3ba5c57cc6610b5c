//! wshub: a WebSocket publish/subscribe hub on one thread and one mio loop.
//!
//! The protocol lives in I/O-free modules that tests drive with bytes:
//! [`http`] (the upgrade and the other HTTP routes), [`frame`] and [`utf8`]
//! (RFC 6455 framing), [`connection`] (one connection's state machine),
//! [`send_queue`] (bounded per-client queues) and [`hub`] (topics). The
//! [`server`] module is the thin mio driver around them; [`publisher`] lets
//! other threads publish into the loop.

pub mod config;
pub mod connection;
pub mod frame;
pub mod http;
pub mod hub;
pub mod publisher;
pub mod send_queue;
pub mod server;
pub mod topic;
pub mod utf8;

pub use config::Config;
pub use publisher::{Message, PublishError, Publisher};
pub use server::Server;
pub use topic::Topic;

/// Compiles the README's Rust example as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
