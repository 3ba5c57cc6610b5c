//! The envelope a message travels in between hubs, without I/O.
//!
//! A hub publishes a message once per topic of its sender, on that topic's
//! channel, so each receiving hub hears it on every channel it holds among
//! them. The envelope says which hub sent it (so the sender ignores its own
//! echo), whether it is text or binary, and the sender's topics in order: a
//! hub delivers a message heard on channel *t* only to clients for whom *t*
//! is the first of those topics they hold, so each gets it once.
//!
//! Layout: `0xB5`, version `1`, flags (bit 0: binary), the origin hub's id
//! (8 bytes, big-endian), the topic count (1–16), each topic as a length
//! byte and its name, then the payload. `0xB5` can never start UTF-8 text,
//! so text published on a channel by something else (`redis-cli PUBLISH
//! wshub:news hello`) is told apart and delivered as it is.

use crate::frame::MessageKind;
use crate::topic::{MAX_TOPICS_PER_CLIENT, Topic};

const MAGIC: u8 = 0xB5;
const VERSION: u8 = 1;
const BINARY: u8 = 1;
/// Bytes before the first topic.
const FIXED: usize = 12;

/// A message heard on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// From a hub.
    Envelope(Envelope<'a>),
    /// Published by something else: the payload as it came.
    Plain(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub origin: u64,
    pub kind: MessageKind,
    /// The encoded topic list (length-prefixed names).
    topics: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// The sender's topics, in its order.
    pub fn topics(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        let mut rest = self.topics;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let name = tail.get(..len as usize)?;
            rest = &tail[name.len()..];
            // Checked to be topic characters (ASCII) by `read`.
            std::str::from_utf8(name).ok()
        })
    }
}

/// Why a message that claims to be an envelope is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Reads a message heard on a channel.
pub fn read(message: &[u8]) -> Result<Heard<'_>, Malformed> {
    if message.first() != Some(&MAGIC) {
        return Ok(Heard::Plain(message));
    }
    if message.len() < FIXED {
        return Err(Malformed("short envelope"));
    }
    if message[1] != VERSION {
        return Err(Malformed("unknown envelope version"));
    }
    let kind = if message[2] & BINARY != 0 { MessageKind::Binary } else { MessageKind::Text };
    let mut origin = [0; 8];
    origin.copy_from_slice(&message[3..11]);
    let count = message[11] as usize;
    if count == 0 || count > MAX_TOPICS_PER_CLIENT {
        return Err(Malformed("bad topic count"));
    }
    let mut pos = FIXED;
    for _ in 0..count {
        let len = *message.get(pos).ok_or(Malformed("short envelope"))? as usize;
        let name = message.get(pos + 1..pos + 1 + len).ok_or(Malformed("short envelope"))?;
        if std::str::from_utf8(name).map_or(true, |name| Topic::new(name).is_err()) {
            return Err(Malformed("bad topic"));
        }
        pos += 1 + len;
    }
    Ok(Heard::Envelope(Envelope {
        origin: u64::from_be_bytes(origin),
        kind,
        topics: &message[FIXED..pos],
        payload: &message[pos..],
    }))
}

/// Writes the envelope's head (all but the payload) into `out`.
pub fn write_head<'t>(out: &mut Vec<u8>, origin: u64, kind: MessageKind, topics: impl Iterator<Item = &'t Topic>) {
    out.clear();
    let flags = if kind == MessageKind::Binary { BINARY } else { 0 };
    out.extend_from_slice(&[MAGIC, VERSION, flags]);
    out.extend_from_slice(&origin.to_be_bytes());
    out.push(0);
    let mut count = 0u8;
    for topic in topics {
        // A topic is at most 64 bytes, a sender has at most 16.
        out.push(topic.as_str().len() as u8);
        out.extend_from_slice(topic.as_str().as_bytes());
        count += 1;
    }
    out[FIXED - 1] = count;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<Topic> {
        names.iter().map(|n| Topic::new(n).unwrap()).collect()
    }

    #[test]
    fn round_trip() {
        let mut head = Vec::new();
        let list = topics(&["a", "news:eu", "z"]);
        write_head(&mut head, 0x0102030405060708, MessageKind::Binary, list.iter());
        let mut message = head.clone();
        message.extend_from_slice(b"\xB5payload");
        let Ok(Heard::Envelope(envelope)) = read(&message) else { panic!() };
        assert_eq!(envelope.origin, 0x0102030405060708);
        assert_eq!(envelope.kind, MessageKind::Binary);
        assert_eq!(envelope.topics().collect::<Vec<_>>(), ["a", "news:eu", "z"]);
        assert_eq!(envelope.payload, b"\xB5payload");
        write_head(&mut head, 7, MessageKind::Text, list[..1].iter());
        let Ok(Heard::Envelope(envelope)) = read(&head) else { panic!() };
        assert_eq!((envelope.kind, envelope.payload), (MessageKind::Text, &b""[..]));
    }

    #[test]
    fn text_from_elsewhere_is_plain() {
        assert_eq!(read(b"hello"), Ok(Heard::Plain(b"hello")));
        assert_eq!(read(b""), Ok(Heard::Plain(b"")));
        assert!(std::str::from_utf8(&[MAGIC]).is_err(), "the magic byte never starts text");
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        let mut head = Vec::new();
        write_head(&mut head, 1, MessageKind::Text, topics(&["abc"]).iter());
        for cut in 1..head.len() {
            assert!(read(&head[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = head.clone();
        bad[1] = 9;
        assert_eq!(read(&bad), Err(Malformed("unknown envelope version")));
        let mut bad = head.clone();
        bad[FIXED + 1] = b' ';
        assert_eq!(read(&bad), Err(Malformed("bad topic")));
        let mut bad = head.clone();
        bad[FIXED - 1] = 0;
        assert_eq!(read(&bad), Err(Malformed("bad topic count")));
    }
}
