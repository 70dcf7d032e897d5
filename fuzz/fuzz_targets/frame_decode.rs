//! Arbitrary bytes to the protocol's frame and body decoders (what a hostile client or broker can
//! send). Oracle: nothing panics; a delimited frame never exceeds the limit; a request that decodes
//! re-encodes to a frame that decodes to the same request.
#![no_main]

use levee::protocol::{self, Request};
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
    if let Ok((header, request)) = protocol::decode_request(&frame) {
        let mut again = Vec::new();
        match &request {
            Request::Produce(p) => {
                let blocks: Vec<(&str, u32, &[u8])> = p
                    .blocks
                    .iter()
                    .map(|b| (b.topic.as_str(), b.partition, &frame[b.run.clone()]))
                    .collect();
                protocol::encode_produce(
                    &mut again,
                    header.correlation_id,
                    p.acks,
                    p.timeout_ms,
                    &blocks,
                ).unwrap();
            }
            other => protocol::encode_request(&mut again, header.correlation_id, other),
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&again);
        let (h2, r2) = protocol::decode_request(&aligned).expect("re-encoded request decodes");
        assert_eq!(h2.correlation_id, header.correlation_id);
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
    }
});
