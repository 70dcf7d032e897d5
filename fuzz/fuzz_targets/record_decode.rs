//! Record decoding on hostile bytes: a network buffer or a segment can hold anything.
//!
//! Input: `data[0]` picks the archive length limit (bits 0-1), a position (bits 2-5) and a mode
//! (bits 6-7); the rest is the buffer or describes it.
//! - Raw (modes 0, 1): the rest is decoded as it is.
//! - Sealed (mode 2): the rest becomes the archive of one record whose lengths, CRCs and padding
//!   are all correct (what a hostile producer can send), followed by a copy of itself, so the
//!   archive validation of `Check::Full` sees arbitrary bytes behind a valid CRC.
//! - Damaged (mode 3): as sealed, but the archive is a valid `Message` archive with a few bytes
//!   overwritten, which reaches far deeper into the validation than arbitrary bytes.
//!
//! Oracle: nothing panics; `decode(Full)` succeeds exactly when `decode(Crc)` and `check_produced`
//! both do, with the same length; when it succeeds, `message()` succeeds and the archive
//! deserializes; `Records` yields only records `decode(Crc)` accepts, back to back.
#![no_main]

use levee::record::{
    self, archive_crc, check_produced, decode, decode_header, Check, Header, Message, Records,
    ARCHIVE_LEN_MAX, HEADER_LEN, RECORD_ALIGN,
};
use libfuzzer_sys::fuzz_target;
use rkyv::util::AlignedVec;

fn sealed(archive: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(archive);
    out.resize(record::record_len(archive.len()), 0);
    out[0..4].copy_from_slice(&archive_crc(archive).to_le_bytes());
    out[4..8].copy_from_slice(&(archive.len() as u32).to_le_bytes());
    record::stamp_header(&mut out, 7, 1_700_000_000_000);
    out
}

/// A valid `Message` archive built from the input's first bytes, then overwritten at positions
/// the following pairs of bytes give: near-valid archives (a bad pointer, length or tag) reach
/// deep into rkyv's validation, which arbitrary bytes rarely do.
fn damaged_archive(data: &[u8]) -> Vec<u8> {
    let (spec, edits) = data.split_at(data.len().min(4));
    let b = |i: usize| spec.get(i).copied().unwrap_or(0);
    let message = Message {
        timestamp_ms: i64::from(b(0)),
        producer_id: u64::from(b(1)),
        sequence: 0,
        key: (b(0) & 1 != 0).then(|| vec![b(1); usize::from(b(1) % 9)]),
        value: vec![b(2); usize::from(b(2) % 40)],
        headers: (0..b(3) % 3)
            .map(|i| Header {
                key: "k".repeat(usize::from(i + b(3) % 5)),
                value: vec![i; usize::from(b(3) % 7)],
            })
            .collect(),
    };
    let mut out = Vec::new();
    record::encode(&message, &mut out).expect("encode");
    let mut archive = out[HEADER_LEN..HEADER_LEN + read_len(&out)].to_vec();
    for pair in edits.chunks_exact(2) {
        let n = archive.len();
        archive[usize::from(pair[0]) % n] = pair[1];
    }
    archive
}

fn read_len(record: &[u8]) -> usize {
    u32::from_le_bytes(record[4..8].try_into().unwrap()) as usize
}

fn check_at(buf: &[u8], position: usize, max: usize) {
    let full = decode(buf, position, max, Check::Full);
    let crc = decode(buf, position, max, Check::Crc);
    let produced = check_produced(buf, position, max);
    let header = decode_header(buf, position, max);
    if crc.is_ok() {
        assert!(
            header.is_ok(),
            "decode(Crc) accepted a header decode_header rejects"
        );
    }
    match &full {
        Ok(r) => {
            let c = crc.as_ref().expect("Full accepted what Crc rejects");
            let len = *produced
                .as_ref()
                .expect("Full accepted what check_produced rejects");
            assert_eq!(r.bytes.len(), len);
            assert_eq!(c.bytes.len(), len);
            assert_eq!(r.header, header.expect("header of an accepted record"));
            assert_eq!(r.bytes.len(), r.header.record_len());
            assert_eq!(r.bytes.len() % RECORD_ALIGN, 0);
            assert_eq!(r.archive.len(), r.header.archive_len as usize);
            let m = r
                .message()
                .expect("message() of a record Check::Full accepted");
            let back = rkyv::deserialize::<Message, rkyv::rancor::Error>(m)
                .expect("deserializing a validated archive");
            let _ = back;
        }
        Err(_) => assert!(
            crc.is_err() || produced.is_err(),
            "Crc and check_produced accept at {position} but Full rejects: {full:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = match first & 3 {
        0 => 1 << 20,
        1 => 16 << 10,
        2 => 64,
        _ => ARCHIVE_LEN_MAX,
    };
    let mut buf = AlignedVec::<16>::new();
    match first >> 6 {
        2 if !rest.is_empty() => {
            let r = sealed(rest);
            buf.extend_from_slice(&r);
            buf.extend_from_slice(&r);
        }
        3 => {
            let archive = damaged_archive(rest);
            let r = sealed(&archive);
            buf.extend_from_slice(&r);
            buf.extend_from_slice(&r);
        }
        _ => buf.extend_from_slice(rest),
    }
    let len = buf.len();
    let picked = usize::from(first >> 2) * RECORD_ALIGN;
    for position in [
        0,
        1,
        8,
        16,
        32,
        picked,
        len & !15,
        len,
        len.wrapping_add(16),
        usize::MAX & !15,
    ] {
        check_at(&buf, position, max);
    }
    let mut expected_position = 0;
    for r in Records::new(&buf, max) {
        match r {
            Ok(r) => {
                let again = decode(&buf, expected_position, max, Check::Crc)
                    .expect("Records yielded a record decode(Crc) rejects");
                assert_eq!(again.bytes.len(), r.bytes.len());
                check_at(&buf, expected_position, max);
                let _ = r.message();
                expected_position += r.bytes.len();
            }
            Err(_) => break,
        }
    }
});
