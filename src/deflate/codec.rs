//! The hub's one compressor and one inflater (raw deflate, RFC 7692 §7.2),
//! shared by every connection: with no context takeover in either
//! direction, a message compresses and inflates on its own, so neither
//! needs state per connection. Both are made on first use: a hub whose
//! clients never negotiate compression never allocates them.

use std::cell::{Cell, RefCell};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::InflateError;
use crate::frame::{self, MessageKind, SharedFrame};

/// Compression level: zlib's default. On 1 KiB JSON telemetry, zlib-rs at
/// levels 2 to 6 all take about 20 us and leave 30-31% of the bytes; level
/// 1 takes a third of the time but leaves 37%. Once per broadcast, the
/// bytes matter more than the microseconds.
const LEVEL: u32 = 6;

/// §7.2.1: what a sync flush ends with, removed before sending and put
/// back before inflating (§7.2.2).
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Heap bytes of zlib-rs' deflate state at window 15 (the window, its hash
/// chains and head table, the pending buffer), and of its inflate state
/// with its 32 KiB window, as a counting allocator measured them (flate2
/// 1.1.11, zlib-rs 0.6.8), for the budget and `/metrics`.
pub const COMPRESSOR_BYTES: usize = 380_176;
pub const INFLATER_BYTES: usize = 47_704;

/// An inflated message of up to this many bytes keeps its buffer for the
/// next one; a larger buffer is let go at once.
const KEEP_INFLATED: usize = 64 * 1024;

/// Compresses each broadcast at most once.
#[derive(Default)]
pub struct Compressor {
    state: Option<Box<Compress>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compressor({} bytes)", self.held_bytes())
    }
}

impl Compressor {
    /// The compressed frame for `payload` (RSV1 set), or `None` when it is
    /// shorter than `min_size` or does not shrink.
    pub fn compress(&mut self, kind: MessageKind, payload: &[u8], min_size: usize) -> Option<SharedFrame> {
        if payload.len() < min_size.max(1) {
            return None;
        }
        let state = self.state.get_or_insert_with(|| Box::new(Compress::new(Compression::new(LEVEL), false)));
        state.reset();
        self.out.clear();
        // Room for the payload's size and no more: output that fills it did
        // not shrink (the sync flush's 4-byte tail is removed afterwards).
        self.out.reserve_exact(payload.len() + SYNC_TAIL.len());
        let room = self.out.capacity();
        let status = state.compress_vec(payload, &mut self.out, FlushCompress::Sync).ok()?;
        let complete = state.total_in() == payload.len() as u64 && self.out.len() < room;
        let frame = (status == Status::Ok && complete && self.out.ends_with(&SYNC_TAIL))
            .then(|| frame::encode_compressed(kind, &self.out[..self.out.len() - SYNC_TAIL.len()]));
        if self.out.capacity() > KEEP_INFLATED {
            self.out = Vec::new();
        }
        frame.filter(|f| f.len() < payload.len())
    }

    /// Heap bytes it holds (its state, once made, and its output buffer).
    pub fn held_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, |_| COMPRESSOR_BYTES) + self.out.capacity()
    }
}

/// Inflates every client's compressed messages, one at a time.
#[derive(Default)]
pub struct Inflater {
    inner: RefCell<Inflating>,
    /// Messages inflated, for `/metrics`.
    inflated: Cell<u64>,
}

#[derive(Default)]
struct Inflating {
    state: Option<Box<Decompress>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inflater({} bytes)", self.held_bytes())
    }
}

impl Inflater {
    /// Inflates one message into a buffer that never grows past
    /// `max + 1` bytes (a deflate bomb stops there), and hands the result
    /// to `then`.
    pub fn inflate<R>(&self, compressed: &[u8], max: usize, then: impl FnOnce(&[u8]) -> R) -> Result<R, InflateError> {
        let mut inner = self.inner.borrow_mut();
        let Inflating { state, out } = &mut *inner;
        let state = state.get_or_insert_with(|| Box::new(Decompress::new(false)));
        state.reset(false);
        out.clear();
        let result = inflate_into(state, compressed, max, out);
        let result = result.map(|()| then(out));
        self.inflated.set(self.inflated.get() + 1);
        if out.capacity() > KEEP_INFLATED {
            *out = Vec::new();
        }
        result
    }

    /// Messages inflated so far.
    pub fn inflated(&self) -> u64 {
        self.inflated.get()
    }

    /// Heap bytes it holds (its state, once made, and its output buffer).
    pub fn held_bytes(&self) -> usize {
        let inner = self.inner.borrow();
        inner.state.as_ref().map_or(0, |_| INFLATER_BYTES) + inner.out.capacity()
    }
}

/// Inflates `compressed` and the sync tail into `out`, growing it in steps
/// up to `max + 1` bytes.
fn inflate_into(state: &mut Decompress, compressed: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
    let limit = max.saturating_add(1);
    let mut parts = [compressed, &SYNC_TAIL[..]];
    let mut part = 0;
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(InflateError::TooBig);
            }
            let step = out.capacity().max(compressed.len().saturating_mul(4)).clamp(1024, 1 << 20);
            out.reserve_exact(step.min(limit - out.len()));
        }
        let (in_before, out_before) = (state.total_in(), out.len());
        let status =
            state.decompress_vec(parts[part], out, FlushDecompress::Sync).map_err(|_| InflateError::Invalid)?;
        let used = (state.total_in() - in_before) as usize;
        parts[part] = &parts[part][used..];
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        if status == Status::StreamEnd {
            // A final block (BFINAL): whatever follows it is not ours.
            return Ok(());
        }
        if parts[part].is_empty() && part + 1 < parts.len() {
            part += 1;
            continue;
        }
        let input_done = parts[part].is_empty();
        let room_left = out.len() < out.capacity();
        if input_done && room_left {
            return Ok(());
        }
        if used == 0 && out.len() == out_before && room_left {
            // Input left, room left, and no progress: it cannot go on.
            return Err(InflateError::Invalid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(payload: &[u8]) -> Vec<u8> {
        let mut compressor = Compressor::default();
        let frame = compressor.compress(MessageKind::Text, payload, 1).expect("shrinks");
        let (_, body) = frame::compressed_parts(&frame).expect("a compressed frame");
        body.to_vec()
    }

    #[test]
    fn a_message_round_trips_and_the_frame_has_rsv1() {
        let text = b"{\"sensor\":\"temperature\",\"value\":21.5}".repeat(20);
        let mut compressor = Compressor::default();
        let frame = compressor.compress(MessageKind::Text, &text, 64).unwrap();
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let body = compressed(&text);
        let inflater = Inflater::default();
        let back = inflater.inflate(&body, 1 << 20, <[u8]>::to_vec).unwrap();
        assert_eq!(back, text);
        // The shared inflater is reset between messages.
        assert_eq!(inflater.inflate(&body, 1 << 20, <[u8]>::to_vec).unwrap(), text);
    }

    #[test]
    fn short_and_incompressible_messages_stay_plain() {
        let mut compressor = Compressor::default();
        assert!(compressor.compress(MessageKind::Text, &[b'a'; 100], 128).is_none(), "under the minimum");
        assert!(compressor.compress(MessageKind::Text, &[b'a'; 100], 100).is_some());
        let mut x = 7u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(compressor.compress(MessageKind::Binary, &noise, 1).is_none(), "random bytes do not shrink");
        assert!(compressor.held_bytes() >= COMPRESSOR_BYTES);
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_invalid() {
        let bomb = compressed(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let inflater = Inflater::default();
        assert_eq!(inflater.inflate(&bomb, 65_536, |b| b.len()), Err(InflateError::TooBig));
        assert!(inflater.held_bytes() <= INFLATER_BYTES + KEEP_INFLATED, "the buffer is let go");
        assert_eq!(inflater.inflate(&[0xff, 0xff, 0xff], 65_536, |b| b.len()), Err(InflateError::Invalid));
        // An empty message is the single byte 0x00 (§7.2.3.6).
        assert_eq!(inflater.inflate(&[0x00], 65_536, |b| b.len()), Ok(0));
        // Exactly at the limit is fine.
        let exact = compressed(&[b'x'; 4096]);
        assert_eq!(inflater.inflate(&exact, 4096, |b| b.len()), Ok(4096));
        assert_eq!(inflater.inflate(&exact, 4095, |b| b.len()), Err(InflateError::TooBig));
    }
}
