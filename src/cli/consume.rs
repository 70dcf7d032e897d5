//! `levee consume TOPIC`: one message per stdout line, from a position, until a count or a quiet
//! period.

use std::io::Write;
use std::time::{Duration, Instant};

use levee::client::{Client, ConsumedRecord, ConsumerConfig, StartFrom};

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
    /// earliest | latest | OFFSET | @UNIX_MS.
    #[arg(long, default_value = "latest", value_parser = parse_from)]
    from: StartFrom,
    /// Only this partition (default: all).
    #[arg(long)]
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

pub fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    super::check_partition(client, &args.topic, args.partition)?;
    let mut config = ConsumerConfig::new(&args.topic);
    config.start = args.from;
    config.partitions = args.partition.map(|p| vec![p]);
    let mut consumer = client.consumer(config)?;
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
        let records = consumer.poll(wait)?;
        if records.is_empty() {
            if quiet.is_some_and(|q| last.elapsed() >= q) {
                break;
            }
            continue;
        }
        last = Instant::now();
        let mut out = stdout.lock();
        for r in &records {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            writeln!(out, "{}", render(r, args.format))?;
            printed += 1;
        }
        out.flush()?;
    }
    Ok(())
}
