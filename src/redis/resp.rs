//! RESP2, the Redis wire protocol, without I/O: commands out, replies in.
//!
//! Replies are read check-then-parse (as mini-redis does): [`parse`] first
//! walks a value to learn whether it is complete, keeping "incomplete"
//! (wait for more bytes) apart from "invalid" (drop the connection), then
//! returns it borrowing from the input. Nothing is allocated per reply, so a
//! read carrying a thousand pub/sub messages costs no allocation of its own.
//!
//! Hand-rolled rather than `redis-protocol`: the five RESP2 types take a
//! page, and the crate's owned frames would allocate per message and bring
//! `bytes` and other dependencies into a binary meant for small boxes.

use std::io::Write as _;

/// A reply, borrowing from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// A bulk string; `None` is the null bulk string.
    Bulk(Option<&'a [u8]>),
    /// An array; `None` is the null array.
    Array(Option<Items<'a>>),
}

impl<'a> Value<'a> {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Simple(bytes) | Value::Bulk(Some(bytes)) => Some(bytes),
            _ => None,
        }
    }
}

/// The elements of an array, read one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items<'a> {
    rest: &'a [u8],
    left: usize,
}

impl Items<'_> {
    pub fn len(&self) -> usize {
        self.left
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The array was checked complete and valid before it was handed out.
        let (value, used) = decode(self.rest).ok()?;
        self.rest = &self.rest[used..];
        Some(value)
    }
}

/// Why bytes from Redis are not RESP2: the connection cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid reply from Redis: {}", self.0)
    }
}

/// Longest status, error or length line accepted.
const MAX_LINE: usize = 4096;
/// Deepest nesting of arrays accepted (pub/sub replies nest one level).
const MAX_DEPTH: usize = 8;
/// Most elements in one array.
const MAX_ITEMS: i64 = 1 << 20;

/// What [`parse`] found at the start of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete value and the bytes it took.
    Value(Value<'a>, usize),
    /// More bytes are needed first.
    Incomplete,
    /// An array (a pub/sub push) whose last element is a bulk string over
    /// the size limit: the first `head` bytes are its start, up to the
    /// string's content; `skip` more bytes (the content and its CRLF) end
    /// it. The caller drops them as they stream in, never holding them.
    Oversize { head: usize, skip: usize },
}

/// Reads the complete value at the start of `input`. `max_bulk` bounds a
/// bulk string, so a peer cannot make the caller buffer without end.
pub fn parse(input: &[u8], max_bulk: usize) -> Result<Parsed<'_>, Invalid> {
    match check(input, 0, 0, max_bulk, false) {
        Ok(None) => Ok(Parsed::Incomplete),
        Ok(Some(end)) => decode(&input[..end]).map(|(value, used)| Parsed::Value(value, used)),
        Err(Stop::Oversize { head, len }) => Ok(Parsed::Oversize { head, skip: len + 2 }),
        Err(Stop::Invalid(invalid)) => Err(invalid),
    }
}

/// Why [`check`] stopped before the end of a value.
enum Stop {
    Invalid(Invalid),
    /// The bulk string ending a top-level array is over the limit; its
    /// content starts at `head` and is `len` bytes.
    Oversize {
        head: usize,
        len: usize,
    },
}

impl From<Invalid> for Stop {
    fn from(invalid: Invalid) -> Stop {
        Stop::Invalid(invalid)
    }
}

/// Where the value starting at `pos` ends, if `input` holds all of it.
/// `last_of_top`: the value is the last element of a top-level array.
fn check(input: &[u8], pos: usize, depth: usize, max_bulk: usize, last_of_top: bool) -> Result<Option<usize>, Stop> {
    let Some((kind, line, next)) = line(input, pos)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => Ok(integer(line).map(|_| Some(next))?),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some(next));
            }
            let len = usize::try_from(len).map_err(|_| Invalid("negative bulk length"))?;
            if len > max_bulk && last_of_top {
                return Err(Stop::Oversize { head: next, len });
            }
            if len > max_bulk {
                return Err(Invalid("bulk string over the size limit").into());
            }
            let end = next + len + 2;
            if input.len() < end {
                return Ok(None);
            }
            if &input[end - 2..end] != b"\r\n" {
                return Err(Invalid("bulk string not followed by CRLF").into());
            }
            Ok(Some(end))
        }
        b'*' => {
            let count = integer(line)?;
            if count == -1 {
                return Ok(Some(next));
            }
            if !(0..=MAX_ITEMS).contains(&count) {
                return Err(Invalid("bad array length").into());
            }
            if depth == MAX_DEPTH {
                return Err(Invalid("arrays nested too deep").into());
            }
            let mut pos = next;
            for i in 0..count {
                match check(input, pos, depth + 1, max_bulk, depth == 0 && i + 1 == count)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err(Invalid("unknown type byte").into()),
    }
}

/// Decodes the value at the start of `input`, which [`check`] found complete.
fn decode(input: &[u8]) -> Result<(Value<'_>, usize), Invalid> {
    let Some((kind, line, next)) = line(input, 0)? else {
        return Err(Invalid("incomplete"));
    };
    let value = match kind {
        b'+' => Value::Simple(line),
        b'-' => Value::Error(line),
        b':' => Value::Integer(integer(line)?),
        b'$' => match integer(line)? {
            -1 => Value::Bulk(None),
            len => {
                let end = next + len as usize;
                return Ok((Value::Bulk(Some(&input[next..end])), end + 2));
            }
        },
        _ => match integer(line)? {
            -1 => Value::Array(None),
            count => {
                // The array's extent was checked; its elements are read lazily.
                let end = match check(input, 0, 0, usize::MAX, false) {
                    Ok(Some(end)) => end,
                    _ => return Err(Invalid("incomplete")),
                };
                let items = Items { rest: &input[next..end], left: count as usize };
                return Ok((Value::Array(Some(items)), end));
            }
        },
    };
    Ok((value, next))
}

/// One line of RESP: its type byte, the rest of it, and where the next
/// line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The line at `pos`; `None` while it is incomplete.
fn line(input: &[u8], pos: usize) -> Result<Option<Line<'_>>, Invalid> {
    let Some(rest) = input.get(pos..).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    // The type byte is never the line's end, even when it is a CR.
    match window.iter().skip(1).position(|&b| b == b'\r').map(|i| i + 1) {
        Some(cr) if cr + 1 == window.len() => Ok(None),
        Some(cr) if window[cr + 1] == b'\n' => Ok(Some((rest[0], &rest[1..cr], pos + cr + 2))),
        Some(_) => Err(Invalid("CR without LF")),
        None if window.len() > MAX_LINE => Err(Invalid("line too long")),
        None => Ok(None),
    }
}

fn integer(line: &[u8]) -> Result<i64, Invalid> {
    let (negative, digits) = match line {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Invalid("bad integer"));
    }
    let value = digits.iter().try_fold(0i64, |n, &d| n.checked_mul(10)?.checked_add(i64::from(d - b'0')));
    let value = value.ok_or(Invalid("integer overflow"))?;
    Ok(if negative { -value } else { value })
}

/// Appends a command of `args.len()` arguments, each a bulk string made of
/// its parts (so an argument can be written from pieces without joining
/// them first).
pub fn command(out: &mut Vec<u8>, args: &[&[&[u8]]]) {
    header(out, b'*', args.len());
    for parts in args {
        header(out, b'$', parts.iter().map(|p| p.len()).sum());
        for part in *parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes [`command`] appends for these arguments, for bounding a buffer
/// before writing to it.
pub fn command_len(arg_lens: impl IntoIterator<Item = usize>) -> usize {
    let mut count = 0;
    let mut total = 0;
    for len in arg_lens {
        count += 1;
        total += 1 + digits(len) + 2 + len + 2;
    }
    total + 1 + digits(count) + 2
}

fn digits(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Value<'_> {
        let Ok(Parsed::Value(value, used)) = parse(input, 1 << 20) else { panic!("not a value") };
        assert_eq!(used, input.len());
        value
    }

    #[test]
    fn reads_every_type() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple(b"OK"));
        assert_eq!(one(b"-ERR no\r\n"), Value::Error(b"ERR no"));
        assert_eq!(one(b":-42\r\n"), Value::Integer(-42));
        assert_eq!(one(b"$3\r\na\r\n\r\n"), Value::Bulk(Some(b"a\r\n")));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(Some(b"")));
        assert_eq!(one(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(one(b"*-1\r\n"), Value::Array(None));
        let Value::Array(Some(items)) = one(b"*3\r\n$7\r\nmessage\r\n$3\r\nw:a\r\n$2\r\nhi\r\n") else { panic!() };
        assert_eq!(items.len(), 3);
        let items: Vec<_> = items.collect();
        assert_eq!(items, [Value::Bulk(Some(b"message")), Value::Bulk(Some(b"w:a")), Value::Bulk(Some(b"hi"))]);
        let Value::Array(Some(mut nested)) = one(b"*2\r\n*1\r\n:1\r\n+x\r\n") else { panic!() };
        let Some(Value::Array(Some(inner))) = nested.next() else { panic!() };
        assert_eq!(inner.collect::<Vec<_>>(), [Value::Integer(1)]);
        assert_eq!(nested.next(), Some(Value::Simple(b"x")));
        assert_eq!(nested.next(), None);
    }

    #[test]
    fn every_prefix_of_a_value_is_incomplete_not_invalid() {
        let whole: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nw:abc\r\n:12\r\n+OK\r\n";
        let first = whole.len() - 5;
        for cut in 0..first {
            assert_eq!(parse(&whole[..cut], 100), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        let Ok(Parsed::Value(_, used)) = parse(whole, 100) else { panic!() };
        assert_eq!(used, first, "stops after the first value");
    }

    #[test]
    fn refuses_what_is_not_resp() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"+a\rb\r\n",
            b":99999999999999999999\r\n",
            b"$100\r\n",
            b"\r\n+OK\r\n",
            b"\r\r\n",
        ] {
            assert!(parse(bad, 10).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b'+'; MAX_LINE + 10];
        assert!(parse(&long, 10).is_err(), "an endless line is refused, not buffered");
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep, 10).is_err());
    }

    #[test]
    fn a_push_ending_in_an_oversize_string_is_found_from_its_head() {
        let head = b"*3\r\n$7\r\nmessage\r\n$3\r\nw:a\r\n$1000000\r\n";
        assert_eq!(parse(head, 100), Ok(Parsed::Oversize { head: head.len(), skip: 1_000_002 }));
        assert_eq!(parse(&head[..head.len() - 1], 100), Ok(Parsed::Incomplete), "its length line first");
        // Elsewhere an oversize string is still invalid: nothing to skip to.
        assert!(parse(b"*2\r\n$1000\r\n", 100).is_err(), "not the last element");
        assert!(parse(b"$1000\r\n", 100).is_err(), "not in an array");
        assert!(parse(b"*1\r\n*1\r\n$1000\r\n", 100).is_err(), "nested");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[&[b"PUBLISH"], &[b"wshub:", b"news"], &[b"", b"hello"]]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$10\r\nwshub:news\r\n$5\r\nhello\r\n");
        assert_eq!(command_len([7, 10, 5]), out.len());
        let mut big = Vec::new();
        let payload = vec![b'x'; 12345];
        command(&mut big, &[&[b"PING"], &[&payload]]);
        assert_eq!(command_len([4, 12345]), big.len());
    }
}
