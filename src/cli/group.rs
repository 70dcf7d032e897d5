//! `levee group list|describe|reset|delete`: consumer-group administration.

use levee::client::Client;
use levee::protocol::CommitOffset;
use levee::protocol::{GroupState, OffsetCommitRequest, OffsetSpec, NO_GENERATION};

/// Where `group reset` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset still stored.
    Earliest,
    /// The log end: everything stored so far counts as consumed.
    Latest,
    /// This offset in every partition.
    Offset(u64),
    /// The first record appended at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

fn parse_to(s: &str) -> Result<ResetTo, String> {
    match s {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        _ => match s.strip_prefix('@') {
            Some(ms) => ms
                .parse()
                .map(ResetTo::Timestamp)
                .map_err(|_| format!("invalid timestamp '{s}'")),
            None => s.parse().map(ResetTo::Offset).map_err(|_| {
                format!("invalid position '{s}': expected earliest, latest, OFFSET or @UNIX_MS")
            }),
        },
    }
}

/// Consumer-group administration.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// List groups with their state and member count.
    List,
    /// Show a group's members, assignments, committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's committed offsets in one topic (refused while the group has members).
    Reset {
        /// Group name.
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// earliest | latest | OFFSET | @UNIX_MS.
        #[arg(long, value_parser = parse_to)]
        to: ResetTo,
    },
    /// Delete a group and its committed offsets (refused while the group has members).
    Delete {
        /// Group name.
        group: String,
    },
}

fn state_name(s: GroupState) -> &'static str {
    match s {
        GroupState::Empty => "empty",
        GroupState::Rebalancing => "rebalancing",
        GroupState::Stable => "stable",
    }
}

pub fn run(client: &Client, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::List => {
            for g in client.list_groups()? {
                println!("{}\t{}\t{}", g.group, state_name(g.state), g.members);
            }
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group)?;
            println!(
                "group {} state={} generation={} members={}",
                d.group,
                state_name(d.state),
                d.generation,
                d.members.len()
            );
            for m in &d.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|t| {
                        let ps: Vec<String> = t.partitions.iter().map(u32::to_string).collect();
                        format!("{}:{}", t.topic, ps.join(","))
                    })
                    .collect();
                println!(
                    "member {} client={} assigned={}",
                    m.member_id,
                    m.client_id,
                    parts.join(" ")
                );
            }
            println!("topic\tpartition\tcommitted\tlog_end\tlag");
            for p in &d.partitions {
                let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.topic, p.partition, committed, p.log_end, p.lag
                );
            }
        }
        GroupCommand::Reset { group, topic, to } => {
            let partitions = client.partition_count(&topic)?;
            let mut offsets = Vec::with_capacity(partitions as usize);
            for p in 0..partitions {
                let offset = match to {
                    ResetTo::Offset(o) => o,
                    ResetTo::Earliest => client.list_offsets(&topic, p, OffsetSpec::Earliest)?,
                    ResetTo::Latest => client.list_offsets(&topic, p, OffsetSpec::Latest)?,
                    ResetTo::Timestamp(t) => {
                        client.list_offsets(&topic, p, OffsetSpec::Timestamp(t))?
                    }
                };
                offsets.push(CommitOffset {
                    topic: topic.clone(),
                    partition: p,
                    offset,
                    metadata: String::new(),
                });
            }
            client.commit_offsets(&OffsetCommitRequest {
                group: group.clone(),
                member_id: String::new(),
                generation: NO_GENERATION,
                offsets,
            })?;
            println!("reset group {group} on topic {topic} ({partitions} partition(s))");
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group)?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}
