//! `levee topic create|list|describe|alter|delete`.

use levee::client::Client;
use levee::protocol::{TopicConfig, Visibility};

/// `written` | `durable`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VisibilityArg {
    /// Fetch returns every appended record.
    Written,
    /// Fetch returns only records a flush made durable.
    Durable,
}

impl From<VisibilityArg> for Visibility {
    fn from(v: VisibilityArg) -> Visibility {
        match v {
            VisibilityArg::Written => Visibility::Written,
            VisibilityArg::Durable => Visibility::Durable,
        }
    }
}

/// Topic administration.
#[derive(Debug, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 characters of [A-Za-z0-9._-].
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Retention by bytes per partition (default: the broker's).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Retention by age in ms (default: the broker's).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Which records consumers may read: written | durable (default: durable under
        /// `--fsync always`, else written).
        #[arg(long, value_enum)]
        visibility: Option<VisibilityArg>,
    },
    /// List topics.
    List {
        /// Include the broker's internal topics (committed offsets, retries, delays, dead
        /// letters).
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's configuration and partitions.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's partition count (up only), retention or visibility.
    Alter {
        /// Topic name.
        name: String,
        /// New partition count.
        #[arg(long)]
        partitions: Option<u32>,
        /// New retention by bytes per partition (0 = unlimited).
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// New retention by age in ms (0 = unlimited).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// New read visibility: written | durable.
        #[arg(long, value_enum)]
        visibility: Option<VisibilityArg>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

fn show(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |v| v.to_string())
}

pub fn run(client: &Client, command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_bytes,
            retention_ms,
            visibility,
        } => {
            client.create_topic(
                &name,
                TopicConfig {
                    partitions,
                    retention_bytes,
                    retention_ms,
                    visibility: visibility.map(Visibility::from),
                },
            )?;
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::List { internal } => {
            for t in client.list_topics_with(internal)? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let d = client.describe_topic(&name)?;
            let visibility = match d.config.visibility {
                Some(Visibility::Durable) => "durable",
                Some(Visibility::Written) => "written",
                None => "written (the broker does not report it)",
            };
            println!(
                "topic {} partitions={} retention_bytes={} retention_ms={} visibility={visibility}",
                d.name,
                d.config.partitions,
                show(d.config.retention_bytes),
                show(d.config.retention_ms)
            );
            println!("partition\tshard\tearliest\tnext\tdurable\tbytes");
            for p in d.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition, p.shard, p.earliest, p.next, p.durable, p.size_bytes
                );
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            retention_bytes,
            retention_ms,
            visibility,
        } => {
            // 0 means unlimited everywhere, on the CLI as on the wire.
            client.alter_topic(
                &name,
                partitions,
                retention_bytes,
                retention_ms,
                visibility.map(Visibility::from),
            )?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
