//! `permessage-deflate` negotiation (RFC 7692 §5 and §7.1), without I/O:
//! reads the client's `Sec-WebSocket-Extensions` offers and picks the first
//! one the hub can honour with no compression state per connection.
//!
//! The hub always answers with `server_no_context_takeover` (each message
//! it sends is compressed on its own, so one compressed frame serves every
//! receiver) and `client_no_context_takeover` (each message a client sends
//! inflates on its own, so one inflater serves every client). Both are the
//! server's to add (§7.1.1.1, §7.1.1.2). An offer with a parameter the hub
//! does not know, a repeated parameter, a bad value or bad syntax is
//! declined (§7.1: "decline"), and the next offer is tried; the upgrade
//! itself never fails over an offer.

/// What the hub agreed to with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The client's `server_max_window_bits` (15 when it set none): the
    /// largest LZ77 window the client's inflater keeps. The hub compresses
    /// with a 32 KiB window, and a message compressed on its own never
    /// refers further back than its own length, so a message of at most
    /// `1 << window_bits` bytes is valid for this client; longer ones are
    /// sent to it uncompressed (RSV1 is per message).
    pub window_bits: u8,
    /// The offer carried `server_max_window_bits`: the answer must repeat
    /// it (§7.1.2.1).
    pub window_bits_offered: bool,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut answer = String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        if self.window_bits_offered {
            answer.push_str("; server_max_window_bits=");
            answer.push_str(&self.window_bits.to_string());
        }
        answer
    }
}

/// The first acceptable `permessage-deflate` offer among the values of every
/// `Sec-WebSocket-Extensions` header, in order; `None` when there is none
/// (the upgrade goes on without compression).
pub fn negotiate<'v>(values: impl Iterator<Item = &'v [u8]>) -> Option<Negotiated> {
    values.flat_map(Elements::new).find_map(|element| element.and_then(accept))
}

/// One extension of the list (`name; param; param=value`), or `None` for
/// an element that is not well formed.
struct Element<'v> {
    name: &'v [u8],
    params: Vec<(&'v [u8], Option<Value<'v>>)>,
}

/// A parameter's value: a token, or the inside of a quoted string (with
/// its escapes still in, see [`Value::unescaped`]).
#[derive(Clone, Copy)]
struct Value<'v> {
    raw: &'v [u8],
    quoted: bool,
}

impl Value<'_> {
    /// The value as text, quoted-pair escapes removed.
    fn unescaped(&self) -> Vec<u8> {
        if !self.quoted {
            return self.raw.to_vec();
        }
        let mut out = Vec::with_capacity(self.raw.len());
        let mut escaped = false;
        for &b in self.raw {
            if b == b'\\' && !escaped {
                escaped = true;
            } else {
                out.push(b);
                escaped = false;
            }
        }
        out
    }
}

/// Accepts `element` if it is a `permessage-deflate` offer the hub can honour.
fn accept(element: Element<'_>) -> Option<Negotiated> {
    if !element.name.eq_ignore_ascii_case(b"permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut window = None;
    for (name, value) in &element.params {
        let known = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ];
        let index = known.iter().position(|k| name.eq_ignore_ascii_case(k.as_bytes()))?;
        if std::mem::replace(&mut seen[index], true) {
            return None; // §7.1: a repeated parameter makes the offer invalid.
        }
        match (index, value) {
            (0 | 1, None) => {}
            (2, Some(value)) => window = Some(window_bits(&value.unescaped())?),
            (3, None) => {}
            (3, Some(value)) => {
                window_bits(&value.unescaped())?;
            }
            _ => return None,
        }
    }
    Some(Negotiated { window_bits: window.unwrap_or(15), window_bits_offered: window.is_some() })
}

/// §7.1.2: a decimal from 8 to 15 without leading zeros.
fn window_bits(value: &[u8]) -> Option<u8> {
    match value {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The elements of one header value (RFC 6455 §9.1: `1#extension`), each
/// parsed or `None` when malformed; a malformed element ends at the next
/// comma outside a quoted string, so the elements after it still count.
struct Elements<'v> {
    input: &'v [u8],
    pos: usize,
}

impl<'v> Elements<'v> {
    fn new(input: &'v [u8]) -> Self {
        Elements { input, pos: 0 }
    }

    fn skip_space(&mut self) {
        while self.input.get(self.pos).is_some_and(|b| *b == b' ' || *b == b'\t') {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'v [u8]> {
        let start = self.pos;
        while self.input.get(self.pos).is_some_and(|b| is_tchar(*b)) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.input[start..self.pos])
    }

    /// The inside of a quoted string starting at `pos` (on the quote).
    fn quoted(&mut self) -> Option<&'v [u8]> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match *self.input.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(&self.input[start..self.pos - 1]);
                }
                b'\\' => self.pos += 2,
                b'\t' | b' '..=b'~' | 0x80..=0xff => self.pos += 1,
                _ => return None,
            }
        }
    }

    /// Parses one element from `pos`; leaves `pos` on the comma after it
    /// (or at the end) when it is well formed.
    fn element(&mut self) -> Option<Element<'v>> {
        self.skip_space();
        let name = self.token()?;
        let mut params = Vec::new();
        loop {
            self.skip_space();
            match self.input.get(self.pos) {
                None | Some(b',') => return Some(Element { name, params }),
                Some(b';') => self.pos += 1,
                Some(_) => return None,
            }
            self.skip_space();
            let param = self.token()?;
            self.skip_space();
            let value = if self.input.get(self.pos) == Some(&b'=') {
                self.pos += 1;
                self.skip_space();
                if self.input.get(self.pos) == Some(&b'"') {
                    Some(Value { raw: self.quoted()?, quoted: true })
                } else {
                    Some(Value { raw: self.token()?, quoted: false })
                }
            } else {
                None
            };
            params.push((param, value));
        }
    }

    /// Moves `pos` past the next comma that is not inside a quoted string.
    fn skip_to_next(&mut self) {
        let mut quoted = false;
        while let Some(&b) = self.input.get(self.pos) {
            self.pos += 1;
            match b {
                b'\\' if quoted => self.pos += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return,
                _ => {}
            }
        }
    }
}

impl<'v> Iterator for Elements<'v> {
    type Item = Option<Element<'v>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.skip_space();
            match self.input.get(self.pos) {
                None => return None,
                // Empty list elements are allowed (RFC 9110 §5.6.1).
                Some(b',') => self.pos += 1,
                Some(_) => break,
            }
        }
        let start = self.pos;
        let element = self.element();
        if element.is_some() {
            // Past the comma after it (or at the end).
            self.pos = (self.pos + 1).min(self.input.len());
        } else {
            self.pos = start;
            self.skip_to_next();
        }
        Some(element)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(values: &[&str]) -> Option<Negotiated> {
        negotiate(values.iter().map(|v| v.as_bytes()))
    }

    const PLAIN: Negotiated = Negotiated { window_bits: 15, window_bits_offered: false };

    #[test]
    fn what_browsers_send_is_accepted() {
        assert_eq!(pick(&["permessage-deflate; client_max_window_bits"]), Some(PLAIN));
        assert_eq!(pick(&["permessage-deflate"]), Some(PLAIN));
        assert_eq!(PLAIN.response(), "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    }

    #[test]
    fn a_server_window_is_honoured_and_repeated_in_the_answer() {
        let n = pick(&["permessage-deflate; server_max_window_bits=10; client_no_context_takeover"]).unwrap();
        assert_eq!(n, Negotiated { window_bits: 10, window_bits_offered: true });
        assert!(n.response().ends_with("; server_max_window_bits=10"));
        assert_eq!(pick(&["permessage-deflate; server_max_window_bits=\"8\""]).unwrap().window_bits, 8);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; ; x",
            "permessage-deflate server_no_context_takeover",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(pick(&[bad]), None, "{bad}");
            let with_next = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(pick(&[&with_next]).map(|n| n.window_bits), Some(12), "{with_next}");
        }
        // An unclosed quote runs to the end of the header value.
        let unclosed = "permessage-deflate; server_max_window_bits=\"10, permessage-deflate";
        assert_eq!(pick(&[unclosed]), None);
        assert_eq!(pick(&[unclosed, "permessage-deflate"]), Some(PLAIN));
    }

    #[test]
    fn offers_come_in_order_across_headers_and_quotes_hide_commas() {
        let values = ["foo; bar=\"a, b\\\"\", permessage-deflate; server_max_window_bits=9", "permessage-deflate"];
        assert_eq!(pick(&values).map(|n| n.window_bits), Some(9));
        assert_eq!(pick(&["", " , ", "PerMessage-Deflate ;Client_Max_Window_Bits = 12"]), Some(PLAIN));
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn any_bytes_never_panic() {
        let mut x: u32 = 1;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"permessage-deflate;=,\" \\x9015_"[(x >> 16) as usize % 30]
                })
                .collect();
            let _ = negotiate(std::iter::once(&bytes[..]));
        }
    }
}
