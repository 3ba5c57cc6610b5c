//! What the hub has done and holds, as plain integers owned by the loop.
//!
//! Counters are bumped where things happen (no allocation, no atomics: one
//! thread owns them); gauges (connections by state, queued bytes, topics) are
//! computed when a snapshot is asked for, so the hot path pays nothing for
//! them. The metrics endpoint and tests read snapshots.

use crate::reason::Exit;

/// HTTP statuses the hub answers a refused request with, in counter order.
pub const REJECTION_STATUSES: [u16; 12] = [400, 401, 403, 404, 405, 411, 413, 426, 431, 500, 503, 0];

/// A snapshot of the hub's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open WebSocket clients (gauge).
    pub open: u64,
    /// Connections still sending their HTTP request or being answered (gauge).
    pub pending: u64,
    /// Connections whose last bytes are queued or sent, not yet gone (gauge).
    pub closing: u64,
    /// TCP connections accepted (counter).
    pub accepted: u64,
    /// WebSocket upgrades completed (counter).
    pub upgrades: u64,
    /// Requests refused, by status (400, 401, 403, 404, 405, 411, 413, 426,
    /// 431, 500, 503, then any other), in that order (counter).
    pub rejected: [u64; REJECTION_STATUSES.len()],
    /// Connections ended, by [`Exit`] (counter).
    pub exits: [u64; Exit::ALL.len()],
    /// Data messages received from WebSocket clients (counter).
    pub messages_in: u64,
    /// Messages published over HTTP or by a `Publisher` (counter).
    pub published: u64,
    /// HTTP publish requests delivered (counter).
    pub http_publishes: u64,
    /// Frames queued to receivers by broadcasts and publishes (counter).
    pub deliveries: u64,
    /// Bytes read from and written to connections (counters).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes waiting in send queues (gauge).
    pub queued_bytes: u64,
    /// Topics with at least one subscriber (gauge).
    pub topics: u64,
    /// Bytes held for clients, as `--max-buffered-bytes` counts them: frames
    /// alive (once each, however many queues share them) and unfinished
    /// input (gauge).
    pub held_bytes: u64,
    /// Open clients that negotiated permessage-deflate (gauge).
    pub compression_clients: u64,
    /// Messages compressed: once per message however many receivers got
    /// it compressed (counter).
    pub compressed_messages: u64,
    /// Deliveries of a compressed frame (counter; also in `deliveries`).
    pub compressed_deliveries: u64,
    /// Compressed messages received from clients and inflated (counter).
    pub inflated_messages: u64,
    /// Heap bytes of the shared compressor and inflater (gauge).
    pub compression_memory_bytes: u64,
    /// Open Server-Sent Events clients (gauge; also in `open`).
    pub sse_clients: u64,
    /// Binary messages not sent to SSE clients, per client (counter).
    pub sse_binary_skipped: u64,
    /// Messages in the history, counted once per topic (gauge).
    pub history_messages: u64,
    /// Bytes of frames in the history (gauge).
    pub history_bytes: u64,
    /// Messages evicted from the history by cause: count, bytes, ttl,
    /// memory (counter).
    pub history_evictions: [u64; 4],
    /// Resumes (`Last-Event-ID`, `?since=`) by result: complete, gap (counters).
    pub resumes_complete: u64,
    pub resumes_gap: u64,
    /// Replays started (resumes and `?last=`), and messages they sent (counters).
    pub replays: u64,
    pub replayed_messages: u64,
    /// With `--redis`: the bridge's figures.
    pub redis: Option<crate::redis::RedisStats>,
}

impl Stats {
    /// Requests refused with `status` so far.
    pub fn rejected_with(&self, status: u16) -> u64 {
        self.rejected[status_index(status)]
    }

    /// Connections that ended for `exit` so far.
    pub fn exited(&self, exit: Exit) -> u64 {
        self.exits[exit as usize]
    }

    pub(crate) fn count_rejection(&mut self, status: u16) {
        self.rejected[status_index(status)] += 1;
    }

    pub(crate) fn count_exit(&mut self, exit: Exit) {
        self.exits[exit as usize] += 1;
    }
}

/// Unknown statuses share the last slot.
fn status_index(status: u16) -> usize {
    REJECTION_STATUSES.iter().position(|&s| s == status).unwrap_or(REJECTION_STATUSES.len() - 1)
}
