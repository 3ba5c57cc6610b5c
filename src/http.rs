//! The HTTP/1.1 side of the port, without I/O: parsing a request head into a
//! route (upgrade, health, publish), the checks of RFC 6455 §4.2.1 with the
//! statuses of the contract, and the bytes of every response we send.
//!
//! The head is parsed with httparse from a buffer that the caller grows as
//! bytes arrive; [`head_complete`] tells cheaply when parsing is worth trying,
//! so a request trickling in one byte at a time is not parsed once per byte.

use std::fmt::Write as _;

use crate::deflate::{self, Negotiated};
use crate::history::MessageId;
use crate::topic::{Topic, TopicError, topics_from_query};

/// Largest request head we accept (contract: 8 KiB).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header lines we accept (contract: 64).
pub const MAX_HEADERS: usize = 64;

/// A request head that routed somewhere.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade on `/ws`.
    Upgrade(Upgrade),
    /// `GET /sse`: a Server-Sent Events stream, admitted as an upgrade is
    /// (its `accept_key` is empty and it negotiates no compression).
    Sse(Upgrade),
    /// `GET /healthz`, or `HEAD /healthz` (`head_only`: answer without a body).
    Health { head_only: bool },
    /// `POST /publish/<topic>`, body not read yet.
    Publish(PublishHead),
    /// `GET /metrics`, with what the admission step judges it by.
    Metrics(Credentials),
    /// `GET /`: the demo page (served only with `--demo`).
    Demo,
}

/// What an upgrade request said: the handshake, and everything the admission
/// step may judge it by (origin, host, credentials).
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub accept_key: String,
    pub topics: Vec<Topic>,
    pub credentials: Credentials,
    /// The first `permessage-deflate` offer the hub can honour, if any
    /// (taken unless `--no-compression`).
    pub deflate: Option<Negotiated>,
    /// What the client asks to be replayed first.
    pub resume: Resume,
}

/// A replay a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    #[default]
    None,
    /// Everything after this id (`Last-Event-ID`, or `?since=` on `/sse`);
    /// `None`: a `Last-Event-ID` that is not an id of this hub's form (a
    /// gap, not an error: the browser sends back whatever it was given).
    Since(Option<MessageId>),
    /// `?last=N`: the last N retained messages of each topic.
    Last(usize),
}

/// Who a request says it comes from and what it presents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The `Host` header (required by HTTP/1.1).
    pub host: String,
    /// The `Origin` header, sent by browsers.
    pub origin: Option<String>,
    /// Sent by a browser: it carries `Origin` or a `Sec-Fetch-*` header
    /// (Fetch Metadata), which scripts in a page cannot suppress.
    pub browser: bool,
    /// Carries a proxy's forwarding header (`Forwarded`, `X-Forwarded-For`,
    /// `X-Real-IP`, `Via`): the peer address is the proxy's, not the
    /// client's.
    pub proxied: bool,
    /// The token of an `Authorization: Bearer` header (scheme case-insensitive).
    pub bearer: Option<String>,
    /// A `token=` query parameter (browsers cannot set headers on a WebSocket).
    pub query_token: Option<String>,
}

/// What the head of a publish request said.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishHead {
    pub topic: Result<Topic, TopicError>,
    pub content_length: usize,
    pub credentials: Credentials,
    /// `Content-Type: application/octet-stream`: publish as binary.
    pub octet_stream: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// A request we answer with an error status, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// For the log line and the response body.
    pub reason: &'static str,
    /// For a 405: the methods the path does allow (the `Allow` header).
    pub allow: &'static str,
}

impl Rejection {
    pub const fn new(status: u16, reason: &'static str) -> Rejection {
        Rejection { status, reason, allow: "" }
    }
}

const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection::new(status, reason)
}

const fn not_allowed(reason: &'static str, allow: &'static str) -> Rejection {
    Rejection { status: 405, reason, allow }
}

/// RFC 9110 §5.6.2 `tchar`: what a method name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// CR and LF bytes tolerated before the request line.
const MAX_LEADING_NEWLINES: usize = 4;
/// Longest method name worth waiting for (ours are GET, HEAD and POST).
const MAX_METHOD: usize = 16;

/// False as soon as `buf` cannot be the start of an HTTP request (a TLS
/// ClientHello on the plain port, a stray protocol): such a peer gets 400 at
/// once instead of waiting for the handshake timeout. Looks at no more than
/// the first few bytes, so calling it on every read is cheap.
pub fn plausible_start(buf: &[u8]) -> bool {
    // RFC 9112 §2.2: an empty line or two before the request line is
    // tolerated; a stream of them is not a request.
    let Some(start) = buf.iter().take(MAX_LEADING_NEWLINES + 1).position(|&b| b != b'\r' && b != b'\n') else {
        return buf.len() <= MAX_LEADING_NEWLINES;
    };
    let method = &buf[start..buf.len().min(start + MAX_METHOD + 1)];
    match method.iter().position(|&b| b == b' ') {
        Some(0) => false,
        Some(end) => method[..end].iter().all(|&b| is_tchar(b)),
        None => method.len() <= MAX_METHOD && method.iter().all(|&b| is_tchar(b)),
    }
}

/// True once `buf` may hold the blank line that ends a head: a line feed
/// followed by another, with or without a carriage return between (httparse
/// accepts all of these). `scanned` is how much of `buf` an earlier call
/// already looked at.
pub fn head_complete(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(2);
    let tail = &buf[from..];
    tail.windows(2).enumerate().any(|(i, pair)| pair == b"\n\n" || (pair == b"\n\r" && tail.get(i + 2) == Some(&b'\n')))
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub request: Request,
    /// Its length in the buffer (a body, pipelined WebSocket frames or the
    /// next request may follow it).
    pub len: usize,
    /// `Connection: close`: the client wants the connection closed after
    /// the answer (HTTP/1.1 connections are otherwise persistent, RFC 9112
    /// §9.3).
    pub close: bool,
}

/// Parses a complete or partial request head. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<Head>, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(reject(431, "request head over 8 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "more than 64 headers")),
        Err(_) => return Err(reject(400, "malformed request")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(reject(431, "request head over 8 KiB"));
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(reject(400, "malformed request"));
    };
    if req.version != Some(1) {
        return Err(reject(400, "HTTP/1.1 required"));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let headers = Headers(req.headers);
    // RFC 9112 §3.2: a request without exactly one Host is a bad request.
    let host = match headers.single("host")?.map(std::str::from_utf8) {
        Some(Ok(host)) if !host.trim_ascii().is_empty() => host.trim_ascii().to_string(),
        _ => return Err(reject(400, "missing Host header")),
    };
    let request = match path {
        "/ws" if method == "GET" => Request::Upgrade(upgrade(&headers, query, host)?),
        "/ws" => return Err(not_allowed("WebSocket upgrade must be GET", "GET")),
        "/sse" if method == "GET" => Request::Sse(event_stream(&headers, query, host)?),
        "/sse" => return Err(not_allowed("an event stream is GET", "GET")),
        "/healthz" if method == "GET" || method == "HEAD" => Request::Health { head_only: method == "HEAD" },
        "/healthz" => return Err(not_allowed("health check is GET or HEAD", "GET, HEAD")),
        "/metrics" if method == "GET" => Request::Metrics(headers.credentials(host)?),
        "/metrics" => return Err(not_allowed("metrics are GET", "GET")),
        "/" if method == "GET" => Request::Demo,
        "/" => return Err(not_allowed("the demo page is GET", "GET")),
        _ => match path.strip_prefix("/publish/") {
            Some(topic) if method == "POST" => Request::Publish(publish(&headers, topic, host)?),
            Some(_) => return Err(not_allowed("publish is POST", "POST")),
            None => return Err(reject(404, "unknown path")),
        },
    };
    let close = headers.has_token("connection", "close");
    Ok(Some(Head { request, len, close }))
}

struct Headers<'h, 'b>(&'h [httparse::Header<'b>]);

impl Headers<'_, '_> {
    fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.0.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// The value of a header that must appear at most once.
    fn single<'s>(&'s self, name: &'s str) -> Result<Option<&'s [u8]>, Rejection> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(reject(400, "repeated header"));
        }
        Ok(first)
    }

    /// True if any `name` header holds `token` in its comma-separated list.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }
}

impl Headers<'_, '_> {
    /// Host, Origin, the browser and proxy marks, and the bearer token, as
    /// the admission step needs them.
    fn credentials(&self, host: String) -> Result<Credentials, Rejection> {
        // An Origin that is not text is not "no Origin": refuse it.
        let origin = match self.single("origin")? {
            None => None,
            Some(v) => {
                Some(std::str::from_utf8(v).map_err(|_| reject(400, "Origin is not UTF-8"))?.trim_ascii().to_string())
            }
        };
        let browser = origin.is_some() || self.0.iter().any(|h| starts_with_ignore_case(h.name, "sec-fetch-"));
        let proxied =
            ["forwarded", "x-forwarded-for", "x-real-ip", "via"].iter().any(|name| self.all(name).next().is_some());
        let bearer = self.single("authorization")?.and_then(|v| bearer_token(v).map(str::to_string));
        Ok(Credentials { host, origin, browser, proxied, bearer, query_token: None })
    }
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The token of an `Authorization: Bearer <token>` value. RFC 9110 §11.1:
/// the scheme is case-insensitive.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim_ascii();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the `name=` parameter of a query string, undecoded; a
/// parameter given twice is refused (one request, one meaning).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Result<Option<&'q str>, Rejection> {
    let mut values =
        query.into_iter().flat_map(|q| q.split('&')).filter_map(|pair| pair.strip_prefix(name)?.strip_prefix('='));
    let first = values.next();
    if values.next().is_some() {
        return Err(reject(400, "repeated query parameter"));
    }
    Ok(first)
}

fn upgrade(headers: &Headers, query: Option<&str>, host: String) -> Result<Upgrade, Rejection> {
    if !headers.has_token("upgrade", "websocket") {
        return Err(reject(400, "missing Upgrade: websocket"));
    }
    if !headers.has_token("connection", "upgrade") {
        return Err(reject(400, "missing Connection: upgrade"));
    }
    match headers.single("sec-websocket-version")? {
        Some(v) if v.trim_ascii() == b"13" => {}
        _ => return Err(reject(426, "Sec-WebSocket-Version must be 13")),
    }
    let key = match headers.single("sec-websocket-key")? {
        Some(key) if is_valid_key(key.trim_ascii()) => key.trim_ascii(),
        _ => {
            return Err(reject(400, "Sec-WebSocket-Key missing or not 16 bytes of base64"));
        }
    };
    let (topics, credentials) = subscriber(headers, query, host)?;
    let accept_key = tungstenite::handshake::derive_accept_key(key);
    let deflate = deflate::negotiate(headers.all("sec-websocket-extensions"));
    let resume = match last(query)? {
        Some(n) => Resume::Last(n),
        None => Resume::None,
    };
    Ok(Upgrade { accept_key, topics, credentials, deflate, resume })
}

/// What `/ws` and `/sse` both read: the topics (`?topic=`), and the
/// credentials, a `?token=` among them (browsers cannot set headers on a
/// WebSocket or an `EventSource`).
fn subscriber(headers: &Headers, query: Option<&str>, host: String) -> Result<(Vec<Topic>, Credentials), Rejection> {
    let topics = topics_from_query(query).map_err(|_| reject(400, "bad topic in query"))?;
    let mut credentials = headers.credentials(host)?;
    credentials.query_token = query_param(query, "token")?.filter(|t| !t.is_empty()).map(str::to_string);
    Ok((topics, credentials))
}

/// `GET /sse`: topics and credentials as for `/ws`; `Last-Event-ID` (which
/// wins: `EventSource` repeats the URL on every reconnect), `?since=` or
/// `?last=`.
fn event_stream(headers: &Headers, query: Option<&str>, host: String) -> Result<Upgrade, Rejection> {
    let (topics, credentials) = subscriber(headers, query, host)?;
    let since = match query_param(query, "since")? {
        Some(id) => Some(MessageId::parse(id).ok_or(reject(400, "bad ?since= (an id is <epoch>-<seq>)"))?),
        None => None,
    };
    let last = last(query)?;
    let resume = match headers.single("last-event-id")? {
        Some(id) => Resume::Since(std::str::from_utf8(id).ok().and_then(|id| MessageId::parse(id.trim_ascii()))),
        None => match (since, last) {
            (Some(id), _) => Resume::Since(Some(id)),
            (None, Some(n)) => Resume::Last(n),
            (None, None) => Resume::None,
        },
    };
    Ok(Upgrade { accept_key: String::new(), topics, credentials, deflate: None, resume })
}

/// `?last=N`: a decimal count (any count: above `--history` it is served
/// as `--history`).
fn last(query: Option<&str>) -> Result<Option<usize>, Rejection> {
    match query_param(query, "last")? {
        None => Ok(None),
        Some(n) => decimal(n.as_bytes()).map(Some).ok_or(reject(400, "bad ?last= (a count)")),
    }
}

/// RFC 6455 §4.1: the key is 16 bytes, base64-encoded: 22 symbols and "==",
/// the last symbol carrying only 2 bits.
fn is_valid_key(key: &[u8]) -> bool {
    let [body @ .., last, b'=', b'='] = key else {
        return false;
    };
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    if body.len() != 21 || !body.iter().all(is_base64) {
        return false;
    }
    // The last symbol's value must have its low four bits clear:
    // A, Q, g, w (0, 16, 32, 48).
    matches!(last, b'A' | b'Q' | b'g' | b'w')
}

/// `1*DIGIT` (RFC 9110 §8.6 for `Content-Length`; also `?last=`): no sign,
/// no spaces inside, no more than a `usize` holds.
fn decimal(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn publish(headers: &Headers, topic: &str, host: String) -> Result<PublishHead, Rejection> {
    if headers.single("transfer-encoding")?.is_some() {
        return Err(reject(411, "publish needs Content-Length, not Transfer-Encoding"));
    }
    let content_length = match headers.single("content-length")? {
        None => return Err(reject(411, "publish needs Content-Length")),
        Some(v) => decimal(v).ok_or(reject(400, "bad Content-Length"))?,
    };
    let credentials = headers.credentials(host)?;
    let octet_stream = headers.single("content-type")?.is_some_and(|v| {
        v.split(|&b| b == b';').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"application/octet-stream"))
    });
    let expect_continue =
        headers.single("expect")?.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Ok(PublishHead { topic: Topic::new(topic), content_length, credentials, octet_stream, expect_continue })
}

/// `200 OK` opening a Server-Sent Events stream: no length (the stream
/// ends with the connection), not cached, not buffered by proxies.
pub fn event_stream_response() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n"
}

/// `101 Switching Protocols` for an accepted upgrade.
pub fn upgrade_response(accept_key: &str, deflate: Option<&Negotiated>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(deflate) = deflate {
        let _ = write!(response, "Sec-WebSocket-Extensions: {}\r\n", deflate.response());
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// The interim response that lets a client send a publish body.
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Whether a response carries its body: the answer to `HEAD` has the
/// headers a `GET` would get, without the body (RFC 9110 §9.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Full,
    HeadOnly,
}

/// A 200 answer; `close` says `Connection: close` (the connection ends
/// after it), else the connection stays open for the next request.
pub fn answer(content_type: &str, body: &str, with: Body, close: bool) -> Vec<u8> {
    head_and_body(200, content_type, body, "", with, close)
}

fn head_and_body(status: u16, content_type: &str, body: &str, allow: &str, with: Body, close: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        status_text(status),
        body.len()
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    match status {
        426 => head.push_str("Sec-WebSocket-Version: 13\r\n"),
        405 => {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        401 => head.push_str("WWW-Authenticate: Bearer\r\n"),
        _ => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if with == Body::Full {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The response for a rejected request, body naming the reason; a 401
/// says only that a valid token is needed (why this one was not, and which
/// key types the hub holds, go to the log).
pub fn rejection_response(rejection: Rejection) -> Vec<u8> {
    let reason = if rejection.status == 401 { "a valid token is needed" } else { rejection.reason };
    let mut body = String::with_capacity(reason.len() + 1);
    let _ = writeln!(body, "{reason}");
    head_and_body(rejection.status, "text/plain; charset=utf-8", &body, rejection.allow, Body::Full, true)
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status_of(req: &str) -> u16 {
        parse_request(req.as_bytes()).unwrap_err().status
    }

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        let req = upgrade_request("");
        let Head { request, len, .. } = parse_request(req.as_bytes()).unwrap().unwrap();
        assert_eq!(len, req.len());
        let Request::Upgrade(up) = request else { panic!("not an upgrade") };
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.topics, [Topic::new("all").unwrap()]);
        assert_eq!(up.credentials.host, "x");
    }

    #[test]
    fn partial_at_every_byte_then_complete() {
        let req = upgrade_request("");
        let bytes = req.as_bytes();
        for i in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..i]), Ok(None), "prefix of {i} bytes");
            assert!(!head_complete(&bytes[..i], i.saturating_sub(1)), "prefix {i}");
        }
        assert!(head_complete(bytes, bytes.len() - 1));
        assert!(parse_request(bytes).unwrap().is_some());
    }

    #[test]
    fn every_head_terminator_httparse_accepts_is_noticed() {
        for ending in ["\r\n\r\n", "\n\n", "\r\n\n", "\n\r\n"] {
            let req = format!("GET /healthz HTTP/1.1\r\nHost: x{ending}");
            let bytes = req.as_bytes();
            let Head { len, .. } = parse_request(bytes).unwrap().unwrap();
            // noticed no later than httparse completes, fed at any split
            for split in 0..bytes.len() {
                let first = head_complete(&bytes[..split], 0);
                let second = head_complete(bytes, split);
                assert!(first || second, "{ending:?} split at {split}");
                assert!(!first || split >= len, "{ending:?} noticed early at {split}");
            }
        }
    }

    #[test]
    fn tokens_are_case_insensitive_comma_lists() {
        let req = "GET /ws?topic=a&topic=b HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, UPGRADE\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
        let Some(Head { request: Request::Upgrade(up), .. }) = parse_request(req.as_bytes()).unwrap() else {
            panic!("not an upgrade")
        };
        assert_eq!(up.topics.len(), 2);
    }

    #[test]
    fn upgrade_errors_have_the_contract_statuses() {
        let base = upgrade_request("");
        assert_eq!(status_of("GARBAGE\r\n\r\n"), 400);
        assert_eq!(status_of("GET /ws HTTP/1.0\r\n\r\n"), 400);
        assert_eq!(status_of(&base.replace("Host: x\r\n", "")), 400, "HTTP/1.1 requires Host");
        assert_eq!(status_of(&upgrade_request("Host: y\r\n")), 400, "two Hosts");
        assert_eq!(status_of(&base.replace("GET", "POST")), 405);
        assert_eq!(status_of(&base.replace("/ws", "/nope")), 404);
        assert_eq!(status_of(&base.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(status_of(&base.replace("Connection: Upgrade", "Connection: keep-alive")), 400);
        assert_eq!(status_of(&base.replace(KEY, "")), 400);
        assert_eq!(status_of(&base.replace(KEY, "c2hvcnQ=")), 400);
        assert_eq!(status_of(&base.replace(KEY, "dGhlIHNhbXBsZSBub25jZR==")), 400);
        assert_eq!(status_of(&base.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(status_of(&base.replace("Sec-WebSocket-Version: 13\r\n", "")), 426);
        assert_eq!(status_of(&base.replace("/ws", "/ws?topic=bad%20name")), 400);
        let many: String = (0..65).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status_of(&upgrade_request(&many)), 431);
        let big = format!("X-Big: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_request(&upgrade_request(&big).as_bytes()[..MAX_HEAD_BYTES]).unwrap_err().status, 431);
        let dup = upgrade_request(&format!("Sec-WebSocket-Key: {KEY}\r\n"));
        assert_eq!(status_of(&dup), 400);
        assert_eq!(status_of(&upgrade_request("Sec-WebSocket-Version: 13\r\n")), 400, "repeated version");
    }

    #[test]
    fn health_and_publish_routes() {
        let health = |m: &str| parse_request(format!("{m} /healthz HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        assert_eq!(health("GET").unwrap().unwrap().request, Request::Health { head_only: false });
        assert_eq!(health("HEAD").unwrap().unwrap().request, Request::Health { head_only: true });
        let req = "POST /publish/news HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n\r\nhello";
        let Head { request: Request::Publish(head), len, .. } = parse_request(req.as_bytes()).unwrap().unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(&req[len..], "hello");
        assert_eq!(head.topic, Topic::new("news"));
        assert_eq!(head.content_length, 5);
        assert_eq!(head.credentials.bearer.as_deref(), Some("s3cret"));
        assert!(head.octet_stream && head.expect_continue);
        assert_eq!(status_of("POST /publish/news HTTP/1.1\r\nHost: h\r\n\r\n"), 411);
        let chunked = "POST /publish/news HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(chunked), 411);
        let bad_topic = "POST /publish/a%20b HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n";
        let Some(Head { request: Request::Publish(head), .. }) = parse_request(bad_topic.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(head.topic.is_err());
    }

    #[test]
    fn method_not_allowed_names_the_methods_of_that_path() {
        for (req, allow) in [
            ("POST /ws HTTP/1.1\r\nHost: h\r\n\r\n", "GET"),
            ("POST /healthz HTTP/1.1\r\nHost: h\r\n\r\n", "GET, HEAD"),
            ("GET /publish/news HTTP/1.1\r\nHost: h\r\n\r\n", "POST"),
        ] {
            let rejection = parse_request(req.as_bytes()).unwrap_err();
            assert_eq!((rejection.status, rejection.allow), (405, allow), "{req}");
            let response = String::from_utf8(rejection_response(rejection)).unwrap();
            assert!(response.contains(&format!("\r\nAllow: {allow}\r\n")), "{response}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_query_token_is_read() {
        for header in ["Bearer abc", "bearer abc", "BEARER   abc ", "BeArEr abc"] {
            assert_eq!(bearer_token(header.as_bytes()), Some("abc"), "{header}");
        }
        for header in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(header.as_bytes()), None, "{header}");
        }
        let req = upgrade_request("Authorization: bearer h.p.s\r\nOrigin: https://a.example\r\n")
            .replace("/ws", "/ws?topic=t&token=q.r.s");
        let Some(Head { request: Request::Upgrade(up), .. }) = parse_request(req.as_bytes()).unwrap() else { panic!() };
        assert_eq!(up.credentials.bearer.as_deref(), Some("h.p.s"));
        assert_eq!(up.credentials.query_token.as_deref(), Some("q.r.s"));
        assert_eq!(up.credentials.origin.as_deref(), Some("https://a.example"));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(decimal(b"5"), Some(5));
        assert_eq!(decimal(b" 0002 "), Some(2), "leading zeros are digits");
        for bad in [&b"+2"[..], b"-2", b"", b" ", b"2 3", b"0x10", b"1e3", b"99999999999999999999999"] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let publish = |len: &str| {
            let req = format!("POST /publish/t HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\n\r\n");
            parse_request(req.as_bytes()).map(|r| r.map(|h| h.request))
        };
        assert_eq!(publish("+2").unwrap_err().status, 400);
        assert!(matches!(publish("0002"), Ok(Some(Request::Publish(PublishHead { content_length: 2, .. })))));
    }

    #[test]
    fn bytes_that_cannot_start_a_request_are_noticed_at_once() {
        for ok in [&b""[..], b"G", b"GET", b"GET /", b"\r\nPOST /x", b"HEAD", b"M-SEARCH * "] {
            assert!(plausible_start(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        // a TLS ClientHello starts 0x16 0x03
        for bad in [
            &b"\x16\x03\x01\x02\x00"[..],
            b" GET",
            b"GE\x00T",
            b"{\"json\": 1}",
            b"GETTINGVERYLONGMETHODNAME",
            b"\r\n\r\n\r\n",
        ] {
            assert!(!plausible_start(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn responses() {
        let r = String::from_utf8(rejection_response(Rejection::new(426, "v"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(r.ends_with("\r\n\r\nv\n"));
        let ok = String::from_utf8(upgrade_response("abc=", None)).unwrap();
        assert!(ok.contains("Sec-WebSocket-Accept: abc=\r\n"));
        let head = String::from_utf8(answer("text/plain", "ok\n", Body::HeadOnly, true)).unwrap();
        assert!(head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"), "HEAD: no body");
        assert!(head.contains("Connection: close\r\n"));
        let open = String::from_utf8(answer("text/plain", "ok\n", Body::Full, false)).unwrap();
        assert!(!open.contains("Connection") && open.ends_with("\r\n\r\nok\n"), "{open}");
    }

    #[test]
    fn connection_close_is_read_from_any_connection_header() {
        let close = |extra: &str| {
            let req = format!("GET /healthz HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
            parse_request(req.as_bytes()).unwrap().unwrap().close
        };
        assert!(!close(""), "persistent by default");
        assert!(close("Connection: close\r\n"));
        assert!(close("Connection: TE, Close\r\n"));
        assert!(close("Connection: keep-alive\r\nConnection: close\r\n"));
        assert!(!close("Connection: keep-alive\r\n"));
    }
}
