//! The hub's side of Redis pub/sub, without I/O: two links (RESP2 lets a
//! subscribed connection do nothing but subscribe, so publishing needs its
//! own), the channels the hub needs, and the messages going out and coming
//! in.
//!
//! The hub tells the bridge when a topic gets its first local subscriber or
//! loses its last ([`Bridge::topic_added`] / [`Bridge::topic_removed`]), and
//! hands it every message it accepted ([`Bridge::publish`]). The driver
//! moves bytes: it opens a socket when [`Bridge::connect_due`] says so,
//! writes [`Bridge::transmit`], feeds what it reads to [`Bridge::received`],
//! closes the socket of a link that [`Bridge::is_down`], and calls
//! [`Bridge::handle_timeout`] by [`Bridge::next_deadline`].
//!
//! Redis pub/sub is at-most-once: what is published while a link is down,
//! or does not fit the bounded outgoing buffer, is delivered on this hub
//! only, and counted.

use std::collections::HashSet;

use log::{debug, info, warn};

use super::envelope::{self, Heard};
use super::link::Link;
use super::resp::{self, Parsed, Value};
use super::url::RedisUrl;
use super::{Incoming, LinkLoss, RedisStats, Role, Unshared};
use crate::frame::MessageKind;
use crate::log_limit::LineLimiter;
use crate::time::Millis;
use crate::topic::Topic;

/// Channels per `SUBSCRIBE` when a link (re)subscribes to all it needs.
const SUBSCRIBE_BATCH: usize = 256;
/// At most one warning per this long for each kind of trouble.
const WARN_EVERY: Millis = 10_000;

pub struct Bridge {
    /// This hub's id, in every envelope it sends.
    origin: u64,
    prefix: Box<[u8]>,
    url: RedisUrl,
    links: [Link; 2],
    /// Topics with local subscribers: the channels the subscriber holds.
    wanted: HashSet<Topic>,
    /// Where an envelope's head is built, once per message.
    head: Vec<u8>,
    /// Bound on the publisher's unsent commands.
    out_limit: usize,
    /// `--max-message-size`: no larger message is delivered, wherever it
    /// came from.
    max_message: usize,
    /// Largest reply accepted, complete or not (a message, its envelope
    /// and the push around it): what a link's input may hold.
    max_reply: usize,
    stats: RedisStats,
    /// PUBLISHes queued or written that Redis has not answered yet.
    unconfirmed: u64,
    /// Per kind of warning: when last logged, and how many were held back.
    warned: [LineLimiter; 3],
}

impl Bridge {
    /// `origin` identifies this hub (random per process); unsent commands
    /// are held to `out_limit` bytes; messages over `max_message` bytes are
    /// refused.
    pub fn new(url: RedisUrl, prefix: &str, origin: u64, out_limit: usize, max_message: usize) -> Bridge {
        Bridge {
            origin,
            prefix: prefix.as_bytes().into(),
            url,
            links: [Link::new(origin), Link::new(origin.rotate_left(32))],
            wanted: HashSet::new(),
            head: Vec::new(),
            out_limit,
            max_message,
            max_reply: max_message + 2048,
            stats: RedisStats::default(),
            unconfirmed: 0,
            warned: [LineLimiter::new(WARN_EVERY, 1); 3],
        }
    }

    /// Links with a socket (connecting, handshaking or up).
    pub fn sockets(&self) -> usize {
        Role::BOTH.iter().filter(|&&role| !self.is_down(role)).count()
    }

    /// Replies read but left for the next turn by its delivery budget: the
    /// driver hands them on (`received` with no new bytes) before reading
    /// the socket again.
    pub fn is_paused(&self, role: Role) -> bool {
        self.links[role as usize].paused
    }

    pub fn is_down(&self, role: Role) -> bool {
        self.links[role as usize].is_down()
    }

    pub fn is_up(&self, role: Role) -> bool {
        self.links[role as usize].is_up()
    }

    /// Whether the link should connect now. If so it starts: the driver
    /// opens a socket and writes [`transmit`](Bridge::transmit) once it is
    /// connected (or reports [`lost`](Bridge::lost)).
    pub fn connect_due(&mut self, role: Role, now: Millis) -> bool {
        if !self.links[role as usize].connect_due(now) {
            return false;
        }
        let Bridge { links, url, wanted, prefix, .. } = self;
        let link = &mut links[role as usize];
        link.start(now, |out| handshake(out, url));
        if role == Role::Subscriber {
            let channels: Vec<&Topic> = wanted.iter().collect();
            for batch in channels.chunks(SUBSCRIBE_BATCH) {
                link.queue(now, batch.len(), |out| subscribe_command(out, b"SUBSCRIBE", prefix, batch));
            }
        }
        debug!("redis {}: connecting to {}", role.label(), self.url);
        true
    }

    /// Bytes to write to the link's socket.
    pub fn transmit(&self, role: Role) -> &[u8] {
        self.links[role as usize].transmit()
    }

    /// `n` bytes of [`transmit`](Bridge::transmit) were written.
    pub fn sent(&mut self, role: Role, n: usize) {
        self.links[role as usize].sent(n);
    }

    /// The link's socket failed or closed.
    pub fn lost(&mut self, role: Role, cause: LinkLoss, why: &str, now: Millis) {
        let link = &self.links[role as usize];
        if link.is_down() {
            return;
        }
        if role == Role::Publisher {
            // PUBLISHes written or queued but not confirmed: lost with it.
            self.stats.unshared[Unshared::Unconfirmed as usize] += std::mem::take(&mut self.unconfirmed);
        }
        let was_up = link.is_up();
        let link = &mut self.links[role as usize];
        link.fail(now);
        self.stats.failures[role as usize] += 1;
        let failures = link.failures();
        if was_up {
            self.stats.lost[role as usize][cause as usize] += 1;
            let (label, url) = (role.label(), &self.url);
            match (role, cause) {
                // Messages published meanwhile are gone for this hub, and
                // Redis does not say how many.
                (Role::Subscriber, LinkLoss::Closed) => warn!(
                    "redis {label}: connection to {url} closed by Redis: {why}; reconnecting (messages published until then are lost here; if this repeats under load, Redis' client-output-buffer-limit pubsub is closing a subscriber that reads too slowly)"
                ),
                _ => warn!("redis {label}: connection to {url} lost ({}): {why}; reconnecting", cause.label()),
            }
        } else if failures == 1 || failures.is_power_of_two() {
            warn!("redis {}: cannot connect to {} ({failures} attempts): {why}", role.label(), self.url);
        } else {
            debug!("redis {}: cannot connect to {} ({failures} attempts): {why}", role.label(), self.url);
        }
    }

    /// Applies the links' deadlines: gives up silent links, pings idle ones.
    pub fn handle_timeout(&mut self, now: Millis) {
        for role in Role::BOTH {
            if let Err(why) = self.links[role as usize].check(now) {
                self.lost(role, LinkLoss::Timeout, why, now);
            }
        }
    }

    /// When [`handle_timeout`](Bridge::handle_timeout) or a reconnection
    /// next has something to do.
    pub fn next_deadline(&self) -> Millis {
        self.links.iter().map(Link::next_deadline).min().unwrap_or(Millis::MAX)
    }

    /// A topic got its first local subscriber: subscribe to its channel.
    pub fn topic_added(&mut self, topic: &Topic, now: Millis) {
        if self.wanted.insert(topic.clone()) {
            self.subscription(b"SUBSCRIBE", topic, now);
        }
    }

    /// A topic lost its last local subscriber: unsubscribe from its channel.
    pub fn topic_removed(&mut self, topic: &Topic, now: Millis) {
        if self.wanted.remove(topic) {
            self.subscription(b"UNSUBSCRIBE", topic, now);
        }
    }

    fn subscription(&mut self, command: &[u8], topic: &Topic, now: Millis) {
        let link = &mut self.links[Role::Subscriber as usize];
        // A link that is down subscribes to everything wanted when it is back.
        if link.is_down() {
            return;
        }
        if link.unsent() > self.out_limit {
            // Redis is not taking our commands while clients come and go:
            // start over later from the set wanted then, in bounded memory.
            self.lost(Role::Subscriber, LinkLoss::Error, "subscription changes piling up unsent", now);
            return;
        }
        let prefix = &self.prefix;
        link.queue(now, 1, |out| subscribe_command(out, command, prefix, &[topic]));
    }

    /// Shares a message this hub accepted: one PUBLISH per topic, each
    /// carrying the envelope. When the publisher link is down or its buffer
    /// is full, the message stays local, and that is counted.
    pub fn publish<'t, I>(&mut self, topics: I, kind: MessageKind, payload: &[u8], now: Millis)
    where
        I: Iterator<Item = &'t Topic> + Clone,
    {
        let count = topics.clone().count() as u64;
        if count == 0 {
            return;
        }
        let link = &self.links[Role::Publisher as usize];
        if link.is_down() {
            self.stats.unshared[Unshared::Unavailable as usize] += count;
            self.warn(0, now, "the publisher link is down: messages are delivered on this hub only until it is back");
            return;
        }
        envelope::write_head(&mut self.head, self.origin, kind, topics.clone());
        let body = self.head.len() + payload.len();
        let prefix = self.prefix.len();
        let size: usize = topics.clone().map(|t| resp::command_len([7, prefix + t.as_str().len(), body])).sum();
        if link.unsent() + size > self.out_limit {
            self.stats.unshared[Unshared::BufferFull as usize] += count;
            self.warn(
                1,
                now,
                "the publisher's buffer is full (Redis is slow): messages are delivered on this hub only",
            );
            return;
        }
        self.unconfirmed += count;
        let Bridge { links, prefix, head, .. } = self;
        links[Role::Publisher as usize].queue(now, count as usize, |out| {
            for topic in topics {
                resp::command(out, &[&[b"PUBLISH"], &[prefix, topic.as_str().as_bytes()], &[head, payload]]);
            }
        });
    }

    /// Bytes read from a link. Messages heard on the subscriber's channels
    /// go to `deliver`, except this hub's own. A reply that is not RESP
    /// fails the link.
    pub fn received(
        &mut self,
        role: Role,
        bytes: &[u8],
        now: Millis,
        budget: &mut usize,
        deliver: &mut dyn FnMut(Incoming<'_>) -> usize,
    ) {
        if self.links[role as usize].is_down() {
            return;
        }
        // The rest of a message over the size limit is dropped as it comes.
        let link = &mut self.links[role as usize];
        let skipped = link.skip.min(bytes.len());
        link.skip -= skipped;
        let bytes = &bytes[skipped..];
        let paused = std::mem::take(&mut link.paused);
        if bytes.is_empty() && !paused {
            return;
        }
        // Each message costs its deliveries (at least one) against the
        // turn's budget; once it is spent the rest waits in `input`.
        let left = std::cell::Cell::new(*budget);
        let mut deliver = |incoming: Incoming<'_>| {
            let receivers = deliver(incoming);
            left.set(left.get().saturating_sub(receivers.max(1)));
            receivers
        };
        let mut input = std::mem::take(&mut self.links[role as usize].input);
        let carried = !input.is_empty();
        if carried {
            input.extend_from_slice(bytes);
        }
        let data: &[u8] = if carried { &input } else { bytes };
        let mut pos = 0;
        let failure = loop {
            match resp::parse(&data[pos..], self.max_reply) {
                // However it is made up (one bulk string, or an array of
                // many small ones), no reply may be bigger than a message.
                Ok(Parsed::Value(_, used)) if used > self.max_reply => break Some("reply over the size bound"),
                Ok(Parsed::Value(value, used)) => {
                    pos += used;
                    if let Err(why) = self.reply(role, value, now, &mut deliver) {
                        break Some(why);
                    }
                    if self.links[role as usize].is_down() {
                        *budget = left.get();
                        return;
                    }
                    if left.get() == 0 && pos < data.len() {
                        // The rest of what was read waits for the next turn,
                        // and the socket is not read meanwhile.
                        self.links[role as usize].paused = true;
                        break None;
                    }
                }
                Ok(Parsed::Oversize { head, skip }) => {
                    // A message over --max-message-size: dropped (and its
                    // bytes with it, as they stream in), counted; the link
                    // stays.
                    let here = skip.min(data.len() - pos - head);
                    pos += head + here;
                    self.links[role as usize].skip = skip - here;
                    self.links[role as usize].heard(now);
                    self.oversize(now);
                }
                Ok(Parsed::Incomplete) if data.len() - pos > self.max_reply => break Some("reply over the size bound"),
                Ok(Parsed::Incomplete) => break None,
                Err(invalid) => break Some(invalid.0),
            }
        };
        *budget = left.get();
        if let Some(why) = failure {
            self.lost(role, LinkLoss::Error, why, now);
            return;
        }
        // Keep the incomplete tail for the next read.
        if carried {
            input.drain(..pos);
        } else {
            input.extend_from_slice(&bytes[pos..]);
        }
        if input.is_empty() && input.capacity() > 64 * 1024 {
            input = Vec::new();
        }
        self.links[role as usize].input = input;
    }

    /// Acts on one reply.
    fn reply(
        &mut self,
        role: Role,
        value: Value<'_>,
        now: Millis,
        deliver: &mut dyn FnMut(Incoming<'_>) -> usize,
    ) -> Result<(), &'static str> {
        let link = &mut self.links[role as usize];
        if link.in_handshake() {
            if let Value::Error(e) = value {
                let e = String::from_utf8_lossy(e);
                warn!("redis {}: {} refused the handshake: {e}", role.label(), self.url);
                return Err("handshake refused");
            }
            if link.replied(now) {
                self.stats.connects[role as usize] += 1;
                info!("redis {}: connected to {}", role.label(), self.url);
            }
            return Ok(());
        }
        match (role, value) {
            (Role::Subscriber, Value::Array(Some(mut items))) => {
                let kind = items.next().and_then(|v| v.bytes()).unwrap_or_default();
                if kind == b"message" {
                    let (3, Some(channel), Some(message)) = (items.len() + 1, items.next(), items.next()) else {
                        return Err("message push of the wrong length");
                    };
                    let (Some(channel), Some(message)) = (channel.bytes(), message.bytes()) else {
                        return Err("message push without strings");
                    };
                    link.heard(now);
                    self.heard(channel, message, now, deliver);
                } else {
                    // subscribe, unsubscribe, pong: answers to our commands.
                    link.replied(now);
                }
            }
            (_, Value::Error(e)) => {
                link.replied(now);
                if role == Role::Publisher {
                    self.unconfirmed = self.unconfirmed.saturating_sub(1);
                    self.stats.unshared[Unshared::Refused as usize] += 1;
                }
                let e = String::from_utf8_lossy(e).into_owned();
                self.warn(2, now, &format!("redis {} answered with an error: {e}", role.label()));
            }
            (Role::Publisher, Value::Integer(_)) => {
                link.replied(now);
                self.unconfirmed = self.unconfirmed.saturating_sub(1);
                self.stats.published += 1;
            }
            _ => {
                link.replied(now);
            }
        }
        Ok(())
    }

    /// A message heard on a channel.
    fn heard(&mut self, channel: &[u8], message: &[u8], now: Millis, deliver: &mut dyn FnMut(Incoming<'_>) -> usize) {
        let topic = channel.strip_prefix(&*self.prefix).and_then(|t| std::str::from_utf8(t).ok());
        let Some(topic) = topic.filter(|t| Topic::new(t).is_ok()) else {
            self.invalid(now, "a message on a channel this hub does not use");
            return;
        };
        let incoming = match envelope::read(message) {
            Ok(Heard::Envelope(env)) if env.origin == self.origin => return,
            Ok(Heard::Envelope(env)) => {
                if !env.topics().any(|t| t == topic) {
                    self.invalid(now, "an envelope heard on a channel of none of its topics");
                    return;
                }
                Incoming { topic, kind: env.kind, payload: env.payload, envelope: Some(env) }
            }
            Ok(Heard::Plain(payload)) => {
                let kind = if std::str::from_utf8(payload).is_ok() { MessageKind::Text } else { MessageKind::Binary };
                Incoming { topic, kind, payload, envelope: None }
            }
            Err(malformed) => {
                self.invalid(now, malformed.0);
                return;
            }
        };
        if incoming.payload.len() > self.max_message {
            self.oversize(now);
            return;
        }
        if incoming.kind == MessageKind::Text && std::str::from_utf8(incoming.payload).is_err() {
            self.invalid(now, "text that is not UTF-8");
            return;
        }
        self.stats.received += 1;
        deliver(incoming);
    }

    fn oversize(&mut self, now: Millis) {
        self.stats.oversize += 1;
        self.warn(2, now, "redis: dropped a message over --max-message-size");
    }

    fn invalid(&mut self, now: Millis, why: &str) {
        self.stats.invalid += 1;
        self.warn(2, now, &format!("redis: dropped a message: {why}"));
    }

    /// Logs a warning of kind `slot`, at most one per [`WARN_EVERY`].
    fn warn(&mut self, slot: usize, now: Millis, text: &str) {
        self.warned[slot].log(log::Level::Warn, now, format_args!("{text}"));
    }

    /// Bytes the links hold, for the hub's memory budget.
    pub fn buffered_bytes(&self) -> usize {
        self.links.iter().map(Link::buffered).sum()
    }

    /// Nothing left to send on the publisher (for a graceful shutdown).
    pub fn drained(&self) -> bool {
        self.links[Role::Publisher as usize].is_down() || self.unconfirmed == 0
    }

    pub fn stats(&self) -> RedisStats {
        let mut stats = self.stats.clone();
        stats.up = [self.is_up(Role::Subscriber), self.is_up(Role::Publisher)];
        stats.channels = self.wanted.len() as u64;
        stats.buffered_bytes = self.buffered_bytes() as u64;
        stats
    }
}

/// AUTH and SELECT as the URL asks, then a PING so that even a Redis
/// without a password must answer before the link counts as up.
fn handshake(out: &mut Vec<u8>, url: &RedisUrl) -> usize {
    let mut replies = 0;
    if let Some(pass) = &url.password {
        match &url.username {
            Some(user) => resp::command(out, &[&[b"AUTH"], &[user.as_bytes()], &[pass.as_bytes()]]),
            None => resp::command(out, &[&[b"AUTH"], &[pass.as_bytes()]]),
        }
        replies += 1;
    }
    if url.db != 0 {
        resp::command(out, &[&[b"SELECT"], &[url.db.to_string().as_bytes()]]);
        replies += 1;
    }
    resp::command(out, &[&[b"PING"]]);
    replies + 1
}

fn subscribe_command(out: &mut Vec<u8>, command: &[u8], prefix: &[u8], topics: &[&Topic]) {
    let channels: Vec<[&[u8]; 2]> = topics.iter().map(|t| [prefix, t.as_str().as_bytes()]).collect();
    let mut args: Vec<&[&[u8]]> = Vec::with_capacity(1 + channels.len());
    let command = [command];
    args.push(&command);
    args.extend(channels.iter().map(|c| &c[..]));
    resp::command(out, &args);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::link::{BACKOFF_FIRST, CONNECT_TIMEOUT, KEEPALIVE};

    const ME: u64 = 0xAAAA;

    fn bridge(url: &str) -> Bridge {
        Bridge::new(RedisUrl::parse(url).unwrap(), "wshub:", ME, 4096, 1000)
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    /// Takes everything the link has to send, as text.
    fn drain(bridge: &mut Bridge, role: Role) -> String {
        let text = String::from_utf8_lossy(bridge.transmit(role)).into_owned();
        let n = bridge.transmit(role).len();
        bridge.sent(role, n);
        text
    }

    fn feed(bridge: &mut Bridge, role: Role, bytes: &[u8], now: Millis) -> Vec<(String, MessageKind, Vec<u8>)> {
        let mut budget = usize::MAX;
        feed_within(bridge, role, bytes, now, &mut budget)
    }

    /// Feeds bytes with a delivery budget (each message: one delivery).
    fn feed_within(
        bridge: &mut Bridge,
        role: Role,
        bytes: &[u8],
        now: Millis,
        budget: &mut usize,
    ) -> Vec<(String, MessageKind, Vec<u8>)> {
        let mut got = Vec::new();
        bridge.received(role, bytes, now, budget, &mut |m| {
            got.push((m.topic.to_string(), m.kind, m.payload.to_vec()));
            1
        });
        got
    }

    fn up(bridge: &mut Bridge, now: Millis) {
        for role in Role::BOTH {
            assert!(bridge.connect_due(role, now));
            drain(bridge, role);
            feed(bridge, role, b"+PONG\r\n", now);
            assert!(bridge.is_up(role));
        }
    }

    /// A message push as Redis sends it.
    fn push(channel: &str, message: &[u8]) -> Vec<u8> {
        let mut out =
            format!("*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n", channel.len(), message.len()).into_bytes();
        out.extend_from_slice(message);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn envelope(origin: u64, topics: &[&str], payload: &[u8]) -> Vec<u8> {
        let topics: Vec<Topic> = topics.iter().map(|t| topic(t)).collect();
        let mut out = Vec::new();
        envelope::write_head(&mut out, origin, MessageKind::Text, topics.iter());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn handshake_logs_in_selects_and_pings_then_resubscribes() {
        let mut bridge = bridge("redis://app:pw@127.0.0.1:6379/2");
        bridge.topic_added(&topic("a"), 0);
        bridge.topic_added(&topic("b"), 0);
        assert!(bridge.connect_due(Role::Subscriber, 0));
        let sent = drain(&mut bridge, Role::Subscriber);
        assert!(
            sent.starts_with(
                "*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$4\r\nPING\r\n*3\r\n$9\r\nSUBSCRIBE\r\n"
            ),
            "{sent:?}"
        );
        assert!(sent.contains("wshub:a") && sent.contains("wshub:b"));
        feed(&mut bridge, Role::Subscriber, b"+OK\r\n+OK\r\n", 1);
        assert!(!bridge.is_up(Role::Subscriber), "not before the PONG");
        feed(&mut bridge, Role::Subscriber, b"+PONG\r\n", 1);
        assert!(bridge.is_up(Role::Subscriber));
        assert_eq!(bridge.stats().connects, [1, 0]);
    }

    #[test]
    fn a_refused_login_fails_the_link_and_backs_off() {
        let mut bridge = bridge("redis://:wrong@127.0.0.1");
        assert!(bridge.connect_due(Role::Publisher, 0));
        assert_eq!(drain(&mut bridge, Role::Publisher), "*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n*1\r\n$4\r\nPING\r\n");
        feed(&mut bridge, Role::Publisher, b"-WRONGPASS invalid username-password pair\r\n", 5);
        assert!(bridge.is_down(Role::Publisher));
        assert_eq!(bridge.stats().failures, [0, 1]);
        assert!(!bridge.connect_due(Role::Publisher, 5 + BACKOFF_FIRST * 3 / 4 - 1), "backs off");
        assert!(bridge.connect_due(Role::Publisher, 5 + BACKOFF_FIRST));
    }

    #[test]
    fn channels_follow_topics_and_wait_while_down() {
        let mut bridge = bridge("redis://h");
        bridge.topic_added(&topic("early"), 0);
        up(&mut bridge, 0);
        bridge.topic_added(&topic("t"), 1);
        assert_eq!(drain(&mut bridge, Role::Subscriber), "*2\r\n$9\r\nSUBSCRIBE\r\n$7\r\nwshub:t\r\n");
        bridge.topic_removed(&topic("t"), 2);
        assert_eq!(drain(&mut bridge, Role::Subscriber), "*2\r\n$11\r\nUNSUBSCRIBE\r\n$7\r\nwshub:t\r\n");
        bridge.lost(Role::Subscriber, LinkLoss::Error, "test", 3);
        bridge.topic_added(&topic("later"), 4);
        bridge.topic_removed(&topic("early"), 4);
        assert_eq!(bridge.transmit(Role::Subscriber), b"", "nothing queued while down");
        assert!(bridge.connect_due(Role::Subscriber, 1000));
        let sent = drain(&mut bridge, Role::Subscriber);
        assert!(sent.ends_with("*2\r\n$9\r\nSUBSCRIBE\r\n$11\r\nwshub:later\r\n"), "{sent:?}");
        assert_eq!(bridge.stats().channels, 1);
        // Redis takes nothing while topics come and go: bounded, then over.
        feed(&mut bridge, Role::Subscriber, b"+PONG\r\n", 1000);
        for i in 0..1000 {
            bridge.topic_added(&topic(&format!("churn{i}")), 1001);
            assert!(bridge.links[0].unsent() <= 4096 + 64, "bounded");
        }
        assert!(bridge.is_down(Role::Subscriber));
        assert_eq!(bridge.stats().channels, 1001, "still wanted, for the next connection");
    }

    #[test]
    fn publishes_one_command_per_topic_or_counts_why_not() {
        let mut bridge = bridge("redis://h");
        let topics = [topic("a"), topic("b")];
        bridge.publish(topics.iter(), MessageKind::Text, b"hi", 0);
        assert_eq!(bridge.stats().unshared, [2, 0, 0, 0], "down: unavailable, per PUBLISH");
        up(&mut bridge, 0);
        bridge.publish(topics.iter(), MessageKind::Text, b"hi", 1);
        let sent = bridge.transmit(Role::Publisher).to_vec();
        let body = envelope(ME, &["a", "b"], b"hi");
        let mut expected = Vec::new();
        resp::command(&mut expected, &[&[b"PUBLISH"], &[b"wshub:a"], &[&body]]);
        resp::command(&mut expected, &[&[b"PUBLISH"], &[b"wshub:b"], &[&body]]);
        assert_eq!(sent, expected);
        // Not written yet; more would pass the 4096-byte bound.
        bridge.publish(topics[..1].iter(), MessageKind::Binary, &[0; 4000], 2);
        assert_eq!(bridge.stats().unshared, [2, 1, 0, 0], "buffer full");
        drain(&mut bridge, Role::Publisher);
        feed(&mut bridge, Role::Publisher, b":1\r\n-ERR readonly\r\n", 3);
        assert_eq!((bridge.stats().published, bridge.stats().unshared[3]), (1, 1));
        bridge.handle_timeout(3 + KEEPALIVE);
        assert!(drain(&mut bridge, Role::Publisher).contains("PING"), "an idle link pings");
        bridge.publish(topics[..1].iter(), MessageKind::Text, b"x", 3 + KEEPALIVE);
        assert!(!bridge.drained());
        bridge.lost(Role::Publisher, LinkLoss::Closed, "test", 4 + KEEPALIVE);
        assert_eq!(bridge.stats().unshared[2], 1, "unconfirmed when the link broke (the PING is not a message)");
        assert!(bridge.drained(), "a link that is down holds nothing");
    }

    #[test]
    fn hears_other_hubs_and_backends_but_not_itself() {
        let mut bridge = bridge("redis://h");
        up(&mut bridge, 0);
        let other = push("wshub:b", &envelope(7, &["a", "b"], b"from 7"));
        let mine = push("wshub:b", &envelope(ME, &["b"], b"mine"));
        let plain = push("wshub:b", b"from redis-cli");
        let mut stream = [other.clone(), mine, plain].concat();
        stream.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$7\r\nwshub:b\r\n:1\r\n");
        // Split at every byte: the same messages come out, once.
        let mut got = Vec::new();
        for byte in &stream {
            got.extend(feed(&mut bridge, Role::Subscriber, std::slice::from_ref(byte), 1));
        }
        assert_eq!(
            got,
            [
                ("b".to_string(), MessageKind::Text, b"from 7".to_vec()),
                ("b".to_string(), MessageKind::Text, b"from redis-cli".to_vec()),
            ]
        );
        assert_eq!(bridge.buffered_bytes(), 0);
        let got = feed(&mut bridge, Role::Subscriber, &[other.clone(), other].concat(), 2);
        assert_eq!(got.len(), 2, "one read, several messages");
        assert_eq!(bridge.stats().received, 4);
    }

    #[test]
    fn bad_messages_are_counted_and_bad_replies_fail_the_link() {
        let mut bridge = bridge("redis://h");
        up(&mut bridge, 0);
        let bad = [
            push("other:b", b"not our prefix"),
            push("wshub:b", &envelope(7, &["a"], b"on a channel not in its list")),
            push("wshub:b", &[0xB5, 9, 9]),
            push("wshub:b", &envelope(7, &["b"], b"\xff not utf-8")),
            push("wshub:b", &[b'x'; 1001]),
        ];
        assert!(feed(&mut bridge, Role::Subscriber, &bad.concat(), 1).is_empty());
        assert_eq!((bridge.stats().invalid, bridge.stats().oversize), (4, 1));
        assert!(bridge.is_up(Role::Subscriber), "bad messages do not cost the link");
        feed(&mut bridge, Role::Subscriber, b"!garbage\r\n", 2);
        assert!(bridge.is_down(Role::Subscriber), "a reply that is not RESP does");
        // Bigger than a message can be, and not a push to skip: refused
        // before it is buffered.
        feed(&mut bridge, Role::Publisher, b"$999999\r\nabc", 3);
        assert!(bridge.is_down(Role::Publisher));
    }

    #[test]
    fn a_message_over_the_size_limit_is_skipped_as_it_streams_not_the_link() {
        let mut bridge = bridge("redis://127.0.0.1");
        up(&mut bridge, 0);
        bridge.topic_added(&topic("a"), 0);
        let big = push("wshub:a", &vec![b'x'; 100_000]);
        let mut got = Vec::new();
        for chunk in big.chunks(4096) {
            got.extend(feed(&mut bridge, Role::Subscriber, chunk, 1));
            assert!(bridge.buffered_bytes() < 4096, "held {} bytes of it", bridge.buffered_bytes());
        }
        // The next message in the same read as the oversize one's tail.
        let mut tail_and_next = push("wshub:a", &vec![b'y'; 5_000]);
        tail_and_next.extend(push("wshub:a", b"fits"));
        got.extend(feed(&mut bridge, Role::Subscriber, &tail_and_next, 2));
        assert_eq!(got, [("a".to_string(), MessageKind::Text, b"fits".to_vec())]);
        let stats = bridge.stats();
        assert_eq!((stats.oversize, stats.invalid, stats.failures, stats.connects), (2, 0, [0, 0], [1, 1]));
        assert!(bridge.is_up(Role::Subscriber));
    }

    #[test]
    fn a_silent_redis_is_given_up_after_the_timeout() {
        let mut bridge = bridge("redis://h");
        assert!(bridge.connect_due(Role::Subscriber, 0));
        assert_eq!(bridge.next_deadline(), 0, "the publisher is due too");
        assert!(bridge.connect_due(Role::Publisher, 0));
        assert_eq!(bridge.next_deadline(), CONNECT_TIMEOUT);
        bridge.handle_timeout(CONNECT_TIMEOUT - 1);
        assert!(!bridge.is_down(Role::Subscriber));
        bridge.handle_timeout(CONNECT_TIMEOUT);
        assert!(bridge.is_down(Role::Subscriber) && bridge.is_down(Role::Publisher));
        assert_eq!(bridge.stats().failures, [1, 1]);
    }

    #[test]
    fn a_flood_is_delivered_a_budget_at_a_time_and_resumes_where_it_stopped() {
        let mut bridge = bridge("redis://h");
        up(&mut bridge, 0);
        let push = |i: u32| {
            let payload = i.to_string();
            format!("*3\r\n$7\r\nmessage\r\n$7\r\nwshub:t\r\n${}\r\n{payload}\r\n", payload.len())
        };
        let flood: String = (0..10).map(push).collect();
        let mut budget = 4;
        let got = feed_within(&mut bridge, Role::Subscriber, flood.as_bytes(), 1, &mut budget);
        assert_eq!(got.len(), 4, "four deliveries' worth");
        assert_eq!(budget, 0);
        assert!(bridge.is_paused(Role::Subscriber), "the rest waits; the socket is not read");
        assert!(bridge.buffered_bytes() >= flood.len() / 2, "what waits is counted");
        // The next turn goes on where it stopped, before any new bytes.
        let mut budget = 4;
        let got = feed_within(&mut bridge, Role::Subscriber, b"", 2, &mut budget);
        assert_eq!(
            got.iter().map(|m| m.2.clone()).collect::<Vec<_>>(),
            [b"4".to_vec(), b"5".to_vec(), b"6".to_vec(), b"7".to_vec()]
        );
        let mut budget = 4;
        let got = feed_within(&mut bridge, Role::Subscriber, push(10).as_bytes(), 3, &mut budget);
        assert_eq!(got.iter().map(|m| m.2.clone()).collect::<Vec<_>>(), [b"8".to_vec(), b"9".to_vec(), b"10".to_vec()]);
        assert!(!bridge.is_paused(Role::Subscriber), "all through: read the socket again");
        // A budget spent exactly at the end of the input leaves nothing waiting.
        let mut budget = 1;
        feed_within(&mut bridge, Role::Subscriber, push(11).as_bytes(), 4, &mut budget);
        assert!(!bridge.is_paused(Role::Subscriber));
    }
}
