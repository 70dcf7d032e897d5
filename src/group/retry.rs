//! Retries and dead letters of a group: how a nacked record is copied, and where the copy goes.
//!
//! A record a member nacks is copied, with its key, value and application headers, plus the
//! headers below, either into the group's retry topic [`retry_topic`] (through the delay
//! scheduler, so no member sees it before its retry time) or, on its last allowed delivery,
//! into the group's dead-letter topic [`dlq_topic`]. The members of a group read its retry topic
//! along with their own topics, so a retry reaches that group only, and the record's original
//! partition keeps its order: only the copy is late.
//!
//! Headers of a copy (values are UTF-8 text):
//! - `levee.topic`, `levee.partition`, `levee.offset`: where the record was first produced;
//! - `levee.deliveries`: deliveries that failed so far (the copy's next delivery is one more);
//! - `levee.error`: the error of the last failed delivery.
//!
//! Names: a fixed prefix ending in `.` and the whole group name (group names are at most 200
//! bytes, so the name fits the 249-byte limit and never needs the group's topics to be
//! unambiguous).

use crate::record::{Header, Message};

/// Prefix of a group's retry topic.
pub const RETRY_PREFIX: &str = "__retry.";
/// Prefix of a group's dead-letter topic.
pub const DLQ_PREFIX: &str = "__dlq.";
/// Partitions of a retry topic: the retries of one original partition stay in one of them.
pub const RETRY_PARTITIONS: u32 = 4;
/// Header: the topic a record was first produced to.
pub const HEADER_TOPIC: &str = "levee.topic";
/// Header: its partition there.
pub const HEADER_PARTITION: &str = "levee.partition";
/// Header: its offset there.
pub const HEADER_OFFSET: &str = "levee.offset";
/// Header: deliveries that failed so far.
pub const HEADER_DELIVERIES: &str = "levee.deliveries";
/// Header: the last delivery's error.
pub const HEADER_ERROR: &str = "levee.error";

/// The retry topic of `group`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// The dead-letter topic of `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// The group a dead-letter topic belongs to.
pub fn dlq_group(topic: &str) -> Option<&str> {
    topic.strip_prefix(DLQ_PREFIX)
}

/// Where a record came from, as its headers say (or where it was read, for an original).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic first produced to.
    pub topic: String,
    /// Partition there.
    pub partition: u32,
    /// Offset there.
    pub offset: u64,
    /// Deliveries that failed before the one that read this copy.
    pub failed: u32,
}

fn header<'a>(m: &'a Message, key: &str) -> Option<&'a [u8]> {
    m.headers
        .iter()
        .find(|h| h.key == key)
        .map(|h| h.value.as_slice())
}

fn number<T: std::str::FromStr>(m: &Message, key: &str) -> Option<T> {
    header(m, key)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

/// Where `m`, read at `topic`/`partition`/`offset`, came from.
pub fn origin(m: &Message, topic: &str, partition: u32, offset: u64) -> Origin {
    let copied = header(m, HEADER_TOPIC).and_then(|v| std::str::from_utf8(v).ok());
    match copied {
        Some(t) => Origin {
            topic: t.to_string(),
            partition: number(m, HEADER_PARTITION).unwrap_or(0),
            offset: number(m, HEADER_OFFSET).unwrap_or(0),
            failed: number(m, HEADER_DELIVERIES).unwrap_or(0),
        },
        None => Origin {
            topic: topic.to_string(),
            partition,
            offset,
            failed: 0,
        },
    }
}

/// The copy of `m` after a failed delivery: origin headers, `failed` deliveries, `error`. The
/// application headers are kept; the producer id and sequence are cleared (the scheduler sets
/// its own).
pub fn copy(m: &Message, origin: &Origin, failed: u32, error: &str) -> Message {
    let mut headers: Vec<Header> = m
        .headers
        .iter()
        .filter(|h| !h.key.starts_with("levee."))
        .cloned()
        .collect();
    let text = |key: &str, value: String| Header {
        key: key.to_string(),
        value: value.into_bytes(),
    };
    headers.push(text(HEADER_TOPIC, origin.topic.clone()));
    headers.push(text(HEADER_PARTITION, origin.partition.to_string()));
    headers.push(text(HEADER_OFFSET, origin.offset.to_string()));
    headers.push(text(HEADER_DELIVERIES, failed.to_string()));
    headers.push(text(HEADER_ERROR, error.to_string()));
    Message {
        timestamp_ms: m.timestamp_ms,
        producer_id: 0,
        sequence: 0,
        key: m.key.clone(),
        value: m.value.clone(),
        headers,
    }
}

/// The retry partition for records first produced to `topic`/`partition`.
pub fn retry_partition(topic: &str, partition: u32) -> u32 {
    crate::shard::fnv1a32(topic.as_bytes()).wrapping_add(partition) % RETRY_PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_original_when_copied_twice_should_keep_its_origin_and_count_failures() {
        let m = Message {
            value: b"v".to_vec(),
            key: Some(b"k".to_vec()),
            headers: vec![Header {
                key: "app".into(),
                value: b"x".to_vec(),
            }],
            producer_id: 7,
            sequence: 3,
            ..Message::default()
        };
        let o = origin(&m, "signups", 2, 40);
        assert_eq!(o.failed, 0);
        let first = copy(&m, &o, 1, "smtp down");
        let o2 = origin(&first, "__retry.sms", 1, 0);
        assert_eq!(
            o2,
            Origin {
                topic: "signups".into(),
                partition: 2,
                offset: 40,
                failed: 1
            }
        );
        let second = copy(&first, &o2, 2, "still down");
        assert_eq!(second.headers.iter().filter(|h| h.key == "app").count(), 1);
        assert_eq!(
            second
                .headers
                .iter()
                .filter(|h| h.key.starts_with("levee."))
                .count(),
            5
        );
        assert_eq!(header(&second, HEADER_ERROR), Some(&b"still down"[..]));
        assert_eq!((second.producer_id, second.sequence), (0, 0));
        assert_eq!(dlq_group(&dlq_topic("a.b.c")), Some("a.b.c"));
        assert_ne!(retry_topic("x"), dlq_topic("x"));
    }
}
