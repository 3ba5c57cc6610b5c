//! A client's bounded queue of encoded frames, and the gathering write that
//! drains it.
//!
//! Frames are shared (`Rc<[u8]>`): queuing a broadcast to a client copies a
//! pointer, not the payload. The bounds (messages and bytes) are checked on
//! every push, so nothing can grow a queue past them; a push that would is
//! refused and the caller drops the client (slow consumer, close 1013).
//! A partial write only moves an offset into the front frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::frame::SharedFrame;

/// Frames handed to one `writev` at most (well under Linux's IOV_MAX of 1024).
pub const MAX_IOVECS: usize = 64;
/// Bytes one write carries in full: a queue holding this much (or
/// `MAX_IOVECS` frames) gains nothing from waiting (`--write-delay`).
pub const FULL_WRITE_BYTES: usize = 64 * 1024;
/// A queue that grew past this many slots during a burst gives them back once
/// it is empty again, so a once-busy client does not keep the memory.
const KEEP_CAPACITY: usize = 64;

/// Frames that add up to at most this are copied into the loop's cork
/// buffer and written with one `write`, which measured about 10% cheaper per
/// delivery than a `writev` of the same small frames (benches/fanout.py,
/// N=1000 × 64 B); larger batches go out with `writev`, without a copy.
pub const CORK_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// Which bound a push would have broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Messages,
    Bytes,
}

impl Overflow {
    pub fn describe(self) -> &'static str {
        match self {
            Overflow::Messages => "send queue full (messages)",
            Overflow::Bytes => "send queue full (bytes)",
        }
    }
}

/// What [`SendQueue::chunk`] offers to write next.
#[derive(Debug)]
pub enum Chunk<'a> {
    /// Nothing is queued.
    Empty,
    /// One contiguous run of bytes.
    Slice(&'a [u8]),
    /// Many frames, worth a `writev` of [`SendQueue::gather`].
    Frames,
}

thread_local! {
    /// Bytes of all queues' slots on this thread (the loop's), for the
    /// memory budget: kept up to date where a queue's capacity changes, so
    /// reading it is free and no write path has to ask.
    static SLOTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes the send queues' slots take (the frames are counted elsewhere).
pub fn held_slot_bytes() -> usize {
    SLOTS.with(|slots| slots.get())
}

const SLOT: usize = std::mem::size_of::<SharedFrame>();

/// Accounts a change of a queue's capacity.
#[inline(never)]
fn slots_changed(before: usize, after: usize) {
    SLOTS.with(|slots| slots.set(slots.get() + after * SLOT - before * SLOT));
}

/// The queue: the front frame inline, the rest in a ring that is only
/// allocated when two or more frames wait. A client that keeps up (one
/// frame at a time, written at the end of each turn) and an idle one never
/// allocate it (measured: 80 bytes an idle connection kept from its 101).
#[derive(Debug, Default)]
pub struct SendQueue {
    /// The front frame; `None` only when the queue is empty.
    front: Option<SharedFrame>,
    /// The frames after the front one.
    rest: VecDeque<SharedFrame>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// Bytes queued and not yet written.
    pending: usize,
}

impl SendQueue {
    /// Queues a frame within the limits. A single frame larger than the byte
    /// bound is still accepted by an empty queue, so that a message size
    /// limit above the queue's byte bound does not make messages undeliverable.
    pub fn push(&mut self, frame: SharedFrame, limits: QueueLimits) -> Result<(), Overflow> {
        if self.len() >= limits.messages {
            return Err(Overflow::Messages);
        }
        if !self.is_empty() && self.pending + frame.len() > limits.bytes {
            return Err(Overflow::Bytes);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a frame the protocol requires us to send (a close reply), past
    /// the bounds. Used at most once or twice per connection.
    pub fn push_unbounded(&mut self, frame: SharedFrame) {
        self.pending += frame.len();
        if self.front.is_none() {
            self.front = Some(frame);
        } else if self.rest.len() == self.rest.capacity() {
            // Full: the push grows the slots (rare: amortized doubling).
            let before = self.rest.capacity();
            self.rest.push_back(frame);
            slots_changed(before, self.rest.capacity());
        } else {
            self.rest.push_back(frame);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    pub fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame so the stream stays well framed for a final close.
    pub fn discard_unstarted(&mut self) {
        while let Some(frame) = self.rest.pop_back() {
            self.pending -= frame.len();
        }
        if self.offset == 0
            && let Some(front) = self.front.take()
        {
            self.pending -= front.len();
        }
    }

    /// What to write next, for one system call: [`Chunk::Slice`] when it
    /// is one contiguous run of bytes (a lone frame, or a small batch copied
    /// into `cork`, scratch space shared by every queue of the loop), or
    /// [`Chunk::Frames`] when the batch is large enough to be handed to
    /// `writev` as the shared frames themselves ([`gather`]). Whatever the
    /// writer accepts is reported to [`advance`].
    ///
    /// [`gather`]: SendQueue::gather
    /// [`advance`]: SendQueue::advance
    pub fn chunk<'a>(&'a self, cork: &'a mut Vec<u8>) -> Chunk<'a> {
        let Some(front) = &self.front else {
            return Chunk::Empty;
        };
        if self.rest.is_empty() {
            return Chunk::Slice(&front[self.offset..]);
        }
        if self.pending > CORK_BYTES {
            return Chunk::Frames;
        }
        cork.clear();
        cork.extend_from_slice(&front[self.offset..]);
        for frame in &self.rest {
            cork.extend_from_slice(frame);
        }
        Chunk::Slice(cork)
    }

    /// The queued frames as slices for one `writev` (at most `slices.len()`
    /// of them); returns how many it filled.
    pub fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let Some(front) = &self.front else { return 0 };
        let Some((first, others)) = slices.split_first_mut() else { return 0 };
        *first = IoSlice::new(&front[self.offset..]);
        let mut count = 1;
        for (slot, frame) in others.iter_mut().zip(&self.rest) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        count
    }

    /// One `writev` of the queued frames. Out of line: inlined, the compiler
    /// hoisted its setup into the hot one-slice path (measured with
    /// callgrind: about 150 instructions more per write).
    #[inline(never)]
    fn write_gathered<W: Write>(&self, writer: &mut W) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = self.gather(&mut slices);
        writer.write_vectored(&slices[..n])
    }

    /// `n` bytes of what [`chunk`](SendQueue::chunk) offered were written.
    pub fn advance(&mut self, mut n: usize) {
        self.pending -= n.min(self.pending);
        while n > 0 {
            let Some(front) = &self.front else {
                return;
            };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.front = self.rest.pop_front();
        }
        if self.rest.is_empty() && self.rest.capacity() > KEEP_CAPACITY {
            slots_changed(self.rest.capacity(), 0);
            self.rest = VecDeque::new();
        }
    }

    /// Writes queued frames until the queue is empty or `writer` pushes back
    /// (`WouldBlock`, or accepting nothing); returns the bytes written.
    /// Errors other than `WouldBlock` are returned as they are.
    pub fn write_to<W: Write>(&mut self, writer: &mut W, cork: &mut Vec<u8>) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let result = match self.chunk(cork) {
                Chunk::Empty => return Ok(total),
                Chunk::Slice(bytes) => writer.write(bytes),
                Chunk::Frames => self.write_gathered(writer),
            };
            match result {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        if self.rest.capacity() > 0 {
            slots_changed(self.rest.capacity(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits { messages: 4, bytes: 100 };

    fn frame(bytes: &[u8]) -> SharedFrame {
        SharedFrame::from(bytes)
    }

    /// Accepts at most `budget` bytes per call, then would block.
    struct Trickle {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounds_by_messages_and_bytes() {
        let mut q = SendQueue::default();
        for _ in 0..4 {
            q.push(frame(b"abc"), LIMITS).unwrap();
        }
        assert_eq!(q.push(frame(b"abc"), LIMITS), Err(Overflow::Messages));
        let mut q = SendQueue::default();
        q.push(frame(&[0; 60]), LIMITS).unwrap();
        assert_eq!(q.push(frame(&[0; 41]), LIMITS), Err(Overflow::Bytes));
        q.push(frame(&[0; 40]), LIMITS).unwrap();
        // a lone oversized frame is accepted by an empty queue
        let mut q = SendQueue::default();
        q.push(frame(&[0; 500]), LIMITS).unwrap();
        assert_eq!(q.pending_bytes(), 500);
    }

    #[test]
    fn partial_writes_resume_exactly() {
        for budget in 1..12 {
            let mut q = SendQueue::default();
            let frames: [&[u8]; 3] = [b"hello", b"", b"world!!"];
            for f in frames {
                q.push(frame(f), QueueLimits { messages: 10, bytes: 100 }).unwrap();
            }
            let mut w = Trickle { out: Vec::new(), budget, calls: 0 };
            let mut rounds = 0;
            while {
                q.write_to(&mut w, &mut Vec::new()).unwrap();
                !q.is_empty()
            } {
                rounds += 1;
                assert!(rounds < 100);
            }
            assert_eq!(w.out, b"helloworld!!", "budget {budget}");
            assert_eq!(q.pending_bytes(), 0);
        }
    }

    #[test]
    fn discard_keeps_a_started_frame() {
        let mut q = SendQueue::default();
        for f in [b"aaaa", b"bbbb", b"cccc"] {
            q.push(frame(f), LIMITS).unwrap();
        }
        let mut w = Trickle { out: Vec::new(), budget: 2, calls: 0 };
        q.write_to(&mut w, &mut Vec::new()).unwrap();
        q.discard_unstarted();
        assert_eq!((q.len(), q.pending_bytes()), (1, 2));
        let mut q2 = SendQueue::default();
        q2.push(frame(b"x"), LIMITS).unwrap();
        q2.discard_unstarted();
        assert!(q2.is_empty());
    }
}
