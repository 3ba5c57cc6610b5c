//! An in-memory [`Transport`] for driving the hub without sockets: it keeps
//! what was written, takes only as many bytes as the test grants (then
//! pushes back like a full socket), and records the half-close. Clones share
//! one pipe, so a test keeps a handle after giving the transport to the hub.

use std::cell::RefCell;
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
        let take = pipe.room.map_or(total, |room| room.min(total));
        if take == 0 && total > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut left = if pipe.discard { 0 } else { take };
        for buf in bufs {
            let n = left.min(buf.len());
            pipe.sent.extend_from_slice(&buf[..n]);
            left -= n;
        }
        if let Some(room) = pipe.room.as_mut() {
            *room -= take;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for MemoryTransport {
    /// Tests hand bytes to the hub directly; there is never anything to read.
    fn receive(&mut self, _buf: &mut [u8]) -> io::Result<Input> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.pipe.borrow_mut().write_shut = true;
        Ok(())
    }
}
