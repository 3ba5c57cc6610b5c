//! Topic names, and the subscription list carried in the upgrade URL.

use std::fmt;

/// Most topics one connection may subscribe to (contract: 16).
pub const MAX_TOPICS_PER_CLIENT: usize = 16;
/// Topic a plain `/ws` connection subscribes to.
pub const DEFAULT_TOPIC: &str = "all";

/// A topic name that is known to be valid: 1–64 bytes of `A-Z a-z 0-9 . _ - :`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Box<str>);

/// Why a topic name or list was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    BadChar,
    TooMany,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 64 bytes",
            TopicError::BadChar => "topic may only contain A-Z a-z 0-9 . _ - :",
            TopicError::TooMany => "more than 16 topics",
        })
    }
}

impl std::error::Error for TopicError {}

/// A byte a topic name may hold.
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// Checks a `--redis-prefix`. Channels are prefix + topic, and topics may
/// hold `:`, so nested prefixes would share channels (`wshub:` with topic
/// `b:x` is `wshub:b:` with topic `x`). The rule that keeps every prefix's
/// channels apart: a name of `A-Z a-z 0-9 . _ -` (no `:`), then one
/// separator that is `:` or a character no topic holds. The first
/// separator-like character of a channel then ends its prefix.
pub fn check_channel_prefix(prefix: &str) -> Result<(), &'static str> {
    let Some((&separator, name)) = prefix.as_bytes().split_last() else {
        return Err("must not be empty (channels of different prefixes would meet)");
    };
    let plain = |b: u8| is_topic_byte(b) && b != b':';
    if !name.iter().all(|&b| plain(b)) || plain(separator) || prefix.len() > 256 || !separator.is_ascii_graphic() {
        return Err(
            "must be a name of A-Z a-z 0-9 . _ - then one ':' (or another separator no topic holds, e.g. '/'), \
                    like the default wshub: (so that no prefix's channels meet another's)",
        );
    }
    Ok(())
}

impl Topic {
    pub fn new(name: &str) -> Result<Topic, TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if name.len() > 64 {
            return Err(TopicError::TooLong);
        }
        if !name.bytes().all(is_topic_byte) {
            return Err(TopicError::BadChar);
        }
        Ok(Topic(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets maps keyed by topic be searched with a `&str` (a name heard from
/// Redis) without building a `Topic`: hashing and equality are the name's.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

/// Topics named by a query string such as `topic=a&topic=b`: `all` when none
/// is named, duplicates folded. Other parameters are ignored so that clients
/// may add their own (a cache buster, a client id).
pub fn topics_from_query(query: Option<&str>) -> Result<Vec<Topic>, TopicError> {
    let mut topics: Vec<Topic> = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(value) = pair.strip_prefix("topic=") else {
            continue;
        };
        let topic = Topic::new(value)?;
        if !topics.contains(&topic) {
            if topics.len() == MAX_TOPICS_PER_CLIENT {
                return Err(TopicError::TooMany);
            }
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        topics.push(Topic(DEFAULT_TOPIC.into()));
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_prefixes_never_share_channels() {
        let good = ["wshub:", "app1:", "a-b.c_d:", ":", "tenant/"];
        for prefix in good {
            assert_eq!(check_channel_prefix(prefix), Ok(()), "{prefix}");
        }
        for bad in ["", "wshub", "wshub:b:", "a:b/", "a b:", "wshub::", "x\n:", "é:"] {
            assert!(check_channel_prefix(bad).is_err(), "{bad:?}");
        }
        // No two valid prefixes give one channel for two topics.
        let topics = ["b", "b:secret", "secret", ":", "x:y:z", "a-b.c_d:e"];
        let mut seen = std::collections::HashMap::new();
        for prefix in good.iter().chain(&["wshub-b:", "b:", "wshub/"]) {
            for topic in topics {
                let channel = format!("{prefix}{topic}");
                if let Some(other) = seen.insert(channel.clone(), (prefix, topic)) {
                    panic!("{channel} is {other:?} and {:?}", (prefix, topic));
                }
            }
        }
    }

    #[test]
    fn valid_and_invalid_names() {
        assert!(Topic::new("sensors.room-1:temp_c").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new(&"a".repeat(65)), Err(TopicError::TooLong));
        assert!(Topic::new(&"a".repeat(64)).is_ok());
        assert_eq!(Topic::new("a b"), Err(TopicError::BadChar));
        assert_eq!(Topic::new("a%20b"), Err(TopicError::BadChar));
        assert_eq!(Topic::new("é"), Err(TopicError::BadChar));
    }

    #[test]
    fn query_lists() {
        fn names(q: Option<&str>) -> Result<Vec<String>, TopicError> {
            topics_from_query(q).map(|t| t.iter().map(|t| t.to_string()).collect())
        }
        assert_eq!(names(None).unwrap(), ["all"]);
        assert_eq!(names(Some("")).unwrap(), ["all"]);
        assert_eq!(names(Some("topic=a&topic=b&topic=a")).unwrap(), ["a", "b"]);
        assert_eq!(names(Some("x=1&topic=a")).unwrap(), ["a"]);
        assert_eq!(names(Some("topic=")), Err(TopicError::Empty));
        let many: Vec<String> = (0..17).map(|i| format!("topic=t{i}")).collect();
        assert_eq!(names(Some(&many.join("&"))), Err(TopicError::TooMany));
        assert_eq!(names(Some(&many[..16].join("&"))).unwrap().len(), 16);
    }
}
