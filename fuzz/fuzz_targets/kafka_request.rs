//! The Kafka listener's request decoder on hostile bytes: every frame a Kafka client (or anyone
//! else) sends to `--kafka-listen` goes through it, and a Produce's record batches go on through
//! the batch decoder (CRC-32C, decompression under a bound, record parsing).
//!
//! Oracle: nothing panics or aborts (a batch that claims a huge record count or expands without
//! end must be refused, not allocated for); a Produce's batches decode to at most
//! `BATCH_RECORDS_MAX` records each.
#![no_main]

use levee::server::kafka::{decode_batches, decode_request, KafkaRequest, BATCH_RECORDS_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = decode_request(data) else {
        return;
    };
    if let KafkaRequest::Produce(p) = decoded.request {
        for t in &p.topic_data {
            for part in &t.partition_data {
                if let Some(records) = &part.records {
                    if let Ok(messages) = decode_batches(records) {
                        let batches = records.len() / 61 + 1;
                        assert!(messages.len() <= batches * BATCH_RECORDS_MAX as usize);
                    }
                }
            }
        }
    }
});
