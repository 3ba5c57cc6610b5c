//! An in-memory [`Transport`] for driving the hub without sockets: it keeps
//! what was written, takes only as many bytes as the test grants (then
//! pushes back like a full socket, or, in `keeps_refused` mode, keeps what
//! it could not send as a TLS stream keeps records), yields input the test
//! pushes, and records the half-close. Clones share one pipe, so a test
//! keeps a handle after giving the transport to the hub.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use crate::transport::{Input, Transport};

#[derive(Debug, Default)]
struct Pipe {
    sent: Vec<u8>,
    /// Bytes the peer would still accept; `None`: unlimited.
    room: Option<usize>,
    write_calls: usize,
    /// Count written bytes but do not keep them (for benchmarks).
    discard: bool,
    write_shut: bool,
    /// Input for the hub to read, and whether the peer's EOF follows it.
    inbound: VecDeque<u8>,
    eof: bool,
    reads: usize,
    /// Take every write and keep what the peer has no room for (its
    /// "pending output"), as a TLS stream keeps encrypted records.
    keeps_refused: bool,
    kept: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct MemoryTransport {
    pipe: Rc<RefCell<Pipe>>,
}

impl MemoryTransport {
    /// A transport that takes everything.
    pub fn new() -> MemoryTransport {
        MemoryTransport::default()
    }

    /// A transport that takes everything and keeps nothing: a sink that
    /// never allocates, for benchmarks and allocation counts.
    pub fn sink() -> MemoryTransport {
        let t = MemoryTransport::default();
        t.pipe.borrow_mut().discard = true;
        t
    }

    /// A transport that accepts every write and keeps what the peer has no
    /// room for, counted as bytes it holds (like refused TLS records).
    pub fn keeping_refused() -> MemoryTransport {
        let t = MemoryTransport::default();
        t.pipe.borrow_mut().keeps_refused = true;
        t
    }

    /// Lets the peer accept `more` bytes (an unlimited pipe stays unlimited).
    pub fn grant(&self, more: usize) {
        let mut pipe = self.pipe.borrow_mut();
        if let Some(room) = pipe.room.as_mut() {
            *room += more;
        }
    }

    /// From now on the peer accepts exactly `room` more bytes.
    pub fn set_room(&self, room: usize) {
        self.pipe.borrow_mut().room = Some(room);
    }

    /// Everything written since the last call.
    pub fn take_sent(&self) -> Vec<u8> {
        std::mem::take(&mut self.pipe.borrow_mut().sent)
    }

    /// How many write calls reached the transport.
    pub fn write_calls(&self) -> usize {
        self.pipe.borrow().write_calls
    }

    pub fn is_write_shut(&self) -> bool {
        self.pipe.borrow().write_shut
    }

    /// Bytes the peer sends, for the hub to read.
    pub fn push_input(&self, bytes: &[u8]) {
        self.pipe.borrow_mut().inbound.extend(bytes);
    }

    /// The peer closes its side after what it sent.
    pub fn close_input(&self) {
        self.pipe.borrow_mut().eof = true;
    }

    /// Input the hub has not read yet.
    pub fn unread(&self) -> usize {
        self.pipe.borrow().inbound.len()
    }

    /// How many reads reached the transport.
    pub fn reads(&self) -> usize {
        self.pipe.borrow().reads
    }
}

impl Pipe {
    /// Moves what fits into `sent`; returns how much did.
    fn accept(&mut self, bytes: &[u8]) -> usize {
        let take = self.room.map_or(bytes.len(), |room| room.min(bytes.len()));
        if !self.discard {
            self.sent.extend_from_slice(&bytes[..take]);
        }
        if let Some(room) = self.room.as_mut() {
            *room -= take;
        }
        take
    }
}

impl Write for MemoryTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut pipe = self.pipe.borrow_mut();
        if pipe.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        pipe.write_calls += 1;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if pipe.keeps_refused {
            if !pipe.kept.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            for buf in bufs {
                let took = if pipe.kept.is_empty() { pipe.accept(buf) } else { 0 };
                pipe.kept.extend_from_slice(&buf[took..]);
            }
            return Ok(total);
        }
        let take = pipe.room.map_or(total, |room| room.min(total));
        if take == 0 && total > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut left = take;
        for buf in bufs {
            let n = left.min(buf.len());
            let took = pipe.accept(&buf[..n]);
            left -= took;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemoryTransport {
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        let mut pipe = self.pipe.borrow_mut();
        pipe.reads += 1;
        if pipe.inbound.is_empty() {
            return if pipe.eof { Ok(Input::Eof) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let len = buf.len().min(pipe.inbound.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.inbound.drain(..len)) {
            *slot = byte;
        }
        Ok(Input::Bytes { len, more: !pipe.inbound.is_empty() })
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.pipe.borrow_mut().write_shut = true;
        Ok(())
    }

    fn has_pending_output(&self) -> bool {
        !self.pipe.borrow().kept.is_empty()
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        let mut pipe = self.pipe.borrow_mut();
        let kept = std::mem::take(&mut pipe.kept);
        let took = pipe.accept(&kept);
        pipe.kept = kept[took..].to_vec();
        if pipe.kept.is_empty() { Ok(()) } else { Err(io::ErrorKind::WouldBlock.into()) }
    }

    fn buffered_bytes(&self) -> usize {
        self.pipe.borrow().kept.capacity()
    }
}
