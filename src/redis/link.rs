//! One connection to Redis, without I/O: whether it is up, what it has to
//! send, the unused tail of what it read, the replies it is owed, and when
//! to try again after a failure.
//!
//! Liveness is judged by replies, not by the socket: a link that owes a
//! reply for longer than [`REPLY_TIMEOUT`] (Redis stopped answering, or
//! stopped reading what we send) is given up, and so is one whose handshake
//! is not answered within [`CONNECT_TIMEOUT`] (a port that accepts and says
//! nothing). An idle link sends a `PING` every [`KEEPALIVE`], so a silent
//! network failure is noticed too.

use crate::time::Millis;

/// TCP connect plus the handshake's replies.
pub const CONNECT_TIMEOUT: Millis = 5_000;
/// Longest wait for an owed reply once up.
pub const REPLY_TIMEOUT: Millis = 5_000;
/// An idle link pings this often.
pub const KEEPALIVE: Millis = 5_000;
/// First retry after a failure; doubles per failure up to [`BACKOFF_CAP`].
pub const BACKOFF_FIRST: Millis = 100;
pub const BACKOFF_CAP: Millis = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not connected; try again at `retry_at`.
    Down {
        retry_at: Millis,
    },
    /// Connecting, or waiting for the handshake's replies, since `since`.
    Starting {
        since: Millis,
    },
    Up,
}

#[derive(Debug)]
pub struct Link {
    state: State,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// Read but not yet a complete reply.
    pub(super) input: Vec<u8>,
    /// Bytes still to drop of a message over the size limit.
    pub(super) skip: usize,
    /// `input` holds replies the turn's budget left unprocessed: process
    /// them before reading the socket again.
    pub(super) paused: bool,
    /// Replies owed for commands queued; the first `handshake` of them
    /// answer the handshake.
    owed: usize,
    handshake: usize,
    /// Since when the link has waited for its next reply.
    waiting_since: Millis,
    /// When Redis last said anything.
    last_heard: Millis,
    /// Failures since the link was last up: the back-off's exponent.
    failures: u32,
    /// Pseudo-random state for the back-off's jitter (so hubs that lost
    /// Redis together do not reconnect in lockstep).
    jitter: u64,
}

impl Link {
    pub fn new(seed: u64) -> Link {
        Link {
            state: State::Down { retry_at: 0 },
            out: Vec::new(),
            sent: 0,
            input: Vec::new(),
            skip: 0,
            paused: false,
            owed: 0,
            handshake: 0,
            waiting_since: 0,
            last_heard: 0,
            failures: 0,
            jitter: seed | 1,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down { .. })
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Down and due for another attempt.
    pub fn connect_due(&self, now: Millis) -> bool {
        matches!(self.state, State::Down { retry_at } if now >= retry_at)
    }

    /// A new attempt: `handshake` queues the commands whose replies decide
    /// whether the link is up, and says how many there are.
    pub fn start(&mut self, now: Millis, handshake: impl FnOnce(&mut Vec<u8>) -> usize) {
        self.out.clear();
        self.sent = 0;
        self.input.clear();
        self.skip = 0;
        self.paused = false;
        self.state = State::Starting { since: now };
        self.handshake = handshake(&mut self.out);
        self.owed = self.handshake;
        self.waiting_since = now;
        self.last_heard = now;
    }

    /// Queues commands written by `write`, which owe `replies` replies.
    pub fn queue(&mut self, now: Millis, replies: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if self.owed == 0 {
            self.waiting_since = now;
        }
        self.owed += replies;
        write(&mut self.out);
    }

    /// One reply came. Returns true when it was the handshake's last: the
    /// link is up.
    pub fn replied(&mut self, now: Millis) -> bool {
        self.owed = self.owed.saturating_sub(1);
        self.waiting_since = now;
        self.last_heard = now;
        if self.handshake > 0 {
            self.handshake -= 1;
            if self.handshake == 0 {
                self.state = State::Up;
                self.failures = 0;
                return true;
            }
        }
        false
    }

    /// Redis sent something that is not a reply (a message push): it is
    /// alive and reading, even if replies wait behind a burst of messages.
    pub fn heard(&mut self, now: Millis) {
        self.waiting_since = now;
        self.last_heard = now;
    }

    /// Still in the handshake: the next reply answers it.
    pub fn in_handshake(&self) -> bool {
        self.handshake > 0
    }

    /// The link failed: drop what it held and schedule the next attempt.
    pub fn fail(&mut self, now: Millis) {
        self.out = Vec::new();
        self.sent = 0;
        self.input = Vec::new();
        self.paused = false;
        self.owed = 0;
        self.handshake = 0;
        let delay = (BACKOFF_FIRST << self.failures.min(16)).min(BACKOFF_CAP);
        // Between 3/4 and all of the delay.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let delay = delay - (delay / 4) * (self.jitter % 1024) / 1024;
        self.failures = self.failures.saturating_add(1);
        self.state = State::Down { retry_at: now + delay };
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// What has to be sent.
    pub fn transmit(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// `n` bytes of [`transmit`](Link::transmit) were written.
    pub fn sent(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent > 64 * 1024 && self.sent * 2 > self.out.len() {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Bytes waiting to be sent.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Bytes held: unsent commands and unused input.
    pub fn buffered(&self) -> usize {
        self.unsent() + self.input.len()
    }

    /// Why the link must be given up now, if it must; otherwise queues a
    /// keepalive `PING` when it is due.
    pub fn check(&mut self, now: Millis) -> Result<(), &'static str> {
        match self.state {
            State::Down { .. } => Ok(()),
            State::Starting { since } if now.saturating_sub(since) >= CONNECT_TIMEOUT => {
                Err("no answer to the handshake")
            }
            State::Starting { .. } => Ok(()),
            State::Up if self.owed > 0 && now.saturating_sub(self.waiting_since) >= REPLY_TIMEOUT => {
                Err("no reply for 5 s (Redis stopped answering or reading)")
            }
            State::Up => {
                if self.owed == 0 && now.saturating_sub(self.last_heard) >= KEEPALIVE {
                    self.queue(now, 1, |out| super::resp::command(out, &[&[b"PING"]]));
                }
                if self.out.is_empty() && self.out.capacity() > 64 * 1024 {
                    self.out = Vec::new();
                }
                Ok(())
            }
        }
    }

    /// When [`check`](Link::check) or a retry next has something to do.
    pub fn next_deadline(&self) -> Millis {
        match self.state {
            State::Down { retry_at } => retry_at,
            State::Starting { since } => since + CONNECT_TIMEOUT,
            State::Up if self.owed > 0 => self.waiting_since + REPLY_TIMEOUT,
            State::Up => self.last_heard + KEEPALIVE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(now: Millis) -> Link {
        let mut link = Link::new(42);
        link.start(now, |out| {
            out.extend_from_slice(b"PING");
            1
        });
        link
    }

    #[test]
    fn up_after_the_handshake_and_backoff_resets() {
        let mut link = started(0);
        assert_eq!(link.state(), State::Starting { since: 0 });
        assert_eq!(link.transmit(), b"PING");
        link.sent(2);
        assert_eq!(link.transmit(), b"NG");
        link.sent(2);
        assert!(link.transmit().is_empty());
        assert!(link.replied(10));
        assert!(link.is_up());
        assert_eq!(link.failures(), 0);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut link = Link::new(7);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            link.fail(now);
            let State::Down { retry_at } = link.state() else { panic!() };
            delays.push(retry_at - now);
            assert!(!link.connect_due(retry_at - 1) && link.connect_due(retry_at));
            now = retry_at;
        }
        for (i, &delay) in delays.iter().enumerate() {
            let full = (BACKOFF_FIRST << i).min(BACKOFF_CAP);
            assert!(delay <= full && delay >= full * 3 / 4, "attempt {i}: {delay} ms of {full}");
        }
        assert!(delays[9] > 3000, "capped near 5 s: {delays:?}");
    }

    #[test]
    fn a_silent_peer_is_given_up_and_an_idle_link_pings() {
        let mut link = started(0);
        assert_eq!(link.check(CONNECT_TIMEOUT - 1), Ok(()));
        assert!(link.check(CONNECT_TIMEOUT).is_err(), "no answer to the handshake");

        let mut link = started(0);
        link.sent(4);
        link.replied(1);
        assert_eq!(link.next_deadline(), 1 + KEEPALIVE);
        assert_eq!(link.check(KEEPALIVE), Ok(()));
        assert!(link.transmit().is_empty());
        assert_eq!(link.check(1 + KEEPALIVE), Ok(()));
        assert_eq!(link.transmit(), b"*1\r\n$4\r\nPING\r\n", "keepalive");
        assert_eq!(link.next_deadline(), 1 + KEEPALIVE + REPLY_TIMEOUT);
        assert!(link.check(1 + KEEPALIVE + REPLY_TIMEOUT).is_err(), "the ping went unanswered");
    }

    #[test]
    fn a_reply_restarts_the_wait_for_the_next() {
        let mut link = started(0);
        link.replied(0);
        link.queue(100, 3, |out| out.extend_from_slice(b"xyz"));
        link.replied(4000);
        link.replied(8000);
        assert_eq!(link.check(8000 + REPLY_TIMEOUT - 1), Ok(()), "progress, not one deadline for all");
        link.heard(9000);
        assert_eq!(link.check(8000 + REPLY_TIMEOUT), Ok(()), "messages coming in: alive");
        assert!(link.check(9000 + REPLY_TIMEOUT).is_err());
    }
}
