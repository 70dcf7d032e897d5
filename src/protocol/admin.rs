//! Bodies of the operator apis (keys 22 to 25): SetQuota, ListQuotas, DeleteQuota and Stats.
//! docs/protocol.md §6.23 on draws them byte by byte; `messages.rs` calls these from its request
//! and response matches.

use super::wire::{Reader, Writer};
use super::DecodeError;

/// What a quota applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaEntity {
    /// Every connection that announced this client id in its handshake (ApiVersions).
    Client(String),
    /// Every client's traffic to and from this topic.
    Topic(String),
}

impl QuotaEntity {
    /// `client` or `topic`.
    pub fn kind(&self) -> &'static str {
        match self {
            QuotaEntity::Client(_) => "client",
            QuotaEntity::Topic(_) => "topic",
        }
    }

    /// The client id or topic name.
    pub fn name(&self) -> &str {
        match self {
            QuotaEntity::Client(n) | QuotaEntity::Topic(n) => n,
        }
    }
}

impl std::fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} '{}'", self.kind(), self.name())
    }
}

/// Quota rates, per second; `None` is unlimited (in a SetQuota: left as it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Produced record bytes per second.
    pub produce_bytes: Option<u64>,
    /// Produced messages per second.
    pub produce_messages: Option<u64>,
    /// Fetched record bytes per second.
    pub fetch_bytes: Option<u64>,
    /// Fetched messages per second.
    pub fetch_messages: Option<u64>,
}

impl QuotaLimits {
    /// The four rates in wire order.
    pub fn as_array(&self) -> [Option<u64>; 4] {
        [
            self.produce_bytes,
            self.produce_messages,
            self.fetch_bytes,
            self.fetch_messages,
        ]
    }

    /// Limits from the four rates in wire order.
    pub fn from_array(a: [Option<u64>; 4]) -> QuotaLimits {
        QuotaLimits {
            produce_bytes: a[0],
            produce_messages: a[1],
            fetch_bytes: a[2],
            fetch_messages: a[3],
        }
    }

    /// True when nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.as_array().iter().all(Option::is_none)
    }

    /// These limits with every limit `change` sets replaced.
    pub fn merged(&self, change: &QuotaLimits) -> QuotaLimits {
        let (a, b) = (self.as_array(), change.as_array());
        QuotaLimits::from_array([0, 1, 2, 3].map(|i| b[i].or(a[i])))
    }
}

pub(super) fn write_entity(w: &mut Writer<'_>, e: &QuotaEntity) {
    w.u8(match e {
        QuotaEntity::Client(_) => 0,
        QuotaEntity::Topic(_) => 1,
    });
    w.str(e.name());
}

pub(super) fn read_entity(r: &mut Reader<'_>) -> Result<QuotaEntity, DecodeError> {
    let at = r.position();
    let kind = r.u8()?;
    let name = r.string()?;
    match kind {
        0 => Ok(QuotaEntity::Client(name)),
        1 => Ok(QuotaEntity::Topic(name)),
        _ => Err(DecodeError::Invalid {
            position: at,
            what: "quota entity kind is not 0 (client) or 1 (topic)",
        }),
    }
}

pub(super) fn write_limits(w: &mut Writer<'_>, l: &QuotaLimits) {
    for rate in l.as_array() {
        w.opt_u64(rate);
    }
}

pub(super) fn read_limits(r: &mut Reader<'_>) -> Result<QuotaLimits, DecodeError> {
    Ok(QuotaLimits::from_array([
        r.opt_u64()?,
        r.opt_u64()?,
        r.opt_u64()?,
        r.opt_u64()?,
    ]))
}

pub(super) fn write_quotas(w: &mut Writer<'_>, all: &[(QuotaEntity, QuotaLimits)]) {
    w.count(all.len());
    for (e, l) in all {
        write_entity(w, e);
        write_limits(w, l);
    }
}

pub(super) fn read_quotas(
    r: &mut Reader<'_>,
) -> Result<Vec<(QuotaEntity, QuotaLimits)>, DecodeError> {
    let n = r.count(1 + 2 + 4)?;
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push((read_entity(r)?, read_limits(r)?));
    }
    Ok(all)
}

/// One shard's counters in a Stats response: totals since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Shard number.
    pub shard: u16,
    /// The shard showed it runs within the last 5 seconds.
    pub up: bool,
    /// Open client connections.
    pub connections: u32,
    /// Requests handled.
    pub requests: u64,
    /// Records appended.
    pub records_in: u64,
    /// Bytes of records appended.
    pub bytes_in: u64,
    /// Records sent to consumers.
    pub records_out: u64,
    /// Bytes of records sent to consumers.
    pub bytes_out: u64,
    /// Produce blocks answered `Throttled` by a full `block` backlog.
    pub backlog_throttled: u64,
    /// Produce blocks answered `QueueFull` by a full `reject` backlog.
    pub backlog_rejected: u64,
    /// Segments deleted by `drop-oldest` backlogs.
    pub backlog_dropped_segments: u64,
    /// Produce and Fetch blocks answered `Throttled` by a quota.
    pub quota_throttled: u64,
    /// Milliseconds of waiting handed out in `throttle_ms`, every reason.
    pub throttle_ms: u64,
}

/// One partition in a Stats response, as its shard last published it (every 500 ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// First offset stored.
    pub earliest: u64,
    /// Offset of the next record.
    pub next: u64,
    /// Every offset below this is durable.
    pub durable: u64,
    /// Bytes stored.
    pub size_bytes: u64,
}

/// One group's position on one partition in a Stats response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLagStats {
    /// Group.
    pub group: String,
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Committed offset (the next the group reads).
    pub committed: u64,
    /// Messages between the committed offset and the log end.
    pub lag: u64,
}

/// A Stats response: what `levee stats` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsResponse {
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Bytes of the memory budget in use.
    pub memory_used: u64,
    /// The memory budget (`memory_bytes_max`).
    pub memory_max: u64,
    /// Every shard.
    pub shards: Vec<ShardStats>,
    /// Every partition whose log is open (internal topics included): a partition's log is
    /// opened at its first use after the broker starts.
    pub partitions: Vec<PartitionStats>,
    /// Every group's committed offset and lag.
    pub groups: Vec<GroupLagStats>,
}

pub(super) fn write_stats(w: &mut Writer<'_>, s: &StatsResponse) {
    w.u64(s.uptime_ms);
    w.u64(s.memory_used);
    w.u64(s.memory_max);
    w.count(s.shards.len());
    for sh in &s.shards {
        w.u16(sh.shard);
        w.u8(u8::from(sh.up));
        w.u32(sh.connections);
        for v in [
            sh.requests,
            sh.records_in,
            sh.bytes_in,
            sh.records_out,
            sh.bytes_out,
            sh.backlog_throttled,
            sh.backlog_rejected,
            sh.backlog_dropped_segments,
            sh.quota_throttled,
            sh.throttle_ms,
        ] {
            w.u64(v);
        }
    }
    w.count(s.partitions.len());
    for p in &s.partitions {
        w.str(&p.topic);
        w.u32(p.partition);
        w.u64(p.earliest);
        w.u64(p.next);
        w.u64(p.durable);
        w.u64(p.size_bytes);
    }
    w.count(s.groups.len());
    for g in &s.groups {
        w.str(&g.group);
        w.str(&g.topic);
        w.u32(g.partition);
        w.u64(g.committed);
        w.u64(g.lag);
    }
}

pub(super) fn read_stats(r: &mut Reader<'_>) -> Result<StatsResponse, DecodeError> {
    let mut s = StatsResponse {
        uptime_ms: r.u64()?,
        memory_used: r.u64()?,
        memory_max: r.u64()?,
        ..StatsResponse::default()
    };
    let n = r.count(2 + 1 + 4 + 10 * 8)?;
    for _ in 0..n {
        let shard = r.u16()?;
        let at = r.position();
        let up = match r.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(DecodeError::Invalid {
                    position: at,
                    what: "shard up is not 0 or 1",
                })
            }
        };
        let connections = r.u32()?;
        let mut v = [0u64; 10];
        for x in &mut v {
            *x = r.u64()?;
        }
        s.shards.push(ShardStats {
            shard,
            up,
            connections,
            requests: v[0],
            records_in: v[1],
            bytes_in: v[2],
            records_out: v[3],
            bytes_out: v[4],
            backlog_throttled: v[5],
            backlog_rejected: v[6],
            backlog_dropped_segments: v[7],
            quota_throttled: v[8],
            throttle_ms: v[9],
        });
    }
    let n = r.count(2 + 4 + 4 * 8)?;
    for _ in 0..n {
        s.partitions.push(PartitionStats {
            topic: r.string()?,
            partition: r.u32()?,
            earliest: r.u64()?,
            next: r.u64()?,
            durable: r.u64()?,
            size_bytes: r.u64()?,
        });
    }
    let n = r.count(2 + 2 + 4 + 2 * 8)?;
    for _ in 0..n {
        s.groups.push(GroupLagStats {
            group: r.string()?,
            topic: r.string()?,
            partition: r.u32()?,
            committed: r.u64()?,
            lag: r.u64()?,
        });
    }
    Ok(s)
}
