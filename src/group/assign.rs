//! The broker's assignment strategy: per topic, every partition to exactly one of the members
//! that read it, balanced (shares differ by at most one partition), and sticky (a member keeps
//! the partitions it had, up to its share, so a rebalance moves as few partitions as it can).
//!
//! For each topic, with `n` partitions and `k` members reading it (sorted by id): each member's
//! share is `n / k`, and the `n % k` members that already hold the most of the topic's partitions
//! (ties by id) get one more. Each member first keeps what it held, up to its share; the
//! partitions left go, in order, to the members below their share, in id order.

use std::collections::{BTreeMap, BTreeSet};

use super::{Member, TopicPartition};

/// Member id → its partitions.
pub fn assign<'a>(
    members: impl Iterator<Item = &'a Member>,
    partitions_of: &dyn Fn(&str) -> u32,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let members: Vec<&Member> = members.collect();
    let mut out: BTreeMap<String, Vec<TopicPartition>> =
        members.iter().map(|m| (m.id.clone(), Vec::new())).collect();
    let topics: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| m.topics.iter().map(String::as_str))
        .collect();
    for topic in topics {
        let n = partitions_of(topic);
        let mut readers: Vec<&Member> = members
            .iter()
            .copied()
            .filter(|m| m.topics.iter().any(|t| t == topic))
            .collect();
        if n == 0 || readers.is_empty() {
            continue;
        }
        let held = |m: &Member| -> Vec<u32> {
            m.assignment
                .iter()
                .filter(|(t, p)| t == topic && *p < n)
                .map(|(_, p)| *p)
                .collect()
        };
        // Those holding the most get the extra partitions, so fewer partitions move.
        readers.sort_by(|a, b| held(b).len().cmp(&held(a).len()).then(a.id.cmp(&b.id)));
        let k = readers.len() as u32;
        let (base, extra) = (n / k, n % k);
        let share = |i: usize| (base + u32::from((i as u32) < extra)) as usize;
        let mut taken = vec![false; n as usize];
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); readers.len()];
        for (i, m) in readers.iter().enumerate() {
            for p in held(m) {
                if got[i].len() < share(i) && !taken[p as usize] {
                    taken[p as usize] = true;
                    got[i].push(p);
                }
            }
        }
        let mut free = (0..n).filter(|p| !taken[*p as usize]);
        let mut order: Vec<usize> = (0..readers.len()).collect();
        order.sort_by(|&a, &b| readers[a].id.cmp(&readers[b].id));
        for i in order {
            while got[i].len() < share(i) {
                match free.next() {
                    Some(p) => got[i].push(p),
                    None => break,
                }
            }
        }
        for (i, m) in readers.iter().enumerate() {
            let mut ps = std::mem::take(&mut got[i]);
            ps.sort_unstable();
            out.entry(m.id.clone())
                .or_default()
                .extend(ps.into_iter().map(|p| (topic.to_string(), p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn member(id: &str, topics: &[&str], had: &[(&str, u32)]) -> Member {
        Member {
            id: id.into(),
            client_id: "c".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            last_seen: Instant::now(),
            joined: true,
            assignment: had.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            classic: None,
        }
    }

    #[test]
    fn given_a_new_member_when_rebalanced_should_move_only_what_balance_needs() {
        let before = [
            member("a", &["t"], &[("t", 0), ("t", 1), ("t", 2), ("t", 3)]),
            member("b", &["t"], &[("t", 4), ("t", 5), ("t", 6), ("t", 7)]),
            member("c", &["t"], &[]),
        ];
        let out = assign(before.iter(), &|_| 8);
        let count = |id: &str| out[id].len();
        assert_eq!((count("a"), count("b"), count("c")), (3, 3, 2));
        // a and b kept three of their own each.
        assert!(out["a"].iter().all(|(_, p)| *p < 4));
        assert!(out["b"].iter().all(|(_, p)| *p >= 4));
    }

    proptest! {
        #[test]
        fn every_partition_goes_to_exactly_one_reader_and_shares_differ_by_at_most_one(
            n in 1u32..40,
            k in 1usize..8,
            seed in any::<u64>(),
        ) {
            let members: Vec<Member> = (0..k)
                .map(|i| {
                    let had: Vec<(&str, u32)> = (0..n)
                        .filter(|p| (seed >> (p % 64)) as usize % k == i)
                        .map(|p| ("t", p))
                        .collect();
                    member(&format!("m{i}"), &["t"], &had)
                })
                .collect();
            let out = assign(members.iter(), &|_| n);
            let mut seen: Vec<u32> = out.values().flatten().map(|(_, p)| *p).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            let sizes: Vec<usize> = out.values().map(Vec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }
    }
}
