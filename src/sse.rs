//! Server-Sent Events (`text/event-stream`, HTML Living Standard
//! "Server-sent events") encodings, without I/O: each message is encoded
//! once per topic and shared, like a WebSocket frame, by every SSE client
//! that gets it.

use std::fmt::Write as _;

use crate::frame::{self, MessageKind, SharedFrame};
use crate::history::MessageId;
use crate::topic::Topic;

/// The event type of a gap notice: a name no topic can have.
pub const GAP_EVENT: &str = "wshub/gap";

/// One message as an event: its id, its topic as the event type, and one
/// `data:` line per line of the payload (CR, LF and CRLF all end a line,
/// so the receiver joins them back with LF).
pub fn event(id: MessageId, topic: &Topic, payload: &[u8]) -> SharedFrame {
    let mut out = Vec::with_capacity(payload.len() + topic.as_str().len() + 48);
    let mut head = String::with_capacity(48);
    let _ = write!(head, "id: {id}\nevent: {}\n", topic.as_str());
    out.extend_from_slice(head.as_bytes());
    let mut rest = payload;
    loop {
        let end = rest.iter().position(|&b| b == b'\r' || b == b'\n');
        out.extend_from_slice(b"data: ");
        match end {
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\n\n");
                return SharedFrame::from(out);
            }
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.push(b'\n');
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[end + skip..];
            }
        }
    }
}

/// The event for a data frame the hub made (`frame::encode_message`), or
/// `None` for a binary message, which an event stream cannot carry.
pub fn event_of(id: MessageId, topic: &Topic, frame: &[u8]) -> Option<SharedFrame> {
    match frame::message_parts(frame)? {
        (MessageKind::Text, payload) => Some(event(id, topic, payload)),
        (MessageKind::Binary, _) => None,
    }
}

/// `id:` with no data: sets the client's resume point without an event.
pub fn resume_point(id: MessageId) -> SharedFrame {
    SharedFrame::from(format!("id: {id}\n\n").into_bytes())
}

/// A `wshub/gap` event: what follows may not be all that was missed; its
/// data is the hub's current id.
pub fn gap(current: MessageId) -> SharedFrame {
    SharedFrame::from(format!("event: {GAP_EVENT}\ndata: {current}\n\n").into_bytes())
}

/// A comment line: keeps an idle stream (and the proxies on its way) alive.
pub fn keepalive() -> SharedFrame {
    SharedFrame::from(&b":\n"[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: SharedFrame) -> String {
        String::from_utf8(frame.to_vec()).unwrap()
    }

    #[test]
    fn payload_lines_end_at_cr_lf_and_crlf() {
        let id = MessageId { epoch: 0xab, seq: 7 };
        let t = Topic::new("news").unwrap();
        assert_eq!(text(event(id, &t, b"hello")), "id: ab-7\nevent: news\ndata: hello\n\n");
        assert_eq!(
            text(event(id, &t, b"a\r\nb\rc\nd")),
            "id: ab-7\nevent: news\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(text(event(id, &t, b"a\n")), "id: ab-7\nevent: news\ndata: a\ndata: \n\n");
        assert_eq!(text(event(id, &t, b"")), "id: ab-7\nevent: news\ndata: \n\n");
        assert_eq!(text(resume_point(id)), "id: ab-7\n\n");
        assert_eq!(text(gap(id)), "event: wshub/gap\ndata: ab-7\n\n");
    }
}
