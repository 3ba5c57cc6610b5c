//! Deliveries: a client's message to everyone on its topics, an HTTP or
//! `Publisher` publish, a message heard from Redis. One shared frame per
//! message, a pointer copy per receiver; the writes wait for the end of the
//! turn or for `--write-delay` (`writing`), except for a queue at half its
//! bound. With permessage-deflate, the first receiver that negotiated it
//! has the message compressed, once, into a second shared frame that every
//! such receiver gets ([`Deflated`]).

use slab::Slab;

use super::writing::{Writes, write_client};
use super::{Client, Flags, Hub};
use crate::connection::{Action, Context, Reason};
use crate::deflate::Compressor;
use crate::frame::{self, SharedFrame};
use crate::history::{History, MessageId};
use crate::redis::Bridge;
#[cfg(feature = "redis")]
use crate::redis::{Incoming, Role};
use crate::sse;
use crate::stats::Stats;
use crate::subscriptions::{ClientId, Subscriptions};
use crate::time::Millis;
use crate::topic::Topic;
use crate::transport::Transport;

impl<T: Transport> Hub<T> {
    /// Queues `frame` to every subscriber of `topic` (an HTTP publish or a
    /// `Publisher`); returns how many, and the message's id.
    pub fn publish(&mut self, topic: &Topic, frame: SharedFrame, now: Millis) -> (usize, MessageId) {
        self.stats.published += 1;
        let seq = accept(&mut self.seq, &mut self.history, std::iter::once(topic), &frame, now);
        let (subscriptions, mut fanout) = self.fanout(seq, now);
        let receivers = subscriptions.for_each_subscriber(topic, |id, topic| fanout.deliver(id, topic, &frame));
        if let Some(bridge) = &mut self.bridge {
            share(bridge, std::iter::once(topic), &frame, now);
        }
        drop(frame);
        self.apply_deferred(now);
        self.enforce_budget(now);
        (receivers, MessageId { epoch: self.epoch, seq })
    }

    /// Queues a client's message to every client on its topics.
    pub(super) fn broadcast_from(&mut self, sender: ClientId, frame: SharedFrame, now: Millis) {
        if let Some(bridge) = &mut self.bridge {
            share(bridge, self.subscriptions.publish_topics(sender), &frame, now);
        }
        let topics = self.subscriptions.publish_topics(sender);
        let seq = accept(&mut self.seq, &mut self.history, topics, &frame, now);
        let no_echo = self.config.no_echo;
        let (subscriptions, mut fanout) = self.fanout(seq, now);
        subscriptions.for_each_peer(sender, |id, topic| {
            if !(no_echo && id == sender) {
                fanout.deliver(id, topic, &frame);
            }
        });
        drop(frame);
        self.apply_deferred(now);
    }

    /// Bytes read from a Redis link (none: to go on with what the turn's
    /// budget left): messages from other hubs are delivered to the clients
    /// here, up to `REDIS_DELIVERIES_PER_TURN` per turn, so that a flood
    /// from Redis waits its turn like a flooding client
    /// ([`Bridge::is_paused`] then says so).
    #[cfg(feature = "redis")]
    pub fn redis_received(&mut self, role: Role, bytes: &[u8], now: Millis) {
        // Out of the hub while it delivers, and back before any client is
        // removed (a removal may unsubscribe a channel).
        let Some(mut bridge) = self.bridge.take() else { return };
        let mut budget = self.reads.redis_budget;
        bridge.received(role, bytes, now, &mut budget, &mut |incoming| self.deliver_heard(incoming, now));
        self.reads.redis_budget = budget;
        self.bridge = Some(bridge);
        self.apply_deferred(now);
        self.enforce_budget(now);
    }

    /// Queues a message heard from Redis to the clients that get it through
    /// its channel: for a hub's message sent to several topics, those for
    /// whom this channel's topic is the first of them they hold. Returns
    /// how many.
    #[cfg(feature = "redis")]
    fn deliver_heard(&mut self, incoming: Incoming<'_>, now: Millis) -> usize {
        let frame = frame::encode_message(incoming.kind, incoming.payload);
        let topic = incoming.topic;
        // Heard from another hub: a local id, and local history.
        let seq = accept(&mut self.seq, &mut self.history, std::iter::once(topic), &frame, now);
        let (subscriptions, mut fanout) = self.fanout(seq, now);
        let mut deliver = |id, topic: &Topic| fanout.deliver(id, topic, &frame);
        match incoming.envelope {
            Some(envelope) => {
                let earlier = envelope.topics().take_while(|t| *t != topic);
                subscriptions.for_each_first_holder(topic, earlier, &mut deliver)
            }
            None => subscriptions.for_each_first_holder(topic, std::iter::empty(), &mut deliver),
        }
    }

    /// The subscriptions, and the rest of the hub a broadcast writes to,
    /// borrowed apart.
    fn fanout(&mut self, seq: u64, now: Millis) -> (&mut Subscriptions, Fanout<'_, T>) {
        let fanout = Fanout {
            clients: &mut self.clients,
            compressor: &mut self.compressor,
            deflated: Deflated::Untried,
            id: MessageId { epoch: self.epoch, seq },
            events: Vec::new(),
            writes: &mut self.writes,
            deferred: &mut self.deferred,
            cork: &mut self.cork,
            stats: &mut self.stats,
            ctx: Context { config: &self.config, now, admission: &self.admission, inflater: &self.inflater },
        };
        (&mut self.subscriptions, fanout)
    }
}

/// Hands a message this hub accepted to Redis, for the other hubs. Kept
/// out of line: inlined, it cost the local fan-out loop five instructions
/// per delivery (callgrind), with Redis off.
#[inline(never)]
fn share<'t>(bridge: &mut Bridge, topics: impl Iterator<Item = &'t Topic> + Clone, frame: &SharedFrame, now: Millis) {
    if let Some((kind, payload)) = frame::message_parts(frame) {
        bridge.publish(topics, kind, payload, now);
    }
}

/// Gives an accepted message the next id (`seq`) and keeps it in the
/// history of each of its topics; returns the id's number.
fn accept<'t, Q: std::borrow::Borrow<str> + ?Sized + 't>(
    seq: &mut u64,
    history: &mut History,
    topics: impl IntoIterator<Item = &'t Q>,
    frame: &SharedFrame,
    now: Millis,
) -> u64 {
    *seq += 1;
    if history.is_on() {
        for topic in topics {
            history.append(topic, *seq, frame, now);
        }
    }
    *seq
}

/// What a broadcast needs of the hub while the subscriptions are walked.
struct Fanout<'a, T> {
    clients: &'a mut Slab<Client<T>>,
    compressor: &'a mut Compressor,
    /// This message compressed, once a receiver asked for it.
    deflated: Deflated,
    /// The message's id.
    id: MessageId,
    /// Its Server-Sent Events encodings, one per topic an SSE client got
    /// it through (the event names the topic), made for the first.
    events: Vec<(Topic, SharedFrame)>,
    writes: &'a mut Writes,
    /// Actions of clients that overflowed, applied after the walk.
    deferred: &'a mut Vec<(ClientId, Action)>,
    cork: &'a mut Vec<u8>,
    stats: &'a mut Stats,
    ctx: Context<'a>,
}

impl<T: Transport> Fanout<'_, T> {
    /// Queues `frame`, which came through `topic`, to one client.
    #[inline]
    fn deliver(&mut self, id: ClientId, topic: &Topic, frame: &SharedFrame) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if !client.conn.is_open() {
            return;
        }
        // One test for every receiver that is not a plain WebSocket client
        // keeping up (compression, an event stream, a replay under way);
        // what they need is out of line, so this loop stays as tight as it
        // was without them.
        let frame = if client.flags.special() {
            let config = self.ctx.config;
            match special_frame(
                client.flags,
                &mut self.deflated,
                &mut self.events,
                self.compressor,
                self.id,
                topic,
                frame,
                config,
                self.stats,
            ) {
                Some(frame) => frame,
                None => return,
            }
        } else {
            frame
        };
        match client.conn.enqueue(SharedFrame::clone(frame), &self.ctx) {
            Ok(()) => self.stats.deliveries += 1,
            Err(action) => self.deferred.push((id, action)),
        }
        // Writes wait for the end of the turn so that a burst leaves in one
        // system call, but a burst must not overflow a client that is keeping
        // up: at half its bound, the queue is written right away (unless its
        // transport is known to be full).
        let conn = &client.conn;
        if conn.is_open()
            && conn.is_half_full(self.ctx.config)
            && let Err(e) = write_client(client, self.cork, self.ctx.now, self.stats)
        {
            self.deferred.push((id, Action::Drop(Reason::failed(&e))));
        }
        client.mark_dirty(id, self.writes, self.ctx.now);
    }
}

/// The frame a special receiver gets, or `None` for none: a replaying
/// client gets the message through its replay, an SSE client the event
/// for `topic` (none for binary), a compressing client the compressed frame
/// if there is one it can take.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn special_frame<'f>(
    flags: Flags,
    deflated: &'f mut Deflated,
    events: &'f mut Vec<(Topic, SharedFrame)>,
    compressor: &mut Compressor,
    id: MessageId,
    topic: &Topic,
    frame: &'f SharedFrame,
    config: &crate::config::Config,
    stats: &mut Stats,
) -> Option<&'f SharedFrame> {
    if flags.has(Flags::REPLAYING) {
        return None;
    }
    if flags.has(Flags::SSE) {
        let event = event_for(events, id, topic, frame);
        if event.is_none() {
            stats.sse_binary_skipped += 1;
        }
        return event;
    }
    Some(deflated.pick(frame, flags.deflate_window(), compressor, config.compression_min_size, stats))
}

/// A message's compressed frame, made for the first receiver that
/// negotiated compression and shared by all of them.
enum Deflated {
    Untried,
    /// Too short (`--compression-min-size`), or it did not shrink: every
    /// receiver gets the plain frame.
    Plain,
    /// The compressed frame, and the plain payload's length.
    Frame(SharedFrame, usize),
}

impl Deflated {
    /// The frame for a receiver whose window is `window` bits: the
    /// compressed one if there is one and its window can take it (a
    /// message compressed on its own refers at most its own length back),
    /// else the plain one.
    #[inline]
    fn pick<'f>(
        &'f mut self,
        plain: &'f SharedFrame,
        window: u8,
        compressor: &mut Compressor,
        min_size: usize,
        stats: &mut Stats,
    ) -> &'f SharedFrame {
        if let Deflated::Untried = self {
            *self = Deflated::make(plain, compressor, min_size, stats);
        }
        match self {
            Deflated::Frame(compressed, len) if window >= 15 || *len <= 1 << window => {
                stats.compressed_deliveries += 1;
                compressed
            }
            _ => plain,
        }
    }

    #[inline(never)]
    fn make(plain: &SharedFrame, compressor: &mut Compressor, min_size: usize, stats: &mut Stats) -> Deflated {
        let Some((kind, payload)) = frame::message_parts(plain) else { return Deflated::Plain };
        match compressor.compress(kind, payload, min_size) {
            Some(compressed) => {
                stats.compressed_messages += 1;
                Deflated::Frame(compressed, payload.len())
            }
            None => Deflated::Plain,
        }
    }
}

/// The event-stream encoding of a message for `topic` (made once per topic
/// and shared); `None` for a binary message, which SSE cannot carry.
#[inline(never)]
fn event_for<'e>(
    events: &'e mut Vec<(Topic, SharedFrame)>,
    id: MessageId,
    topic: &Topic,
    frame: &SharedFrame,
) -> Option<&'e SharedFrame> {
    if let Some(i) = events.iter().position(|(t, _)| t == topic) {
        return Some(&events[i].1);
    }
    events.push((topic.clone(), sse::event_of(id, topic, frame)?));
    events.last().map(|(_, event)| event)
}
