//! Publishing from other threads: a `Send + Sync + Clone` handle that hands
//! messages to the loop through a bounded queue and wakes it with a
//! `mio::Waker`. The loop never blocks on it and never spawns a thread.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::stats::Stats;
use crate::topic::{Topic, TopicError};

/// A message published by the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

impl Message {
    pub fn len(&self) -> usize {
        match self {
            Message::Text(s) => s.len(),
            Message::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.to_string())
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b)
    }
}

/// Why a publish was refused. Nothing refused is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    InvalidTopic(TopicError),
    /// Larger than `--max-message-size`.
    TooLarge,
    /// The queue to the loop is full (in messages, or in bytes: an eighth
    /// of `--max-buffered-bytes`): the loop is behind; try again later.
    Full,
    /// The server has stopped or is shutting down.
    Closed,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidTopic(e) => write!(f, "invalid topic: {e}"),
            PublishError::TooLarge => f.write_str("message larger than --max-message-size"),
            PublishError::Full => f.write_str("publish queue full"),
            PublishError::Closed => f.write_str("server is shut down"),
        }
    }
}

impl std::error::Error for PublishError {}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub messages: VecDeque<(Topic, Message)>,
    /// Payload bytes of `messages`.
    bytes: usize,
    pub shutdown_requested: bool,
    pub closed: bool,
    /// The loop's latest snapshot (refreshed by the hub's housekeeping,
    /// once a second, and when the loop ends).
    pub stats: Stats,
}

/// How much the inbox may hold before a publish is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub messages: usize,
    /// Payload bytes; one message is taken by an empty inbox whatever its
    /// size (`max_message` bounds it).
    pub bytes: usize,
    pub max_message: usize,
}

pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    waker: mio::Waker,
    bounds: Bounds,
    /// `Inbox::bytes`, readable without the lock: the hub counts it in
    /// `--max-buffered-bytes`.
    held: Arc<AtomicUsize>,
}

impl Shared {
    pub fn new(waker: mio::Waker, bounds: Bounds) -> Arc<Shared> {
        let held = Arc::new(AtomicUsize::new(0));
        Arc::new(Shared { inbox: Mutex::new(Inbox::default()), waker, bounds, held })
    }

    /// The inbox's payload bytes, as a counter the hub's budget reads.
    pub fn held(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.held)
    }

    /// Takes every queued message (the loop, once per wake-up).
    pub fn take(&self, inbox: &mut Inbox) -> VecDeque<(Topic, Message)> {
        inbox.bytes = 0;
        self.held.store(0, Ordering::Relaxed);
        std::mem::take(&mut inbox.messages)
    }

    /// A panic elsewhere while holding the lock cannot leave the queue in a
    /// broken state (it is only pushed and drained), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A handle for publishing from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Queues `message` for every client subscribed to `topic`.
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Result<(), PublishError> {
        let topic = Topic::new(topic).map_err(PublishError::InvalidTopic)?;
        let message = message.into();
        let bounds = self.shared.bounds;
        if message.len() > bounds.max_message {
            return Err(PublishError::TooLarge);
        }
        let mut inbox = self.shared.lock();
        if inbox.closed || inbox.shutdown_requested {
            return Err(PublishError::Closed);
        }
        let first = inbox.messages.is_empty();
        let bytes = inbox.bytes + message.len();
        if inbox.messages.len() >= bounds.messages || (!first && bytes > bounds.bytes) {
            return Err(PublishError::Full);
        }
        inbox.bytes = bytes;
        self.shared.held.store(bytes, Ordering::Relaxed);
        inbox.messages.push_back((topic, message));
        drop(inbox);
        // The loop drains everything per wake-up: one wake per batch suffices.
        if first {
            self.wake();
        }
        Ok(())
    }

    /// The hub's counters and gauges as of its last housekeeping (at most about a
    /// second old; final once `run` has returned).
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown_requested = true;
        self.wake();
    }

    fn wake(&self) {
        if let Err(e) = self.shared.waker.wake() {
            log::error!("could not wake the event loop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(bounds: Bounds) -> (Publisher, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
        (Publisher { shared: Shared::new(waker, bounds) }, poll)
    }

    #[test]
    fn the_inbox_is_bounded_in_bytes_and_counted_until_taken() {
        let bounds = Bounds { messages: 100, bytes: 1000, max_message: 800 };
        let (publisher, _poll) = publisher(bounds);
        let held = publisher.shared.held();
        // An empty inbox takes one message whatever its size...
        publisher.publish("a", vec![0u8; 800]).expect("first");
        assert_eq!(held.load(Ordering::Relaxed), 800);
        // ...and then only what fits in the byte bound.
        publisher.publish("a", vec![0u8; 200]).expect("fits");
        assert_eq!(publisher.publish("a", vec![0u8; 1]), Err(PublishError::Full));
        assert_eq!(held.load(Ordering::Relaxed), 1000);
        let taken = publisher.shared.take(&mut publisher.shared.lock());
        assert_eq!(taken.len(), 2);
        assert_eq!(held.load(Ordering::Relaxed), 0);
        publisher.publish("a", vec![0u8; 1]).expect("room again");
        assert_eq!(publisher.publish("a", vec![0u8; 801]), Err(PublishError::TooLarge));
    }

    #[test]
    fn the_inbox_is_bounded_in_messages() {
        let bounds = Bounds { messages: 2, bytes: 1 << 20, max_message: 10 };
        let (publisher, _poll) = publisher(bounds);
        publisher.publish("a", "1").expect("first");
        publisher.publish("a", "2").expect("second");
        assert_eq!(publisher.publish("a", "3"), Err(PublishError::Full));
    }
}
