//! Replays: what a client that resumes (`Last-Event-ID`, `?since=`) or
//! joins late (`?last=N`) is sent from the history before the live stream.
//!
//! A replay is a cursor into the history, not a copy: the client is sent
//! the next messages on its topics in id order until its queue is half
//! full, and more each time a write drains it, so a replay longer than the
//! queue is never a slow-consumer drop. While it runs the client gets no
//! live deliveries (the fan-out skips it): live messages enter the history
//! first and the cursor reaches them in order, without duplicates. Once the
//! cursor has nothing left the client is live, and an SSE client gets its
//! resume point (`id:` with no data). If messages the client has not been
//! sent are evicted under it, an SSE client gets a `wshub/gap` event and a
//! WebSocket client is closed 1013 (a receiver never sees a silent gap).

use super::{Flags, Hub};
use crate::connection::{Context, Reason};
use crate::frame::SharedFrame;
use crate::history::MessageId;
use crate::http::Resume;
use crate::sse;
use crate::subscriptions::ClientId;
use crate::time::Millis;
use crate::topic::Topic;
use crate::transport::Transport;

/// Where one client's replay stands.
#[derive(Debug)]
pub(super) struct Replay {
    topics: Vec<Topic>,
    /// Per topic, the lowest id to send (`?last=N`; 0 for a resume).
    floors: Vec<u64>,
    /// The last id sent (or skipped).
    after: u64,
    /// Messages up to here may have been evicted without harm: those before
    /// a `?last=N` replay began that were not among the last N.
    lost_ok_upto: u64,
    sse: bool,
}

impl<T: Transport> Hub<T> {
    /// A client just subscribed: starts what it asked to be replayed, or
    /// for an SSE client without a replay, sends its resume point.
    pub(super) fn start_replay(&mut self, id: ClientId, topics: Vec<Topic>, sse: bool, resume: Resume, now: Millis) {
        let current = self.seq;
        let (floors, after, lost_ok_upto) = match resume {
            Resume::None => {
                if sse {
                    self.send_to(id, sse::resume_point(self.current_id()), now);
                }
                return;
            }
            Resume::Since(from) => {
                let known = from.filter(|from| from.epoch == self.epoch && from.seq <= current);
                let after = known.map_or(0, |from| from.seq);
                let complete = known.is_some() && self.history.complete_after(&topics, after);
                if complete {
                    self.stats.resumes_complete += 1;
                } else {
                    self.stats.resumes_gap += 1;
                    if sse {
                        self.send_to(id, sse::gap(self.current_id()), now);
                    }
                }
                // A gap announced here covers what was evicted so far.
                let lost_ok_upto = if complete { after } else { self.history.lost_upto(&topics).max(after) };
                (vec![0; topics.len()], after, lost_ok_upto)
            }
            Resume::Last(n) => {
                let n = n.min(self.config.history);
                let floors = topics.iter().map(|t| if n == 0 { u64::MAX } else { self.history.floor_for_last(t, n) });
                (floors.collect(), 0, current)
            }
        };
        self.stats.replays += 1;
        self.replays.insert(id, Replay { topics, floors, after, lost_ok_upto, sse });
        if let Some(client) = self.clients.get_mut(id) {
            client.flags.set(Flags::REPLAYING, true);
        }
        self.refill(id, now);
    }

    /// Queues a frame outside any replay (a gap notice, a resume point).
    fn send_to(&mut self, id: ClientId, frame: SharedFrame, now: Millis) {
        let Hub { clients, config, admission, inflater, deferred, .. } = self;
        let Some(client) = clients.get_mut(id) else { return };
        let ctx = Context { config, now, admission, inflater };
        if let Err(action) = client.conn.enqueue(frame, &ctx) {
            deferred.push((id, action));
        }
        self.mark_dirty(id, now);
        self.apply_deferred(now);
    }

    /// Sends a replaying client more of its replay, up to half its queue's
    /// bounds; ends the replay once it has caught up.
    pub(super) fn refill(&mut self, id: ClientId, now: Millis) {
        let current = self.current_id();
        let Hub { clients, config, admission, inflater, history, replays, stats, deferred, .. } = self;
        let (Some(replay), Some(client)) = (replays.get_mut(&id), clients.get_mut(id)) else { return };
        let ctx = Context { config, now, admission, inflater };
        let mut done = false;
        loop {
            if client.conn.is_half_full(config) {
                break;
            }
            let lost = history.lost_upto(&replay.topics);
            if lost > replay.after.max(replay.lost_ok_upto) {
                // Evicted before it could be sent.
                if !replay.sse {
                    let action = client.conn.close(
                        tungstenite::protocol::frame::coding::CloseCode::Again,
                        "replay overtaken",
                        Reason::SlowConsumer("history evicted before it was replayed"),
                        &ctx,
                    );
                    deferred.push((id, action));
                    break;
                }
                if let Err(action) = client.conn.enqueue(sse::gap(current), &ctx) {
                    deferred.push((id, action));
                    break;
                }
                replay.after = lost;
            }
            let Some((topic, entry)) = history.next_after(&replay.topics, &replay.floors, replay.after) else {
                done = true;
                break;
            };
            replay.after = entry.seq;
            let frame = if replay.sse {
                if entry.sse.is_none() {
                    entry.sse = sse::event_of(MessageId { epoch: current.epoch, seq: entry.seq }, topic, &entry.frame);
                }
                match &entry.sse {
                    Some(event) => SharedFrame::clone(event),
                    None => {
                        stats.sse_binary_skipped += 1;
                        continue;
                    }
                }
            } else {
                SharedFrame::clone(&entry.frame)
            };
            if let Err(action) = client.conn.enqueue(frame, &ctx) {
                deferred.push((id, action));
                break;
            }
            stats.replayed_messages += 1;
        }
        if done {
            let sse = replay.sse;
            replays.remove(&id);
            client.flags.set(Flags::REPLAYING, false);
            if sse && let Err(action) = client.conn.enqueue(sse::resume_point(current), &ctx) {
                deferred.push((id, action));
            }
        }
        self.mark_dirty(id, now);
        self.apply_deferred(now);
    }
}
