//! Message ids and per-topic history, without I/O: what a client that
//! reconnects (`Last-Event-ID`, `?since=`) or joins late (`?last=N`) is
//! replayed from.
//!
//! Every message the hub accepts gets one id, `<epoch>-<seq>`: the epoch
//! names this run of the hub, `seq` counts across all topics. With
//! `--history` on, each topic keeps a ring of its recent messages: the
//! shared frames themselves (a pointer each), bounded per topic by count,
//! overall by bytes (oldest first), and by age. A ring outlives the
//! topic's last subscriber. What was evicted is remembered per topic as
//! the highest evicted id, which is all it takes to prove whether a replay
//! from a given id is complete.
//!
//! A replay is a cursor (`after`, and per-topic floors for `?last=N`);
//! [`History::next_after`] finds the next message on a client's topics in
//! id order with a binary search per topic, so streaming a replay costs
//! O(topics × log(history)) per message, never O(history).

use std::collections::{HashMap, VecDeque};

use crate::frame::SharedFrame;
use crate::time::Millis;
use crate::topic::Topic;

/// One accepted message's id: the hub's epoch and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    pub epoch: u64,
    pub seq: u64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.seq)
    }
}

impl MessageId {
    /// `<epoch in lowercase hex>-<seq in decimal>`, as the hub writes it;
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<MessageId> {
        let (epoch, seq) = text.split_once('-')?;
        let hex = |s: &str| {
            !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let dec = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !hex(epoch) || !dec(seq) {
            return None;
        }
        Some(MessageId { epoch: u64::from_str_radix(epoch, 16).ok()?, seq: seq.parse().ok()? })
    }
}

/// A fresh epoch for this run: random (the kernel's), so a quick restart
/// never reuses one; the clock and the process id if there is no
/// `/dev/urandom`.
pub fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    let epoch = if random.is_ok() {
        u64::from_le_bytes(bytes)
    } else {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64) ^ (u64::from(std::process::id()) << 32)
    };
    // Never zero, so an id always has at least one hex digit that means something.
    epoch.max(1)
}

/// `--history`, `--history-bytes`, `--history-ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages kept per topic (0: history off).
    pub per_topic: usize,
    /// Bytes of frames kept over all topics.
    pub bytes: usize,
    /// Age after which a message is evicted (0: never).
    pub ttl: Millis,
}

/// Why messages left the history, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Count,
    Bytes,
    Ttl,
    Memory,
}

impl Eviction {
    pub const ALL: [Eviction; 4] = [Eviction::Count, Eviction::Bytes, Eviction::Ttl, Eviction::Memory];

    pub fn label(self) -> &'static str {
        match self {
            Eviction::Count => "count",
            Eviction::Bytes => "bytes",
            Eviction::Ttl => "ttl",
            Eviction::Memory => "memory",
        }
    }
}

/// A retained message.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    pub at: Millis,
    /// The WebSocket frame every receiver shared.
    pub frame: SharedFrame,
    /// Its Server-Sent Events encoding for this topic, once made.
    pub sse: Option<SharedFrame>,
}

#[derive(Debug)]
struct Ring {
    topic: Topic,
    entries: VecDeque<Entry>,
    /// The highest id evicted from this topic (0: none).
    evicted_upto: u64,
}

/// Every topic's ring, and the bounds over all of them.
#[derive(Debug)]
pub struct History {
    limits: Limits,
    rings: Vec<Option<Ring>>,
    free: Vec<usize>,
    by_topic: HashMap<Topic, usize>,
    /// (seq, ring) of every retained entry, oldest first, for eviction by
    /// bytes, age and memory; entries evicted by count leave stale pairs
    /// here, skipped when met and compacted when they outnumber the rest.
    order: VecDeque<(u64, usize)>,
    entries: usize,
    bytes: usize,
    /// The highest id evicted from a ring that no longer exists: a topic
    /// without a ring may have lost messages up to here.
    forgotten_upto: u64,
    evictions: [u64; 4],
}

impl History {
    pub fn new(limits: Limits) -> History {
        History {
            limits,
            rings: Vec::new(),
            free: Vec::new(),
            by_topic: HashMap::new(),
            order: VecDeque::new(),
            entries: 0,
            bytes: 0,
            forgotten_upto: 0,
            evictions: [0; 4],
        }
    }

    pub fn is_on(&self) -> bool {
        self.limits.per_topic > 0
    }

    /// Messages retained (counted once per topic they are kept for).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Bytes of frames retained, as `--history-bytes` counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages evicted so far, by cause.
    pub fn evictions(&self) -> [u64; 4] {
        self.evictions
    }

    /// Heap bytes of the history's own structures (the frames are counted
    /// where they are made), in O(1): the budget asks after every event.
    /// The rings' entries are counted as retained, not as allocated (a
    /// ring's spare capacity is at most its own size).
    pub fn held_bytes(&self) -> usize {
        self.entries * size_of::<Entry>()
            + self.rings.capacity() * size_of::<Option<Ring>>()
            + self.order.capacity() * size_of::<(u64, usize)>()
            + self.by_topic.capacity() * (size_of::<Topic>() + size_of::<usize>() + 8)
    }

    /// Keeps message `seq` for `topic` (a `Topic`, or a topic's name as a
    /// message from another hub names it: no allocation unless the topic's
    /// ring is new), then applies the bounds.
    pub fn append<Q: std::borrow::Borrow<str> + ?Sized>(
        &mut self,
        topic: &Q,
        seq: u64,
        frame: &SharedFrame,
        now: Millis,
    ) {
        if !self.is_on() {
            return;
        }
        let name: &str = topic.borrow();
        let index = match self.by_topic.get(name) {
            Some(&index) => index,
            None => match Topic::new(name) {
                Ok(topic) => self.new_ring(topic),
                Err(_) => return,
            },
        };
        let Some(ring) = self.rings[index].as_mut() else { return };
        ring.entries.push_back(Entry { seq, at: now, frame: SharedFrame::clone(frame), sse: None });
        self.entries += 1;
        self.bytes += frame.len();
        self.order.push_back((seq, index));
        if ring.entries.len() > self.limits.per_topic {
            self.pop_front(index, Eviction::Count);
        }
        while self.bytes > self.limits.bytes && self.evict_oldest(Eviction::Bytes) {}
        if self.order.len() > 64 && self.order.len() > 2 * self.entries {
            self.compact();
        }
    }

    fn new_ring(&mut self, topic: Topic) -> usize {
        // A new ring may follow one that was emptied and dropped: what was
        // forgotten then counts as evicted here.
        let ring = Ring { topic: topic.clone(), entries: VecDeque::new(), evicted_upto: self.forgotten_upto };
        let index = match self.free.pop() {
            Some(index) => {
                self.rings[index] = Some(ring);
                index
            }
            None => {
                self.rings.push(Some(ring));
                self.rings.len() - 1
            }
        };
        self.by_topic.insert(topic, index);
        index
    }

    /// Evicts the front of ring `index`; drops the ring once empty.
    fn pop_front(&mut self, index: usize, why: Eviction) {
        let Some(ring) = self.rings[index].as_mut() else { return };
        let Some(entry) = ring.entries.pop_front() else { return };
        ring.evicted_upto = ring.evicted_upto.max(entry.seq);
        self.entries -= 1;
        self.bytes -= entry.frame.len();
        self.evictions[why as usize] += 1;
        if ring.entries.is_empty() {
            self.forgotten_upto = self.forgotten_upto.max(ring.evicted_upto);
            self.by_topic.remove(&ring.topic);
            self.rings[index] = None;
            self.free.push(index);
        }
    }

    /// Evicts the oldest message of any topic; false when there is none.
    pub fn evict_oldest(&mut self, why: Eviction) -> bool {
        while let Some((seq, index)) = self.order.pop_front() {
            let front = self.rings.get(index).and_then(Option::as_ref).and_then(|r| r.entries.front());
            if front.is_some_and(|e| e.seq == seq) {
                self.pop_front(index, why);
                return true;
            }
        }
        false
    }

    /// Evicts what is older than `--history-ttl`.
    pub fn expire(&mut self, now: Millis) {
        if self.limits.ttl == 0 {
            return;
        }
        while let Some(&(seq, index)) = self.order.front() {
            let front = self.rings.get(index).and_then(Option::as_ref).and_then(|r| r.entries.front());
            match front {
                Some(entry) if entry.seq == seq => {
                    if entry.at.saturating_add(self.limits.ttl) > now {
                        return;
                    }
                    self.order.pop_front();
                    self.pop_front(index, Eviction::Ttl);
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    /// Drops the stale pairs of `order`.
    fn compact(&mut self) {
        let rings = &self.rings;
        self.order.retain(|&(seq, index)| {
            rings[index].as_ref().is_some_and(|r| r.entries.front().is_some_and(|front| front.seq <= seq))
        });
    }

    /// Whether a client that saw everything up to `after` on `topics` can
    /// be replayed all it missed: nothing after it was evicted.
    pub fn complete_after<'t>(&self, topics: impl IntoIterator<Item = &'t Topic>, after: u64) -> bool {
        self.lost_upto(topics) <= after
    }

    /// The highest id evicted from any of `topics` (0: none).
    pub fn lost_upto<'t>(&self, topics: impl IntoIterator<Item = &'t Topic>) -> u64 {
        topics
            .into_iter()
            .map(|topic| match self.by_topic.get(topic).and_then(|&i| self.rings[i].as_ref()) {
                Some(ring) => ring.evicted_upto,
                None => self.forgotten_upto,
            })
            .max()
            .unwrap_or(0)
    }

    /// Where `?last=n` starts for `topic`: the lowest id of its last `n`
    /// retained messages (`u64::MAX` if it has none).
    pub fn floor_for_last(&self, topic: &Topic, n: usize) -> u64 {
        let Some(ring) = self.by_topic.get(topic).and_then(|&i| self.rings[i].as_ref()) else { return u64::MAX };
        let skip = ring.entries.len().saturating_sub(n);
        ring.entries.get(skip).map_or(u64::MAX, |e| e.seq)
    }

    /// The next retained message after `after` on any of `topics` (each
    /// with its floor: entries below it are skipped), in id order: the
    /// topic it is kept for and the entry.
    pub fn next_after<'h>(
        &'h mut self,
        topics: &[Topic],
        floors: &[u64],
        after: u64,
    ) -> Option<(&'h Topic, &'h mut Entry)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (i, topic) in topics.iter().enumerate() {
            let Some(&index) = self.by_topic.get(topic) else { continue };
            let Some(ring) = self.rings[index].as_ref() else { continue };
            let from = after.max(floors.get(i).copied().unwrap_or(0).saturating_sub(1));
            let at = ring.entries.partition_point(|e| e.seq <= from);
            if let Some(entry) = ring.entries.get(at)
                && best.is_none_or(|(_, _, seq)| entry.seq < seq)
            {
                best = Some((index, at, entry.seq));
            }
        }
        let (index, at, _) = best?;
        let ring = self.rings[index].as_mut()?;
        let entry = ring.entries.get_mut(at)?;
        Some((&ring.topic, entry))
    }

    /// Frees table capacity after a burst.
    pub fn shrink(&mut self) {
        self.order.shrink_to_fit();
        self.by_topic.shrink_to_fit();
        for ring in self.rings.iter_mut().flatten() {
            ring.entries.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MessageKind, encode_message};

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    fn frame(len: usize) -> SharedFrame {
        encode_message(MessageKind::Text, &vec![b'x'; len])
    }

    fn limits(per_topic: usize, bytes: usize, ttl: Millis) -> Limits {
        Limits { per_topic, bytes, ttl }
    }

    /// The ids a replay from `after` yields, in order.
    fn replay(history: &mut History, topics: &[Topic], floors: &[u64], mut after: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Some((topic, entry)) = history.next_after(topics, floors, after) {
            out.push((topic.as_str().to_string(), entry.seq));
            after = entry.seq;
        }
        out
    }

    #[test]
    fn ids_print_and_parse() {
        let id = MessageId { epoch: 0x1f2e, seq: 42 };
        assert_eq!(id.to_string(), "1f2e-42");
        assert_eq!(MessageId::parse("1f2e-42"), Some(id));
        for bad in [
            "",
            "-",
            "1f2e",
            "1f2e-",
            "-42",
            "1F2E-42",
            "1f2e-4x",
            "1f2e-42-1",
            "g-1",
            "1f2e--42",
            "11111111111111111-1",
        ] {
            assert_eq!(MessageId::parse(bad), None, "{bad}");
        }
        assert_ne!(new_epoch(), new_epoch(), "random per start");
    }

    #[test]
    fn a_replay_merges_topics_in_id_order_without_duplicates() {
        let mut h = History::new(limits(10, 1 << 20, 0));
        let (a, b) = (topic("a"), topic("b"));
        h.append(&a, 1, &frame(10), 0);
        h.append(&b, 2, &frame(10), 0);
        // One message through both topics: one id, kept in both rings.
        h.append(&a, 3, &frame(10), 0);
        h.append(&b, 3, &frame(10), 0);
        h.append(&b, 4, &frame(10), 0);
        let both = [a.clone(), b.clone()];
        let got: Vec<u64> = replay(&mut h, &both, &[], 0).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(replay(&mut h, &both, &[], 2).len(), 2);
        assert_eq!(replay(&mut h, std::slice::from_ref(&a), &[], 0), [("a".into(), 1), ("a".into(), 3)]);
        assert!(h.complete_after(&both, 0));
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn evictions_by_count_bytes_and_age_are_remembered_per_topic() {
        let mut h = History::new(limits(2, 1 << 20, 1000));
        let (a, b) = (topic("a"), topic("b"));
        for seq in 1..=3 {
            h.append(&a, seq, &frame(10), 0);
        }
        h.append(&b, 4, &frame(10), 500);
        // a lost 1 to the count bound: complete after 1, not after 0.
        assert!(!h.complete_after([&a], 0));
        assert!(h.complete_after([&a], 1));
        assert!(h.complete_after([&b], 0), "b lost nothing");
        assert_eq!(h.evictions()[Eviction::Count as usize], 1);
        // Age: a's messages (at 0) go at 1000; b's (at 500) at 1500.
        h.expire(999);
        assert_eq!(h.len(), 3);
        h.expire(1000);
        assert_eq!(h.len(), 1);
        assert!(h.complete_after([&a], 3), "a's ring is gone, what it lost is remembered");
        assert!(!h.complete_after([&a], 2));
        // A topic that never had a ring may have lost what any dropped ring lost.
        assert!(!h.complete_after([&topic("c")], 2));
        h.append(&a, 5, &frame(10), 1200);
        assert!(!h.complete_after([&a], 2), "a new ring starts from what was forgotten");
        h.expire(1500);
        assert_eq!(replay(&mut h, &[a.clone(), b.clone()], &[], 0), [("a".into(), 5)]);
        assert_eq!(h.evictions()[Eviction::Ttl as usize], 3);
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_of_any_topic() {
        let per = frame(100).len();
        let mut h = History::new(limits(100, 3 * per, 0));
        let (a, b) = (topic("a"), topic("b"));
        h.append(&a, 1, &frame(100), 0);
        h.append(&b, 2, &frame(100), 0);
        h.append(&a, 3, &frame(100), 0);
        h.append(&b, 4, &frame(100), 0);
        assert_eq!(h.bytes(), 3 * per);
        assert!(!h.complete_after([&a], 0), "1 went first");
        assert!(h.complete_after([&b], 0));
        assert!(h.evict_oldest(Eviction::Memory));
        assert!(!h.complete_after([&b], 1), "then 2");
        assert_eq!(replay(&mut h, &[a, b], &[], 0).len(), 2);
    }

    #[test]
    fn last_n_starts_each_topic_at_its_own_nth_last() {
        let mut h = History::new(limits(10, 1 << 20, 0));
        let (a, b) = (topic("a"), topic("b"));
        for seq in 1..=6 {
            h.append(if seq <= 4 { &a } else { &b }, seq, &frame(1), 0);
        }
        let topics = [a.clone(), b.clone()];
        let floors: Vec<u64> = topics.iter().map(|t| h.floor_for_last(t, 2)).collect();
        assert_eq!(floors, [3, 5]);
        let got: Vec<u64> = replay(&mut h, &topics, &floors, 0).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, [3, 4, 5, 6]);
        assert_eq!(h.floor_for_last(&topic("none"), 2), u64::MAX);
    }

    #[test]
    fn stale_order_pairs_are_compacted_so_the_count_bound_cannot_grow_it() {
        let mut h = History::new(limits(1, usize::MAX, 0));
        let a = topic("a");
        for seq in 1..=10_000 {
            h.append(&a, seq, &frame(1), 0);
        }
        assert_eq!(h.len(), 1);
        assert!(h.order.len() <= 130, "{}", h.order.len());
    }

    #[test]
    fn off_keeps_nothing() {
        let mut h = History::new(limits(0, 1 << 20, 0));
        h.append(&topic("a"), 1, &frame(1), 0);
        assert_eq!(h.len(), 0);
        assert!(!h.is_on());
    }
}
