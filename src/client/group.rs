//! Consumer groups from the client side: the group apis on [`Client`], and [`GroupConsumer`], a
//! member that reads the partitions the broker assigns it, heartbeats from a thread of its own,
//! commits what it processed, and joins again when the group rebalances.
//!
//! Delivery is at least once: a record counts as processed once a later [`GroupConsumer::poll`]
//! (or [`GroupConsumer::commit`]) follows the poll that returned it, and only committed positions
//! survive the member. A member that dies or is fenced leaves its uncommitted records to whoever
//! gets its partitions next, who reads them again from the committed position.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::consumer::{copy_records, poll_positions, FetchSettings, Position};
use super::oneshot::lock;
use super::{unexpected, Client, ClientError, ConsumedRecord, ResetPolicy};
use crate::protocol::{
    Acks, ApiKey, CommitOffset, DlqReplayResponse, ErrorCode, FetchedOffset, GroupDescription,
    GroupSummary, JoinGroupRequest, JoinGroupResponse, NackOutcome, NackRequest, NackResponse,
    OffsetCommitRequest, OffsetSpec, ProduceDelayedRequest, ProduceDelayedResponse, Request,
    Response, NO_GENERATION,
};

/// A group's position in one partition, as [`Client::fetch_offsets`] returns it.
pub type CommittedOffset = FetchedOffset;

impl Client {
    /// Joins `join.group` (or joins it again with the member id from an earlier join) and waits
    /// until its rebalance settles: the answer is the member's assignment in the new generation.
    /// Not retried: a repeated join is a new rebalance. Most programs use a [`GroupConsumer`].
    pub fn join_group(&self, join: &JoinGroupRequest) -> Result<JoinGroupResponse, ClientError> {
        match self.group_request(&Request::JoinGroup(join.clone()))? {
            Response::JoinGroup(j) => Ok(j),
            other => Err(unexpected(ApiKey::JoinGroup, &other)),
        }
    }

    /// Keeps a member alive. Fails with `RebalanceInProgress` when the member must join again,
    /// with `IllegalGeneration` or `UnknownMember` when it was fenced.
    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
    ) -> Result<(), ClientError> {
        self.group_request(&Request::Heartbeat {
            group: group.to_string(),
            member_id: member_id.to_string(),
            generation,
        })
        .map(drop)
    }

    /// Leaves a group at once: its partitions go to the other members without waiting for the
    /// session timeout.
    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        self.group_request(&Request::LeaveGroup {
            group: group.to_string(),
            member_id: member_id.to_string(),
        })
        .map(drop)
    }

    /// Commits positions (each the next offset to read) for a member of the given generation;
    /// returns once they are durable. With an empty `member_id` and [`NO_GENERATION`], commits to
    /// a group with no live members (a reset). Fails with the first partition's error.
    pub fn commit_offsets(&self, commit: &OffsetCommitRequest) -> Result<(), ClientError> {
        match self.group_request(&Request::OffsetCommit(commit.clone()))? {
            Response::OffsetCommit(results) => {
                match results.into_iter().find(|r| r.error != ErrorCode::None) {
                    Some(r) => Err(ClientError::Broker {
                        code: r.error,
                        message: format!("commit of {}/{}", r.topic, r.partition),
                    }),
                    None => Ok(()),
                }
            }
            other => Err(unexpected(ApiKey::OffsetCommit, &other)),
        }
    }

    /// A group's committed positions in `partitions` (`(topic, partition)`), or every committed
    /// position when `partitions` is empty. Retried after reconnecting.
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let request = Request::OffsetFetch {
            group: group.to_string(),
            partitions: partitions.to_vec(),
        };
        self.retrying(|| match self.group_request(&request)? {
            Response::OffsetFetch(offsets) => Ok(offsets),
            other => Err(unexpected(ApiKey::OffsetFetch, &other)),
        })
    }

    /// A group's state, members, assignments, and per partition its committed offset, log end and
    /// lag. Retried after reconnecting.
    pub fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let request = Request::DescribeGroup {
            group: group.to_string(),
        };
        self.retrying(|| match self.group_request(&request)? {
            Response::DescribeGroup(d) => Ok(d),
            other => Err(unexpected(ApiKey::DescribeGroup, &other)),
        })
    }

    /// Every group, with its state and member count. Retried after reconnecting.
    pub fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        self.retrying(|| match self.group_request(&Request::ListGroups)? {
            Response::ListGroups(groups) => Ok(groups),
            other => Err(unexpected(ApiKey::ListGroups, &other)),
        })
    }

    /// Deletes a group and its committed offsets; refused (`GroupNotEmpty`) while it has live
    /// members.
    pub fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.group_request(&Request::DeleteGroup {
            group: group.to_string(),
        })
        .map(drop)
    }

    /// Schedules `run` (whole records) for `topic`/`partition` at `deliver_at_ms` (ms since the
    /// Unix epoch), not before; answers once the broker holds it as `acks` says (`None` for
    /// `acks = none`). The records get their offsets when they are delivered. Not retried.
    pub fn produce_delayed(
        &self,
        topic: &str,
        partition: u32,
        run: &[u8],
        deliver_at_ms: i64,
        acks: Acks,
    ) -> Result<Option<ProduceDelayedResponse>, ClientError> {
        let request = Request::ProduceDelayed(ProduceDelayedRequest {
            acks,
            timeout_ms: super::timeout_ms_u32(self.config().request_timeout_ms),
            topic: topic.to_string(),
            partition,
            deliver_at_ms,
            run: run.to_vec(),
        });
        if acks == Acks::None {
            self.bootstrap_connection()?.request_no_response(&request)?;
            return Ok(None);
        }
        match self.group_request(&request)? {
            Response::ProduceDelayed(r) => Ok(Some(r)),
            other => Err(unexpected(ApiKey::ProduceDelayed, &other)),
        }
    }

    /// Reports that a member failed to process one record: the broker delivers it to the
    /// member's group again after `retry_after_ms`, or, on its `max_deliveries`-th failure,
    /// moves it to the group's dead-letter topic. Most programs use [`GroupConsumer::nack`].
    pub fn nack(&self, nack: &NackRequest) -> Result<NackResponse, ClientError> {
        match self.group_request(&Request::Nack(nack.clone()))? {
            Response::Nack(r) => Ok(r),
            other => Err(unexpected(ApiKey::Nack, &other)),
        }
    }

    /// Gives up to `max_messages` of `group`'s dead letters back to that group (and no other),
    /// from where the last replay stopped; each gets `max_deliveries` deliveries again.
    pub fn dlq_replay(
        &self,
        group: &str,
        max_messages: u32,
    ) -> Result<DlqReplayResponse, ClientError> {
        let request = Request::DlqReplay {
            group: group.to_string(),
            max_messages,
        };
        match self.group_request(&request)? {
            Response::DlqReplay(r) => Ok(r),
            other => Err(unexpected(ApiKey::DlqReplay, &other)),
        }
    }

    /// A producer id for idempotent produce (the [`Producer`](super::Producer) asks for one
    /// itself when `idempotent` is set). Retried after reconnecting.
    pub fn init_producer(&self) -> Result<u64, ClientError> {
        self.retrying(|| match self.group_request(&Request::InitProducer)? {
            Response::InitProducer { producer_id } => Ok(producer_id),
            other => Err(unexpected(ApiKey::InitProducer, &other)),
        })
    }

    /// A member of a consumer group; see [`GroupConsumer`].
    pub fn group_consumer(
        &self,
        config: GroupConsumerConfig,
    ) -> Result<GroupConsumer, ClientError> {
        GroupConsumer::new(self.clone(), config)
    }

    /// Group requests go to the bootstrap connection: the broker forwards each to the shard that
    /// coordinates the group, in one hop.
    fn group_request(&self, request: &Request) -> Result<Response, ClientError> {
        let conn = self.bootstrap_connection()?;
        conn.request(request)?.wait()?.decode()
    }
}

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumerConfig {
    /// The group to join.
    pub group: String,
    /// The topics to read (at least one).
    pub topics: Vec<String>,
    /// The broker removes the member when no heartbeat arrives for this long; its partitions then
    /// go to the others. 500..=300 000. Default 10 000.
    pub session_timeout_ms: u32,
    /// How long a rebalance waits for the members to join again; a member that is inside a long
    /// [`poll`](GroupConsumer::poll) or processing joins at its next poll. Default 30 000.
    pub rebalance_timeout_ms: u32,
    /// Pause between heartbeats; a third of the session timeout or less. Default 1 000.
    pub heartbeat_interval_ms: u32,
    /// `Some(ms)`: every poll commits what earlier polls returned, at most once per `ms`, and so
    /// does [`close`](GroupConsumer::close). `None` (the default): only
    /// [`commit`](GroupConsumer::commit) commits.
    pub auto_commit_interval_ms: Option<u64>,
    /// Where to start in a partition the group never committed, or whose committed position is
    /// outside the log. Default `Earliest`: a new group sees what is stored.
    pub reset: ResetPolicy,
    /// How long the broker may hold a fetch open waiting for records. Default 500.
    pub max_wait_ms: u32,
    /// Most bytes of records fetched per partition per request. Default 1 MiB.
    pub fetch_max_bytes: u32,
    /// Deliveries of a message before a [`nack`](GroupConsumer::nack) moves it to the group's
    /// dead-letter topic instead of retrying it. Every member of a group should use the same.
    /// Default 3.
    pub max_deliveries: u32,
    /// Most records polls may return that no commit covers yet: at the bound a poll waits and
    /// returns nothing until [`commit`](GroupConsumer::commit) (or auto-commit) catches up, so a
    /// worker that stops committing stops taking work. A poll never passes the bound: records a
    /// fetch brought beyond it are dropped and fetched again after a commit (with a bound far
    /// below what `fetch_max_bytes` holds, that re-reading costs bandwidth). Default 100 000.
    pub max_uncommitted: u64,
}

impl GroupConsumerConfig {
    /// The defaults for `group` reading `topics`.
    pub fn new<T: Into<String>>(
        group: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
    ) -> Self {
        GroupConsumerConfig {
            group: group.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            heartbeat_interval_ms: 1_000,
            auto_commit_interval_ms: None,
            reset: ResetPolicy::Earliest,
            max_wait_ms: 500,
            fetch_max_bytes: 1 << 20,
            max_deliveries: 3,
            max_uncommitted: 100_000,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason: &str| {
            Err(ClientError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if self.topics.is_empty() {
            return bad("topics", "name at least one topic");
        }
        if !(500..=300_000).contains(&self.session_timeout_ms) {
            return bad("session_timeout_ms", "must be 500..=300000");
        }
        if self.max_uncommitted == 0 {
            return bad("max_uncommitted", "must be at least 1");
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms > self.session_timeout_ms / 3
        {
            return bad(
                "heartbeat_interval_ms",
                "must be at least 1 and at most a third of session_timeout_ms",
            );
        }
        if self.rebalance_timeout_ms == 0 {
            return bad("rebalance_timeout_ms", "must be at least 1");
        }
        if self.fetch_max_bytes == 0 {
            return bad("fetch_max_bytes", "must be at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries", "must be at least 1");
        }
        if self.auto_commit_interval_ms == Some(0) {
            return bad("auto_commit_interval_ms", "must be at least 1 when set");
        }
        Ok(())
    }
}

/// What the heartbeat thread and the consumer share.
struct Membership {
    group: String,
    member_id: Mutex<String>,
    generation: AtomicU32,
    /// The broker asked the member to join again (a rebalance), or the member was fenced.
    rejoin: AtomicBool,
    /// The member was fenced (`UnknownMember`, `IllegalGeneration`): its positions are void.
    fenced: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A member of a consumer group: reads every partition the broker assigns it, across any number
/// of topics, from the group's committed positions.
///
/// A thread per consumer heartbeats every `heartbeat_interval_ms`. When the broker answers that
/// the group is rebalancing (a member joined, left or timed out), the next
/// [`poll`](GroupConsumer::poll) joins again — committing first when auto-commit is on — and
/// continues with the new assignment. A partition the member keeps (assignment is sticky) keeps
/// its position; a new one starts at the group's committed position.
///
/// From an async runtime, call `poll` and `commit` from a blocking task (`spawn_blocking` in
/// tokio): they block the calling thread.
///
/// # Examples
///
/// ```no_run
/// use levee::client::{Client, ClientConfig, GroupConsumerConfig};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), levee::client::ClientError> {
/// let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
/// let mut sms = client.group_consumer(GroupConsumerConfig::new("sms", ["user.registered"]))?;
/// loop {
///     for record in sms.poll(Duration::from_secs(1))? {
///         println!("{}/{}@{}", record.topic, record.partition, record.offset);
///     }
///     sms.commit()?; // at least once: commit after processing
/// }
/// # }
/// ```
pub struct GroupConsumer {
    client: Client,
    config: GroupConsumerConfig,
    membership: Arc<Membership>,
    heartbeat: Option<JoinHandle<()>>,
    /// The assigned partitions and the next offset to fetch in each.
    positions: Vec<Position>,
    /// Per assigned partition, the offset after the last record a poll returned.
    consumed: HashMap<(String, u32), u64>,
    /// Per partition, the last position committed by this member.
    committed: HashMap<(String, u32), u64>,
    /// Per partition, records polls returned that no commit covers yet.
    uncommitted: HashMap<(String, u32), u64>,
    last_auto_commit: Instant,
    closed: bool,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id())
            .field("generation", &self.generation())
            .field("positions", &self.positions)
            .finish()
    }
}

impl GroupConsumer {
    fn new(client: Client, config: GroupConsumerConfig) -> Result<GroupConsumer, ClientError> {
        config.validate()?;
        let membership = Arc::new(Membership {
            group: config.group.clone(),
            member_id: Mutex::new(String::new()),
            generation: AtomicU32::new(NO_GENERATION),
            rejoin: AtomicBool::new(true),
            fenced: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let mut consumer = GroupConsumer {
            client,
            config,
            membership,
            heartbeat: None,
            positions: Vec::new(),
            consumed: HashMap::new(),
            committed: HashMap::new(),
            uncommitted: HashMap::new(),
            last_auto_commit: Instant::now(),
            closed: false,
        };
        consumer.rejoin()?;
        let beat = HeartbeatLoop {
            client: consumer.client.clone(),
            membership: consumer.membership.clone(),
            interval: Duration::from_millis(u64::from(consumer.config.heartbeat_interval_ms)),
        };
        consumer.heartbeat = Some(
            std::thread::Builder::new()
                .name(format!("levee-heartbeat-{}", consumer.config.group))
                .spawn(move || beat.run())
                .map_err(|e| ClientError::Thread(e.to_string()))?,
        );
        Ok(consumer)
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// This member's id, as the broker assigned it.
    pub fn member_id(&self) -> String {
        lock(&self.membership.member_id).clone()
    }

    /// The generation of the current assignment.
    pub fn generation(&self) -> u32 {
        self.membership.generation.load(Ordering::Acquire)
    }

    /// The partitions assigned to this member, `(topic, partition)`, sorted.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect()
    }

    /// Waits up to `timeout` for records of the assigned partitions and returns what arrived
    /// first (empty when none did). Joins the group again first when it is rebalancing, and
    /// commits first when auto-commit is on and due.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        self.check_open()?;
        if let Some(interval) = self.config.auto_commit_interval_ms {
            if self.last_auto_commit.elapsed() >= Duration::from_millis(interval) {
                self.auto_commit();
            }
        }
        if self.membership.rejoin.load(Ordering::Acquire) {
            self.rejoin()?;
        }
        let in_hand = self.uncommitted.values().sum::<u64>();
        if in_hand >= self.config.max_uncommitted {
            // Bounded work in hand: nothing more until a commit.
            std::thread::sleep(
                timeout.min(Duration::from_millis(u64::from(self.config.max_wait_ms))),
            );
            return Ok(Vec::new());
        }
        let settings = FetchSettings {
            max_wait_ms: self.config.max_wait_ms,
            fetch_max_bytes: self.config.fetch_max_bytes,
            reset: self.config.reset,
        };
        let membership = self.membership.clone();
        let records = poll_positions(
            &self.client,
            &settings,
            &mut self.positions,
            timeout,
            &|| membership.rejoin.load(Ordering::Acquire),
            copy_records,
        )?;
        // Never more in hand than the bound: what one fetch brought past it is given back, to
        // be fetched again after a commit.
        let mut records = records;
        let room = usize::try_from(self.config.max_uncommitted - in_hand).unwrap_or(usize::MAX);
        if records.len() > room {
            for r in &records[room..] {
                if let Some(p) = self
                    .positions
                    .iter_mut()
                    .find(|p| p.topic == r.topic && p.partition == r.partition)
                {
                    p.offset = p.offset.min(r.offset);
                }
            }
            records.truncate(room);
        }
        for r in &records {
            let tp = (r.topic.clone(), r.partition);
            *self.uncommitted.entry(tp.clone()).or_default() += 1;
            self.consumed.insert(tp, r.offset + 1);
        }
        Ok(records)
    }

    /// Commits, durably, the position after every record the polls returned so far. Fails with
    /// `IllegalGeneration` or `UnknownMember` when this member was fenced (its partitions went to
    /// others, who read the uncommitted records again); the next poll joins again.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        self.check_open()?;
        let offsets: Vec<(String, u32, u64)> = self
            .consumed
            .iter()
            .filter(|(tp, o)| self.committed.get(*tp) != Some(*o))
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        self.commit_positions(&offsets)
    }

    /// Commits explicit positions `(topic, partition, next offset to read)` of assigned
    /// partitions, durably.
    pub fn commit_offsets(&mut self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        self.check_open()?;
        self.commit_positions(offsets)
    }

    /// Reports that processing `record` failed: the group gets it again `retry_after` from now
    /// (from its retry topic, which every member reads; the record's partition is not held up),
    /// or, once it failed `max_deliveries` times, it moves to the group's dead-letter topic
    /// `__dlq.<group>` with its origin, delivery count and `error` in headers. Either way the
    /// record counts as processed here: the next commit moves past it.
    pub fn nack(
        &mut self,
        record: &ConsumedRecord,
        retry_after: Duration,
        error: &str,
    ) -> Result<NackOutcome, ClientError> {
        self.check_open()?;
        let request = NackRequest {
            group: self.config.group.clone(),
            member_id: self.member_id(),
            generation: self.generation(),
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
            max_deliveries: self.config.max_deliveries,
            error: error.to_string(),
        };
        match self.client.nack(&request) {
            Ok(r) => Ok(r.outcome),
            Err(e) => {
                if matches!(
                    e.code(),
                    Some(ErrorCode::IllegalGeneration | ErrorCode::UnknownMember)
                ) {
                    self.membership.fenced.store(true, Ordering::Release);
                    self.membership.rejoin.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Moves the next fetch of an assigned partition to `offset` (not committed until a commit).
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        match self
            .positions
            .iter_mut()
            .find(|p| p.topic == topic && p.partition == partition)
        {
            Some(p) => {
                p.offset = offset;
                self.consumed.insert((topic.to_string(), partition), offset);
                Ok(())
            }
            None => Err(ClientError::InvalidConfig {
                field: "partition",
                reason: format!("{topic}/{partition} is not assigned to this member"),
            }),
        }
    }

    /// Leaves the group (committing first when auto-commit is on) and stops heartbeating. Its
    /// partitions go to the other members at once. Dropping the consumer does the same.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.shutdown()
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        if self.config.auto_commit_interval_ms.is_some() {
            self.auto_commit();
        }
        self.closed = true;
        *lock(&self.membership.stop) = true;
        self.membership.wake.notify_all();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let member = self.member_id();
        if member.is_empty() || self.membership.fenced.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.client.leave_group(&self.config.group, &member) {
            Err(e) if e.code() == Some(ErrorCode::UnknownMember) => Ok(()),
            other => other,
        }
    }

    fn auto_commit(&mut self) {
        self.last_auto_commit = Instant::now();
        if self.membership.fenced.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.commit() {
            tracing::warn!(group = self.config.group, error = %e, "auto-commit failed");
        }
    }

    fn commit_positions(&mut self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let request = OffsetCommitRequest {
            group: self.config.group.clone(),
            member_id: self.member_id(),
            generation: self.generation(),
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| CommitOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        match self.client.commit_offsets(&request) {
            Ok(()) => {
                for (t, p, o) in offsets {
                    let tp = (t.clone(), *p);
                    // What was returned past the committed position is still uncommitted.
                    let beyond = self.consumed.get(&tp).map_or(0, |c| c.saturating_sub(*o));
                    let left = self.uncommitted.get(&tp).map_or(0, |&u| u.min(beyond));
                    self.uncommitted.insert(tp.clone(), left);
                    self.committed.insert(tp, *o);
                }
                Ok(())
            }
            Err(e) => {
                if matches!(
                    e.code(),
                    Some(ErrorCode::IllegalGeneration | ErrorCode::UnknownMember)
                ) {
                    self.membership.fenced.store(true, Ordering::Release);
                    self.membership.rejoin.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Joins (again) and takes up the new assignment.
    fn rejoin(&mut self) -> Result<(), ClientError> {
        let fenced = self.membership.fenced.load(Ordering::Acquire);
        if fenced {
            // Everything read under the old membership is someone else's now.
            self.positions.clear();
            self.consumed.clear();
            self.uncommitted.clear();
            self.committed.clear();
        } else if self.config.auto_commit_interval_ms.is_some() && !self.consumed.is_empty() {
            // The member still holds its partitions until it joins: commit before giving them up.
            self.auto_commit();
        }
        let mut attempt = 0;
        let joined = loop {
            // Cleared before the join: a rebalance that starts while we wait asks again.
            self.membership.rejoin.store(false, Ordering::Release);
            let join = JoinGroupRequest {
                group: self.config.group.clone(),
                member_id: if self.membership.fenced.load(Ordering::Acquire) {
                    String::new()
                } else {
                    self.member_id()
                },
                session_timeout_ms: self.config.session_timeout_ms,
                rebalance_timeout_ms: self.config.rebalance_timeout_ms,
                topics: self.subscription(),
            };
            match self.client.join_group(&join) {
                Ok(j) => break j,
                Err(e) if attempt < self.client.config().retries && rejoin_again(&e) => {
                    attempt += 1;
                    if matches!(
                        e.code(),
                        Some(ErrorCode::UnknownMember | ErrorCode::IllegalGeneration)
                    ) {
                        self.membership.fenced.store(true, Ordering::Release);
                    }
                    if e.is_disconnect() {
                        self.client.mark_stale();
                    }
                    tracing::debug!(group = self.config.group, error = %e, attempt, "joining again");
                    std::thread::sleep(self.client.config().backoff(attempt));
                }
                Err(e) => {
                    self.membership.rejoin.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        };
        *lock(&self.membership.member_id) = joined.member_id.clone();
        self.membership
            .generation
            .store(joined.generation, Ordering::Release);
        self.membership.fenced.store(false, Ordering::Release);
        self.take_assignment(&joined)
    }

    /// The topics joined: the configured ones and the group's retry topic (assigned once it
    /// exists, when a member first nacks).
    fn subscription(&self) -> Vec<String> {
        let mut topics = self.config.topics.clone();
        topics.push(format!("__retry.{}", self.config.group));
        topics
    }

    /// Keeps the positions of partitions the member keeps; starts the others at the group's
    /// committed positions (or where `reset` says).
    fn take_assignment(&mut self, joined: &JoinGroupResponse) -> Result<(), ClientError> {
        let assigned: BTreeSet<(String, u32)> = joined
            .assignment
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
            .collect();
        let mut kept: BTreeMap<(String, u32), u64> = self
            .positions
            .drain(..)
            .map(|p| ((p.topic, p.partition), p.offset))
            .filter(|(tp, _)| assigned.contains(tp))
            .collect();
        self.consumed.retain(|tp, _| assigned.contains(tp));
        self.committed.retain(|tp, _| assigned.contains(tp));
        let new: Vec<(String, u32)> = assigned
            .iter()
            .filter(|tp| !kept.contains_key(*tp))
            .cloned()
            .collect();
        if !new.is_empty() {
            for c in self.client.fetch_offsets(&self.config.group, &new)? {
                if c.error != ErrorCode::None {
                    return Err(ClientError::Broker {
                        code: c.error,
                        message: format!("committed offset of {}/{}", c.topic, c.partition),
                    });
                }
                let start = match c.offset {
                    Some(o) => o,
                    None => self.reset_position(&c.topic, c.partition)?,
                };
                self.committed.insert((c.topic.clone(), c.partition), start);
                kept.insert((c.topic, c.partition), start);
            }
            for tp in &new {
                if !kept.contains_key(tp) {
                    let start = self.reset_position(&tp.0, tp.1)?;
                    kept.insert(tp.clone(), start);
                }
            }
        }
        self.positions = kept
            .into_iter()
            .map(|((topic, partition), offset)| Position {
                topic,
                partition,
                offset,
            })
            .collect();
        tracing::debug!(
            group = self.config.group,
            generation = joined.generation,
            partitions = self.positions.len(),
            "assignment taken"
        );
        Ok(())
    }

    fn reset_position(&self, topic: &str, partition: u32) -> Result<u64, ClientError> {
        let spec = match self.config.reset {
            // Retries are for this group only: never skip one, whatever the policy.
            _ if topic.starts_with("__retry.") => OffsetSpec::Earliest,
            ResetPolicy::Latest => OffsetSpec::Latest,
            ResetPolicy::Earliest | ResetPolicy::Error => OffsetSpec::Earliest,
        };
        self.client.list_offsets(topic, partition, spec)
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::debug!(group = self.config.group, error = %e, "leaving the group on drop");
        }
    }
}

/// Errors after which a join is simply tried again.
fn rejoin_again(e: &ClientError) -> bool {
    e.is_disconnect()
        || matches!(
            e.code(),
            Some(
                ErrorCode::RebalanceInProgress
                    | ErrorCode::UnknownMember
                    | ErrorCode::IllegalGeneration
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Busy
                    | ErrorCode::Timeout
            )
        )
}

/// The heartbeat thread of one [`GroupConsumer`].
struct HeartbeatLoop {
    client: Client,
    membership: Arc<Membership>,
    interval: Duration,
}

impl HeartbeatLoop {
    fn run(self) {
        let m = &self.membership;
        loop {
            {
                let stop = lock(&m.stop);
                let (stop, _) = m
                    .wake
                    .wait_timeout_while(stop, self.interval, |stop| !*stop)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            if m.fenced.load(Ordering::Acquire) {
                // Nothing to keep alive: the consumer joins as a new member at its next poll.
                continue;
            }
            // Beats go on while a rejoin is pending: they keep the member alive while the
            // application finishes what it polled.
            let member = lock(&m.member_id).clone();
            let generation = m.generation.load(Ordering::Acquire);
            match self.client.heartbeat(&m.group, &member, generation) {
                Ok(()) => {}
                Err(e) => match e.code() {
                    Some(ErrorCode::RebalanceInProgress) => {
                        m.rejoin.store(true, Ordering::Release);
                    }
                    Some(ErrorCode::UnknownMember | ErrorCode::IllegalGeneration)
                        if m.generation.load(Ordering::Acquire) == generation
                            && *lock(&m.member_id) == member =>
                    {
                        // Only if the consumer did not join again meanwhile: a beat sent with
                        // the previous generation just before a join settled says nothing.
                        tracing::info!(group = m.group, member, error = %e, "member fenced");
                        m.fenced.store(true, Ordering::Release);
                        m.rejoin.store(true, Ordering::Release);
                    }
                    _ => {
                        // A broken connection or a busy broker: the next beat tries again,
                        // well within the session timeout.
                        tracing::debug!(group = m.group, error = %e, "heartbeat failed");
                    }
                },
            }
        }
    }
}
