//! The quota file (`<data_dir>/quotas`) on hostile bytes: it is read at every start, and a disk
//! or an operator's editor can leave anything in it.
//!
//! Oracle: nothing panics; what decodes encodes to a file that decodes to the same quotas, with
//! every rate above 0 and every name non-empty.
#![no_main]

use levee::flow::quota::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(all) = decode(text) else {
        return;
    };
    for (entity, limits) in &all {
        assert!(!entity.name().is_empty());
        assert!(!limits.is_empty());
        assert!(limits.as_array().iter().flatten().all(|&r| r > 0));
    }
    assert_eq!(decode(&encode(&all)).expect("our own encoding decodes"), all);
});
