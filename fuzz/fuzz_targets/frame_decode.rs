//! Arbitrary bytes to the protocol's frame and body decoders (what a hostile client or broker can
//! send). Oracle: nothing panics; a delimited frame never exceeds the limit; a request that decodes
//! re-encodes, at its own version, to a frame that decodes to the same request; the item limit
//! only ever refuses, never changes, what decodes.
#![no_main]

use levee::protocol::{self, ApiKey, Request};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut frame = rkyv::util::AlignedVec::<16>::new();
    frame.extend_from_slice(data);
    if let Ok(Some(len)) = protocol::frame_len(&frame, FRAME_MAX) {
        assert!(len <= FRAME_MAX && len <= frame.len());
    }
    let _ = protocol::decode_response(&frame);
    let _ = protocol::error_message(&frame);
    let limited = protocol::decode_request_limited(&frame, 8);
    let Ok((header, request)) = protocol::decode_request(&frame) else {
        assert!(limited.is_err(), "the limit never makes a bad frame good");
        return;
    };
    if let Ok(l) = limited {
        assert_eq!(l, (header, request.clone()));
    }
    let mut again = Vec::new();
    let encoded = match &request {
        Request::Produce(p) => {
            let blocks: Vec<(&str, u32, &[u8])> = p
                .blocks
                .iter()
                .map(|b| (b.topic.as_str(), b.partition, &frame[b.run.clone()]))
                .collect();
            let splits = protocol::encode_produce_head(
                &mut again,
                header.api_version,
                header.correlation_id,
                p.acks,
                p.timeout_ms,
                &blocks,
            );
            splits.map(|splits| {
                for (at, (_, _, run)) in splits.into_iter().zip(&blocks).rev() {
                    again.splice(at..at, run.iter().copied());
                }
            })
        }
        other => protocol::encode_request_at(
            &mut again,
            header.api_version,
            header.correlation_id,
            other,
        ),
    };
    // A decoded request is within the frame limit, so it always encodes again.
    encoded.expect("a decoded request encodes");
    assert!(ApiKey::from_u16(header.api_key).is_some());
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&again);
    let (h2, r2) = protocol::decode_request(&aligned).expect("re-encoded request decodes");
    assert_eq!(h2, header);
    match (&request, &r2) {
        (Request::Produce(a), Request::Produce(b)) => {
            assert_eq!(
                (a.acks, a.timeout_ms, a.blocks.len()),
                (b.acks, b.timeout_ms, b.blocks.len())
            );
            for (x, y) in a.blocks.iter().zip(&b.blocks) {
                assert_eq!(&frame[x.run.clone()], &aligned[y.run.clone()]);
            }
        }
        _ => assert_eq!(request, r2),
    }
});
