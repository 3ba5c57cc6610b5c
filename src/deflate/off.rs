//! Built without the `deflate` feature: compression is never negotiated,
//! so these are never asked to do anything.

use super::InflateError;
use crate::frame::{MessageKind, SharedFrame};

#[derive(Default)]
pub struct Compressor {}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compressor({} bytes)", self.held_bytes())
    }
}

impl Compressor {
    pub fn compress(&mut self, _: MessageKind, _: &[u8], _: usize) -> Option<SharedFrame> {
        None
    }

    pub fn held_bytes(&self) -> usize {
        0
    }
}

#[derive(Default)]
pub struct Inflater {}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inflater({} bytes)", self.held_bytes())
    }
}

impl Inflater {
    pub fn inflate<R>(&self, _: &[u8], _: usize, _: impl FnOnce(&[u8]) -> R) -> Result<R, InflateError> {
        Err(InflateError::Invalid)
    }

    pub fn inflated(&self) -> u64 {
        0
    }

    pub fn held_bytes(&self) -> usize {
        0
    }
}
