//! RFC 6455 framing without I/O: a decoder fed with whatever bytes the socket
//! produced, and encoders that build server frames as shared, immutable bytes.
//!
//! tungstenite's `FrameHeader` parses and formats headers and rejects
//! reserved opcodes; every other rule of §5 that tungstenite enforces in its
//! higher layers is enforced here, where we need it: masking, RSV bits,
//! control frame size and fragmentation, continuation order, the message size
//! limit (checked against the declared length before any payload is kept),
//! close payloads, and UTF-8 of text, validated as the bytes arrive so a bad
//! byte fails the connection at once.
//!
//! Payload bytes are unmasked in place in the caller's read buffer. A message
//! whose single frame arrived whole is handed out from that buffer without a
//! copy; only a message split across reads or fragments is reassembled.

use std::io::Cursor;
use std::rc::Rc;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::utf8::Utf8Validator;

/// An encoded server frame (or other bytes we send), shared by every
/// receiver's send queue: queuing it copies a pointer.
///
/// Its bytes count in the loop's memory budget ([`held_frame_bytes`]) from
/// when it is made until the last queue lets go of it, so a broadcast held
/// by a thousand queues counts once. The count is per thread: frames are
/// `Rc`s, so they never leave the loop's thread.
#[derive(Debug)]
pub struct SharedFrame(Rc<[u8]>);

thread_local! {
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes of frames alive on this thread (the loop's frames, queued or about
/// to be).
pub fn held_frame_bytes() -> usize {
    HELD.with(|held| held.get())
}

impl SharedFrame {
    fn new(bytes: Rc<[u8]>) -> SharedFrame {
        HELD.with(|held| held.set(held.get() + bytes.len()));
        SharedFrame(bytes)
    }
}

impl From<Vec<u8>> for SharedFrame {
    fn from(bytes: Vec<u8>) -> SharedFrame {
        SharedFrame::new(Rc::from(bytes))
    }
}

impl From<&[u8]> for SharedFrame {
    fn from(bytes: &[u8]) -> SharedFrame {
        SharedFrame::new(Rc::from(bytes))
    }
}

impl Clone for SharedFrame {
    fn clone(&self) -> SharedFrame {
        SharedFrame(Rc::clone(&self.0))
    }
}

impl Drop for SharedFrame {
    fn drop(&mut self) {
        // The last owner lets the bytes go.
        if Rc::strong_count(&self.0) == 1 {
            HELD.with(|held| held.set(held.get().saturating_sub(self.0.len())));
        }
    }
}

impl std::ops::Deref for SharedFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Largest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A violation of the protocol by the peer: the close code to send and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: &'static str,
}

impl ProtocolError {
    const fn protocol(reason: &'static str) -> Self {
        ProtocolError { code: CloseCode::Protocol, reason }
    }
    /// Also for a compressed message, once inflated (`connection`).
    pub const INVALID_UTF8: Self = ProtocolError { code: CloseCode::Invalid, reason: "invalid UTF-8 in text" };
    pub const TOO_BIG: Self = ProtocolError { code: CloseCode::Size, reason: "message too big" };
}

/// Kind of a complete data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Data(Data::Text),
            MessageKind::Binary => OpCode::Data(Data::Binary),
        }
    }
}

/// Something the peer said, complete and validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Message(MessageKind, &'a [u8]),
    /// A message sent compressed (RSV1, permessage-deflate): the payload
    /// still to inflate, and UTF-8 still to check once inflated.
    Compressed(MessageKind, &'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// A close frame; `code` is `None` for an empty close payload.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// What one call to [`FrameDecoder::decode`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of the input used; the rest belongs to later calls.
    pub consumed: usize,
    pub event: Option<Event<'a>>,
}

#[derive(Debug, Clone, Copy)]
enum FrameKind {
    /// First frame of a data message, or a continuation of one.
    Data,
    Control(Control),
}

/// The frame whose payload is being received.
#[derive(Debug)]
struct FrameState {
    kind: FrameKind,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already received (also the mask phase).
    received: u64,
}

/// Per-connection decoder state. Idle, it owns no heap memory.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    head: [u8; MAX_HEADER],
    head_len: u8,
    frame: Option<FrameState>,
    /// Kind of the data message in progress, if any.
    message: Option<MessageKind>,
    /// Declared size of the message so far, for the size limit.
    message_len: u64,
    /// Payloads that did not arrive in one piece.
    pieces: Option<Box<Pieces>>,
    utf8: Utf8Validator,
    /// One bit each (an idle connection is small): see [`Marks`].
    marks: Marks,
}

/// A decoder's switches, one bit each.
#[derive(Debug, Default, Clone, Copy)]
struct Marks(u8);

impl Marks {
    /// The last event borrowed the message pieces: clear them on the next call.
    const RELEASE_MESSAGE: u8 = 1;
    /// The last event borrowed the control pieces: clear them on the next call.
    const RELEASE_CONTROL: u8 = 1 << 1;
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    const DEFLATE: u8 = 1 << 2;
    /// The data message in progress came with RSV1.
    const COMPRESSED: u8 = 1 << 3;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        self.0 = if on { self.0 | bit } else { self.0 & !bit };
    }

    /// Clears `bit`; returns whether it was set.
    fn take(&mut self, bit: u8) -> bool {
        let was = self.has(bit);
        self.set(bit, false);
        was
    }
}

/// The payload of a message, and of a control frame, received in pieces
/// (boxed: most connections never hold one, and an idle connection should
/// not carry two empty buffers).
#[derive(Debug, Default)]
struct Pieces {
    message: Vec<u8>,
    control: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder for a connection that negotiated compression (`deflate`)
    /// or not.
    pub fn new(deflate: bool) -> FrameDecoder {
        let mut decoder = FrameDecoder::default();
        decoder.marks.set(Marks::DEFLATE, deflate);
        decoder
    }

    fn pieces(&mut self) -> &mut Pieces {
        self.pieces.get_or_insert_with(Box::default)
    }

    /// Decodes `input` (unmasking payload in place) until one event is
    /// complete or the input is used up.
    pub fn decode<'a>(&'a mut self, input: &'a mut [u8], max_message: usize) -> Result<Decoded<'a>, ProtocolError> {
        if self.marks.has(Marks::RELEASE_CONTROL | Marks::RELEASE_MESSAGE) {
            self.release();
        }
        let mut pos = 0;
        loop {
            if self.frame.is_none() {
                match self.read_header(&input[pos..], max_message)? {
                    Some(used) => pos += used,
                    None => {
                        return Ok(Decoded { consumed: input.len(), event: None });
                    }
                }
            }
            let Some(frame) = self.frame.as_mut() else { unreachable!("read_header returned Some without a frame") };
            let take = (input.len() - pos).min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
            let start = pos;
            pos += take;
            let chunk = &mut input[start..pos];
            unmask(chunk, frame.mask, frame.received);
            let whole_frame_here = frame.received == 0 && frame.remaining == take as u64;
            frame.received += take as u64;
            frame.remaining -= take as u64;
            let done = frame.remaining == 0;
            let (kind, fin) = (frame.kind, frame.fin);
            if done {
                self.frame = None;
            }

            match kind {
                FrameKind::Data => {
                    if self.message == Some(MessageKind::Text) && !self.marks.has(Marks::COMPRESSED) {
                        self.utf8.feed(chunk).map_err(|_| ProtocolError::INVALID_UTF8)?;
                    }
                    let whole_message_here =
                        whole_frame_here && fin && self.pieces.as_ref().is_none_or(|p| p.message.is_empty());
                    if !whole_message_here {
                        self.pieces().message.extend_from_slice(chunk);
                    }
                    if !(done && fin) {
                        if pos == input.len() {
                            return Ok(Decoded { consumed: pos, event: None });
                        }
                        continue;
                    }
                    let (kind, compressed) = self.finish_message()?;
                    let payload: &'a [u8] = if whole_message_here {
                        &({ input })[start..pos]
                    } else {
                        self.marks.set(Marks::RELEASE_MESSAGE, true);
                        self.pieces.as_ref().map_or(&[][..], |p| &p.message)
                    };
                    let event =
                        if compressed { Event::Compressed(kind, payload) } else { Event::Message(kind, payload) };
                    return Ok(Decoded { consumed: pos, event: Some(event) });
                }
                FrameKind::Control(control) => {
                    if !whole_frame_here {
                        self.pieces().control.extend_from_slice(chunk);
                    }
                    if !done {
                        return Ok(Decoded { consumed: pos, event: None });
                    }
                    let payload: &'a [u8] = if whole_frame_here {
                        &({ input })[start..pos]
                    } else {
                        self.marks.set(Marks::RELEASE_CONTROL, true);
                        self.pieces.as_ref().map_or(&[][..], |p| &p.control)
                    };
                    let event = control_event(control, payload)?;
                    return Ok(Decoded { consumed: pos, event: Some(event) });
                }
            }
        }
    }

    /// True while part of a frame or message has been received.
    pub fn is_mid_message(&self) -> bool {
        self.head_len > 0 || self.frame.is_some() || self.message.is_some()
    }

    /// Heap bytes held for messages and control frames not yet complete.
    pub fn buffered_bytes(&self) -> usize {
        self.pieces.as_ref().map_or(0, |p| std::mem::size_of::<Pieces>() + p.message.capacity() + p.control.capacity())
    }

    /// Lets go of what the last event borrowed; frees the pieces once both
    /// are empty (a message buffer of up to 4 KiB is kept for the next
    /// fragmented message; a larger one must not pin memory to an idle
    /// connection).
    fn release(&mut self) {
        let (control, message) = (self.marks.take(Marks::RELEASE_CONTROL), self.marks.take(Marks::RELEASE_MESSAGE));
        let Some(pieces) = self.pieces.as_mut() else { return };
        if control {
            pieces.control = Vec::new();
        }
        if message {
            if pieces.message.capacity() > 4096 {
                pieces.message = Vec::new();
            } else {
                pieces.message.clear();
            }
        }
        if pieces.message.capacity() == 0 && pieces.control.capacity() == 0 {
            self.pieces = None;
        }
    }

    /// Reads a frame header from the saved partial header plus `input` and
    /// applies the header rules. Returns the input bytes used, or `None` when
    /// the header is still incomplete (all input was saved).
    fn read_header(&mut self, input: &[u8], max_message: usize) -> Result<Option<usize>, ProtocolError> {
        let have = usize::from(self.head_len);
        let take = input.len().min(MAX_HEADER - have);
        let mut head = self.head;
        head[have..have + take].copy_from_slice(&input[..take]);
        let head = &head[..have + take];
        // Judge the first two bytes as soon as they arrive: a bad opcode
        // should not wait for a length field that may never come.
        if let Some(&first) = head.first() {
            self.check_header_start(first, head.get(1).copied())?;
        }
        let mut cursor = Cursor::new(head);
        let parsed = FrameHeader::parse(&mut cursor).map_err(|_| ProtocolError::protocol("reserved opcode"))?;
        let Some((header, len)) = parsed else {
            self.head[..head.len()].copy_from_slice(head);
            self.head_len = head.len() as u8;
            return Ok(None);
        };
        let used = cursor.position() as usize - have;
        self.head_len = 0;
        self.start_frame(header, len, max_message)?;
        Ok(Some(used))
    }

    /// The rules of §5.2, §5.4 and §5.5 that the first two header bytes
    /// decide: RSV bits only for compression (RFC 7692 §6: RSV1 on the
    /// first frame of a data message, when negotiated), known opcodes,
    /// masked, control frames final and short, continuations only inside a
    /// message.
    fn check_header_start(&self, first: u8, second: Option<u8>) -> Result<(), ProtocolError> {
        if first & 0x30 != 0 {
            return Err(ProtocolError::protocol("RSV bit set without an extension"));
        }
        let opcode = OpCode::from(first & 0x0f);
        if first & 0x40 != 0 {
            if !self.marks.has(Marks::DEFLATE) {
                return Err(ProtocolError::protocol("RSV bit set without an extension"));
            }
            if !matches!(opcode, OpCode::Data(Data::Text | Data::Binary)) {
                return Err(ProtocolError::protocol("RSV1 on a control frame or a continuation"));
            }
        }
        let fin = first & 0x80 != 0;
        match opcode {
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(ProtocolError::protocol("reserved opcode"));
            }
            OpCode::Control(_) if !fin => {
                return Err(ProtocolError::protocol("fragmented control frame"));
            }
            OpCode::Control(_) if second.is_some_and(|b| u64::from(b & 0x7f) > MAX_CONTROL_PAYLOAD) => {
                return Err(ProtocolError::protocol("control frame over 125 bytes"));
            }
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                return Err(ProtocolError::protocol("continuation without a message"));
            }
            OpCode::Data(Data::Text | Data::Binary) if self.message.is_some() => {
                return Err(ProtocolError::protocol("new message inside a fragmented message"));
            }
            _ => {}
        }
        if second.is_some_and(|b| b & 0x80 == 0) {
            return Err(ProtocolError::protocol("client frame not masked"));
        }
        Ok(())
    }

    /// Starts receiving a frame whose header passed `check_header_start`.
    fn start_frame(&mut self, header: FrameHeader, len: u64, max_message: usize) -> Result<(), ProtocolError> {
        let Some(mask) = header.mask else {
            return Err(ProtocolError::protocol("client frame not masked"));
        };
        let kind = match header.opcode {
            OpCode::Control(control) => FrameKind::Control(control),
            OpCode::Data(data) => {
                let message_len = match data {
                    Data::Continue => self.message_len.saturating_add(len),
                    _ => len,
                };
                if !matches!(data, Data::Continue) {
                    self.marks.set(Marks::COMPRESSED, header.rsv1);
                }
                // A compressed message is judged by its inflated size when it
                // inflates; what it may take on the wire allows for deflate
                // data that did not shrink (stored blocks: 5 bytes per 64 KiB).
                let limit =
                    if self.marks.has(Marks::COMPRESSED) { compressed_limit(max_message) } else { max_message as u64 };
                if message_len > limit {
                    return Err(ProtocolError::TOO_BIG);
                }
                match data {
                    Data::Text => self.message = Some(MessageKind::Text),
                    Data::Binary => self.message = Some(MessageKind::Binary),
                    _ => {}
                }
                self.message_len = message_len;
                if !header.is_final {
                    // Fragmented: reserve for what is declared, within reason.
                    let wanted = (message_len as usize).min(1 << 20);
                    let buf = &mut self.pieces().message;
                    buf.reserve(wanted.saturating_sub(buf.len()));
                }
                FrameKind::Data
            }
        };
        self.frame = Some(FrameState { kind, fin: header.is_final, mask, remaining: len, received: 0 });
        Ok(())
    }

    /// The message's kind, and whether it came compressed.
    fn finish_message(&mut self) -> Result<(MessageKind, bool), ProtocolError> {
        let kind = self.message.take().unwrap_or(MessageKind::Binary);
        let compressed = self.marks.take(Marks::COMPRESSED);
        self.message_len = 0;
        if kind == MessageKind::Text && !compressed {
            self.utf8.finish().map_err(|_| ProtocolError::INVALID_UTF8)?;
        }
        Ok((kind, compressed))
    }
}

/// The most a compressed message of at most `max_message` inflated bytes
/// may take on the wire.
fn compressed_limit(max_message: usize) -> u64 {
    let max = max_message as u64;
    max.saturating_add(max / 1024).saturating_add(64)
}

fn control_event(control: Control, payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match control {
        Control::Ping => Ok(Event::Ping(payload)),
        Control::Pong => Ok(Event::Pong),
        Control::Close => parse_close(payload),
        Control::Reserved(_) => Err(ProtocolError::protocol("reserved opcode")),
    }
}

/// RFC 6455 §5.5.1 and §7.4: an empty close, or a valid code and UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match payload {
        [] => Ok(Event::Close { code: None, reason: "" }),
        [_] => Err(ProtocolError::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::INVALID_UTF8)?;
            Ok(Event::Close { code: Some(code), reason })
        }
    }
}

/// Codes a peer may send (§7.4.1, the IANA registry, and 3000–4999).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the mask, `offset` bytes into the frame's payload.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let x = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// Builds one complete, unmasked server frame in a single allocation.
pub fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
    encode_with(FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode, mask: None }, payload)
}

/// A data frame for a complete message compressed with permessage-deflate
/// (RSV1 set; `deflated` without the sync flush's tail).
#[cfg(feature = "deflate")]
pub fn encode_compressed(kind: MessageKind, deflated: &[u8]) -> SharedFrame {
    let opcode = kind.opcode();
    encode_with(FrameHeader { is_final: true, rsv1: true, rsv2: false, rsv3: false, opcode, mask: None }, deflated)
}

fn encode_with(header: FrameHeader, payload: &[u8]) -> SharedFrame {
    let len = payload.len() as u64;
    let head_len = header.len(len);
    let mut frame: Rc<[u8]> = std::iter::repeat_n(0u8, head_len + payload.len()).collect();
    let Some(bytes) = Rc::get_mut(&mut frame) else { unreachable!("a new Rc has no other owner") };
    let (head, body) = bytes.split_at_mut(head_len);
    // Writing a header into a slice of exactly its length cannot fail.
    let _ = header.format(len, &mut Cursor::new(head));
    body.copy_from_slice(payload);
    SharedFrame::new(frame)
}

/// A data frame for a complete message.
pub fn encode_message(kind: MessageKind, payload: &[u8]) -> SharedFrame {
    encode(kind.opcode(), payload)
}

/// The kind and payload of a data frame [`encode`] made (final, unmasked,
/// not compressed): what is shared with other hubs and compressed for
/// clients, without keeping a second copy.
pub fn message_parts(frame: &[u8]) -> Option<(MessageKind, &[u8])> {
    if frame.first()? & 0x40 != 0 {
        return None;
    }
    frame_parts(frame)
}

/// The kind and still compressed payload of a frame
/// [`encode_compressed`] made.
#[cfg(any(test, feature = "testing"))]
pub fn compressed_parts(frame: &[u8]) -> Option<(MessageKind, &[u8])> {
    if frame.first()? & 0x40 == 0 {
        return None;
    }
    frame_parts(frame)
}

fn frame_parts(frame: &[u8]) -> Option<(MessageKind, &[u8])> {
    let kind = match frame.first()? & 0x0F {
        0x1 => MessageKind::Text,
        0x2 => MessageKind::Binary,
        _ => return None,
    };
    let start = match frame.get(1)? & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((kind, frame.get(start..)?))
}

/// A close frame with a code and a short reason (truncated to fit 125 bytes).
pub fn encode_close(code: CloseCode, reason: &str) -> SharedFrame {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), &payload)
}

pub fn encode_ping(payload: &[u8]) -> SharedFrame {
    encode(OpCode::Control(Control::Ping), payload)
}

pub fn encode_pong(payload: &[u8]) -> SharedFrame {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A frame as a client sends it: `first` is the first header byte (FIN,
/// RSV bits, opcode, taken as given so tests can send any of them), the
/// payload masked with `mask`. For tests, benchmarks and fuzzing.
#[cfg(any(test, feature = "testing"))]
pub fn encode_client(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    out.push(first);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        encode_client(first, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(MessageKind, Vec<u8>),
        Compressed(MessageKind, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>, String),
    }

    /// Feeds `bytes` in the given pieces; returns the events or the error.
    fn run(pieces: &[&[u8]]) -> Result<Vec<Owned>, ProtocolError> {
        run_with(FrameDecoder::default(), pieces)
    }

    fn run_with(mut decoder: FrameDecoder, pieces: &[&[u8]]) -> Result<Vec<Owned>, ProtocolError> {
        let mut events = Vec::new();
        for piece in pieces {
            let mut buf = piece.to_vec();
            let mut pos = 0;
            while pos < buf.len() {
                let d = decoder.decode(&mut buf[pos..], MAX)?;
                pos += d.consumed;
                if let Some(ev) = d.event {
                    events.push(match ev {
                        Event::Message(k, p) => Owned::Message(k, p.to_vec()),
                        Event::Compressed(k, p) => Owned::Compressed(k, p.to_vec()),
                        Event::Ping(p) => Owned::Ping(p.to_vec()),
                        Event::Pong => Owned::Pong,
                        Event::Close { code, reason } => Owned::Close(code, reason.to_string()),
                    });
                }
            }
        }
        Ok(events)
    }

    /// Runs the stream whole, then split at every byte boundary, then one
    /// byte at a time, and checks all agree.
    fn run_every_split(stream: &[u8]) -> Result<Vec<Owned>, ProtocolError> {
        let whole = run(&[stream]);
        for i in 0..=stream.len() {
            assert_eq!(run(&[&stream[..i], &stream[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_where_rfc_7692_allows() {
        let deflate = || FrameDecoder::new(true);
        // Not negotiated: any RSV bit fails.
        assert_eq!(run(&[&client_frame(0xC1, b"x")]).unwrap_err().code, CloseCode::Protocol);
        // Negotiated: on the first frame of a text or binary message. The
        // compressed bytes are not UTF-8-checked (they are not text yet),
        // and fragments are reassembled.
        let mut stream = client_frame(0x41, &[0xff, 0xfe]);
        stream.extend(client_frame(0x80, &[0x00]));
        stream.extend(client_frame(0xC2, &[1, 2, 3]));
        stream.extend(client_frame(0x81, "plain".as_bytes()));
        for i in 0..=stream.len() {
            let events = run_with(deflate(), &[&stream[..i], &stream[i..]]).unwrap();
            assert_eq!(
                events,
                [
                    Owned::Compressed(MessageKind::Text, vec![0xff, 0xfe, 0x00]),
                    Owned::Compressed(MessageKind::Binary, vec![1, 2, 3]),
                    Owned::Message(MessageKind::Text, b"plain".to_vec()),
                ],
                "split at {i}"
            );
        }
        // Never on a continuation or a control frame; RSV2 and RSV3 never.
        let mut continuation = client_frame(0x01, b"a");
        continuation.extend(client_frame(0xC0, b"b"));
        for bad in [continuation, client_frame(0xC9, b""), client_frame(0xA1, b"x"), client_frame(0x91, b"x")] {
            let err = run_with(deflate(), &[&bad]).unwrap_err();
            assert_eq!(err.code, CloseCode::Protocol, "{bad:02x?}");
        }
    }

    #[test]
    fn a_compressed_message_may_be_a_little_longer_than_the_limit_on_the_wire() {
        let limit = compressed_limit(1000) as usize;
        let mut decoder = FrameDecoder::new(true);
        let mut ok = client_frame(0xC2, &vec![0; limit]);
        assert!(matches!(decoder.decode(&mut ok, 1000).unwrap().event, Some(Event::Compressed(..))));
        let mut over = client_frame(0xC2, &vec![0; limit + 1]);
        assert_eq!(FrameDecoder::new(true).decode(&mut over, 1000).unwrap_err(), ProtocolError::TOO_BIG);
    }

    #[test]
    fn text_and_binary_messages() {
        let mut stream = client_frame(0x81, "héllo".as_bytes());
        stream.extend(client_frame(0x82, &[0, 1, 2, 255]));
        let events = run_every_split(&stream).unwrap();
        assert_eq!(
            events,
            [
                Owned::Message(MessageKind::Text, "héllo".as_bytes().to_vec()),
                Owned::Message(MessageKind::Binary, vec![0, 1, 2, 255]),
            ]
        );
    }

    #[test]
    fn extended_lengths() {
        let medium = vec![7u8; 300];
        let large = vec![9u8; 70_000];
        let mut stream = client_frame(0x82, &medium);
        stream.extend(client_frame(0x82, &large));
        let events = run(&[&stream]).unwrap();
        assert_eq!(events, [Owned::Message(MessageKind::Binary, medium), Owned::Message(MessageKind::Binary, large)]);
        // and split mid-way through the 16-bit length field
        let events = run(&[&stream[..3], &stream[3..]]).unwrap();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn fragments_with_interleaved_ping_are_reassembled() {
        let mut stream = client_frame(0x01, b"frag");
        stream.extend(client_frame(0x89, b"p"));
        stream.extend(client_frame(0x00, "men".as_bytes()));
        stream.extend(client_frame(0x80, "ted €".as_bytes()));
        let events = run_every_split(&stream).unwrap();
        assert_eq!(
            events,
            [Owned::Ping(b"p".to_vec()), Owned::Message(MessageKind::Text, "fragmented €".as_bytes().to_vec()),]
        );
    }

    #[test]
    fn control_frames() {
        let mut stream = client_frame(0x89, b"ping!");
        stream.extend(client_frame(0x8a, b"pong"));
        stream.extend(client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        let events = run_every_split(&stream).unwrap();
        assert_eq!(events, [Owned::Ping(b"ping!".to_vec()), Owned::Pong, Owned::Close(Some(1000), "bye".into())]);
        assert_eq!(run(&[&client_frame(0x88, &[])]).unwrap(), [Owned::Close(None, String::new())]);
    }

    fn error_of(stream: &[u8]) -> ProtocolError {
        let err = run(&[stream]).unwrap_err();
        for i in 0..=stream.len() {
            assert_eq!(run(&[&stream[..i], &stream[i..]]), Err(err), "split at {i}");
        }
        err
    }

    #[test]
    fn protocol_violations_close_1002() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked.to_vec()),
            ("rsv1", client_frame(0xc1, b"hi")),
            ("rsv3", client_frame(0x91, b"hi")),
            ("reserved data opcode", client_frame(0x83, b"")),
            ("reserved control opcode", client_frame(0x8b, b"")),
            ("fragmented ping", client_frame(0x09, b"")),
            ("ping over 125", client_frame(0x89, &[0; 126])),
            ("continuation first", client_frame(0x80, b"x")),
            ("new message in fragments", [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat()),
            ("one-byte close", client_frame(0x88, &[3])),
            ("close code 1005", client_frame(0x88, &[0x03, 0xed])),
            ("close code 999", client_frame(0x88, &[0x03, 0xe7])),
            ("close code 5000", client_frame(0x88, &[0x13, 0x88])),
        ];
        for (name, stream) in cases {
            assert_eq!(error_of(&stream).code, CloseCode::Protocol, "{name}");
        }
    }

    #[test]
    fn invalid_utf8_closes_1007() {
        assert_eq!(error_of(&client_frame(0x81, b"\xff")).code, CloseCode::Invalid);
        assert_eq!(error_of(&client_frame(0x88, b"\x03\xe8\xff")).code, CloseCode::Invalid);
        // a message that ends inside a code point, over two fragments
        let stream = [client_frame(0x01, b"ok"), client_frame(0x80, b"\xe2\x82")].concat();
        assert_eq!(error_of(&stream).code, CloseCode::Invalid);
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let stream = client_frame(0x81, b"valid then \xf4\x90\x80\x80 then more");
        let bad_at = 2 + 4 + b"valid then \xf4\x90".len();
        let mut decoder = FrameDecoder::default();
        let mut head = stream[..bad_at - 1].to_vec();
        assert!(decoder.decode(&mut head, MAX).is_ok());
        let mut next = stream[bad_at - 1..bad_at].to_vec();
        assert_eq!(decoder.decode(&mut next, MAX).unwrap_err().code, CloseCode::Invalid);
    }

    #[test]
    fn oversize_closes_1009_from_the_declared_length() {
        let mut decoder = FrameDecoder::default();
        // header only: declares 2000 bytes against a 1000-byte limit
        let mut head = client_frame(0x82, &[0; 2000])[..8].to_vec();
        assert_eq!(decoder.decode(&mut head, 1000).unwrap_err().code, CloseCode::Size);
        // fragments that add up past the limit
        let mut first = client_frame(0x02, &[0; 600]);
        let mut second = client_frame(0x80, &[0; 600]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.decode(&mut first, 1000).unwrap().consumed, first.len());
        assert_eq!(decoder.decode(&mut second[..8], 1000).unwrap_err().code, CloseCode::Size);
    }

    #[test]
    fn encoded_frames_parse_back() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![0xabu8; len];
            let frame = encode_message(MessageKind::Binary, &payload);
            let mut cursor = Cursor::new(&frame[..]);
            let (header, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert_eq!(parsed_len, len as u64);
            assert_eq!(&frame[cursor.position() as usize..], &payload[..]);
        }
        let close = encode_close(CloseCode::Again, &"é".repeat(100));
        assert!(close.len() <= 2 + 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }

    /// A small deterministic generator, so the test needs no dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_streams_in_random_pieces_never_panic_and_agree_with_whole_reads() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            // Mostly well-formed frames with random first bytes and payloads,
            // sometimes plain noise.
            let mut stream = Vec::new();
            for _ in 0..1 + rng.below(4) {
                if rng.below(8) == 0 {
                    stream.extend((0..rng.below(20)).map(|_| rng.next() as u8));
                } else {
                    let first = [0x81u8, 0x82, 0x01, 0x00, 0x80, 0x89, 0x8a, 0x88, rng.next() as u8][rng.below(9)];
                    let payload: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    stream.extend(client_frame(first, &payload));
                }
            }
            let whole = run(&[&stream]);
            let mut pieces = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(1 + rng.below(rest.len()));
                pieces.push(a);
                rest = b;
            }
            assert_eq!(run(&pieces), whole, "{stream:?} in {} pieces", pieces.len());
            if let Err(e) = whole {
                assert!(matches!(e.code, CloseCode::Protocol | CloseCode::Invalid | CloseCode::Size));
            }
        }
    }

    #[test]
    fn unmask_at_any_offset() {
        let mask = [1, 2, 3, 4];
        let original: Vec<u8> = (0..23).collect();
        let masked: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        for split in 0..original.len() {
            let mut data = masked.clone();
            let (a, b) = data.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split as u64);
            assert_eq!(data, original, "split {split}");
        }
    }

    #[test]
    fn message_parts_reads_back_what_encode_wrote() {
        for len in [0, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            for kind in [MessageKind::Text, MessageKind::Binary] {
                let frame = encode_message(kind, &payload);
                assert_eq!(message_parts(&frame), Some((kind, &payload[..])), "{len}");
            }
        }
        assert_eq!(message_parts(&encode_ping(b"x")), None, "control frames are not messages");
        assert_eq!(message_parts(&[]), None);
    }
}
