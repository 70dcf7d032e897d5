//! Failpoints: named places where a test makes the process fail on purpose, to prove that a
//! failure there is contained (a panicking request is answered `Internal`, a dead shard stops the
//! broker, a panic in the CLI exits 1).
//!
//! They are read once from the environment variable `LEVEE_FAILPOINTS`, a comma-separated list of
//! names, and cost one load of a static afterwards. Nothing sets them but a test; tuning.md lists
//! them.

use std::sync::OnceLock;

/// The environment variable holding the active failpoints.
pub const ENV: &str = "LEVEE_FAILPOINTS";

fn active() -> &'static [String] {
    static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// True when the failpoint `name` is active.
pub fn hit(name: &str) -> bool {
    let active = active();
    !active.is_empty() && active.iter().any(|a| a == name)
}
