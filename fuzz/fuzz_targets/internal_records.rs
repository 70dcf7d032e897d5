//! The broker's own record formats on hostile bytes: a damaged `__delays` or `__consumer_offsets`
//! record (its CRCs pass, its value is anything), and a producer's run read for its idempotence
//! batch and re-tagged for delayed delivery.
//!
//! Input: `data[0]` picks what the rest is. Mode 0: the value of one delays record, mode 1: the
//! key/value of one offsets record (split at the first 0 byte), mode 2: a producer's run of
//! records, as sent. Each is sealed into valid records where the format needs it, so the decoders
//! see arbitrary values behind passing CRCs.
//!
//! Oracle: nothing panics; a delays record that decodes as scheduled encodes back to the same
//! record; a coordinator that applied anything can still write its snapshot; a run accepted as
//! one idempotent batch has a record for each sequence it claims.
#![no_main]

use levee::delay::{self, Stored};
use levee::group::{store, Coordinator, Limits};
use levee::record::{self, Message, Records, ARCHIVE_LEN_MAX};
use levee::shard::idempotence::{self, ProducerTable};
use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;

fn sealed(key: Option<&[u8]>, value: &[u8]) -> AlignedVec<16> {
    let m = Message {
        key: key.map(<[u8]>::to_vec),
        value: value.to_vec(),
        ..Message::default()
    };
    let mut out = Vec::new();
    record::encode(&m, &mut out).expect("encode");
    let mut a = AlignedVec::<16>::new();
    a.extend_from_slice(&out);
    a
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let run = sealed(None, rest);
            for r in Records::new(&run, ARCHIVE_LEN_MAX).flatten() {
                if let Ok(Stored::Scheduled {
                    id,
                    due_ms,
                    topic,
                    partition,
                    run: inner,
                }) = delay::decode(&r)
                {
                    let mut again = Vec::new();
                    delay::encode_scheduled(id, due_ms, &topic, partition, &inner, &mut again)
                        .expect("a decoded entry encodes");
                    assert_eq!(&again[..], r.bytes, "scheduled entry round trip");
                    let _ = delay::tag_run(&inner, 1, id, ARCHIVE_LEN_MAX);
                }
            }
        }
        1 => {
            let (key, value) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let run = sealed(Some(key), value);
            let limits = Limits {
                members_per_group: 2,
                groups: 2,
            };
            let mut c = Coordinator::new(limits);
            for r in Records::new(&run, ARCHIVE_LEN_MAX).flatten() {
                store::apply(&mut c, &r);
                store::apply(&mut c, &r);
            }
            let mut snapshot = Vec::new();
            store::encode_snapshot(&c, &mut snapshot).expect("a snapshot of what was applied");
        }
        _ => {
            let mut run = AlignedVec::<16>::new();
            run.extend_from_slice(rest);
            if let Ok(Some(b)) = idempotence::batch_id(&run, ARCHIVE_LEN_MAX) {
                assert!(b.count >= 1);
                assert!(b.count as usize * (record::HEADER_LEN + 8) <= run.len());
            }
            let mut table = ProducerTable::default();
            table.rebuild_from(&run, ARCHIVE_LEN_MAX);
            table.rebuilt();
            let _ = delay::tag_run(&run, 0, 1, ARCHIVE_LEN_MAX);
        }
    }
});
