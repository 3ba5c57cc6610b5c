//! Who is subscribed to what, without I/O: the topic bookkeeping of the hub.
//!
//! Each topic keeps a dense list of subscriber ids, so a broadcast walks only
//! the receivers. Each client remembers where it sits in each of its topics'
//! lists, so leaving is O(topics) with a swap-remove, never a search through
//! thousands of subscribers. A sender with several topics reaches a client
//! subscribed to more than one of them once: receivers are stamped with the
//! broadcast's number as they are visited.

use std::collections::HashMap;

use slab::Slab;

use crate::topic::Topic;

/// The id of a client: its slab key in the hub, and the driver's
/// `mio::Token`.
pub type ClientId = usize;

#[derive(Debug)]
struct TopicEntry {
    name: Topic,
    subscribers: Vec<u32>,
}

/// One subscription of a client: which topic, and where in its list.
#[derive(Debug, Clone, Copy)]
struct Membership {
    topic: u32,
    position: u32,
}

/// A client's subscriptions: most clients have one topic, held inline (no
/// allocation per client); several go in a boxed slice.
#[derive(Debug, Default)]
enum Joined {
    #[default]
    None,
    One(Membership),
    Many(Box<[Membership]>),
}

impl Joined {
    fn from_vec(mut list: Vec<Membership>) -> Joined {
        match list.len() {
            0 => Joined::None,
            1 => Joined::One(list[0]),
            _ => {
                list.shrink_to_fit();
                Joined::Many(list.into_boxed_slice())
            }
        }
    }

    fn as_slice(&self) -> &[Membership] {
        match self {
            Joined::None => &[],
            Joined::One(one) => std::slice::from_ref(one),
            Joined::Many(many) => many,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Membership] {
        match self {
            Joined::None => &mut [],
            Joined::One(one) => std::slice::from_mut(one),
            Joined::Many(many) => many,
        }
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    topics: Slab<TopicEntry>,
    by_name: HashMap<Topic, u32>,
    /// Indexed by client id; empty for ids not subscribed.
    memberships: Vec<Joined>,
    /// Indexed by client id: the last broadcast that reached it.
    stamps: Vec<u64>,
    /// Indexed by client id: bit `i` set when the client may publish to its
    /// `i`-th topic (its token's `publish` grant; all bits without tokens).
    publish_masks: Vec<u16>,
    broadcasts: u64,
}

impl Subscriptions {
    /// Gives back memory after a peak: the per-client tables down to `ids`
    /// (no client at or past it is subscribed), and the maps to their size.
    pub fn shrink_to(&mut self, ids: usize) {
        debug_assert!(self.memberships.iter().skip(ids).all(|j| j.as_slice().is_empty()));
        shrink_table(&mut self.memberships, ids);
        shrink_table(&mut self.stamps, ids);
        shrink_table(&mut self.publish_masks, ids);
        self.by_name.shrink_to_fit();
        self.topics.shrink_to_fit();
    }

    /// Subscribes a new client to `topics` (already deduplicated, at most
    /// 16); its messages go to the topics whose bit is set in `publish_mask`.
    /// `created` hears of each topic that had no subscriber before.
    pub fn subscribe(
        &mut self,
        client: ClientId,
        topics: &[Topic],
        publish_mask: u16,
        mut created: impl FnMut(&Topic),
    ) {
        if self.memberships.len() <= client {
            self.memberships.resize_with(client + 1, Joined::default);
            self.stamps.resize(client + 1, 0);
            self.publish_masks.resize(client + 1, 0);
        }
        self.publish_masks[client] = publish_mask;
        debug_assert!(self.memberships[client].as_slice().is_empty(), "client {client} subscribed twice");
        let mut joined = Vec::with_capacity(topics.len());
        for topic in topics {
            let index = match self.by_name.get(topic) {
                Some(&index) => index,
                None => {
                    let index = self.topics.insert(TopicEntry { name: topic.clone(), subscribers: Vec::new() }) as u32;
                    self.by_name.insert(topic.clone(), index);
                    created(topic);
                    index
                }
            };
            let subscribers = &mut self.topics[index as usize].subscribers;
            joined.push(Membership { topic: index, position: subscribers.len() as u32 });
            subscribers.push(client as u32);
        }
        self.memberships[client] = Joined::from_vec(joined);
    }

    /// Removes a client from all its topics; a topic left empty is
    /// forgotten, and `emptied` hears of it.
    pub fn unsubscribe(&mut self, client: ClientId, mut emptied: impl FnMut(&Topic)) {
        let Some(joined) = self.memberships.get_mut(client).map(std::mem::take) else {
            return;
        };
        for &Membership { topic, position } in joined.as_slice() {
            let entry = &mut self.topics[topic as usize];
            entry.subscribers.swap_remove(position as usize);
            if let Some(&moved) = entry.subscribers.get(position as usize) {
                // The last subscriber now sits where we were: tell it.
                if let Some(m) = self.memberships[moved as usize].as_mut_slice().iter_mut().find(|m| m.topic == topic) {
                    m.position = position;
                }
            }
            if entry.subscribers.is_empty() {
                let entry = self.topics.remove(topic as usize);
                self.by_name.remove(&entry.name);
                emptied(&entry.name);
            } else if entry.subscribers.capacity() > 4 * entry.subscribers.len() + 16 {
                entry.subscribers.shrink_to(2 * entry.subscribers.len());
            }
        }
    }

    /// Calls `deliver` once for every client subscribed to any topic of
    /// `sender` that it may publish to, the sender included.
    pub fn for_each_peer(&mut self, sender: ClientId, mut deliver: impl FnMut(ClientId, &Topic)) {
        let Some(joined) = self.memberships.get(sender).map(Joined::as_slice) else {
            return;
        };
        let mask = self.publish_masks[sender];
        if let [only] = joined[..]
            && mask & 1 != 0
        {
            let entry = &self.topics[only.topic as usize];
            for &client in &entry.subscribers {
                deliver(client as ClientId, &entry.name);
            }
            return;
        }
        self.broadcasts += 1;
        let stamp = self.broadcasts;
        for (i, membership) in joined.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let entry = &self.topics[membership.topic as usize];
            for &client in &entry.subscribers {
                let seen = &mut self.stamps[client as usize];
                if *seen != stamp {
                    *seen = stamp;
                    deliver(client as ClientId, &entry.name);
                }
            }
        }
    }

    /// Calls `deliver` for every subscriber of `topic`; returns how many.
    pub fn for_each_subscriber(&self, topic: &Topic, deliver: impl FnMut(ClientId, &Topic)) -> usize {
        self.for_each_first_holder(topic.as_str(), std::iter::empty(), deliver)
    }

    /// The topics `sender`'s messages go to (those it may publish to), in
    /// its order.
    pub fn publish_topics(&self, sender: ClientId) -> impl Iterator<Item = &Topic> + Clone {
        let joined = self.memberships.get(sender).map_or(&[][..], Joined::as_slice);
        let mask = self.publish_masks.get(sender).copied().unwrap_or(0);
        joined
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, m)| &self.topics[m.topic as usize].name)
    }

    /// Calls `deliver` for every subscriber of `topic` that holds none of
    /// the topics in `earlier`: a message another hub sent to several
    /// topics, heard here on each of their channels, reaches each client
    /// through the first of them it holds, once. Returns how many.
    pub fn for_each_first_holder<'e>(
        &self,
        topic: &str,
        earlier: impl Iterator<Item = &'e str>,
        mut deliver: impl FnMut(ClientId, &Topic),
    ) -> usize {
        let Some(&index) = self.by_name.get(topic) else {
            return 0;
        };
        // Earlier topics nobody here holds cannot take a receiver away.
        let mut held = [0u32; crate::topic::MAX_TOPICS_PER_CLIENT];
        let mut count = 0;
        for name in earlier {
            if let Some(&i) = self.by_name.get(name)
                && count < held.len()
            {
                held[count] = i;
                count += 1;
            }
        }
        let held = &held[..count];
        let mut delivered = 0;
        let entry = &self.topics[index as usize];
        for &client in &entry.subscribers {
            if held.is_empty() || !self.memberships[client as usize].as_slice().iter().any(|m| held.contains(&m.topic))
            {
                deliver(client as ClientId, &entry.name);
                delivered += 1;
            }
        }
        delivered
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

/// Truncates a per-client table to `ids` entries and frees the rest.
fn shrink_table<T>(table: &mut Vec<T>, ids: usize) {
    table.truncate(ids);
    table.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u16 = u16::MAX;

    fn topics(names: &[&str]) -> Vec<Topic> {
        names.iter().map(|n| Topic::new(n).unwrap()).collect()
    }

    fn peers(hub: &mut Subscriptions, sender: ClientId) -> Vec<ClientId> {
        let mut out = Vec::new();
        hub.for_each_peer(sender, |c, _| out.push(c));
        out.sort();
        out
    }

    #[test]
    fn delivery_is_by_topic_and_exactly_once() {
        let mut hub = Subscriptions::default();
        hub.subscribe(0, &topics(&["a"]), ALL, |_| {});
        hub.subscribe(1, &topics(&["b"]), ALL, |_| {});
        hub.subscribe(2, &topics(&["a", "b"]), ALL, |_| {});
        hub.subscribe(3, &topics(&["c"]), ALL, |_| {});
        assert_eq!(peers(&mut hub, 0), [0, 2]);
        assert_eq!(peers(&mut hub, 1), [1, 2]);
        assert_eq!(peers(&mut hub, 2), [0, 1, 2]);
        assert_eq!(peers(&mut hub, 2), [0, 1, 2], "a second broadcast reaches everyone again");
        assert_eq!(peers(&mut hub, 3), [3]);
        let mut n = Vec::new();
        assert_eq!(hub.for_each_subscriber(&Topic::new("b").unwrap(), |c, _| n.push(c)), 2);
        assert_eq!(hub.for_each_subscriber(&Topic::new("zzz").unwrap(), |_, _| {}), 0);
    }

    #[test]
    fn messages_go_only_to_granted_topics() {
        let mut hub = Subscriptions::default();
        hub.subscribe(0, &topics(&["a", "b", "c"]), 0b101, |_| {}); // may publish to a and c
        hub.subscribe(1, &topics(&["a"]), ALL, |_| {});
        hub.subscribe(2, &topics(&["b"]), ALL, |_| {});
        hub.subscribe(3, &topics(&["c", "b"]), ALL, |_| {});
        hub.subscribe(4, &topics(&["b"]), 0, |_| {});
        assert_eq!(peers(&mut hub, 0), [0, 1, 3], "b's only subscriber is skipped");
        assert_eq!(peers(&mut hub, 4), Vec::<ClientId>::new());
        assert_eq!(peers(&mut hub, 2), [0, 2, 3, 4], "receiving needs no publish grant");
    }

    #[test]
    fn leaving_keeps_the_others_reachable() {
        let mut hub = Subscriptions::default();
        for id in 0..10 {
            hub.subscribe(id, &topics(&["a", "b"]), ALL, |_| {});
        }
        for id in [0, 5, 9, 3] {
            hub.unsubscribe(id, |_| {});
        }
        assert_eq!(peers(&mut hub, 1), [1, 2, 4, 6, 7, 8]);
        // a slot can be reused by a new client
        hub.subscribe(5, &topics(&["b"]), ALL, |_| {});
        assert_eq!(peers(&mut hub, 5), [1, 2, 4, 5, 6, 7, 8]);
        for id in [1, 2, 4, 5, 6, 7, 8] {
            hub.unsubscribe(id, |_| {});
        }
        assert_eq!(hub.topic_count(), 0);
        hub.unsubscribe(42, |_| {}); // unknown: no effect
    }

    #[test]
    fn first_and_last_subscribers_are_announced() {
        let mut hub = Subscriptions::default();
        let mut log = Vec::new();
        hub.subscribe(0, &topics(&["a", "b"]), ALL, |t| log.push(format!("+{t}")));
        hub.subscribe(1, &topics(&["b", "c"]), ALL, |t| log.push(format!("+{t}")));
        hub.unsubscribe(0, |t| log.push(format!("-{t}")));
        hub.unsubscribe(1, |t| log.push(format!("-{t}")));
        assert_eq!(log, ["+a", "+b", "+c", "-a", "-b", "-c"]);
    }

    #[test]
    fn a_message_heard_on_several_channels_reaches_each_client_once() {
        let mut hub = Subscriptions::default();
        hub.subscribe(0, &topics(&["a"]), ALL, |_| {});
        hub.subscribe(1, &topics(&["b"]), ALL, |_| {});
        hub.subscribe(2, &topics(&["b", "a"]), ALL, |_| {});
        hub.subscribe(3, &topics(&["c"]), ALL, |_| {});
        // Sent to [a, b, x]: heard on channel a, then on channel b.
        let heard = |hub: &Subscriptions, on: &str, earlier: &[&str]| {
            let mut out = Vec::new();
            let n = hub.for_each_first_holder(on, earlier.iter().copied(), |c, _| out.push(c));
            assert_eq!(n, out.len());
            out.sort();
            out
        };
        assert_eq!(heard(&hub, "a", &[]), [0, 2]);
        assert_eq!(heard(&hub, "b", &["a"]), [1], "2 had it through a");
        assert_eq!(heard(&hub, "c", &["a", "b", "zzz"]), [3]);
        assert_eq!(heard(&hub, "zzz", &[]), Vec::<ClientId>::new());
        hub.subscribe(7, &topics(&["x", "y", "z"]), 0b101, |_| {});
        let publishing: Vec<&str> = hub.publish_topics(7).map(Topic::as_str).collect();
        assert_eq!(publishing, ["x", "z"], "only granted topics, in order");
    }
}
