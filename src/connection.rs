//! One connection's protocol state machine, without I/O.
//!
//! A connection starts as an HTTP request and becomes a WebSocket client, a
//! publish request, a health check, or a rejection. The hub hands it the
//! bytes it read and the time; it answers with an [`Action`] and puts what
//! must be sent into its own [`SendQueue`], which only it can touch. What to
//! send leaves through [`Connection::transmit`] into any writer (the
//! client's transport), and the connection keeps its own write-progress
//! clock for `--write-timeout`. It never touches a socket, so tests drive it
//! with byte slices.
//!
//! Ending is one path for every reason: queue the last bytes (a close frame or
//! an HTTP response), enter `Closing`, let them be written, then ask for our
//! writing half to be shut ([`Connection::wants_shutdown`]) and wait a short
//! while for the peer's EOF (RFC 6455 §7.1.1: the server closes the TCP
//! connection first, and lingering keeps our last bytes from being destroyed
//! by a reset).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::admission::{Admission, Peer};
use crate::config::Config;
use crate::deflate::{InflateError, Inflater};
use crate::frame::{self, Event, FrameDecoder, MessageKind, ProtocolError, SharedFrame};
use crate::http::{self, Body, PublishHead, Rejection, Request, Resume};
pub use crate::reason::Reason;
use crate::send_queue::{QueueLimits, SendQueue};
use crate::time::{Millis, NEVER, millis};
use crate::topic::Topic;

/// Pongs queued (unsent) before further pings are answered only for the
/// latest: Autobahn expects each of 10 pings in a row answered; an attacker's
/// thousands must not fill the queue.
const MAX_QUEUED_PONGS: u8 = 16;

/// Policy closes (1008) the connection itself decides.
const NO_CLIENT_PUBLISH: ProtocolError =
    ProtocolError { code: CloseCode::Policy, reason: "publishing is not granted to this client" };
const TOKEN_EXPIRED: ProtocolError = ProtocolError { code: CloseCode::Policy, reason: "token expired" };
const MESSAGE_TIMEOUT: ProtocolError =
    ProtocolError { code: CloseCode::Policy, reason: "message not completed within --message-timeout" };
/// A compressed message that does not inflate (one that inflates too big,
/// or to text that is not UTF-8, fails as an uncompressed one would).
const BAD_DEFLATE: ProtocolError = ProtocolError { code: CloseCode::Invalid, reason: "invalid compressed data" };

/// The page `--demo` serves at `GET /`: one self-contained file.
const DEMO_PAGE: &str = include_str!("demo.html");

/// How long a closing connection waits for the peer to close its side.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Requests one persistent HTTP connection may make; the last answer says
/// `Connection: close`.
pub const MAX_REQUESTS: u16 = 1000;

/// Unsent answers a persistent connection may have before the next one is
/// its last: bounds what a client that pipelines requests and reads
/// nothing can make the hub hold.
const MAX_UNREAD_ANSWERS: usize = 64 * 1024;

/// What the hub must do after feeding bytes or ticking.
#[derive(Debug)]
pub enum Action {
    Nothing,
    /// Upgrade (or event stream) accepted: subscribe this client.
    Subscribe(Joined),
    /// A message from this client to everyone on its topics.
    Broadcast(SharedFrame),
    /// An HTTP publish: deliver, then report with [`Connection::published`].
    Publish(Topic, SharedFrame),
    /// `/metrics` was asked for: answer with [`Connection::answer`].
    Metrics,
    /// The connection is ending for this reason; its last bytes are queued.
    Closing(Reason),
    /// Nothing more to send or wait for: drop the connection now.
    Drop(Reason),
}

/// A client the hub is to subscribe.
#[derive(Debug)]
pub struct Joined {
    pub topics: Vec<Topic>,
    /// Bit `i`: the client may publish to topic `i`.
    pub publish_mask: u16,
    /// Its `server_max_window_bits` if it negotiated compression, else 0.
    pub deflate_window: u8,
    /// A Server-Sent Events stream (`/sse`), not a WebSocket.
    pub sse: bool,
    /// What to replay to it first.
    pub resume: Resume,
}

/// What the connection needs to know about its surroundings.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub config: &'a Config,
    pub now: Millis,
    /// The hub's admission step, asked once the request head is complete.
    pub admission: &'a Admission,
    /// The hub's one inflater, for compressed client messages.
    pub inflater: &'a Inflater,
}

#[derive(Debug)]
enum Phase {
    /// Reading the request head; `scanned` bytes were searched for its end.
    /// `since` is when the connection was accepted: one deadline covers the
    /// head and a publish body together.
    Request { buf: Vec<u8>, scanned: usize, since: Millis },
    /// Reading the body of a publish request.
    PublishBody { topic: Topic, octet_stream: bool, body: Vec<u8>, expected: usize, since: Millis },
    /// The hub is answering an HTTP request (a publish being delivered,
    /// metrics being written).
    Publishing,
    /// An open WebSocket client. `message_since`: when the message (or
    /// frame) now partly received began, for `--message-timeout` (`NEVER`
    /// when none is: a sentinel, to keep an idle connection small).
    /// `expires_at`: when its token expires (`NEVER` without one).
    /// `may_publish`: its data frames go somewhere (else: close 1008).
    /// `stream`: a Server-Sent Events client (`/sse`), which only receives:
    /// it is an open client like a WebSocket one (one test in the fan-out),
    /// but its input is ignored, `last_heard` is when it was last sent a
    /// keepalive comment, it has no idle timeout, and it ends without a
    /// close frame.
    Open {
        decoder: FrameDecoder,
        last_heard: Millis,
        ping_sent: bool,
        may_publish: bool,
        stream: bool,
        message_since: Millis,
        expires_at: Millis,
    },
    /// Last bytes queued. While they are written, `--write-timeout` bounds
    /// each stall (a slow reader still gets its close frame); once our
    /// writing half is shut, the peer has `CLOSE_LINGER` to send its EOF.
    Closing { linger_until: Option<Millis> },
}

impl Phase {
    /// An admitted client, WebSocket or event stream (`stream`), as of
    /// `now`; its token expires `expires_in` milliseconds later, if any.
    fn open(decoder: FrameDecoder, may_publish: bool, stream: bool, expires_in: Option<u64>, now: Millis) -> Phase {
        Phase::Open {
            decoder,
            last_heard: now,
            ping_sent: false,
            may_publish,
            stream,
            message_since: NEVER,
            expires_at: expires_in.map_or(NEVER, |ms| now.saturating_add(ms)),
        }
    }
}

#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    queue: SendQueue,
    /// When the queue last moved (or became non-empty), for `--write-timeout`.
    last_progress: Millis,
    /// The peer address from `accept`, for admission and log lines.
    peer: SocketAddr,
    /// Our writing half is shut: nothing more will be sent.
    write_shut: bool,
    /// Accepted on the admin listener (`--admin-listen`).
    admin: bool,
    /// The answer to the latest ping, not queued yet. Earlier pings' pongs
    /// are queued, up to `MAX_QUEUED_PONGS` unsent; past that, RFC 6455
    /// §5.5.3 lets us answer only the latest, so a burst of pings costs a
    /// bounded number of pongs.
    pong: Option<SharedFrame>,
    /// Pongs in the queue since it was last empty.
    pongs_queued: u8,
    /// The queue holds bytes that must not wait for `--write-delay` (an
    /// HTTP answer, a pong, a close), since it was last empty.
    urgent: bool,
    /// HTTP requests answered on this connection (keep-alive).
    served: u16,
    /// The request being served said `Connection: close`.
    close_after: bool,
    /// Inbound rate limits (`--rate-limit-*`), when set (boxed: most hubs
    /// run without, and an idle connection should not pay for it).
    rate: Option<Box<RateLimit>>,
}

/// Token buckets for a client's data messages and bytes: each refills at its
/// rate per second and holds at most one second's worth (the burst). A
/// client whose message bucket is under one message, or whose byte bucket
/// is in debt, has none of its further input processed until it is back:
/// what it sent meanwhile waits in `held` (one read's worth at most, since
/// it is not read while throttled).
#[derive(Debug)]
struct RateLimit {
    messages: f64,
    bytes: f64,
    refilled: Millis,
    held: Vec<u8>,
}

impl RateLimit {
    fn refill(&mut self, config: &Config, now: Millis) {
        let elapsed = now.saturating_sub(self.refilled) as f64 / 1000.0;
        self.refilled = now;
        let (per_msg, per_byte) = (config.rate_limit_messages as f64, config.rate_limit_bytes as f64);
        self.messages = (self.messages + per_msg * elapsed).min(per_msg);
        self.bytes = (self.bytes + per_byte * elapsed).min(per_byte);
    }

    /// When the client is back under its rates (a whole message in the
    /// bucket, no byte debt), if it is over them now.
    fn resume_at(&self, config: &Config) -> Option<Millis> {
        let wait = |missing: f64, rate: usize| if missing > 0.0 && rate > 0 { missing / rate as f64 } else { 0.0 };
        let secs =
            wait(1.0 - self.messages, config.rate_limit_messages).max(wait(-self.bytes, config.rate_limit_bytes));
        (secs > 0.0).then(|| self.refilled + (secs * 1000.0).ceil() as Millis)
    }
}

/// Takes a data message of `len` bytes from the client's rate buckets.
fn count_message(rate: &mut Option<Box<RateLimit>>, len: usize, ctx: &Context) {
    if let Some(rate) = rate.as_mut() {
        rate.refill(ctx.config, ctx.now);
        rate.messages -= 1.0;
        rate.bytes -= len as f64;
    }
}

impl Connection {
    pub fn new(now: Millis, peer: SocketAddr) -> Connection {
        Connection {
            phase: Phase::Request { buf: Vec::new(), scanned: 0, since: now },
            queue: SendQueue::default(),
            last_progress: now,
            peer,
            write_shut: false,
            admin: false,
            pong: None,
            pongs_queued: 0,
            urgent: false,
            served: 0,
            close_after: false,
            rate: None,
        }
    }

    /// Still receiving its HTTP request (head or publish body).
    pub fn is_requesting(&self) -> bool {
        matches!(self.phase, Phase::Request { .. } | Phase::PublishBody { .. })
    }

    /// Bytes this connection holds of what it received and has not
    /// finished: a request head, a publish body, a partly received message,
    /// input held while over its rate. (Queued frames and the queue's slots
    /// are counted where they are made, once.)
    pub fn held_bytes(&self) -> usize {
        let input = match &self.phase {
            Phase::Request { buf, .. } => buf.capacity(),
            Phase::PublishBody { body, .. } => body.capacity(),
            Phase::Open { decoder, .. } => decoder.buffered_bytes(),
            Phase::Publishing | Phase::Closing { .. } => 0,
        };
        input + self.rate.as_ref().map_or(0, |rate| rate.held.capacity())
    }

    /// While the client is over its inbound rate limit: when it may be read
    /// again.
    pub fn throttled_until(&self, config: &Config) -> Option<Millis> {
        self.rate.as_ref().and_then(|rate| rate.resume_at(config))
    }

    /// Keeps input that came while over the rate limit, for when the client
    /// is back under it.
    pub fn hold_input(&mut self, bytes: &[u8]) {
        if let Some(rate) = self.rate.as_mut() {
            rate.held.extend_from_slice(bytes);
        }
    }

    /// The input held while over the rate limit, to process now.
    pub fn take_held_input(&mut self) -> Vec<u8> {
        self.rate.as_mut().map(|rate| std::mem::take(&mut rate.held)).unwrap_or_default()
    }

    /// When [`tick`](Connection::tick) next has something to do: the
    /// earliest of its deadlines (the request's, the ping or idle one, an
    /// unfinished message's, the token's expiry, a stalled queue's, the
    /// linger's). Moving a deadline later needs no call: a tick at the old
    /// time finds nothing due and the next one is asked for.
    pub fn next_deadline(&self, config: &Config) -> Millis {
        let stall =
            if self.queue.is_empty() { NEVER } else { self.last_progress.saturating_add(millis(config.write_timeout)) };
        let phase = match &self.phase {
            Phase::Request { since, .. } | Phase::PublishBody { since, .. } => {
                since.saturating_add(millis(config.handshake_timeout))
            }
            Phase::Publishing => NEVER,
            Phase::Open { last_heard, stream: true, expires_at, .. } => {
                last_heard.saturating_add(millis(config.ping_interval)).min(*expires_at)
            }
            Phase::Open { last_heard, ping_sent, message_since, expires_at, .. } => {
                let silence = if *ping_sent { config.idle_timeout } else { config.ping_interval };
                let message = message_since.saturating_add(millis(config.message_timeout));
                last_heard.saturating_add(millis(silence)).min(message).min(*expires_at)
            }
            Phase::Closing { linger_until } => linger_until.unwrap_or(NEVER),
        };
        stall.min(phase)
    }

    /// This connection came in on the admin listener.
    pub fn set_admin(&mut self) {
        self.admin = true;
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where its request came in, for admission: the public listener speaks
    /// TLS when configured so; the admin listener never does.
    fn arrival(&self, config: &Config) -> Peer {
        Peer { addr: self.peer, tls: config.tls_cert.is_some() && !self.admin }
    }

    /// An open WebSocket client or event stream: it receives deliveries.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Processes received bytes until an action is due or the input is used
    /// up. The caller loops while `consumed < input.len()`.
    pub fn receive(&mut self, input: &mut [u8], ctx: &Context) -> (usize, Action) {
        match &mut self.phase {
            Phase::Request { .. } => self.receive_request(input, ctx),
            Phase::PublishBody { body, expected, .. } => {
                let take = (*expected - body.len()).min(input.len());
                body.extend_from_slice(&input[..take]);
                (take, self.finish_body_if_complete())
            }
            // Bytes after the request of an HTTP exchange are not ours to
            // read, and an event stream's client has nothing more to say.
            Phase::Publishing | Phase::Open { stream: true, .. } | Phase::Closing { .. } => {
                (input.len(), Action::Nothing)
            }
            Phase::Open { decoder, last_heard, ping_sent, may_publish, .. } => {
                *last_heard = ctx.now;
                *ping_sent = false;
                let may_publish = *may_publish;
                match decoder.decode(input, ctx.config.max_message_size) {
                    Err(e) => (input.len(), self.fail(e, ctx)),
                    Ok(decoded) => {
                        let consumed = decoded.consumed;
                        let action = match decoded.event {
                            None | Some(Event::Pong) => Action::Nothing,
                            Some(Event::Message(..) | Event::Compressed(..)) if !may_publish => {
                                self.fail(NO_CLIENT_PUBLISH, ctx)
                            }
                            Some(Event::Message(kind, payload)) => {
                                count_message(&mut self.rate, payload.len(), ctx);
                                Action::Broadcast(frame::encode_message(kind, payload))
                            }
                            Some(Event::Compressed(kind, payload)) => {
                                let max = ctx.config.max_message_size;
                                let inflated = ctx.inflater.inflate(payload, max, |plain| {
                                    let text_ok = kind == MessageKind::Binary || std::str::from_utf8(plain).is_ok();
                                    text_ok.then(|| (plain.len(), frame::encode_message(kind, plain)))
                                });
                                match inflated {
                                    Ok(Some((len, frame))) => {
                                        count_message(&mut self.rate, len, ctx);
                                        Action::Broadcast(frame)
                                    }
                                    Ok(None) => self.fail(ProtocolError::INVALID_UTF8, ctx),
                                    Err(InflateError::TooBig) => self.fail(ProtocolError::TOO_BIG, ctx),
                                    Err(InflateError::Invalid) => self.fail(BAD_DEFLATE, ctx),
                                }
                            }
                            Some(Event::Ping(payload)) => {
                                let pong = frame::encode_pong(payload);
                                if self.pongs_queued < MAX_QUEUED_PONGS {
                                    // Every ping of a short burst gets its own pong.
                                    self.queue_pong(ctx.now);
                                }
                                self.pong = Some(pong);
                                Action::Nothing
                            }
                            Some(Event::Close { code, .. }) => {
                                // RFC 6455 §5.5.1: echo the code; an empty close gets 1000.
                                let reply = code.map_or(CloseCode::Normal, CloseCode::from);
                                self.close(reply, "", Reason::ClientClosed(code), ctx)
                            }
                        };
                        self.track_message(ctx.now);
                        (consumed, action)
                    }
                }
            }
        }
    }

    /// Starts or stops the `--message-timeout` clock as a message (or a
    /// frame) is left partly received or completed.
    fn track_message(&mut self, now: Millis) {
        if let Phase::Open { decoder, message_since, .. } = &mut self.phase {
            if !decoder.is_mid_message() {
                *message_since = NEVER;
            } else if *message_since == NEVER {
                *message_since = now;
            }
        }
    }

    fn receive_request(&mut self, input: &[u8], ctx: &Context) -> (usize, Action) {
        let Phase::Request { buf, scanned, since } = &mut self.phase else {
            return (0, Action::Nothing);
        };
        let since = *since;
        let before = buf.len();
        let room = http::MAX_HEAD_BYTES.saturating_sub(before);
        buf.extend_from_slice(&input[..input.len().min(room)]);
        if !http::plausible_start(buf) {
            return (input.len(), self.reject(Rejection::new(400, "not an HTTP request"), ctx));
        }
        if !http::head_complete(buf, *scanned) && buf.len() < http::MAX_HEAD_BYTES {
            *scanned = buf.len();
            return (input.len(), Action::Nothing);
        }
        *scanned = buf.len();
        let parsed = http::parse_request(buf);
        let (request, head_len) = match parsed {
            Ok(Some(head)) => {
                self.close_after = head.close;
                (head.request, head.len)
            }
            Ok(None) => return (input.len(), Action::Nothing),
            Err(rejection) => return (input.len(), self.reject(rejection, ctx)),
        };
        // Bytes of `input` past the head belong to the next phase. (The head
        // cannot have ended in bytes of an earlier read: `head_complete`
        // notices every terminator httparse accepts. Be safe regardless.)
        let Some(consumed) = head_len.checked_sub(before) else {
            return (input.len(), self.reject(Rejection::new(400, "malformed request"), ctx));
        };
        if let Err(rejection) = ctx.admission.serves(ctx.config, &request, self.admin) {
            return (input.len(), self.reject(rejection, ctx));
        }
        let action = match request {
            Request::Health { head_only } => {
                let with = if head_only { Body::HeadOnly } else { Body::Full };
                self.answer_with("text/plain", "ok\n", with, ctx.now)
            }
            Request::Demo => self.answer_with("text/html; charset=utf-8", DEMO_PAGE, Body::Full, ctx.now),
            Request::Metrics(credentials) => {
                match ctx.admission.metrics(ctx.config, &credentials, self.arrival(ctx.config)) {
                    Err(rejection) => self.reject(rejection, ctx),
                    Ok(()) => {
                        self.phase = Phase::Publishing;
                        Action::Metrics
                    }
                }
            }
            Request::Upgrade(upgrade) => match ctx.admission.upgrade(ctx.config, &upgrade, self.arrival(ctx.config)) {
                Err(rejection) => self.reject(rejection, ctx),
                Ok(admitted) => {
                    let deflate = upgrade.deflate.filter(|_| ctx.config.compression && cfg!(feature = "deflate"));
                    let response = http::upgrade_response(&upgrade.accept_key, deflate.as_ref());
                    self.push_unbounded(SharedFrame::from(response), ctx.now);
                    if let Some(sub) = &admitted.sub {
                        let peer = crate::logger::ShortText::of(self.peer);
                        log::debug!(peer = peer.as_str(), sub = sub.as_str(); "{}: token sub {sub}", self.peer);
                    }
                    let decoder = FrameDecoder::new(deflate.is_some());
                    self.phase = Phase::open(decoder, admitted.publish_mask != 0, false, admitted.expires_in, ctx.now);
                    if ctx.config.rate_limit_messages > 0 || ctx.config.rate_limit_bytes > 0 {
                        let (messages, bytes) = (ctx.config.rate_limit_messages, ctx.config.rate_limit_bytes);
                        // Off is "unlimited": a bucket that never runs dry.
                        let full = |rate: usize| if rate == 0 { f64::INFINITY } else { rate as f64 };
                        let bucket = RateLimit {
                            messages: full(messages),
                            bytes: full(bytes),
                            refilled: ctx.now,
                            held: Vec::new(),
                        };
                        self.rate = Some(Box::new(bucket));
                    }
                    Action::Subscribe(Joined {
                        topics: upgrade.topics,
                        publish_mask: admitted.publish_mask,
                        deflate_window: deflate.map_or(0, |d| d.window_bits),
                        sse: false,
                        resume: upgrade.resume,
                    })
                }
            },
            Request::Sse(upgrade) => match ctx.admission.upgrade(ctx.config, &upgrade, self.arrival(ctx.config)) {
                Err(rejection) => self.reject(rejection, ctx),
                Ok(admitted) => {
                    self.push_unbounded(SharedFrame::from(http::event_stream_response()), ctx.now);
                    self.phase = Phase::open(FrameDecoder::default(), false, true, admitted.expires_in, ctx.now);
                    Action::Subscribe(Joined {
                        topics: upgrade.topics,
                        publish_mask: 0,
                        deflate_window: 0,
                        sse: true,
                        resume: upgrade.resume,
                    })
                }
            },
            Request::Publish(head) => self.start_publish(head, since, ctx),
        };
        (consumed, action)
    }

    fn start_publish(&mut self, head: PublishHead, since: Millis, ctx: &Context) -> Action {
        let config = ctx.config;
        if let Err(rejection) = ctx.admission.publish(config, &head, self.arrival(config)) {
            return self.reject(rejection, ctx);
        }
        let Ok(topic) = head.topic else {
            return self.reject(Rejection::new(400, "bad topic"), ctx);
        };
        if head.content_length > config.max_message_size {
            return self.reject(Rejection::new(413, "body over --max-message-size"), ctx);
        }
        if head.expect_continue {
            self.push_unbounded(SharedFrame::from(http::CONTINUE_RESPONSE), ctx.now);
        }
        self.phase = Phase::PublishBody {
            topic,
            octet_stream: head.octet_stream,
            body: Vec::with_capacity(head.content_length),
            expected: head.content_length,
            since,
        };
        self.finish_body_if_complete()
    }

    fn finish_body_if_complete(&mut self) -> Action {
        match &self.phase {
            Phase::PublishBody { body, expected, .. } if body.len() == *expected => {}
            _ => return Action::Nothing,
        }
        let Phase::PublishBody { topic, octet_stream, body, .. } =
            std::mem::replace(&mut self.phase, Phase::Publishing)
        else {
            return Action::Nothing;
        };
        let kind =
            if !octet_stream && std::str::from_utf8(&body).is_ok() { MessageKind::Text } else { MessageKind::Binary };
        Action::Publish(topic, frame::encode_message(kind, &body))
    }

    /// Sends the answer the hub produced for this request (`/metrics`).
    pub fn answer(&mut self, content_type: &str, body: &str, now: Millis) -> Action {
        self.answer_with(content_type, body, Body::Full, now)
    }

    /// The hub delivered this connection's publish to `receivers` clients,
    /// as message `id`.
    pub fn published(&mut self, receivers: usize, id: crate::history::MessageId, now: Millis) -> Action {
        let body = format!("{{\"receivers\": {receivers}, \"id\": \"{id}\"}}\n");
        self.answer_with("application/json", &body, Body::Full, now)
    }

    /// Queues a 200 answer. HTTP/1.1 connections are persistent (RFC 9112
    /// §9.3): the connection waits for the next request, under the same
    /// `--handshake-timeout`, unless the client said `Connection: close`,
    /// it has had `MAX_REQUESTS`, or answers it has not read pile up (a
    /// client pipelining requests faster than it reads), in which case
    /// this answer says `Connection: close` and is the last.
    fn answer_with(&mut self, content_type: &str, body: &str, with: Body, now: Millis) -> Action {
        self.served = self.served.saturating_add(1);
        let close = self.close_after || self.served >= MAX_REQUESTS || self.queue.pending_bytes() >= MAX_UNREAD_ANSWERS;
        let response = SharedFrame::from(http::answer(content_type, body, with, close));
        if close {
            self.send_last(response, now);
            return Action::Closing(Reason::HttpDone);
        }
        self.push_unbounded(response, now);
        self.phase = Phase::Request { buf: Vec::new(), scanned: 0, since: now };
        Action::Nothing
    }

    /// Between two requests of a persistent connection: nothing of the
    /// next one has come (its end now, by the client or a timeout, is a
    /// normal end).
    pub fn is_between_requests(&self) -> bool {
        self.served > 0 && matches!(&self.phase, Phase::Request { buf, .. } if buf.is_empty())
    }

    fn reject(&mut self, rejection: Rejection, ctx: &Context) -> Action {
        self.send_last(SharedFrame::from(http::rejection_response(rejection)), ctx.now);
        Action::Closing(Reason::Rejected(rejection))
    }

    /// The write-timeout clock starts when the queue stops being empty.
    fn start_write_clock(&mut self, now: Millis) {
        if self.queue.is_empty() {
            self.last_progress = now;
        }
    }

    /// Queues bytes the protocol obliges us to send, past the queue's bounds.
    fn push_unbounded(&mut self, bytes: SharedFrame, now: Millis) {
        self.queue_pong(now);
        self.start_write_clock(now);
        self.queue.push_unbounded(bytes);
        self.urgent = true;
    }

    /// The pending pong joins the queue before anything queued after its
    /// ping, or when there is a chance to send it: past the bounds (a
    /// control frame of at most 127 bytes), so a burst of pings is never a
    /// slow-consumer drop.
    fn queue_pong(&mut self, now: Millis) {
        if let Some(pong) = self.pong.take() {
            self.start_write_clock(now);
            self.queue.push_unbounded(pong);
            self.pongs_queued = self.pongs_queued.saturating_add(1);
            self.urgent = true;
        }
    }

    /// Queues the last bytes this connection sends and starts closing.
    fn send_last(&mut self, bytes: SharedFrame, now: Millis) {
        self.push_unbounded(bytes, now);
        self.phase = Phase::Closing { linger_until: None };
    }

    /// Queues a frame for this client within its bounds; a client whose queue
    /// is full is closed as a slow consumer instead (`Err`: what to do).
    /// A `Result`, not an `Action`: the common case then has nothing to drop
    /// (measured: 23 instructions per delivery of drop glue).
    pub fn enqueue(&mut self, frame: SharedFrame, ctx: &Context) -> Result<(), Action> {
        let limits = QueueLimits { messages: ctx.config.queue_messages, bytes: ctx.config.queue_bytes };
        if self.pong.is_some() {
            self.queue_pong(ctx.now);
        }
        // An empty queue always takes a frame (both bounds are at least 1
        // and a lone frame may exceed the byte bound), so starting the clock
        // first is right whatever the push says.
        self.start_write_clock(ctx.now);
        match self.queue.push(frame, limits) {
            Ok(()) => Ok(()),
            Err(overflow) => Err(self.drop_slow(overflow.describe(), ctx)),
        }
    }

    /// Ends a client that does not keep up: close 1013 for a WebSocket
    /// client, a plain drop for anything else.
    fn drop_slow(&mut self, why: &'static str, ctx: &Context) -> Action {
        if !self.is_open() {
            return Action::Drop(Reason::SlowConsumer(why));
        }
        // What is queued will not be read in time anyway; the close frame
        // goes right after whatever frame is half written.
        self.queue.discard_unstarted();
        self.pong = None;
        self.close(CloseCode::Again, "slow consumer", Reason::SlowConsumer(why), ctx)
    }

    /// The hub is over its memory budget and this connection holds the
    /// most: what is not yet sent is dropped and a WebSocket client gets
    /// 1013; anything else is dropped.
    pub fn overloaded(&mut self, ctx: &Context) -> Action {
        if !self.is_open() {
            return Action::Drop(Reason::OverBudget);
        }
        self.queue.discard_unstarted();
        self.pong = None;
        self.close(CloseCode::Again, "server overloaded", Reason::OverBudget, ctx)
    }

    /// Closes for a protocol or policy error, with its code.
    fn fail(&mut self, e: ProtocolError, ctx: &Context) -> Action {
        self.close(e.code, e.reason, Reason::Protocol(e), ctx)
    }

    /// Starts the closing handshake with `code` after what is already queued.
    pub fn close(&mut self, code: CloseCode, why: &str, reason: Reason, ctx: &Context) -> Action {
        if self.is_closing() {
            return Action::Nothing;
        }
        if let Phase::Open { stream: true, .. } = self.phase {
            // An event stream just ends (a comment, then the half-close).
            self.send_last(crate::sse::keepalive(), ctx.now);
            Action::Closing(reason)
        } else if self.is_open() {
            self.send_last(frame::encode_close(code, why), ctx.now);
            Action::Closing(reason)
        } else {
            Action::Drop(reason)
        }
    }

    /// Its queue holds half its bound or more (in messages or in bytes):
    /// a burst is written at once from here, and a replay waits.
    #[inline]
    pub fn is_half_full(&self, config: &Config) -> bool {
        self.queued_frames() * 2 >= config.queue_messages || self.queued_bytes() * 2 >= config.queue_bytes
    }

    /// Has bytes to send and may still send them.
    pub fn wants_write(&self) -> bool {
        !self.write_shut && (!self.queue.is_empty() || self.pong.is_some())
    }

    /// What it has to send may wait for `--write-delay`: data frames (and
    /// keepalive pings) of an open connection, fewer than one write
    /// carries. Pongs, closes and HTTP answers go at once.
    #[inline]
    pub fn may_wait(&self) -> bool {
        self.is_open()
            && self.pong.is_none()
            && !self.urgent
            && self.queue.len() < crate::send_queue::MAX_IOVECS
            && self.queue.pending_bytes() < crate::send_queue::FULL_WRITE_BYTES
    }

    /// Its delayed write is due: `--write-timeout` counts from now, not
    /// from when the first frame was queued.
    pub fn write_due(&mut self, now: Millis) {
        if !self.queue.is_empty() {
            self.last_progress = self.last_progress.max(now);
        }
    }

    /// Bytes and frames waiting to be sent.
    pub fn queued_bytes(&self) -> usize {
        self.queue.pending_bytes()
    }

    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// Writes as much of the queue as `out` takes (see
    /// [`SendQueue::chunk`] for how it is gathered) and returns the bytes
    /// written; back-pressure (`WouldBlock`, or a writer that takes nothing)
    /// just stops. Progress resets the write-timeout clock.
    pub fn transmit(&mut self, out: &mut impl Write, cork: &mut Vec<u8>, now: Millis) -> io::Result<usize> {
        if self.write_shut {
            return Ok(0);
        }
        self.queue_pong(now);
        let written = self.queue.write_to(out, cork)?;
        if self.queue.is_empty() {
            self.pongs_queued = 0;
            self.urgent = false;
        }
        if written > 0 {
            self.last_progress = now;
        }
        Ok(written)
    }

    /// Our last bytes are out: time to shut down our writing half.
    pub fn wants_shutdown(&self) -> bool {
        self.is_closing() && !self.write_shut && self.queue.is_empty()
    }

    /// The writing half was shut; only the peer's EOF (or the linger
    /// deadline) is awaited now.
    pub fn shutdown_done(&mut self, now: Millis) {
        self.write_shut = true;
        if let Phase::Closing { linger_until } = &mut self.phase {
            *linger_until = Some(now + millis(CLOSE_LINGER));
        }
    }

    /// Applies the deadlines. Called for every connection once per tick.
    pub fn tick(&mut self, ctx: &Context) -> Action {
        let config = ctx.config;
        let now = ctx.now;
        let stalled = !self.queue.is_empty() && now >= self.last_progress + millis(config.write_timeout);
        if stalled && !self.is_closing() {
            return self.drop_slow("send queue stalled", ctx);
        }
        let idle = self.is_between_requests();
        match &mut self.phase {
            Phase::Request { since, .. } | Phase::PublishBody { since, .. } => {
                if now >= *since + millis(config.handshake_timeout) {
                    // A persistent connection nobody used again ends
                    // normally; a request that did not come in time does not.
                    return Action::Drop(if idle { Reason::HttpDone } else { Reason::HandshakeTimeout });
                }
            }
            Phase::Publishing => {}
            Phase::Open { last_heard, stream: true, expires_at, .. } => {
                if now >= *expires_at {
                    return self.fail(TOKEN_EXPIRED, ctx);
                }
                if now >= last_heard.saturating_add(millis(config.ping_interval)) {
                    *last_heard = now;
                    if self.queue.is_empty() {
                        return self.enqueue(crate::sse::keepalive(), ctx).err().unwrap_or(Action::Nothing);
                    }
                }
            }
            Phase::Open { last_heard, ping_sent, message_since, expires_at, .. } => {
                if now >= *expires_at {
                    return self.fail(TOKEN_EXPIRED, ctx);
                }
                if *message_since != NEVER && now >= message_since.saturating_add(millis(config.message_timeout)) {
                    return self.fail(MESSAGE_TIMEOUT, ctx);
                }
                let silent = now.saturating_sub(*last_heard);
                if silent >= millis(config.idle_timeout) {
                    return Action::Drop(Reason::IdleTimeout);
                }
                if silent >= millis(config.ping_interval) && !*ping_sent {
                    *ping_sent = true;
                    return self.enqueue(frame::encode_ping(b""), ctx).err().unwrap_or(Action::Nothing);
                }
            }
            Phase::Closing { linger_until } => {
                if stalled || linger_until.is_some_and(|t| now >= t) {
                    return Action::Drop(Reason::LingerTimeout);
                }
            }
        }
        Action::Nothing
    }

    /// Starts a graceful shutdown of this connection: open clients get their
    /// queue flushed and then close 1001; anything else is dropped.
    pub fn shut_down(&mut self, ctx: &Context) -> Action {
        match self.phase {
            Phase::Open { .. } => self.close(CloseCode::Away, "server shutting down", Reason::ShuttingDown, ctx),
            Phase::Closing { .. } => Action::Nothing,
            _ => Action::Drop(Reason::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NOBODY: Admission = Admission::new();

    fn ctx(config: &Config, now: Millis) -> Context<'_> {
        thread_local! {
            static INFLATER: &'static Inflater = Box::leak(Box::default());
        }
        Context { config, now, admission: &NOBODY, inflater: INFLATER.with(|i| *i) }
    }

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50000))
    }

    fn remote() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 50000))
    }

    /// Drains the queue into a byte vector, as a socket would.
    fn sent(conn: &mut Connection) -> Vec<u8> {
        let mut out = Vec::new();
        conn.transmit(&mut out, &mut Vec::new(), 0).unwrap();
        out
    }

    fn feed(conn: &mut Connection, bytes: &[u8], ctx: &Context) -> Vec<Action> {
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut actions = Vec::new();
        while pos < buf.len() {
            let (used, action) = conn.receive(&mut buf[pos..], ctx);
            pos += used;
            actions.push(action);
        }
        actions
    }

    const UPGRADE: &[u8] = b"GET /ws?topic=x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        frame::encode_client(first, payload, [1, 2, 3, 4])
    }

    #[test]
    fn upgrade_with_a_frame_in_the_same_read() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        let mut bytes = UPGRADE.to_vec();
        bytes.extend(masked(0x81, b"hi"));
        let actions = feed(&mut conn, &bytes, &ctx(&config, 0));
        assert!(matches!(&actions[0], Action::Subscribe(j) if j.topics[0].as_str() == "x"));
        assert!(matches!(&actions[1], Action::Broadcast(f) if &f[..] == b"\x81\x02hi"));
        assert!(String::from_utf8(sent(&mut conn)).unwrap().starts_with("HTTP/1.1 101 "));
    }

    #[test]
    fn handshake_byte_by_byte() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        let mut actions = Vec::new();
        for b in UPGRADE {
            actions.extend(feed(&mut conn, &[*b], &ctx(&config, 0)));
        }
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Subscribe(..))).count(), 1);
        assert!(conn.is_open());
    }

    #[test]
    fn at_capacity_gets_503() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        let mut full = Admission::new();
        for _ in 0..config.max_connections {
            full.joined();
        }
        let c = Context { admission: &full, ..ctx(&config, 0) };
        let actions = feed(&mut conn, UPGRADE, &c);
        assert!(matches!(actions[0], Action::Closing(Reason::Rejected(Rejection { status: 503, .. }))));
        assert!(String::from_utf8(sent(&mut conn)).unwrap().starts_with("HTTP/1.1 503 "));
    }

    #[test]
    fn ping_pong_close() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        feed(&mut conn, UPGRADE, &ctx(&config, 0));
        sent(&mut conn);
        feed(&mut conn, &masked(0x89, b"yo"), &ctx(&config, 0));
        assert_eq!(sent(&mut conn), b"\x8a\x02yo");
        let actions = feed(&mut conn, &masked(0x88, &[0x03, 0xe9]), &ctx(&config, 0));
        assert!(matches!(actions[0], Action::Closing(Reason::ClientClosed(Some(1001)))));
        assert_eq!(sent(&mut conn), b"\x88\x02\x03\xe9");
        assert!(conn.is_closing());
    }

    #[test]
    fn publish_body_split_and_token() {
        let config = Config { publish_token: Some("t0k".into()), ..Config::default() };
        let req =
            b"POST /publish/news HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t0k\r\nContent-Length: 5\r\n\r\nhello";
        let mut conn = Connection::new(0, remote());
        let actions = feed(&mut conn, &req[..req.len() - 2], &ctx(&config, 0));
        assert!(actions.iter().all(|a| matches!(a, Action::Nothing)));
        let actions = feed(&mut conn, &req[req.len() - 2..], &ctx(&config, 0));
        assert!(matches!(&actions[0], Action::Publish(t, f) if t.as_str() == "news" && &f[..] == b"\x81\x05hello"));
        conn.published(3, crate::history::MessageId { epoch: 1, seq: 1 }, 0);
        assert!(String::from_utf8(sent(&mut conn)).unwrap().ends_with("{\"receivers\": 3, \"id\": \"1-1\"}\n"));

        let wrong =
            b"POST /publish/news HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer nope\r\nContent-Length: 5\r\n\r\nhello";
        let mut conn = Connection::new(0, local());
        let actions = feed(&mut conn, wrong, &ctx(&config, 0));
        assert!(matches!(actions[0], Action::Closing(Reason::Rejected(Rejection { status: 401, .. }))));

        let open = Config::default();
        let mut remote = Connection::new(0, remote());
        let actions = feed(&mut remote, &req[..], &ctx(&open, 0));
        assert!(matches!(actions[0], Action::Closing(Reason::Rejected(Rejection { status: 403, .. }))));
        let big = b"POST /publish/news HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n";
        let mut local = Connection::new(0, local());
        let actions = feed(&mut local, big, &ctx(&open, 0));
        assert!(matches!(actions[0], Action::Closing(Reason::Rejected(Rejection { status: 413, .. }))));
    }

    #[test]
    fn random_bytes_in_any_phase_never_panic() {
        let config = Config { max_message_size: 512, ..Config::default() };
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let prefixes: [&[u8]; 4] =
            [b"", UPGRADE, b"POST /publish/t HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9\r\n\r\n", b"GET /"];
        for round in 0..2000 {
            let mut conn = Connection::new(0, if round % 2 == 0 { local() } else { remote() });
            let mut bytes = prefixes[round % prefixes.len()].to_vec();
            let noise = (next() % 400) as usize;
            bytes.extend((0..noise).map(|_| next() as u8));
            let mut pos = 0;
            while pos < bytes.len() {
                let end = (pos + 1 + (next() % 64) as usize).min(bytes.len());
                feed(&mut conn, &bytes[pos..end], &ctx(&config, round as u64));
                pos = end;
            }
            let _ = conn.tick(&ctx(&config, 100_000));
            let _ = sent(&mut conn);
        }
    }

    #[test]
    fn deadlines() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        assert!(matches!(conn.tick(&ctx(&config, 9_999)), Action::Nothing));
        assert!(matches!(conn.tick(&ctx(&config, 10_000)), Action::Drop(Reason::HandshakeTimeout)));

        let mut conn = Connection::new(0, local());
        feed(&mut conn, UPGRADE, &ctx(&config, 0));
        sent(&mut conn);
        assert!(matches!(conn.tick(&ctx(&config, 53_999)), Action::Nothing));
        assert!(matches!(conn.tick(&ctx(&config, 54_000)), Action::Nothing));
        assert_eq!(sent(&mut conn), b"\x89\x00", "one ping after --ping-interval");
        assert!(matches!(conn.tick(&ctx(&config, 55_000)), Action::Nothing));
        assert!(sent(&mut conn).is_empty(), "not a second ping");
        assert!(matches!(conn.tick(&ctx(&config, 60_000)), Action::Drop(Reason::IdleTimeout)));
    }

    #[test]
    fn write_timeout_counts_from_when_the_queue_filled() {
        let config = Config { handshake_timeout: Duration::from_secs(20), ..Config::default() };
        let mut conn = Connection::new(0, local());
        // A slow handshake: the 101 is queued at 15 s, not at accept time.
        feed(&mut conn, UPGRADE, &ctx(&config, 15_000));
        assert!(matches!(conn.tick(&ctx(&config, 15_500)), Action::Nothing));
        assert!(matches!(conn.tick(&ctx(&config, 25_000)), Action::Closing(Reason::SlowConsumer(_))));
    }

    #[test]
    fn full_queue_closes_1013() {
        let config = Config { queue_messages: 2, ..Config::default() };
        let mut conn = Connection::new(0, local());
        feed(&mut conn, UPGRADE, &ctx(&config, 0));
        sent(&mut conn);
        let c = ctx(&config, 0);
        let f = frame::encode_message(MessageKind::Text, b"m");
        assert!(conn.enqueue(f.clone(), &c).is_ok());
        assert!(conn.enqueue(f.clone(), &c).is_ok());
        assert!(matches!(conn.enqueue(f, &c), Err(Action::Closing(Reason::SlowConsumer(_)))));
        let out = sent(&mut conn);
        assert_eq!(&out[..2], b"\x88\x0f");
        assert_eq!(&out[2..4], &1013u16.to_be_bytes());
    }

    const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn a_persistent_connection_has_a_bounded_number_of_requests() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        for i in 1..MAX_REQUESTS {
            assert!(matches!(feed(&mut conn, HEALTH, &ctx(&config, 0))[..], [Action::Nothing]), "request {i}");
            let answer = String::from_utf8(sent(&mut conn)).unwrap();
            assert!(answer.ends_with("ok\n") && !answer.contains("Connection: close"), "{answer}");
            assert!(conn.is_between_requests());
        }
        assert!(matches!(feed(&mut conn, HEALTH, &ctx(&config, 0))[..], [Action::Closing(Reason::HttpDone)]));
        assert!(String::from_utf8(sent(&mut conn)).unwrap().contains("Connection: close\r\n"), "the last one says so");
    }

    #[test]
    fn answers_a_pipelining_client_does_not_read_are_bounded() {
        let config = Config::default();
        let mut conn = Connection::new(0, local());
        // Requests in one read, nothing written: once 64 KiB of answers
        // wait, the next answer is the last.
        let pipelined: Vec<u8> = HEALTH.iter().copied().cycle().take(HEALTH.len() * 2000).collect();
        let actions = feed(&mut conn, &pipelined, &ctx(&config, 0));
        let answered = actions.iter().position(|a| matches!(a, Action::Closing(Reason::HttpDone))).expect("a last one");
        assert!((500..1000).contains(&answered), "{answered} answers before the last");
        assert!(conn.queued_bytes() < MAX_UNREAD_ANSWERS + 1024);
        assert!(actions[answered + 1..].iter().all(|a| matches!(a, Action::Nothing)), "the rest is ignored");
    }

    #[test]
    fn an_idle_persistent_connection_ends_as_done_and_a_slow_request_as_a_timeout() {
        let config = Config::default();
        let timeout = millis(config.handshake_timeout);
        let mut conn = Connection::new(0, local());
        feed(&mut conn, HEALTH, &ctx(&config, 100));
        sent(&mut conn);
        assert_eq!(conn.next_deadline(&config), 100 + timeout, "the next request's clock starts at the answer");
        assert!(matches!(conn.tick(&ctx(&config, 100 + timeout)), Action::Drop(Reason::HttpDone)));
        let mut conn = Connection::new(0, local());
        feed(&mut conn, HEALTH, &ctx(&config, 100));
        sent(&mut conn);
        feed(&mut conn, b"GET /heal", &ctx(&config, 200));
        assert!(!conn.is_between_requests());
        assert!(matches!(conn.tick(&ctx(&config, 100 + timeout)), Action::Drop(Reason::HandshakeTimeout)));
    }
}
