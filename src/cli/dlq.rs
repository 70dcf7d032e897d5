//! `levee dlq list|replay`: dead letters of consumer groups.

use levee::client::Client;

/// Dead-letter administration.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Per group with dead letters: stored and not yet replayed (`group<TAB>stored<TAB>pending`).
    List,
    /// Give a group's dead letters back to that group (and no other), from where the last replay
    /// stopped; each gets its full number of deliveries again.
    Replay {
        /// Group name.
        group: String,
        /// Most dead letters to replay.
        #[arg(long, default_value_t = 100_000)]
        max: u32,
    },
}

const DLQ_PREFIX: &str = "__dlq.";

pub fn run(client: &Client, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List => {
            for t in client.list_topics_with(true)? {
                let Some(group) = t.name.strip_prefix(DLQ_PREFIX) else {
                    continue;
                };
                let d = client.describe_topic(&t.name)?;
                let (earliest, next) = d
                    .partitions
                    .first()
                    .map_or((0, 0), |p| (p.earliest, p.next));
                let replayed = client
                    .fetch_offsets(group, &[(t.name.clone(), 0)])?
                    .first()
                    .and_then(|o| o.offset)
                    .unwrap_or(earliest)
                    .clamp(earliest, next);
                println!("{group}\t{}\t{}", next - earliest, next - replayed);
            }
        }
        DlqCommand::Replay { group, max } => {
            let r = client.dlq_replay(&group, max)?;
            println!(
                "replayed {} dead letter(s) of group {group}; next {}",
                r.replayed, r.next
            );
        }
    }
    Ok(())
}
