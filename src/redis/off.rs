//! Built without the `redis` feature: a bridge that cannot exist, so the
//! hub's Redis paths compile away.

use super::RedisStats;
use crate::frame::MessageKind;
use crate::time::Millis;
use crate::topic::Topic;

pub enum Bridge {}

impl Bridge {
    pub fn topic_added(&mut self, _: &Topic, _: Millis) {
        match *self {}
    }

    pub fn topic_removed(&mut self, _: &Topic, _: Millis) {
        match *self {}
    }

    pub fn publish<'t, I>(&mut self, _: I, _: MessageKind, _: &[u8], _: Millis)
    where
        I: Iterator<Item = &'t Topic> + Clone,
    {
        match *self {}
    }

    pub fn next_deadline(&self) -> Millis {
        match *self {}
    }

    pub fn handle_timeout(&mut self, _: Millis) {
        match *self {}
    }

    pub fn buffered_bytes(&self) -> usize {
        match *self {}
    }

    pub fn sockets(&self) -> usize {
        match *self {}
    }

    pub fn drained(&self) -> bool {
        match *self {}
    }

    pub fn stats(&self) -> RedisStats {
        match *self {}
    }
}
