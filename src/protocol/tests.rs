use super::*;
use proptest::prelude::*;

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut v = rkyv::util::AlignedVec::<16>::new();
    v.extend_from_slice(bytes);
    v
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}"
}

fn run() -> impl Strategy<Value = Vec<u8>> {
    (0usize..8).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 16..=n * 16))
}

fn opt() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(any::<u64>())
}

fn visibility() -> impl Strategy<Value = Option<Visibility>> {
    proptest::option::of(prop_oneof![
        Just(Visibility::Written),
        Just(Visibility::Durable)
    ])
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        name().prop_map(|client_id| Request::ApiVersions { client_id }),
        proptest::collection::vec(name(), 0..4).prop_map(|topics| Request::Metadata { topics }),
        (name(), any::<u32>(), opt(), opt(), visibility()).prop_map(|(name, p, rb, rm, v)| {
            Request::CreateTopic {
                name,
                config: TopicConfig {
                    partitions: p,
                    retention_bytes: rb,
                    retention_ms: rm,
                    visibility: v,
                    ..Default::default()
                },
            }
        }),
        name().prop_map(|name| Request::DeleteTopic { name }),
        (
            name(),
            proptest::option::of(any::<u32>()),
            opt(),
            opt(),
            visibility()
        )
            .prop_map(
                |(name, partitions, retention_bytes, retention_ms, visibility)| {
                    Request::AlterTopic {
                        name,
                        partitions,
                        retention_bytes,
                        retention_ms,
                        visibility,
                        backlog: Backlog::default(),
                    }
                }
            ),
        any::<bool>().prop_map(|internal| Request::ListTopics { internal }),
        name().prop_map(|name| Request::DescribeTopic { name }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec((name(), any::<u32>(), any::<u64>(), any::<u32>()), 0..4)
        )
            .prop_map(|(max_wait_ms, min_bytes, max_bytes, blocks)| {
                Request::Fetch(FetchRequest {
                    max_wait_ms,
                    min_bytes,
                    max_bytes,
                    blocks: blocks
                        .into_iter()
                        .map(|(topic, partition, offset, max_bytes)| FetchBlock {
                            topic,
                            partition,
                            offset,
                            max_bytes,
                        })
                        .collect(),
                })
            }),
        proptest::collection::vec((name(), any::<u32>(), 0u8..3, any::<i64>()), 0..4).prop_map(
            |b| {
                Request::ListOffsets(
                    b.into_iter()
                        .map(|(topic, partition, k, t)| ListOffsetsBlock {
                            topic,
                            partition,
                            spec: match k {
                                0 => OffsetSpec::Earliest,
                                1 => OffsetSpec::Latest,
                                _ => OffsetSpec::Timestamp(t),
                            },
                        })
                        .collect(),
                )
            }
        ),
    ]
}

proptest! {
    #[test]
    fn request_roundtrip(req in request(), cid in any::<u32>()) {
        let mut out = Vec::new();
        encode_request(&mut out, cid, &req).unwrap();
        prop_assert_eq!(frame_len(&out, FRAME_SIZE_MAX).unwrap(), Some(out.len()));
        let (h, back) = decode_request(&out).unwrap();
        prop_assert_eq!(h.correlation_id, cid);
        prop_assert_eq!(back, req);
    }

    #[test]
    fn produce_roundtrip_keeps_runs_aligned_in_place(
        blocks in proptest::collection::vec((name(), any::<u32>(), run()), 0..5),
        cid in any::<u32>(),
    ) {
        let refs: Vec<(&str, u32, &[u8])> =
            blocks.iter().map(|(t, p, r)| (t.as_str(), *p, r.as_slice())).collect();
        let mut out = Vec::new();
        encode_produce(&mut out, cid, Acks::Durable, 1234, &refs).unwrap();
        let frame = aligned(&out);
        let (_, req) = decode_request(&frame).unwrap();
        let Request::Produce(p) = req else { panic!("not produce") };
        prop_assert_eq!(p.acks, Acks::Durable);
        prop_assert_eq!(p.blocks.len(), blocks.len());
        for (b, (t, part, r)) in p.blocks.iter().zip(&blocks) {
            prop_assert_eq!(&b.topic, t);
            prop_assert_eq!(b.partition, *part);
            prop_assert_eq!(b.run.start % 16, 0);
            prop_assert_eq!(&frame[b.run.clone()], &r[..]);
        }
    }

    #[test]
    fn fetch_response_spliced_runs_roundtrip(
        blocks in proptest::collection::vec((name(), any::<u32>(), any::<u64>(), any::<u64>(), run()), 0..5),
        cid in any::<u32>(),
    ) {
        let results: Vec<FetchResult> = blocks.iter().map(|(t, p, e, n, r)| FetchResult {
            topic: t.clone(), partition: *p, error: ErrorCode::None, earliest: *e, next: *n,
            throttle_ms: p % 10_000, run: 0..r.len(),
        }).collect();
        let mut head = Vec::new();
        let splits = encode_fetch_response(&mut head, ApiKey::Fetch.versions().1, cid, &results).unwrap();
        // Splice as the server does on the wire.
        let mut wire = Vec::new();
        let mut at = 0;
        for (s, (_, _, _, _, r)) in splits.iter().zip(&blocks) {
            wire.extend_from_slice(&head[at..*s]);
            wire.extend_from_slice(r);
            at = *s;
        }
        wire.extend_from_slice(&head[at..]);
        prop_assert_eq!(frame_len(&wire, FRAME_SIZE_MAX).unwrap(), Some(wire.len()));
        let (h, resp) = decode_response(&wire).unwrap();
        prop_assert_eq!(h.correlation_id, cid);
        let Some(Response::Fetch(back)) = resp else { panic!("not fetch") };
        for (b, (_, p, _, _, r)) in back.iter().zip(&blocks) {
            prop_assert_eq!(&wire[b.run.clone()], &r[..]);
            prop_assert_eq!(b.throttle_ms, p % 10_000);
            prop_assert_eq!(b.run.start % 16, 0);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = frame_len(&bytes, FRAME_SIZE_MAX);
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        let _ = error_message(&bytes);
    }

    #[test]
    fn decoding_mutated_valid_requests_never_panics(req in request(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut out = Vec::new();
        encode_request(&mut out, 1, &req).unwrap();
        for (at, v) in flips { let n = out.len(); out[at % n] ^= v; }
        let _ = decode_request(&out);
    }
}

#[test]
fn given_frame_claiming_4gib_when_sized_should_reject_before_allocating() {
    let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0];
    assert!(matches!(
        frame_len(&bytes, FRAME_SIZE_MAX),
        Err(DecodeError::FrameTooLarge {
            size: 0x1_0000_0003,
            ..
        })
    ));
    assert_eq!(frame_len(&[1, 0], FRAME_SIZE_MAX), Ok(None));
    assert!(matches!(
        frame_len(&[3, 0, 0, 0], FRAME_SIZE_MAX),
        Err(DecodeError::FrameTooShort { size: 7 })
    ));
}

#[test]
fn given_unknown_key_or_version_when_decoding_should_fail_typed() {
    let mut out = Vec::new();
    encode_request(&mut out, 9, &Request::ListTopics { internal: false }).unwrap();
    out[4] = 200;
    assert_eq!(
        decode_request(&out).unwrap_err().code(),
        ErrorCode::UnknownApiKey
    );
    encode_request(&mut out, 9, &Request::ListTopics { internal: false }).unwrap();
    out[6] = 7;
    assert_eq!(
        decode_request(&out).unwrap_err().code(),
        ErrorCode::UnsupportedVersion
    );
}

#[test]
fn given_huge_array_count_when_decoding_should_fail_without_allocating() {
    let mut out = Vec::new();
    encode_request(&mut out, 1, &Request::Metadata { topics: vec![] }).unwrap();
    out[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_request(&out),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn given_error_response_when_decoded_should_carry_code_and_message() {
    let mut out = Vec::new();
    encode_error(
        &mut out,
        ApiKey::Produce as u16,
        77,
        ErrorCode::UnknownTopic,
        "unknown topic 'orders'",
    );
    let (h, body) = decode_response(&out).unwrap();
    assert_eq!(h.error_code, ErrorCode::UnknownTopic);
    assert_eq!(h.correlation_id, 77);
    assert!(body.is_none());
    assert_eq!(error_message(&out), "unknown topic 'orders'");
}

#[test]
fn given_topic_names_when_validated_should_follow_the_contract() {
    assert!(valid_topic_name("orders.v1_eu-west"));
    assert!(valid_topic_name(&"a".repeat(249)));
    for bad in ["", ".", "..", "a b", "é", &"a".repeat(250)] {
        assert!(!valid_topic_name(bad), "{bad:?}");
    }
}

#[test]
fn error_codes_roundtrip_their_wire_values() {
    for v in 0..=ErrorCode::Throttled as u16 {
        assert_eq!(ErrorCode::from_u16(v) as u16, v);
    }
    assert_eq!(ErrorCode::from_u16(999), ErrorCode::Internal);
}

#[test]
fn given_new_error_codes_when_sent_to_an_older_version_should_fall_back_to_known_ones() {
    use ErrorCode::*;
    // Flow-control codes never reach a client older than Produce version 3.
    assert_eq!(Throttled.for_version(ApiKey::Produce, 3), Throttled);
    assert_eq!(Throttled.for_version(ApiKey::Produce, 2), Busy);
    assert_eq!(QueueFull.for_version(ApiKey::Produce, 3), QueueFull);
    assert_eq!(QueueFull.for_version(ApiKey::Produce, 1), LimitExceeded);
    assert_eq!(QueueFull.for_version(ApiKey::Produce, 0), InvalidRequest);
    assert!(Throttled.is_retriable() && !QueueFull.is_retriable());
    assert_eq!(LimitExceeded.for_version(ApiKey::Fetch, 1), LimitExceeded);
    assert_eq!(LimitExceeded.for_version(ApiKey::Fetch, 0), InvalidRequest);
    assert_eq!(
        LimitExceeded.for_version(ApiKey::Metadata, 0),
        InvalidRequest
    );
    assert_eq!(
        LimitExceeded.for_version(ApiKey::CreateTopic, 0),
        InvalidConfig
    );
    assert_eq!(
        LimitExceeded.for_version(ApiKey::AlterTopic, 0),
        InvalidConfig
    );
    // An api that never defines the code always gets the fallback.
    assert_eq!(
        LimitExceeded.for_version(ApiKey::DescribeTopic, 0),
        InvalidRequest
    );
    for v in 0..19u16 {
        let code = ErrorCode::from_u16(v);
        for key in ApiKey::ALL {
            assert_eq!(code.for_version(key, 0), code, "v0 codes reach v0 clients");
        }
    }
}

#[test]
fn given_version_ranges_when_negotiated_should_pick_the_highest_common() {
    assert_eq!(ApiKey::Fetch.negotiate((0, 0)), Some(0));
    assert_eq!(ApiKey::Fetch.negotiate((0, 7)), Some(2));
    assert_eq!(ApiKey::Metadata.negotiate((0, 7)), Some(1));
    assert_eq!(ApiKey::Metadata.negotiate((2, 7)), None);
    assert_eq!(ApiKey::DeleteTopic.negotiate((0, 3)), Some(0));
    assert_eq!(ApiKey::ListTopics.negotiate((0, 3)), Some(1));
}

#[test]
fn given_a_nonzero_reserved_field_when_decoding_should_refuse_but_keep_the_header_readable() {
    let mut out = Vec::new();
    encode_request(&mut out, 42, &Request::ListTopics { internal: false }).unwrap();
    out[12] = 1;
    assert_eq!(
        decode_request(&out).unwrap_err().code(),
        ErrorCode::InvalidRequest
    );
    let h = request_header(&out).unwrap();
    assert_eq!((h.correlation_id, h.reserved), (42, 1));
}

#[test]
fn given_too_many_items_when_decoding_with_a_limit_should_refuse_typed_before_decoding_them() {
    let mut out = Vec::new();
    let topics = vec!["t".to_string(); 11];
    encode_request(&mut out, 1, &Request::Metadata { topics }).unwrap();
    assert!(decode_request_limited(&out, 11).is_ok());
    let e = decode_request_limited(&out, 10).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::TooManyItems {
                count: 11,
                max: 10,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), ErrorCode::LimitExceeded);
}

#[test]
fn given_values_the_format_cannot_carry_when_encoding_should_fail_typed_not_panic() {
    let mut out = Vec::new();
    let long = "x".repeat(70_000);
    let e = encode_request(&mut out, 1, &Request::DeleteTopic { name: long }).unwrap_err();
    assert_eq!(e, EncodeError::StringTooLong { len: 70_000 });
    let results = vec![
        FetchResult {
            topic: "t".into(),
            partition: 0,
            error: ErrorCode::None,
            earliest: 0,
            next: 0,
            throttle_ms: 0,
            run: 0..(48 << 20),
        };
        2
    ];
    let e = encode_fetch_response(&mut out, ApiKey::Fetch.versions().1, 1, &results).unwrap_err();
    assert!(matches!(e, EncodeError::FrameTooLarge { .. }), "{e:?}");
    let e = encode_request(
        &mut out,
        1,
        &Request::Produce(ProduceRequest {
            acks: Acks::Written,
            timeout_ms: 0,
            blocks: vec![],
        }),
    )
    .unwrap_err();
    assert!(matches!(e, EncodeError::Unsupported { .. }));
}

#[test]
fn given_a_visibility_when_encoded_at_an_older_version_should_refuse_and_the_broker_default_stays()
{
    let create = |visibility| Request::CreateTopic {
        name: "t".into(),
        config: TopicConfig {
            partitions: 1,
            retention_bytes: None,
            retention_ms: None,
            visibility,
            ..Default::default()
        },
    };
    let mut out = Vec::new();
    let e = encode_request_at(&mut out, 1, 1, &create(Some(Visibility::Durable))).unwrap_err();
    assert!(matches!(e, EncodeError::Unsupported { .. }));
    // Without one, an old version encodes, and decodes with the broker's default (None).
    encode_request_at(&mut out, 1, 1, &create(None)).unwrap();
    assert_eq!(decode_request(&out).unwrap().1, create(None));
    encode_request_at(&mut out, 2, 1, &create(Some(Visibility::Durable))).unwrap();
    assert_eq!(
        decode_request(&out).unwrap().1,
        create(Some(Visibility::Durable))
    );
    let last = out.len() - 1;
    out[last] = 3;
    assert!(decode_request(&out).is_err(), "visibility 3 is invalid");
}

#[test]
fn given_a_describe_response_when_encoded_per_version_should_carry_visibility_from_v1() {
    let response = Response::DescribeTopic {
        name: "t".into(),
        config: TopicConfig {
            partitions: 1,
            retention_bytes: None,
            retention_ms: Some(5),
            visibility: Some(Visibility::Durable),
            ..Default::default()
        },
        partitions: vec![],
    };
    let mut v0 = Vec::new();
    encode_response_at(&mut v0, ApiKey::DescribeTopic, 0, 9, &response).unwrap();
    let mut v1 = Vec::new();
    encode_response_at(&mut v1, ApiKey::DescribeTopic, 1, 9, &response).unwrap();
    assert_eq!(v1.len(), v0.len() + 1);
    let Some(Response::DescribeTopic { config, .. }) = decode_response_at(&v0, 0).unwrap().1 else {
        panic!("v0")
    };
    assert_eq!(config.visibility, None);
    assert_eq!(decode_response_at(&v1, 1).unwrap().1, Some(response));
}

fn group_request() -> impl Strategy<Value = Request> {
    let tp = || proptest::collection::vec((name(), any::<u32>()), 0..4);
    prop_oneof![
        (
            name(),
            name(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(name(), 0..4)
        )
            .prop_map(|(group, member_id, s, r, topics)| {
                Request::JoinGroup(JoinGroupRequest {
                    group,
                    member_id,
                    session_timeout_ms: s,
                    rebalance_timeout_ms: r,
                    topics,
                })
            }),
        (name(), name(), any::<u32>()).prop_map(|(group, member_id, generation)| {
            Request::Heartbeat {
                group,
                member_id,
                generation,
            }
        }),
        (name(), name()).prop_map(|(group, member_id)| Request::LeaveGroup { group, member_id }),
        (
            name(),
            name(),
            any::<u32>(),
            proptest::collection::vec((name(), any::<u32>(), any::<u64>(), name()), 0..4)
        )
            .prop_map(|(group, member_id, generation, o)| {
                Request::OffsetCommit(OffsetCommitRequest {
                    group,
                    member_id,
                    generation,
                    offsets: o
                        .into_iter()
                        .map(|(topic, partition, offset, metadata)| CommitOffset {
                            topic,
                            partition,
                            offset,
                            metadata,
                        })
                        .collect(),
                })
            }),
        (name(), tp()).prop_map(|(group, partitions)| Request::OffsetFetch { group, partitions }),
        name().prop_map(|group| Request::DescribeGroup { group }),
        Just(Request::ListGroups),
        name().prop_map(|group| Request::DeleteGroup { group }),
        (
            0u8..3,
            any::<u32>(),
            name(),
            any::<u32>(),
            any::<i64>(),
            run()
        )
            .prop_map(|(a, timeout_ms, topic, partition, deliver_at_ms, run)| {
                Request::ProduceDelayed(ProduceDelayedRequest {
                    acks: [Acks::None, Acks::Written, Acks::Durable][a as usize],
                    timeout_ms,
                    topic,
                    partition,
                    deliver_at_ms,
                    run,
                })
            }),
        (
            name(),
            name(),
            any::<u32>(),
            name(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            name()
        )
            .prop_map(
                |(group, member_id, generation, topic, partition, offset, r, error)| {
                    Request::Nack(NackRequest {
                        group,
                        member_id,
                        generation,
                        topic,
                        partition,
                        offset,
                        retry_after_ms: r,
                        max_deliveries: r % 7,
                        error,
                    })
                }
            ),
        (name(), any::<u32>()).prop_map(|(group, max_messages)| Request::DlqReplay {
            group,
            max_messages
        }),
        Just(Request::InitProducer),
        (quota_entity(), quota_limits())
            .prop_map(|(entity, limits)| Request::SetQuota { entity, limits }),
        Just(Request::ListQuotas),
        quota_entity().prop_map(|entity| Request::DeleteQuota { entity }),
        Just(Request::Stats),
    ]
}

fn quota_entity() -> impl Strategy<Value = QuotaEntity> {
    (any::<bool>(), name()).prop_map(|(client, n)| {
        if client {
            QuotaEntity::Client(n)
        } else {
            QuotaEntity::Topic(n)
        }
    })
}

fn quota_limits() -> impl Strategy<Value = QuotaLimits> {
    proptest::array::uniform4(proptest::option::of(any::<u64>())).prop_map(QuotaLimits::from_array)
}

fn stats_response() -> impl Strategy<Value = StatsResponse> {
    let shard = (
        any::<u16>(),
        any::<bool>(),
        any::<u32>(),
        proptest::array::uniform10(any::<u64>()),
    )
        .prop_map(|(shard, up, connections, v)| ShardStats {
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
    let partition = (
        name(),
        any::<u32>(),
        proptest::array::uniform4(any::<u64>()),
    )
        .prop_map(|(topic, partition, v)| PartitionStats {
            topic,
            partition,
            earliest: v[0],
            next: v[1],
            durable: v[2],
            size_bytes: v[3],
        });
    let group = (name(), name(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(group, topic, partition, committed, lag)| GroupLagStats {
            group,
            topic,
            partition,
            committed,
            lag,
        },
    );
    (
        proptest::array::uniform3(any::<u64>()),
        proptest::collection::vec(shard, 0..3),
        proptest::collection::vec(partition, 0..3),
        proptest::collection::vec(group, 0..3),
    )
        .prop_map(|(v, shards, partitions, groups)| StatsResponse {
            uptime_ms: v[0],
            memory_used: v[1],
            memory_max: v[2],
            shards,
            partitions,
            groups,
        })
}

fn assignment() -> impl Strategy<Value = Vec<TopicPartitions>> {
    proptest::collection::vec(
        (name(), proptest::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(topic, partitions)| TopicPartitions { topic, partitions }),
        0..3,
    )
}

fn group_response() -> impl Strategy<Value = (ApiKey, Response)> {
    let state = || {
        (0u8..3).prop_map(|s| {
            [
                GroupState::Empty,
                GroupState::Rebalancing,
                GroupState::Stable,
            ][s as usize]
        })
    };
    prop_oneof![
        (any::<u32>(), name(), any::<u32>(), assignment()).prop_map(|(g, m, n, a)| {
            (
                ApiKey::JoinGroup,
                Response::JoinGroup(JoinGroupResponse {
                    generation: g,
                    member_id: m,
                    members: n,
                    assignment: a,
                }),
            )
        }),
        proptest::collection::vec((name(), any::<u32>(), 0u16..25), 0..4).prop_map(|v| {
            (
                ApiKey::OffsetCommit,
                Response::OffsetCommit(
                    v.into_iter()
                        .map(|(topic, partition, e)| CommitResult {
                            topic,
                            partition,
                            error: ErrorCode::from_u16(e),
                        })
                        .collect(),
                ),
            )
        }),
        proptest::collection::vec((name(), any::<u32>(), opt(), name()), 0..4).prop_map(|v| {
            (
                ApiKey::OffsetFetch,
                Response::OffsetFetch(
                    v.into_iter()
                        .map(|(topic, partition, offset, metadata)| FetchedOffset {
                            topic,
                            partition,
                            error: ErrorCode::None,
                            offset,
                            metadata,
                        })
                        .collect(),
                ),
            )
        }),
        (
            name(),
            state(),
            any::<u32>(),
            proptest::collection::vec((name(), name(), assignment()), 0..3),
            proptest::collection::vec(
                (name(), any::<u32>(), opt(), any::<u64>(), any::<u64>()),
                0..4
            )
        )
            .prop_map(|(group, state, generation, m, p)| {
                (
                    ApiKey::DescribeGroup,
                    Response::DescribeGroup(GroupDescription {
                        group,
                        state,
                        generation,
                        members: m
                            .into_iter()
                            .map(|(member_id, client_id, assignment)| MemberDescription {
                                member_id,
                                client_id,
                                assignment,
                            })
                            .collect(),
                        partitions: p
                            .into_iter()
                            .map(|(topic, partition, committed, log_end, lag)| PartitionLag {
                                topic,
                                partition,
                                committed,
                                log_end,
                                lag,
                            })
                            .collect(),
                    }),
                )
            }),
        (any::<u64>(), any::<i64>()).prop_map(|(id, due_ms)| {
            (
                ApiKey::ProduceDelayed,
                Response::ProduceDelayed(ProduceDelayedResponse { id, due_ms }),
            )
        }),
        (any::<bool>(), any::<u32>()).prop_map(|(dead, delivery)| {
            (
                ApiKey::Nack,
                Response::Nack(NackResponse {
                    outcome: if dead {
                        NackOutcome::DeadLettered
                    } else {
                        NackOutcome::Retry
                    },
                    delivery,
                }),
            )
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(replayed, next)| {
            (
                ApiKey::DlqReplay,
                Response::DlqReplay(DlqReplayResponse { replayed, next }),
            )
        }),
        any::<u64>().prop_map(|producer_id| {
            (ApiKey::InitProducer, Response::InitProducer { producer_id })
        }),
        proptest::collection::vec((quota_entity(), quota_limits()), 0..4)
            .prop_map(|all| (ApiKey::ListQuotas, Response::ListQuotas(all))),
        any::<bool>().prop_map(|removed| (ApiKey::DeleteQuota, Response::DeleteQuota { removed })),
        stats_response().prop_map(|s| (ApiKey::Stats, Response::Stats(s))),
        proptest::collection::vec((name(), state(), any::<u32>()), 0..4).prop_map(|v| {
            (
                ApiKey::ListGroups,
                Response::ListGroups(
                    v.into_iter()
                        .map(|(group, state, members)| GroupSummary {
                            group,
                            state,
                            members,
                        })
                        .collect(),
                ),
            )
        }),
    ]
}

proptest! {
    #[test]
    fn group_request_roundtrip(req in group_request(), cid in any::<u32>()) {
        let mut out = Vec::new();
        encode_request(&mut out, cid, &req).unwrap();
        let (h, back) = decode_request(&out).unwrap();
        prop_assert_eq!(h.correlation_id, cid);
        prop_assert_eq!(back, req);
    }

    #[test]
    fn group_response_roundtrip((key, resp) in group_response(), cid in any::<u32>()) {
        let mut out = Vec::new();
        encode_response(&mut out, key, cid, &resp).unwrap();
        let (h, back) = decode_response(&out).unwrap();
        prop_assert_eq!(h.correlation_id, cid);
        prop_assert_eq!(back, Some(resp));
    }

    #[test]
    fn decoding_mutated_group_requests_never_panics(req in group_request(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut out = Vec::new();
        encode_request(&mut out, 1, &req).unwrap();
        for (at, v) in flips { let n = out.len(); out[at % n] ^= v; }
        let _ = decode_request(&out);
    }
}

#[test]
fn given_list_topics_v1_should_carry_the_internal_flag_and_v0_refuse_it() {
    let mut out = Vec::new();
    encode_request_at(&mut out, 1, 7, &Request::ListTopics { internal: true }).unwrap();
    assert_eq!(&out[16..], &[1]);
    let (_, back) = decode_request(&out).unwrap();
    assert_eq!(back, Request::ListTopics { internal: true });
    out.clear();
    assert!(encode_request_at(&mut out, 0, 7, &Request::ListTopics { internal: true }).is_err());
    assert!(valid_group_name(&"g".repeat(200)));
    assert!(!valid_group_name(&"g".repeat(201)));
    assert!(!valid_group_name("a/b"));
    assert!(!valid_group_name(""));
}

#[test]
fn api_names_are_the_variant_names() {
    for k in ApiKey::ALL {
        assert_eq!(k.name(), format!("{k:?}"));
    }
}
