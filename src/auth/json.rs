//! Just enough JSON (RFC 8259) to read a token's header and claims.
//!
//! A token is at most a few kilobytes and read once per connection, so a
//! small tree of values is fine; what matters is that any input is answered
//! with a value or an error, never a panic or unbounded work: nesting is
//! capped, and duplicate member names are an error (a claim must not mean
//! one thing to the issuer and another to us).

/// A parsed JSON value. Objects keep their members in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `name` of an object (`None` for other values).
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Deepest nesting accepted; claims need two levels.
const MAX_DEPTH: usize = 16;

/// Parses one JSON text (surrounding whitespace allowed).
pub fn parse(input: &[u8]) -> Result<Value, &'static str> {
    let text = std::str::from_utf8(input).map_err(|_| "not UTF-8")?;
    let mut parser = Parser { bytes: text.as_bytes(), at: 0 };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.at != parser.bytes.len() {
        return Err("trailing characters");
    }
    Ok(value)
}

/// Refuses an object with a member name twice, in O(n log n) (a pairwise
/// check is quadratic, and a header is parsed before its signature).
fn unique(members: Vec<(String, Value)>) -> Result<Vec<(String, Value)>, &'static str> {
    let mut names: Vec<&str> = members.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err("duplicate member name");
    }
    Ok(members)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &[u8]) -> Result<(), &'static str> {
        if self.bytes[self.at..].starts_with(literal) {
            self.at += literal.len();
            Ok(())
        } else {
            Err("unexpected character")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, &'static str> {
        if depth >= MAX_DEPTH {
            return Err("nested too deeply");
        }
        self.skip_whitespace();
        match self.peek().ok_or("unexpected end")? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Value::String),
            b't' => self.expect(b"true").map(|()| Value::Bool(true)),
            b'f' => self.expect(b"false").map(|()| Value::Bool(false)),
            b'n' => self.expect(b"null").map(|()| Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err("unexpected character"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, &'static str> {
        self.at += 1; // '{'
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err("expected a member name");
            }
            let name = self.string()?;
            self.skip_whitespace();
            self.expect(b":")?;
            let value = self.value(depth + 1)?;
            members.push((name, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return unique(members).map(Value::Object);
                }
                _ => return Err("expected ',' or '}'"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, &'static str> {
        self.at += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err("expected ',' or ']'"),
            }
        }
    }

    /// A string, `self.at` on its opening quote. The input is valid UTF-8,
    /// so runs of unescaped bytes are copied as they are.
    fn string(&mut self) -> Result<String, &'static str> {
        self.at += 1; // '"'
        let mut out = String::new();
        loop {
            let run_start = self.at;
            while let Some(b) = self.peek()
                && b != b'"'
                && b != b'\\'
                && b >= 0x20
            {
                self.at += 1;
            }
            // Runs end at ASCII bytes, so they are whole UTF-8 sequences.
            out.push_str(std::str::from_utf8(&self.bytes[run_start..self.at]).map_err(|_| "not UTF-8")?);
            match self.peek().ok_or("unterminated string")? {
                b'"' => {
                    self.at += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek().ok_or("unterminated string")?;
                    self.at += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err("bad escape"),
                    }
                }
                _ => return Err("control character in string"),
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair of two escapes.
    fn unicode_escape(&mut self) -> Result<char, &'static str> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                self.expect(b"\\u").map_err(|_| "lone surrogate")?;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err("lone surrogate");
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err("lone surrogate"),
            code => code,
        };
        char::from_u32(code).ok_or("bad escape")
    }

    fn hex4(&mut self) -> Result<u32, &'static str> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or("bad escape")?;
        let mut code = 0;
        for &d in digits {
            code = code * 16 + (d as char).to_digit(16).ok_or("bad escape")?;
        }
        self.at += 4;
        Ok(code)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, &'static str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err("bad number"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("bad number");
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("bad number");
            }
            self.digits();
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| "bad number")?;
        text.parse::<f64>().map(Value::Number).map_err(|_| "bad number")
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_claims_shaped_objects() {
        let v = parse(
            br#" {"sub":"dev-1","exp":1700000000,"nbf":1.5e9,"subscribe":["a","b*"],"x":{"y":[null,true,false]}} "#,
        )
        .unwrap();
        assert_eq!(v.get("sub"), Some(&Value::String("dev-1".into())));
        assert_eq!(v.get("exp"), Some(&Value::Number(1_700_000_000.0)));
        assert_eq!(v.get("nbf"), Some(&Value::Number(1.5e9)));
        assert_eq!(
            v.get("subscribe"),
            Some(&Value::Array(vec![Value::String("a".into()), Value::String("b*".into())]))
        );
        assert_eq!(v.get("missing"), None);
        assert_eq!(parse(b"-0.25E+2").unwrap(), Value::Number(-25.0));
        assert_eq!(parse(b"[]").unwrap(), Value::Array(vec![]));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(parse(br#""a\"\\\/\b\f\n\r\t""#).unwrap(), Value::String("a\"\\/\u{8}\u{c}\n\r\t".into()));
        assert_eq!(parse(br#""\u00e9\ud83d\ude00""#).unwrap(), Value::String("é😀".into()));
        assert_eq!(parse("\"héllo\"".as_bytes()).unwrap(), Value::String("héllo".into()));
        for bad in [&br#""\ud83d""#[..], br#""\ude00""#, br#""\x""#, br#""\u12""#, b"\"a\nb\"", b"\"open"] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"[1,]",
            b"{\"a\" 1}",
            b"{a:1}",
            b"01",
            b"1.",
            b".5",
            b"-",
            b"1e",
            b"tru",
            b"nul",
            b"{} x",
            b"{\"a\":1,\"a\":2}",
            b"\xff",
            b"NaN",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err("nested too deeply"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        // Far deeper input fails fast, without recursing through it all.
        let very = "[".repeat(1_000_000);
        assert!(parse(very.as_bytes()).is_err());
    }
}
