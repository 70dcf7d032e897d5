//! `levee consume TOPIC`: one message per stdout line, from a position, until a count or a quiet
//! period. With `--group`, as a member of a consumer group, committing what it printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use levee::client::{
    Client, ConsumedRecord, ConsumerConfig, GroupConsumerConfig, ResetPolicy, StartFrom,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value only.
    Value,
    /// `{"partition":..,"offset":..,"timestamp_ms":..,"key":..,"value":..}`.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    topic: String,
    /// Join this consumer group: read the partitions it assigns, from its committed offsets, and
    /// commit each message once printed.
    #[arg(long)]
    group: Option<String>,
    /// earliest | latest | OFFSET | @UNIX_MS. With --group: where to start in partitions the
    /// group never committed (earliest or latest only).
    #[arg(long, default_value = "latest", value_parser = parse_from)]
    from: StartFrom,
    /// Only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once no message arrived for this long.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "value")]
    format: Format,
}

fn parse_from(s: &str) -> Result<StartFrom, String> {
    match s {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        _ => {
            if let Some(ms) = s.strip_prefix('@') {
                ms.parse()
                    .map(StartFrom::Timestamp)
                    .map_err(|_| format!("invalid timestamp '{s}'"))
            } else {
                s.parse().map(StartFrom::Offset).map_err(|_| {
                    format!("invalid position '{s}': expected earliest, latest, OFFSET or @UNIX_MS")
                })
            }
        }
    }
}

fn json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn render(r: &ConsumedRecord, format: Format) -> String {
    match format {
        Format::Value => String::from_utf8_lossy(&r.value).into_owned(),
        Format::Json => {
            let mut s = format!(
                "{{\"partition\":{},\"offset\":{},\"timestamp_ms\":{},\"key\":",
                r.partition, r.offset, r.timestamp_ms
            );
            match &r.key {
                Some(k) => json_string(&mut s, k),
                None => s.push_str("null"),
            }
            s.push_str(",\"value\":");
            json_string(&mut s, &r.value);
            s.push('}');
            s
        }
    }
}

/// Where messages come from: a plain consumer or a group member.
trait Source {
    fn poll(&mut self, wait: Duration) -> anyhow::Result<Vec<ConsumedRecord>>;
    /// Called with the records just printed and flushed.
    fn printed(&mut self, records: &[ConsumedRecord]) -> anyhow::Result<()>;
}

impl Source for levee::client::Consumer {
    fn poll(&mut self, wait: Duration) -> anyhow::Result<Vec<ConsumedRecord>> {
        Ok(levee::client::Consumer::poll(self, wait)?)
    }
    fn printed(&mut self, _: &[ConsumedRecord]) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Source for levee::client::GroupConsumer {
    fn poll(&mut self, wait: Duration) -> anyhow::Result<Vec<ConsumedRecord>> {
        Ok(levee::client::GroupConsumer::poll(self, wait)?)
    }
    /// Commits exactly what was printed (a poll may return more than `--count` lets print).
    fn printed(&mut self, records: &[ConsumedRecord]) -> anyhow::Result<()> {
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for r in records {
            next.insert((r.topic.clone(), r.partition), r.offset + 1);
        }
        let offsets: Vec<(String, u32, u64)> =
            next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        self.commit_offsets(&offsets)?;
        Ok(())
    }
}

pub fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    super::check_partition(client, &args.topic, args.partition)?;
    match &args.group {
        Some(group) => {
            let reset = match args.from {
                StartFrom::Earliest => ResetPolicy::Earliest,
                StartFrom::Latest => ResetPolicy::Latest,
                _ => super::usage_error(
                    "with --group, --from is earliest or latest (where to start in partitions \
                     the group never committed); move a group with `levee group reset`",
                ),
            };
            let mut config = GroupConsumerConfig::new(group, [&args.topic]);
            config.reset = reset;
            let mut consumer = client.group_consumer(config)?;
            print_until_done(&mut consumer, &args)?;
            consumer.close()?;
        }
        None => {
            let mut config = ConsumerConfig::new(&args.topic);
            config.start = args.from;
            config.partitions = args.partition.map(|p| vec![p]);
            print_until_done(&mut client.consumer(config)?, &args)?;
        }
    }
    Ok(())
}

fn print_until_done(source: &mut dyn Source, args: &ConsumeArgs) -> anyhow::Result<()> {
    let quiet = args.timeout_ms.map(Duration::from_millis);
    let mut last = Instant::now();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        let wait = quiet.map_or(Duration::from_millis(500), |q| {
            q.saturating_sub(last.elapsed())
                .min(Duration::from_millis(500))
        });
        let mut records = source.poll(wait)?;
        if records.is_empty() {
            if quiet.is_some_and(|q| last.elapsed() >= q) {
                break;
            }
            continue;
        }
        last = Instant::now();
        if let Some(n) = args.count {
            records.truncate(usize::try_from(n - printed).unwrap_or(usize::MAX));
        }
        let mut out = stdout.lock();
        for r in &records {
            writeln!(out, "{}", render(r, args.format))?;
        }
        out.flush()?;
        drop(out);
        printed += records.len() as u64;
        source.printed(&records)?;
    }
    Ok(())
}
