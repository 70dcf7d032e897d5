//! `levee quota set|list|delete`: rate limits per client id and per topic.

use levee::client::Client;
use levee::protocol::{QuotaEntity, QuotaLimits};

/// Whose traffic a quota limits: exactly one of `--client` and `--topic`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A client id, as clients announce it when they connect (the Rust client's
    /// `ClientConfig::client_id`).
    #[arg(long)]
    client: Option<String>,
    /// A topic: every client's traffic to or from it.
    #[arg(long)]
    topic: Option<String>,
}

impl Target {
    fn entity(self) -> QuotaEntity {
        match (self.client, self.topic) {
            (Some(c), _) => QuotaEntity::Client(c),
            (None, Some(t)) => QuotaEntity::Topic(t),
            // clap's group requires one of the two.
            (None, None) => super::usage_error("give --client or --topic"),
        }
    }
}

/// Quota administration.
#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Set rates (per second) on a client id or topic; rates not given stay as they are. Applied
    /// on every shard at once and kept across restarts.
    Set {
        #[command(flatten)]
        target: Target,
        /// Produced record bytes per second.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        produce_bytes_per_sec: Option<u64>,
        /// Produced messages per second.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        produce_messages_per_sec: Option<u64>,
        /// Fetched record bytes per second.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        fetch_bytes_per_sec: Option<u64>,
        /// Fetched messages per second.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        fetch_messages_per_sec: Option<u64>,
    },
    /// Every quota: `kind<TAB>name<TAB>produce_bytes/s<TAB>produce_messages/s<TAB>fetch_bytes/s
    /// <TAB>fetch_messages/s`, `-` for unlimited.
    List,
    /// Lift every limit on a client id or topic.
    Delete {
        #[command(flatten)]
        target: Target,
    },
}

fn rate(r: Option<u64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| r.to_string())
}

pub fn run(client: &Client, command: QuotaCommand) -> anyhow::Result<()> {
    match command {
        QuotaCommand::Set {
            target,
            produce_bytes_per_sec,
            produce_messages_per_sec,
            fetch_bytes_per_sec,
            fetch_messages_per_sec,
        } => {
            let limits = QuotaLimits {
                produce_bytes: produce_bytes_per_sec,
                produce_messages: produce_messages_per_sec,
                fetch_bytes: fetch_bytes_per_sec,
                fetch_messages: fetch_messages_per_sec,
            };
            if limits.is_empty() {
                super::usage_error(
                    "give at least one of --produce-bytes-per-sec, --produce-messages-per-sec, \
                     --fetch-bytes-per-sec, --fetch-messages-per-sec",
                );
            }
            let entity = target.entity();
            client.set_quota(&entity, &limits)?;
            eprintln!("quota set on {entity}");
        }
        QuotaCommand::List => {
            for (entity, l) in client.list_quotas()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    entity.kind(),
                    entity.name(),
                    rate(l.produce_bytes),
                    rate(l.produce_messages),
                    rate(l.fetch_bytes),
                    rate(l.fetch_messages)
                );
            }
        }
        QuotaCommand::Delete { target } => {
            let entity = target.entity();
            if client.delete_quota(&entity)? {
                eprintln!("quota deleted on {entity}");
            } else {
                anyhow::bail!("no quota is set on {entity}");
            }
        }
    }
    Ok(())
}
