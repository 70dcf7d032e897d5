//! `levee topic create|list|describe|alter|delete`.

use levee::client::Client;
use levee::protocol::{Backlog, BacklogPolicy, TopicChange, TopicConfig, Visibility};

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

/// `block` | `reject` | `drop-oldest`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BacklogPolicyArg {
    /// Producers wait for room (peak shaving).
    Block,
    /// Producers fail fast with QueueFull.
    Reject,
    /// The oldest messages are deleted to make room.
    DropOldest,
}

impl From<BacklogPolicyArg> for BacklogPolicy {
    fn from(v: BacklogPolicyArg) -> BacklogPolicy {
        match v {
            BacklogPolicyArg::Block => BacklogPolicy::Block,
            BacklogPolicyArg::Reject => BacklogPolicy::Reject,
            BacklogPolicyArg::DropOldest => BacklogPolicy::DropOldest,
        }
    }
}

/// A topic's backlog bound (docs/protocol.md §6.3).
#[derive(Debug, clap::Args)]
pub struct BacklogArgs {
    /// Most messages per partition not yet committed by its slowest consumer group (0 =
    /// unlimited).
    #[arg(long)]
    backlog_messages_max: Option<u64>,
    /// Most bytes per partition not yet committed by its slowest consumer group (0 =
    /// unlimited).
    #[arg(long)]
    backlog_bytes_max: Option<u64>,
    /// What happens at the bound: block (producers wait) | reject (QueueFull) | drop-oldest.
    #[arg(long, value_enum)]
    backlog_policy: Option<BacklogPolicyArg>,
}

impl From<BacklogArgs> for Backlog {
    fn from(a: BacklogArgs) -> Backlog {
        Backlog {
            messages_max: a.backlog_messages_max,
            bytes_max: a.backlog_bytes_max,
            policy: a.backlog_policy.map(BacklogPolicy::from),
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
        #[command(flatten)]
        backlog: BacklogArgs,
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
    /// Change a topic's partition count (up only), retention, visibility or backlog bound.
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
        #[command(flatten)]
        backlog: BacklogArgs,
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
            backlog,
        } => {
            client.create_topic(
                &name,
                TopicConfig {
                    partitions,
                    retention_bytes,
                    retention_ms,
                    visibility: visibility.map(Visibility::from),
                    backlog: backlog.into(),
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
            let policy = d.config.backlog.policy.map_or("block", BacklogPolicy::name);
            println!(
                "topic {} partitions={} retention_bytes={} retention_ms={} visibility={visibility} \
                 backlog_messages_max={} backlog_bytes_max={} backlog_policy={policy}",
                d.name,
                d.config.partitions,
                show(d.config.retention_bytes),
                show(d.config.retention_ms),
                show(d.config.backlog.messages_max),
                show(d.config.backlog.bytes_max)
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
            backlog,
        } => {
            // 0 means unlimited everywhere, on the CLI as on the wire.
            let change = TopicChange {
                partitions,
                retention_bytes,
                retention_ms,
                visibility: visibility.map(Visibility::from),
                backlog: backlog.into(),
            };
            client.alter_topic(&name, &change)?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
