//! Request and response bodies: decode on the receiving side, encode on the sending side.
//!
//! Record runs are never copied by the codec: a decoded Produce request or Fetch response holds the
//! byte range of each run inside the frame (16-byte aligned from the frame start), and a Fetch
//! response is encoded as headers with holes where the server splices the runs straight from the
//! segment mappings.

use std::ops::Range;

use super::admin;
use super::delivery::{
    self, DlqReplayResponse, NackRequest, NackResponse, ProduceDelayedRequest,
    ProduceDelayedResponse,
};
use super::groups::{
    self, GroupDescription, GroupSummary, JoinGroupRequest, JoinGroupResponse, OffsetCommitRequest,
};
use super::wire::{Reader, Writer};
use super::{
    begin_request, begin_response, finish_frame, request_header, response_header, ApiKey,
    DecodeError, EncodeError, ErrorCode, RequestHeader, ResponseHeader, HEADER_LEN,
};

/// What a producer waits for before a send counts as done (CONTRACT.md, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Acks {
    /// No response at all: fire and forget.
    None = 0,
    /// Acknowledged once the records are in the mapped segment (survives a broker crash).
    Written = 1,
    /// Acknowledged once a flush covering the records completed (survives power loss).
    Durable = 2,
}

impl Acks {
    pub(super) fn from_u8(v: u8, position: usize) -> Result<Acks, DecodeError> {
        match v {
            0 => Ok(Acks::None),
            1 => Ok(Acks::Written),
            2 => Ok(Acks::Durable),
            _ => Err(DecodeError::Invalid {
                position,
                what: "acks is not 0, 1 or 2",
            }),
        }
    }
}

/// Which records of a topic a Fetch may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Visibility {
    /// Every appended record (the log end): lowest latency, but a power cut can take back a
    /// record a consumer already acted on.
    Written = 1,
    /// Only records a flush made durable: a consumer never acts on a record a power cut can take
    /// back.
    Durable = 2,
}

impl Visibility {
    fn decode(v: u8, position: usize) -> Result<Option<Visibility>, DecodeError> {
        match v {
            0 => Ok(None),
            1 => Ok(Some(Visibility::Written)),
            2 => Ok(Some(Visibility::Durable)),
            _ => Err(DecodeError::Invalid {
                position,
                what: "visibility is not 0, 1 or 2",
            }),
        }
    }

    fn wire(v: Option<Visibility>) -> u8 {
        v.map_or(0, |v| v as u8)
    }
}

/// What a partition does when its backlog is full (docs/protocol.md §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BacklogPolicy {
    /// Producers wait: a Produce block is answered `Throttled` with a `throttle_ms` (version 3;
    /// older versions get `Busy`), and the producer sends it again. Peak shaving.
    Block = 1,
    /// Producers fail fast with `QueueFull`.
    Reject = 2,
    /// The oldest messages are deleted to make room, committed or not.
    DropOldest = 3,
}

impl BacklogPolicy {
    fn decode(v: u8, position: usize) -> Result<Option<BacklogPolicy>, DecodeError> {
        match v {
            0 => Ok(None),
            1 => Ok(Some(BacklogPolicy::Block)),
            2 => Ok(Some(BacklogPolicy::Reject)),
            3 => Ok(Some(BacklogPolicy::DropOldest)),
            _ => Err(DecodeError::Invalid {
                position,
                what: "backlog policy is not 0, 1, 2 or 3",
            }),
        }
    }

    fn wire(v: Option<BacklogPolicy>) -> u8 {
        v.map_or(0, |v| v as u8)
    }

    /// The name used by the CLI, the config file and docs.
    pub fn name(self) -> &'static str {
        match self {
            BacklogPolicy::Block => "block",
            BacklogPolicy::Reject => "reject",
            BacklogPolicy::DropOldest => "drop-oldest",
        }
    }

    /// The policy named `name` (see [`BacklogPolicy::name`]).
    pub fn from_name(name: &str) -> Option<BacklogPolicy> {
        [
            BacklogPolicy::Block,
            BacklogPolicy::Reject,
            BacklogPolicy::DropOldest,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// A topic's backlog bound: how many messages (or bytes) of a partition may wait for its slowest
/// consumer group, and what happens beyond. Carried by CreateTopic and AlterTopic version 3 and
/// DescribeTopic version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Most messages per partition not yet committed by every group (by the log start, for a
    /// partition no group committed). CreateTopic: `None` is unlimited; AlterTopic: `None`
    /// leaves it, `Some(0)` removes it; DescribeTopic: `None` is unlimited.
    pub messages_max: Option<u64>,
    /// Most bytes per partition, counted like `messages_max`.
    pub bytes_max: Option<u64>,
    /// What happens at the bound. CreateTopic: `None` is `Block`; AlterTopic: `None` leaves it;
    /// DescribeTopic: always given.
    pub policy: Option<BacklogPolicy>,
}

impl Backlog {
    fn encode(&self, w: &mut Writer<'_>) {
        w.opt_u64(self.messages_max);
        w.opt_u64(self.bytes_max);
        w.u8(BacklogPolicy::wire(self.policy));
    }

    fn decode(r: &mut Reader<'_>) -> Result<Backlog, DecodeError> {
        let messages_max = r.opt_u64()?;
        let bytes_max = r.opt_u64()?;
        let at = r.position();
        Ok(Backlog {
            messages_max,
            bytes_max,
            policy: BacklogPolicy::decode(r.u8()?, at)?,
        })
    }

    /// True when nothing is set.
    pub fn is_unset(&self) -> bool {
        *self == Backlog::default()
    }
}

/// Where a ListOffsets lookup points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored.
    Earliest,
    /// The offset the next record will get.
    Latest,
    /// The first offset appended at or after this time (ms since the epoch); `Latest` if none.
    Timestamp(i64),
}

/// Topic settings carried by CreateTopic and DescribeTopic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Retention by bytes per partition. In CreateTopic, `None` takes the broker's default
    /// (`--retention-bytes`); in DescribeTopic, `None` is unlimited.
    pub retention_bytes: Option<u64>,
    /// Retention by age in ms. In CreateTopic, `None` takes the broker's default
    /// (`--retention-ms`); in DescribeTopic, `None` is unlimited.
    pub retention_ms: Option<u64>,
    /// Read visibility. In CreateTopic (v2), `None` takes the broker's default (`durable` under
    /// `--fsync always`, else `written`); in DescribeTopic (v1), always given.
    pub visibility: Option<Visibility>,
    /// The backlog bound (CreateTopic v3, DescribeTopic v2).
    pub backlog: Backlog,
}

impl Default for TopicConfig {
    /// One partition, everything else the broker's defaults.
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention_bytes: None,
            retention_ms: None,
            visibility: None,
            backlog: Backlog::default(),
        }
    }
}

/// What AlterTopic changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicChange {
    /// New partition count (up only).
    pub partitions: Option<u32>,
    /// New retention by bytes (0: unlimited).
    pub retention_bytes: Option<u64>,
    /// New retention by age (0: unlimited).
    pub retention_ms: Option<u64>,
    /// New read visibility.
    pub visibility: Option<Visibility>,
    /// New backlog bounds (0: unlimited) and policy.
    pub backlog: Backlog,
}

/// One partition's batch in a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceBlock {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Byte range of the record run inside the request frame.
    pub run: Range<usize>,
}

/// A Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    /// What to wait for before answering.
    pub acks: Acks,
    /// How long the broker may wait for `Durable` before answering `Timeout`.
    pub timeout_ms: u32,
    /// The batches.
    pub blocks: Vec<ProduceBlock>,
}

/// One partition read in a Fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchBlock {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Most bytes of records wanted from this partition (at least one record is returned).
    pub max_bytes: u32,
}

/// A Fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// How long to wait for `min_bytes` to arrive.
    pub max_wait_ms: u32,
    /// Answer as soon as this many bytes are available across the blocks.
    pub min_bytes: u32,
    /// Most bytes of records in the whole response.
    pub max_bytes: u32,
    /// The partitions to read.
    pub blocks: Vec<FetchBlock>,
}

impl FetchRequest {
    /// A fetch of one partition from `offset`, answered as soon as any record is there (the long
    /// poll is for latency, not batching) or after `max_wait_ms`.
    pub fn one(
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> FetchRequest {
        FetchRequest {
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
            blocks: vec![FetchBlock {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
            }],
        }
    }
}

/// One lookup of a ListOffsets request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsBlock {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// What to look up.
    pub spec: OffsetSpec,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Handshake.
    ApiVersions {
        /// Free-form client name, for logs.
        client_id: String,
    },
    /// Topic and partition ownership; empty `topics` means all.
    Metadata {
        /// Topics asked about.
        topics: Vec<String>,
    },
    /// Creates a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Settings.
        config: TopicConfig,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Changes a topic. `None` leaves a setting as it is; for retention, 0 and `u64::MAX` mean
    /// unlimited.
    AlterTopic {
        /// Name.
        name: String,
        /// New partition count (may only grow).
        partitions: Option<u32>,
        /// New retention by bytes.
        retention_bytes: Option<u64>,
        /// New retention by age.
        retention_ms: Option<u64>,
        /// New read visibility (version 2).
        visibility: Option<Visibility>,
        /// Backlog changes (version 3): `None` fields leave a setting as it is.
        backlog: Backlog,
    },
    /// All topics.
    ListTopics {
        /// Include the internal topics (names starting `__`); version 1.
        internal: bool,
    },
    /// One topic in detail.
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// Appends batches.
    Produce(ProduceRequest),
    /// Reads records.
    Fetch(FetchRequest),
    /// Looks up offsets.
    ListOffsets(Vec<ListOffsetsBlock>),
    /// Joins a consumer group.
    JoinGroup(JoinGroupRequest),
    /// Keeps a group member alive.
    Heartbeat {
        /// The group.
        group: String,
        /// The member.
        member_id: String,
        /// The member's generation.
        generation: u32,
    },
    /// Leaves a group.
    LeaveGroup {
        /// The group.
        group: String,
        /// The member.
        member_id: String,
    },
    /// Commits positions.
    OffsetCommit(OffsetCommitRequest),
    /// Reads committed positions; an empty list means every committed one.
    OffsetFetch {
        /// The group.
        group: String,
        /// `(topic, partition)` to read.
        partitions: Vec<(String, u32)>,
    },
    /// One group in detail.
    DescribeGroup {
        /// The group.
        group: String,
    },
    /// Every group.
    ListGroups,
    /// Deletes a group with no members.
    DeleteGroup {
        /// The group.
        group: String,
    },
    /// Records to deliver at a time, not before.
    ProduceDelayed(ProduceDelayedRequest),
    /// A member failed to process a record.
    Nack(NackRequest),
    /// Gives a group's dead letters back to it.
    DlqReplay {
        /// The group.
        group: String,
        /// Most dead letters to replay.
        max_messages: u32,
    },
    /// Asks for a producer id, for idempotent produce.
    InitProducer,
    /// Sets limits on a client id or topic; `None` rates stay as they are.
    SetQuota {
        /// What the limits apply to.
        entity: admin::QuotaEntity,
        /// The rates to set.
        limits: admin::QuotaLimits,
    },
    /// Every quota.
    ListQuotas,
    /// Lifts every limit on a client id or topic.
    DeleteQuota {
        /// Whose limits.
        entity: admin::QuotaEntity,
    },
    /// The broker's counters, partitions and group lag.
    Stats,
}

// Smallest encodings, used to bound array counts before allocating.
const MIN_STR: usize = 2;
const MIN_PRODUCE_BLOCK: usize = MIN_STR + 4 + 4;
const MIN_FETCH_BLOCK: usize = MIN_STR + 4 + 8 + 4;
const MIN_LIST_OFFSETS_BLOCK: usize = MIN_STR + 4 + 1 + 8;

fn partitions_u32(v: Option<u64>, position: usize) -> Result<Option<u32>, DecodeError> {
    v.map(|p| {
        u32::try_from(p).map_err(|_| DecodeError::Invalid {
            position,
            what: "partition count does not fit in u32",
        })
    })
    .transpose()
}

/// Decodes a whole request frame (as delimited by [`super::frame_len`]) with no limit on the
/// number of items in its arrays beyond what the frame holds.
pub fn decode_request(frame: &[u8]) -> Result<(RequestHeader, Request), DecodeError> {
    decode_request_limited(frame, u32::MAX as usize)
}

/// Decodes a whole request frame, refusing any array (topics of a Metadata request, blocks of a
/// Produce, Fetch or ListOffsets request) of more than `items_max` items before decoding its
/// items ([`DecodeError::TooManyItems`]).
pub fn decode_request_limited(
    frame: &[u8],
    items_max: usize,
) -> Result<(RequestHeader, Request), DecodeError> {
    let header = request_header(frame)?;
    // Checked so that the field can be given a meaning later without a new version.
    if header.reserved != 0 {
        return Err(DecodeError::Invalid {
            position: 12,
            what: "reserved header field is not zero",
        });
    }
    let key = ApiKey::from_u16(header.api_key).ok_or(DecodeError::UnknownApiKey(header.api_key))?;
    let (min, max) = key.versions();
    if header.api_version < min || header.api_version > max {
        return Err(DecodeError::UnsupportedVersion {
            key,
            version: header.api_version,
        });
    }
    let mut r = Reader::new(frame, HEADER_LEN);
    let count = |r: &mut Reader, min_item_bytes: usize| {
        let at = r.position();
        let n = r.count(min_item_bytes)?;
        if n > items_max {
            return Err(DecodeError::TooManyItems {
                position: at,
                count: n,
                max: items_max,
            });
        }
        Ok(n)
    };
    let request = match key {
        ApiKey::ApiVersions => Request::ApiVersions {
            client_id: r.string()?,
        },
        ApiKey::Metadata => {
            let n = count(&mut r, MIN_STR)?;
            let mut topics = Vec::with_capacity(n);
            for _ in 0..n {
                topics.push(r.string()?);
            }
            Request::Metadata { topics }
        }
        ApiKey::CreateTopic => Request::CreateTopic {
            name: r.string()?,
            config: TopicConfig {
                partitions: r.u32()?,
                retention_bytes: r.opt_u64()?,
                retention_ms: r.opt_u64()?,
                visibility: if header.api_version >= 2 {
                    let at = r.position();
                    Visibility::decode(r.u8()?, at)?
                } else {
                    None
                },
                backlog: if header.api_version >= 3 {
                    Backlog::decode(&mut r)?
                } else {
                    Backlog::default()
                },
            },
        },
        ApiKey::DeleteTopic => Request::DeleteTopic { name: r.string()? },
        ApiKey::AlterTopic => {
            let name = r.string()?;
            let at = r.position();
            Request::AlterTopic {
                name,
                partitions: partitions_u32(r.opt_u64()?, at)?,
                retention_bytes: r.opt_u64()?,
                retention_ms: r.opt_u64()?,
                visibility: if header.api_version >= 2 {
                    let at = r.position();
                    Visibility::decode(r.u8()?, at)?
                } else {
                    None
                },
                backlog: if header.api_version >= 3 {
                    Backlog::decode(&mut r)?
                } else {
                    Backlog::default()
                },
            }
        }
        ApiKey::ListTopics => Request::ListTopics {
            internal: if header.api_version >= 1 {
                let at = r.position();
                match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            position: at,
                            what: "include_internal is not 0 or 1",
                        })
                    }
                }
            } else {
                false
            },
        },
        ApiKey::DescribeTopic => Request::DescribeTopic { name: r.string()? },
        ApiKey::Produce => {
            let at = r.position();
            let acks = Acks::from_u8(r.u8()?, at)?;
            let timeout_ms = r.u32()?;
            let n = count(&mut r, MIN_PRODUCE_BLOCK)?;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(ProduceBlock {
                    topic: r.string()?,
                    partition: r.u32()?,
                    run: r.run()?,
                });
            }
            Request::Produce(ProduceRequest {
                acks,
                timeout_ms,
                blocks,
            })
        }
        ApiKey::Fetch => {
            let max_wait_ms = r.u32()?;
            let min_bytes = r.u32()?;
            let max_bytes = r.u32()?;
            let n = count(&mut r, MIN_FETCH_BLOCK)?;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(FetchBlock {
                    topic: r.string()?,
                    partition: r.u32()?,
                    offset: r.u64()?,
                    max_bytes: r.u32()?,
                });
            }
            Request::Fetch(FetchRequest {
                max_wait_ms,
                min_bytes,
                max_bytes,
                blocks,
            })
        }
        ApiKey::ListOffsets => {
            let n = count(&mut r, MIN_LIST_OFFSETS_BLOCK)?;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                let topic = r.string()?;
                let partition = r.u32()?;
                let at = r.position();
                let kind = r.u8()?;
                let ts = r.i64()?;
                let spec = match kind {
                    0 => OffsetSpec::Earliest,
                    1 => OffsetSpec::Latest,
                    2 => OffsetSpec::Timestamp(ts),
                    _ => {
                        return Err(DecodeError::Invalid {
                            position: at,
                            what: "offset spec is not 0, 1 or 2",
                        })
                    }
                };
                blocks.push(ListOffsetsBlock {
                    topic,
                    partition,
                    spec,
                });
            }
            Request::ListOffsets(blocks)
        }
        ApiKey::JoinGroup => Request::JoinGroup(groups::read_join_request(&mut r, count)?),
        ApiKey::Heartbeat => Request::Heartbeat {
            group: r.string()?,
            member_id: r.string()?,
            generation: r.u32()?,
        },
        ApiKey::LeaveGroup => Request::LeaveGroup {
            group: r.string()?,
            member_id: r.string()?,
        },
        ApiKey::OffsetCommit => Request::OffsetCommit(groups::read_commit_request(&mut r, count)?),
        ApiKey::OffsetFetch => Request::OffsetFetch {
            group: r.string()?,
            partitions: groups::read_partitions(&mut r, count)?,
        },
        ApiKey::DescribeGroup => Request::DescribeGroup { group: r.string()? },
        ApiKey::ListGroups => Request::ListGroups,
        ApiKey::DeleteGroup => Request::DeleteGroup { group: r.string()? },
        ApiKey::ProduceDelayed => {
            Request::ProduceDelayed(delivery::read_produce_delayed(&mut r, frame)?)
        }
        ApiKey::Nack => Request::Nack(delivery::read_nack(&mut r)?),
        ApiKey::DlqReplay => Request::DlqReplay {
            group: r.string()?,
            max_messages: r.u32()?,
        },
        ApiKey::InitProducer => Request::InitProducer,
        ApiKey::SetQuota => Request::SetQuota {
            entity: admin::read_entity(&mut r)?,
            limits: admin::read_limits(&mut r)?,
        },
        ApiKey::ListQuotas => Request::ListQuotas,
        ApiKey::DeleteQuota => Request::DeleteQuota {
            entity: admin::read_entity(&mut r)?,
        },
        ApiKey::Stats => Request::Stats,
    };
    r.finish()?;
    Ok((header, request))
}

impl Request {
    /// The request's api key.
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::ApiVersions { .. } => ApiKey::ApiVersions,
            Request::Metadata { .. } => ApiKey::Metadata,
            Request::CreateTopic { .. } => ApiKey::CreateTopic,
            Request::DeleteTopic { .. } => ApiKey::DeleteTopic,
            Request::AlterTopic { .. } => ApiKey::AlterTopic,
            Request::ListTopics { .. } => ApiKey::ListTopics,
            Request::DescribeTopic { .. } => ApiKey::DescribeTopic,
            Request::Produce(_) => ApiKey::Produce,
            Request::Fetch(_) => ApiKey::Fetch,
            Request::ListOffsets(_) => ApiKey::ListOffsets,
            Request::JoinGroup(_) => ApiKey::JoinGroup,
            Request::Heartbeat { .. } => ApiKey::Heartbeat,
            Request::LeaveGroup { .. } => ApiKey::LeaveGroup,
            Request::OffsetCommit(_) => ApiKey::OffsetCommit,
            Request::OffsetFetch { .. } => ApiKey::OffsetFetch,
            Request::DescribeGroup { .. } => ApiKey::DescribeGroup,
            Request::ListGroups => ApiKey::ListGroups,
            Request::DeleteGroup { .. } => ApiKey::DeleteGroup,
            Request::ProduceDelayed(_) => ApiKey::ProduceDelayed,
            Request::Nack(_) => ApiKey::Nack,
            Request::DlqReplay { .. } => ApiKey::DlqReplay,
            Request::InitProducer => ApiKey::InitProducer,
            Request::SetQuota { .. } => ApiKey::SetQuota,
            Request::ListQuotas => ApiKey::ListQuotas,
            Request::DeleteQuota { .. } => ApiKey::DeleteQuota,
            Request::Stats => ApiKey::Stats,
        }
    }
}

/// Encodes a request other than Produce (see [`encode_produce`]) as a whole frame into `out`, at
/// the newest version this build speaks.
pub fn encode_request(
    out: &mut Vec<u8>,
    correlation_id: u32,
    request: &Request,
) -> Result<(), EncodeError> {
    encode_request_at(out, request.api_key().versions().1, correlation_id, request)
}

/// Encodes a request other than Produce (see [`encode_produce`]) at `version` (negotiated with
/// ApiVersions). Every version of every API has the same body today.
pub fn encode_request_at(
    out: &mut Vec<u8>,
    version: u16,
    correlation_id: u32,
    request: &Request,
) -> Result<(), EncodeError> {
    begin_request(out, request.api_key(), version, correlation_id);
    let mut w = Writer::new(out);
    match request {
        Request::ApiVersions { client_id } => w.str(client_id),
        Request::Metadata { topics } => {
            w.count(topics.len());
            for t in topics {
                w.str(t);
            }
        }
        Request::CreateTopic { name, config } => {
            w.str(name);
            w.u32(config.partitions);
            w.opt_u64(config.retention_bytes);
            w.opt_u64(config.retention_ms);
            match (version, config.visibility) {
                (2.., v) => w.u8(Visibility::wire(v)),
                (_, None) => {}
                (_, Some(_)) => {
                    return Err(EncodeError::Unsupported {
                        what: "a topic's visibility needs CreateTopic version 2",
                    })
                }
            }
            match (version, config.backlog.is_unset()) {
                (3.., _) => config.backlog.encode(&mut w),
                (_, true) => {}
                (_, false) => {
                    return Err(EncodeError::Unsupported {
                        what: "a topic's backlog bound needs CreateTopic version 3",
                    })
                }
            }
        }
        Request::DeleteTopic { name } | Request::DescribeTopic { name } => w.str(name),
        Request::AlterTopic {
            name,
            partitions,
            retention_bytes,
            retention_ms,
            visibility,
            backlog,
        } => {
            w.str(name);
            w.opt_u64(partitions.map(u64::from));
            w.opt_u64(*retention_bytes);
            w.opt_u64(*retention_ms);
            match (version, visibility) {
                (2.., v) => w.u8(Visibility::wire(*v)),
                (_, None) => {}
                (_, Some(_)) => {
                    return Err(EncodeError::Unsupported {
                        what: "changing a topic's visibility needs AlterTopic version 2",
                    })
                }
            }
            match (version, backlog.is_unset()) {
                (3.., _) => backlog.encode(&mut w),
                (_, true) => {}
                (_, false) => {
                    return Err(EncodeError::Unsupported {
                        what: "changing a topic's backlog bound needs AlterTopic version 3",
                    })
                }
            }
        }
        Request::ListTopics { internal } => match (version, internal) {
            (1.., _) => w.u8(u8::from(*internal)),
            (_, false) => {}
            (_, true) => {
                return Err(EncodeError::Unsupported {
                    what: "listing internal topics needs ListTopics version 1",
                })
            }
        },
        Request::Produce(_) => {
            // A decoded Produce holds ranges of its own frame, not records: nothing to encode.
            return Err(EncodeError::Unsupported {
                what: "Produce requests are encoded with encode_produce",
            });
        }
        Request::Fetch(f) => {
            w.u32(f.max_wait_ms);
            w.u32(f.min_bytes);
            w.u32(f.max_bytes);
            w.count(f.blocks.len());
            for b in &f.blocks {
                w.str(&b.topic);
                w.u32(b.partition);
                w.u64(b.offset);
                w.u32(b.max_bytes);
            }
        }
        Request::ListOffsets(blocks) => {
            w.count(blocks.len());
            for b in blocks {
                w.str(&b.topic);
                w.u32(b.partition);
                let (kind, ts) = match b.spec {
                    OffsetSpec::Earliest => (0, 0),
                    OffsetSpec::Latest => (1, 0),
                    OffsetSpec::Timestamp(t) => (2, t),
                };
                w.u8(kind);
                w.i64(ts);
            }
        }
        Request::JoinGroup(j) => groups::write_join_request(&mut w, j),
        Request::Heartbeat {
            group,
            member_id,
            generation,
        } => {
            w.str(group);
            w.str(member_id);
            w.u32(*generation);
        }
        Request::LeaveGroup { group, member_id } => {
            w.str(group);
            w.str(member_id);
        }
        Request::OffsetCommit(c) => groups::write_commit_request(&mut w, c),
        Request::OffsetFetch { group, partitions } => {
            w.str(group);
            groups::write_partitions(&mut w, partitions);
        }
        Request::DescribeGroup { group } | Request::DeleteGroup { group } => w.str(group),
        Request::ListGroups | Request::InitProducer | Request::ListQuotas | Request::Stats => {}
        Request::SetQuota { entity, limits } => {
            admin::write_entity(&mut w, entity);
            admin::write_limits(&mut w, limits);
        }
        Request::DeleteQuota { entity } => admin::write_entity(&mut w, entity),
        Request::ProduceDelayed(p) => delivery::write_produce_delayed(&mut w, p),
        Request::Nack(n) => delivery::write_nack(&mut w, n),
        Request::DlqReplay {
            group,
            max_messages,
        } => {
            w.str(group);
            w.u32(*max_messages);
        }
    }
    w.finish()?;
    finish_frame(out, 0)
}

/// Encodes a Produce request at the newest version: `blocks` are `(topic, partition, run)` where
/// each run is whole records as built by [`crate::record::encode`].
pub fn encode_produce(
    out: &mut Vec<u8>,
    correlation_id: u32,
    acks: Acks,
    timeout_ms: u32,
    blocks: &[(&str, u32, &[u8])],
) -> Result<(), EncodeError> {
    let version = ApiKey::Produce.versions().1;
    let splits = encode_produce_head(out, version, correlation_id, acks, timeout_ms, blocks)?;
    // Back to front, so the earlier split positions stay valid.
    for (at, (_, _, run)) in splits.into_iter().zip(blocks).rev() {
        out.splice(at..at, run.iter().copied());
    }
    Ok(())
}

/// Encodes a Produce request without its record runs, for a sender that writes the runs from
/// where they lie (vectored I/O) instead of copying them: as [`encode_fetch_response`], `out`
/// receives everything else and the returned positions say where each block's run goes. The
/// size field counts the runs.
pub fn encode_produce_head(
    out: &mut Vec<u8>,
    version: u16,
    correlation_id: u32,
    acks: Acks,
    timeout_ms: u32,
    blocks: &[(&str, u32, &[u8])],
) -> Result<Vec<usize>, EncodeError> {
    begin_request(out, ApiKey::Produce, version, correlation_id);
    let mut splits = Vec::with_capacity(blocks.len());
    let mut runs = 0;
    let mut w = Writer::new(out);
    w.u8(acks as u8);
    w.u32(timeout_ms);
    w.count(blocks.len());
    for (topic, partition, run) in blocks {
        w.str(topic);
        w.u32(*partition);
        // Runs are multiples of 16, so leaving them out does not change any padding.
        w.run_header(run.len());
        splits.push(w.len());
        runs += run.len();
    }
    w.finish()?;
    finish_frame(out, runs)?;
    Ok(splits)
}

/// A shard's listener, as advertised in Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAddr {
    /// Shard number.
    pub shard: u16,
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
}

/// One topic in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Name.
    pub name: String,
    /// `UnknownTopic` for a topic asked about that does not exist.
    pub error: ErrorCode,
    /// `(partition, owning shard)`.
    pub partitions: Vec<(u32, u16)>,
}

/// One partition in a DescribeTopic response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// Partition number.
    pub partition: u32,
    /// Owning shard.
    pub shard: u16,
    /// First offset stored.
    pub earliest: u64,
    /// Offset of the next record.
    pub next: u64,
    /// Every offset below this is durable.
    pub durable: u64,
    /// Bytes of records stored.
    pub size_bytes: u64,
}

/// One partition's outcome in a Produce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// Offset of the batch's first record (when `error` is `None`).
    pub base_offset: u64,
    /// Append time stamped on the batch.
    pub timestamp_ms: i64,
    /// With `Throttled`: how long to wait before sending to this partition again. Version 3; 0
    /// otherwise.
    pub throttle_ms: u32,
}

/// One partition's records in a Fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Outcome; `OffsetOutOfRange` comes with `earliest` and `next` filled in.
    pub error: ErrorCode,
    /// First offset stored.
    pub earliest: u64,
    /// Offset of the next record to be appended.
    pub next: u64,
    /// With `Throttled`: how long to wait before fetching this partition again. Version 2; 0
    /// otherwise.
    pub throttle_ms: u32,
    /// Byte range of the record run inside the response frame (decode side), or its length
    /// as `0..len` (encode side).
    pub run: Range<usize>,
}

/// One lookup's outcome in a ListOffsets response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResult {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// The offset found.
    pub offset: u64,
}

/// A decoded response body (the top-level error code is in the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Supported `(api_key, min_version, max_version)` and the broker's version string.
    ApiVersions {
        /// Supported versions.
        apis: Vec<(u16, u16, u16)>,
        /// Broker name and version.
        broker: String,
    },
    /// Shards and topics.
    Metadata {
        /// Every shard's listener.
        shards: Vec<ShardAddr>,
        /// Topics asked about.
        topics: Vec<TopicMetadata>,
    },
    /// CreateTopic, DeleteTopic and AlterTopic succeed with no body.
    Done,
    /// `(name, partitions)` of every topic.
    ListTopics(Vec<(String, u32)>),
    /// One topic.
    DescribeTopic {
        /// Name.
        name: String,
        /// Settings.
        config: TopicConfig,
        /// Partitions.
        partitions: Vec<PartitionDescription>,
    },
    /// Produce outcomes.
    Produce(Vec<ProduceResult>),
    /// Fetched records.
    Fetch(Vec<FetchResult>),
    /// Offsets.
    ListOffsets(Vec<ListOffsetsResult>),
    /// A member's place in a group's new generation.
    JoinGroup(JoinGroupResponse),
    /// Per-partition outcomes of a commit.
    OffsetCommit(Vec<groups::CommitResult>),
    /// Committed positions.
    OffsetFetch(Vec<groups::FetchedOffset>),
    /// One group.
    DescribeGroup(GroupDescription),
    /// Every group.
    ListGroups(Vec<GroupSummary>),
    /// A delayed produce was scheduled.
    ProduceDelayed(ProduceDelayedResponse),
    /// What a nack did.
    Nack(NackResponse),
    /// What a replay did.
    DlqReplay(DlqReplayResponse),
    /// A producer id.
    InitProducer {
        /// The id: put it in every record of an idempotent producer.
        producer_id: u64,
    },
    /// Every quota.
    ListQuotas(Vec<(admin::QuotaEntity, admin::QuotaLimits)>),
    /// What a DeleteQuota did.
    DeleteQuota {
        /// False when the entity had no quota.
        removed: bool,
    },
    /// The broker's counters, partitions and group lag.
    Stats(admin::StatsResponse),
}

/// Encodes a successful response other than Fetch (see [`encode_fetch_response`]). Fails when the
/// response cannot be a frame (see [`EncodeError`]); the server then answers with an error.
///
/// Error codes inside the body are written as given: a server translates them for the request's
/// version first ([`ErrorCode::for_version`]).
pub fn encode_response(
    out: &mut Vec<u8>,
    key: ApiKey,
    correlation_id: u32,
    response: &Response,
) -> Result<(), EncodeError> {
    encode_response_at(out, key, key.versions().1, correlation_id, response)
}

/// Encodes a successful response for a request of `version` (the body of DescribeTopic depends
/// on it).
pub fn encode_response_at(
    out: &mut Vec<u8>,
    key: ApiKey,
    version: u16,
    correlation_id: u32,
    response: &Response,
) -> Result<(), EncodeError> {
    begin_response(out, key as u16, ErrorCode::None, correlation_id);
    let mut w = Writer::new(out);
    match response {
        Response::ApiVersions { apis, broker } => {
            w.count(apis.len());
            for (k, min, max) in apis {
                w.u16(*k);
                w.u16(*min);
                w.u16(*max);
            }
            w.str(broker);
        }
        Response::Metadata { shards, topics } => {
            w.count(shards.len());
            for s in shards {
                w.u16(s.shard);
                w.str(&s.host);
                w.u16(s.port);
            }
            w.count(topics.len());
            for t in topics {
                w.str(&t.name);
                w.u16(t.error as u16);
                w.count(t.partitions.len());
                for (p, s) in &t.partitions {
                    w.u32(*p);
                    w.u16(*s);
                }
            }
        }
        Response::Done => {}
        Response::ListTopics(topics) => {
            w.count(topics.len());
            for (name, partitions) in topics {
                w.str(name);
                w.u32(*partitions);
            }
        }
        Response::DescribeTopic {
            name,
            config,
            partitions,
        } => {
            w.str(name);
            w.u32(config.partitions);
            w.opt_u64(config.retention_bytes);
            w.opt_u64(config.retention_ms);
            if version >= 1 {
                w.u8(Visibility::wire(config.visibility));
            }
            if version >= 2 {
                config.backlog.encode(&mut w);
            }
            w.count(partitions.len());
            for p in partitions {
                w.u32(p.partition);
                w.u16(p.shard);
                w.u64(p.earliest);
                w.u64(p.next);
                w.u64(p.durable);
                w.u64(p.size_bytes);
            }
        }
        Response::Produce(results) => {
            w.count(results.len());
            for r in results {
                w.str(&r.topic);
                w.u32(r.partition);
                w.u16(r.error as u16);
                w.u64(r.base_offset);
                w.i64(r.timestamp_ms);
                if version >= 3 {
                    w.u32(r.throttle_ms);
                }
            }
        }
        Response::Fetch(_) => {
            return Err(EncodeError::Unsupported {
                what: "Fetch responses are encoded with encode_fetch_response",
            })
        }
        Response::ListOffsets(results) => {
            w.count(results.len());
            for r in results {
                w.str(&r.topic);
                w.u32(r.partition);
                w.u16(r.error as u16);
                w.u64(r.offset);
            }
        }
        Response::JoinGroup(j) => groups::write_join_response(&mut w, j),
        Response::OffsetCommit(results) => groups::write_commit_results(&mut w, results),
        Response::OffsetFetch(offsets) => groups::write_fetched_offsets(&mut w, offsets),
        Response::DescribeGroup(d) => groups::write_description(&mut w, d),
        Response::ListGroups(g) => groups::write_summaries(&mut w, g),
        Response::ProduceDelayed(p) => {
            w.u64(p.id);
            w.i64(p.due_ms);
        }
        Response::Nack(n) => {
            w.u8(n.outcome as u8);
            w.u32(n.delivery);
        }
        Response::DlqReplay(d) => {
            w.u32(d.replayed);
            w.u64(d.next);
        }
        Response::InitProducer { producer_id } => w.u64(*producer_id),
        Response::ListQuotas(all) => admin::write_quotas(&mut w, all),
        Response::DeleteQuota { removed } => w.u8(u8::from(*removed)),
        Response::Stats(s) => admin::write_stats(&mut w, s),
    }
    w.finish()?;
    finish_frame(out, 0)
}

/// Encodes a Fetch response without its record runs: `out` receives the headers, and the returned
/// positions say where in `out` each block's run (of length `results[i].run.len()`) goes on the
/// wire. The sender writes `out[..p0]`, run 0, `out[p0..p1]`, run 1, …, `out[pn..]`.
pub fn encode_fetch_response(
    out: &mut Vec<u8>,
    version: u16,
    correlation_id: u32,
    results: &[FetchResult],
) -> Result<Vec<usize>, EncodeError> {
    begin_response(out, ApiKey::Fetch as u16, ErrorCode::None, correlation_id);
    let mut splits = Vec::with_capacity(results.len());
    let mut runs = 0;
    let mut w = Writer::new(out);
    w.count(results.len());
    for r in results {
        w.str(&r.topic);
        w.u32(r.partition);
        w.u16(r.error as u16);
        w.u64(r.earliest);
        w.u64(r.next);
        if version >= 2 {
            w.u32(r.throttle_ms);
        }
        // Runs are multiples of 16, so leaving them out does not change any padding.
        w.run_header(r.run.len());
        splits.push(w.len());
        runs += r.run.len();
    }
    w.finish()?;
    finish_frame(out, runs)?;
    Ok(splits)
}

/// Decodes a whole response frame to an api's body. Error responses decode to their header only:
/// check `header.error_code` first, and read the message with [`super::error_message`].
pub fn decode_response(frame: &[u8]) -> Result<(ResponseHeader, Option<Response>), DecodeError> {
    let header = response_header(frame)?;
    let version = ApiKey::from_u16(header.api_key).map_or(0, |k| k.versions().1);
    decode_response_at(frame, version)
}

/// Decodes a whole response frame to a request sent at `version`.
pub fn decode_response_at(
    frame: &[u8],
    version: u16,
) -> Result<(ResponseHeader, Option<Response>), DecodeError> {
    let header = response_header(frame)?;
    if header.error_code != ErrorCode::None {
        return Ok((header, None));
    }
    let key = ApiKey::from_u16(header.api_key).ok_or(DecodeError::UnknownApiKey(header.api_key))?;
    let mut r = Reader::new(frame, HEADER_LEN);
    let response = match key {
        ApiKey::ApiVersions => {
            let n = r.count(6)?;
            let mut apis = Vec::with_capacity(n);
            for _ in 0..n {
                apis.push((r.u16()?, r.u16()?, r.u16()?));
            }
            Response::ApiVersions {
                apis,
                broker: r.string()?,
            }
        }
        ApiKey::Metadata => {
            let n = r.count(2 + MIN_STR + 2)?;
            let mut shards = Vec::with_capacity(n);
            for _ in 0..n {
                shards.push(ShardAddr {
                    shard: r.u16()?,
                    host: r.string()?,
                    port: r.u16()?,
                });
            }
            let n = r.count(MIN_STR + 2 + 4)?;
            let mut topics = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.string()?;
                let error = ErrorCode::from_u16(r.u16()?);
                let m = r.count(6)?;
                let mut partitions = Vec::with_capacity(m);
                for _ in 0..m {
                    partitions.push((r.u32()?, r.u16()?));
                }
                topics.push(TopicMetadata {
                    name,
                    error,
                    partitions,
                });
            }
            Response::Metadata { shards, topics }
        }
        ApiKey::CreateTopic | ApiKey::DeleteTopic | ApiKey::AlterTopic => Response::Done,
        ApiKey::ListTopics => {
            let n = r.count(MIN_STR + 4)?;
            let mut topics = Vec::with_capacity(n);
            for _ in 0..n {
                topics.push((r.string()?, r.u32()?));
            }
            Response::ListTopics(topics)
        }
        ApiKey::DescribeTopic => {
            let name = r.string()?;
            let config = TopicConfig {
                partitions: r.u32()?,
                retention_bytes: r.opt_u64()?,
                retention_ms: r.opt_u64()?,
                visibility: if version >= 1 {
                    let at = r.position();
                    Visibility::decode(r.u8()?, at)?
                } else {
                    None
                },
                backlog: if version >= 2 {
                    Backlog::decode(&mut r)?
                } else {
                    Backlog::default()
                },
            };
            let n = r.count(4 + 2 + 32)?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                partitions.push(PartitionDescription {
                    partition: r.u32()?,
                    shard: r.u16()?,
                    earliest: r.u64()?,
                    next: r.u64()?,
                    durable: r.u64()?,
                    size_bytes: r.u64()?,
                });
            }
            Response::DescribeTopic {
                name,
                config,
                partitions,
            }
        }
        ApiKey::Produce => {
            let n = r.count(MIN_STR + 4 + 2 + 16)?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                results.push(ProduceResult {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    base_offset: r.u64()?,
                    timestamp_ms: r.i64()?,
                    throttle_ms: if version >= 3 { r.u32()? } else { 0 },
                });
            }
            Response::Produce(results)
        }
        ApiKey::Fetch => {
            let n = r.count(MIN_STR + 4 + 2 + 16 + 4)?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                results.push(FetchResult {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    earliest: r.u64()?,
                    next: r.u64()?,
                    throttle_ms: if version >= 2 { r.u32()? } else { 0 },
                    run: r.run()?,
                });
            }
            Response::Fetch(results)
        }
        ApiKey::ListOffsets => {
            let n = r.count(MIN_STR + 4 + 2 + 8)?;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                results.push(ListOffsetsResult {
                    topic: r.string()?,
                    partition: r.u32()?,
                    error: ErrorCode::from_u16(r.u16()?),
                    offset: r.u64()?,
                });
            }
            Response::ListOffsets(results)
        }
        ApiKey::JoinGroup => Response::JoinGroup(groups::read_join_response(&mut r)?),
        ApiKey::Heartbeat | ApiKey::LeaveGroup | ApiKey::DeleteGroup => Response::Done,
        ApiKey::OffsetCommit => Response::OffsetCommit(groups::read_commit_results(&mut r)?),
        ApiKey::OffsetFetch => Response::OffsetFetch(groups::read_fetched_offsets(&mut r)?),
        ApiKey::DescribeGroup => Response::DescribeGroup(groups::read_description(&mut r)?),
        ApiKey::ListGroups => Response::ListGroups(groups::read_summaries(&mut r)?),
        ApiKey::ProduceDelayed => Response::ProduceDelayed(ProduceDelayedResponse {
            id: r.u64()?,
            due_ms: r.i64()?,
        }),
        ApiKey::Nack => Response::Nack(delivery::read_nack_response(&mut r)?),
        ApiKey::DlqReplay => Response::DlqReplay(DlqReplayResponse {
            replayed: r.u32()?,
            next: r.u64()?,
        }),
        ApiKey::InitProducer => Response::InitProducer {
            producer_id: r.u64()?,
        },
        ApiKey::SetQuota => Response::Done,
        ApiKey::ListQuotas => Response::ListQuotas(admin::read_quotas(&mut r)?),
        ApiKey::DeleteQuota => {
            let at = r.position();
            Response::DeleteQuota {
                removed: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            position: at,
                            what: "removed is not 0 or 1",
                        })
                    }
                },
            }
        }
        ApiKey::Stats => Response::Stats(admin::read_stats(&mut r)?),
    };
    r.finish()?;
    Ok((header, Some(response)))
}
