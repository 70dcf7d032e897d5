//! Consumer groups against a real broker process: assignment, failover to the survivors of a
//! member that vanished, pub/sub across groups, committed offsets across restarts and kill -9,
//! fencing, and the `levee consume --group` / `levee group` commands.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{levee_cli, TestBroker};
use levee::client::{
    Client, ClientConfig, ClientError, GroupConsumer, GroupConsumerConfig, ProducerConfig,
    ProducerRecord,
};
use levee::protocol::{
    Acks, CommitOffset, ErrorCode, GroupState, JoinGroupRequest, JoinGroupResponse,
    OffsetCommitRequest, TopicConfig,
};

const PARTITIONS: u32 = 8;

fn topic(client: &Client, name: &str, partitions: u32) {
    client
        .create_topic(
            name,
            TopicConfig {
                partitions,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .expect("create topic");
}

/// Produces `count` messages `"{prefix}-{i}"` round-robin over the partitions, durably.
fn produce(client: &Client, topic: &str, prefix: &str, count: u32) -> BTreeSet<String> {
    let partitions = client.partition_count(topic).unwrap();
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Durable,
            ..ProducerConfig::default()
        })
        .unwrap();
    let mut sent = BTreeSet::new();
    let futures: Vec<_> = (0..count)
        .map(|i| {
            let value = format!("{prefix}-{i}");
            sent.insert(value.clone());
            producer.send(ProducerRecord::new(topic, value).with_partition(i % partitions))
        })
        .collect();
    for f in futures {
        f.wait().expect("acknowledged");
    }
    producer.close();
    sent
}

fn member_config(group: &str, topics: &[&str]) -> GroupConsumerConfig {
    GroupConsumerConfig {
        session_timeout_ms: 1_500,
        heartbeat_interval_ms: 200,
        rebalance_timeout_ms: 5_000,
        max_wait_ms: 100,
        ..GroupConsumerConfig::new(group, topics.iter().copied())
    }
}

/// Starts `n` members at once, so they land in one generation.
fn members(addr: &str, group: &str, topics: &[&str], n: usize) -> Vec<GroupConsumer> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_string();
            let group = group.to_string();
            let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
            std::thread::spawn(move || {
                let client = Client::connect(&addr, ClientConfig::default()).unwrap();
                let t: Vec<&str> = topics.iter().map(String::as_str).collect();
                client.group_consumer(member_config(&group, &t)).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Polls every member until they share one generation and their assignments cover `expected`
/// partitions between them.
fn settle(members: &mut [GroupConsumer], expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members.iter_mut() {
            let got = m.poll(Duration::from_millis(50)).unwrap();
            assert!(got.is_empty(), "nothing was produced yet");
        }
        let generations: BTreeSet<u32> = members.iter().map(|m| m.generation()).collect();
        let assigned: usize = members.iter().map(|m| m.assignment().len()).sum();
        if generations.len() == 1 && assigned == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the group did not settle");
    }
}

fn values(records: &[levee::client::ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect()
}

#[test]
fn given_two_members_should_split_eight_partitions_with_no_overlap_and_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    topic(&client, "orders", PARTITIONS);
    let mut ms = members(&addr, "workers", &["orders"], 2);
    settle(&mut ms, PARTITIONS as usize);
    let generation = ms[0].generation();
    let a: BTreeSet<_> = ms[0].assignment().into_iter().collect();
    let b: BTreeSet<_> = ms[1].assignment().into_iter().collect();
    assert_eq!(a.len(), 4, "balanced: {a:?} / {b:?}");
    assert_eq!(b.len(), 4, "balanced: {a:?} / {b:?}");
    assert!(
        a.is_disjoint(&b),
        "no partition is read by both: {a:?} / {b:?}"
    );

    let sent = produce(&client, "orders", "m", 800);
    let mut seen: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().map(Vec::len).sum::<usize>() < sent.len() {
        assert!(Instant::now() < deadline, "timed out consuming");
        for (i, m) in ms.iter_mut().enumerate() {
            let got = m.poll(Duration::from_millis(100)).unwrap();
            for r in &got {
                let mine = if i == 0 { &a } else { &b };
                assert!(mine.contains(&(r.topic.clone(), r.partition)));
            }
            seen[i].extend(values(&got));
            m.commit().unwrap();
        }
    }
    assert_eq!(
        ms[0].generation(),
        generation,
        "no rebalance happened meanwhile"
    );
    let all: Vec<String> = seen.concat();
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "no message went to both members");
    assert_eq!(unique, sent);

    let d = client.describe_group("workers").unwrap();
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.partitions.len(), PARTITIONS as usize);
    assert!(d
        .partitions
        .iter()
        .all(|p| p.lag == 0 && p.committed == Some(100)));
}

/// A member driven by hand: joins, reads, never commits, never heartbeats again.
fn join_by_hand(
    addr: &str,
    group: &str,
    topic: &str,
    session_ms: u32,
) -> (Client, JoinGroupResponse) {
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    let joined = client
        .join_group(&JoinGroupRequest {
            group: group.into(),
            member_id: String::new(),
            session_timeout_ms: session_ms,
            rebalance_timeout_ms: 2_000,
            topics: vec![topic.into()],
        })
        .unwrap();
    (client, joined)
}

#[test]
fn given_a_member_that_vanishes_without_leaving_should_give_the_survivor_every_uncommitted_message()
{
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    topic(&client, "signups", PARTITIONS);
    let sent = produce(&client, "signups", "s", 400);

    let by_hand = {
        let addr = addr.clone();
        std::thread::spawn(move || join_by_hand(&addr, "sms", "signups", 1_000))
    };
    let mut survivor = members(&addr, "sms", &["signups"], 1).remove(0);
    let (hand_client, joined) = by_hand.join().unwrap();
    assert_eq!(joined.members, 2);
    let theirs: Vec<u32> = joined.assignment[0].partitions.clone();
    assert_eq!(theirs.len(), 4);
    // The vanishing member reads its partitions and dies before committing anything.
    for &p in &theirs {
        let f = hand_client.fetch("signups", p, 0, 1 << 20, 0).unwrap();
        assert!(f.records().count() > 0);
    }
    drop(hand_client);

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "the survivor got {} of 400",
            seen.len()
        );
        seen.extend(values(&survivor.poll(Duration::from_millis(100)).unwrap()));
        survivor.commit().unwrap();
    }
    assert_eq!(survivor.assignment().len(), PARTITIONS as usize);
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, sent, "nothing lost");
    assert_eq!(
        seen.len(),
        unique.len(),
        "the survivor committed as it went"
    );

    // Pub/sub: a second group gets every message too, and the first group is untouched.
    let mut gift = members(&addr, "gift", &["signups"], 1).remove(0);
    let mut gifts = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gifts.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "the second group got {}",
            gifts.len()
        );
        gifts.extend(values(&gift.poll(Duration::from_millis(100)).unwrap()));
    }
    assert_eq!(gifts, sent);
    let sms = client.describe_group("sms").unwrap();
    assert!(sms.partitions.iter().all(|p| p.lag == 0));
    let gift_lag: u64 = client
        .describe_group("gift")
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.lag)
        .sum();
    assert_eq!(gift_lag, 400, "the gift group committed nothing");
}

fn commit(
    client: &Client,
    group: &str,
    member: &str,
    generation: u32,
    offset: u64,
) -> Result<(), ClientError> {
    client.commit_offsets(&OffsetCommitRequest {
        group: group.into(),
        member_id: member.into(),
        generation,
        offsets: (0..PARTITIONS)
            .map(|p| CommitOffset {
                topic: "t".into(),
                partition: p,
                offset: offset + u64::from(p),
                metadata: format!("m{offset}"),
            })
            .collect(),
    })
}

fn committed(client: &Client, group: &str) -> BTreeMap<u32, (u64, String)> {
    client
        .fetch_offsets(group, &[])
        .unwrap()
        .into_iter()
        .map(|o| {
            assert_eq!(o.error, ErrorCode::None);
            (o.partition, (o.offset.unwrap(), o.metadata))
        })
        .collect()
}

#[test]
fn given_committed_offsets_when_the_broker_restarts_or_is_killed_should_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    topic(&client, "t", PARTITIONS);
    // Many groups, so they spread over several coordinators and shards.
    let groups: Vec<String> = (0..20).map(|i| format!("g{i}")).collect();
    for (i, g) in groups.iter().enumerate() {
        commit(&client, g, "", u32::MAX, 10 + i as u64).unwrap();
        commit(&client, g, "", u32::MAX, 100 + i as u64).unwrap();
    }
    assert!(broker.stop(), "clean stop");
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    for (i, g) in groups.iter().enumerate() {
        let c = committed(&client, g);
        assert_eq!(c.len(), PARTITIONS as usize, "{g}");
        for (p, (offset, metadata)) in c {
            assert_eq!(
                offset,
                100 + i as u64 + u64::from(p),
                "{g}/{p} after a restart"
            );
            assert_eq!(metadata, format!("m{}", 100 + i));
        }
        commit(&client, g, "", u32::MAX, 1000 + i as u64).unwrap();
    }
    // kill -9 right after the acknowledgements.
    drop(broker);
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    let listed: BTreeSet<String> = client
        .list_groups()
        .unwrap()
        .into_iter()
        .map(|g| g.group)
        .collect();
    assert_eq!(listed, groups.iter().cloned().collect());
    for (i, g) in groups.iter().enumerate() {
        for (p, (offset, _)) in committed(&client, g) {
            assert_eq!(
                offset,
                1000 + i as u64 + u64::from(p),
                "{g}/{p} after kill -9"
            );
        }
    }
    // A deleted group stays deleted across a kill.
    client.delete_group("g0").unwrap();
    drop(broker);
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    assert!(client.fetch_offsets("g0", &[]).unwrap().is_empty());
    assert_eq!(committed(&client, "g1").len(), PARTITIONS as usize);
}

#[test]
fn given_a_fenced_member_should_reject_its_commits_and_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    topic(&client, "t", PARTITIONS);
    let (a_client, a) = join_by_hand(&addr, "g", "t", 2_000);
    assert_eq!(a.assignment[0].partitions.len(), PARTITIONS as usize);
    commit(&a_client, "g", &a.member_id, a.generation, 1).unwrap();

    // b joins: the group rebalances, a joins again, both are in the next generation.
    let b = {
        let addr = addr.clone();
        std::thread::spawn(move || join_by_hand(&addr, "g", "t", 2_000))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a_client.heartbeat("g", &a.member_id, a.generation) {
            Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress) => break,
            Ok(()) => assert!(Instant::now() < deadline, "no rebalance"),
            Err(e) => panic!("heartbeat: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let a2 = a_client
        .join_group(&JoinGroupRequest {
            group: "g".into(),
            member_id: a.member_id.clone(),
            session_timeout_ms: 2_000,
            rebalance_timeout_ms: 2_000,
            topics: vec!["t".into()],
        })
        .unwrap();
    let (_b_client, b) = b.join().unwrap();
    assert_eq!(a2.generation, a.generation + 1);
    assert_eq!(b.generation, a2.generation);

    // The old generation is fenced.
    let stale = commit(&a_client, "g", &a.member_id, a.generation, 2).unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::IllegalGeneration), "{stale}");
    let stale = a_client
        .heartbeat("g", &a.member_id, a.generation)
        .unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::IllegalGeneration), "{stale}");
    // A stranger, and an administrator while members live, too.
    let stranger = commit(&client, "g", "nobody", a2.generation, 2).unwrap_err();
    assert_eq!(
        stranger.code(),
        Some(ErrorCode::UnknownMember),
        "{stranger}"
    );
    let admin = commit(&client, "g", "", u32::MAX, 2).unwrap_err();
    assert_eq!(admin.code(), Some(ErrorCode::GroupNotEmpty), "{admin}");
    let delete = client.delete_group("g").unwrap_err();
    assert_eq!(delete.code(), Some(ErrorCode::GroupNotEmpty), "{delete}");
    // Nothing of the rejected commits landed.
    assert!(committed(&client, "g").values().all(|(o, _)| *o < 10));

    // Both stop heartbeating: their sessions expire and their commits are refused.
    std::thread::sleep(Duration::from_millis(2_600));
    let expired = commit(&a_client, "g", &a.member_id, a2.generation, 3).unwrap_err();
    assert_eq!(expired.code(), Some(ErrorCode::UnknownMember), "{expired}");
    let d = client.describe_group("g").unwrap();
    assert_eq!(d.state, GroupState::Empty);
    assert!(d.members.is_empty());
    client.delete_group("g").unwrap();
    let gone = client.describe_group("g").unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::UnknownGroup), "{gone}");
}

#[test]
fn given_bad_group_requests_should_answer_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--group-members-max", "1"]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    let join = |group: &str, session_timeout_ms, topics: Vec<String>| {
        client.join_group(&JoinGroupRequest {
            group: group.into(),
            member_id: String::new(),
            session_timeout_ms,
            rebalance_timeout_ms: 1_000,
            topics,
        })
    };
    let e = join("bad/name", 5_000, vec!["t".into()]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    let e = join("g", 1, vec!["t".into()]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    let e = join("g", 5_000, vec![]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
    // Bounds: one member per group here, and metadata of at most 4 KiB per offset.
    topic(&client, "t", 1);
    let first = join("full", 5_000, vec!["t".into()]).unwrap();
    let e = join("full", 5_000, vec!["t".into()]).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    let big = client
        .commit_offsets(&OffsetCommitRequest {
            group: "full".into(),
            member_id: first.member_id.clone(),
            generation: first.generation,
            offsets: vec![CommitOffset {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                metadata: "m".repeat(4097),
            }],
        })
        .unwrap_err();
    assert_eq!(big.code(), Some(ErrorCode::LimitExceeded), "{big}");
    let e = client.delete_group("never").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownGroup), "{e}");
    let e = client.heartbeat("never", "m", 1).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownMember), "{e}");
    // Internal topics are the broker's: a client can neither write, alter nor delete one.
    let run = common::one_record("forged");
    let e = client
        .produce_run("__consumer_offsets", 0, &run, Acks::Durable)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidTopicName), "{e}");
    let e = client.delete_topic("__consumer_offsets").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidTopicName), "{e}");
    let e = client
        .alter_topic(
            "__consumer_offsets",
            &levee::protocol::TopicChange {
                partitions: Some(64),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidTopicName), "{e}");
    // The internal topic is hidden from listings, and cannot be created by a client.
    assert!(client
        .list_topics()
        .unwrap()
        .iter()
        .all(|t| !t.name.starts_with("__")));
    assert!(client
        .list_topics_with(true)
        .unwrap()
        .iter()
        .any(|t| t.name == "__consumer_offsets"));
}

#[test]
fn given_the_cli_should_consume_as_a_group_commit_what_it_printed_and_administer_groups() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    topic(&client, "events", 3);
    produce(&client, "events", "e", 30);
    let consume = |count: &str| {
        levee_cli(
            &broker,
            &[
                "consume",
                "events",
                "--group",
                "cli",
                "--from",
                "earliest",
                "--count",
                count,
                "--timeout-ms",
                "3000",
            ],
            "",
            &[],
        )
    };
    let (code, first, err) = consume("20");
    assert_eq!(code, 0, "{err}");
    assert_eq!(first.lines().count(), 20);
    let (code, rest, err) = consume("100");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rest.lines().count(),
        10,
        "only what the first run did not print"
    );
    let all: BTreeSet<&str> = first.lines().chain(rest.lines()).collect();
    assert_eq!(all.len(), 30);

    let (code, out, err) = levee_cli(&broker, &["group", "list"], "", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "cli\tempty\t0"), "{out}");
    let (code, out, _) = levee_cli(&broker, &["group", "describe", "cli"], "", &[]);
    assert_eq!(code, 0);
    assert!(out.contains("state=empty"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("events\t")).count(),
        3,
        "{out}"
    );
    assert!(out
        .lines()
        .filter(|l| l.starts_with("events\t"))
        .all(|l| l.ends_with("\t0")));

    let (code, out, err) = levee_cli(
        &broker,
        &[
            "group", "reset", "cli", "--topic", "events", "--to", "earliest",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, again, _) = consume("100");
    assert_eq!(code, 0);
    assert_eq!(
        again.lines().count(),
        30,
        "reset to earliest reads everything again"
    );

    let (code, _, err) = levee_cli(&broker, &["group", "describe", "nope"], "", &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error:"), "{err}");
    let (code, _, err) = levee_cli(
        &broker,
        &["consume", "events", "--group", "cli", "--from", "5"],
        "",
        &[],
    );
    assert_eq!(code, 2, "an offset with --group is a usage error: {err}");
    let (code, out, err) = levee_cli(&broker, &["group", "delete", "cli"], "", &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = levee_cli(&broker, &["topic", "list"], "", &[]);
    assert_eq!(code, 0);
    assert!(!out.contains("__consumer_offsets"), "{out}");
    let (code, out, _) = levee_cli(&broker, &["topic", "list", "--internal"], "", &[]);
    assert_eq!(code, 0);
    assert!(out.contains("__consumer_offsets"), "{out}");
}
