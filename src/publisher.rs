//! Publishing from other threads: a `Send + Sync + Clone` handle that hands
//! messages to the loop through a bounded queue and wakes it with a
//! `mio::Waker`. The loop never blocks on it and never spawns a thread.

use std::collections::VecDeque;
use std::fmt;
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
    /// The queue to the loop is full: the loop is behind; try again later.
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
    pub shutdown_requested: bool,
    pub closed: bool,
    /// The loop's latest snapshot (refreshed at every deadline sweep, at
    /// least once a second, and when the loop ends).
    pub stats: Stats,
}

pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    waker: mio::Waker,
    capacity: usize,
    max_message: usize,
}

impl Shared {
    pub fn new(waker: mio::Waker, capacity: usize, max_message: usize) -> Arc<Shared> {
        Arc::new(Shared { inbox: Mutex::new(Inbox::default()), waker, capacity, max_message })
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
        if message.len() > self.shared.max_message {
            return Err(PublishError::TooLarge);
        }
        let mut inbox = self.shared.lock();
        if inbox.closed || inbox.shutdown_requested {
            return Err(PublishError::Closed);
        }
        if inbox.messages.len() >= self.shared.capacity {
            return Err(PublishError::Full);
        }
        let first = inbox.messages.is_empty();
        inbox.messages.push_back((topic, message));
        drop(inbox);
        // The loop drains everything per wake-up: one wake per batch suffices.
        if first {
            self.wake();
        }
        Ok(())
    }

    /// The hub's counters and gauges as of its last sweep (at most about a
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
