//! `levee stats [--watch]`: the broker's shards, topics, groups and memory as tables, with rates
//! measured between two samples.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use levee::client::Client;
use levee::protocol::StatsResponse;

/// What `levee stats` takes.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Refresh in place every interval until interrupted (or `--count` refreshes).
    #[arg(long)]
    watch: bool,
    /// Time between the two samples rates are measured over, and between refreshes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    interval_ms: u64,
    /// With --watch: stop after this many refreshes.
    #[arg(long)]
    count: Option<u64>,
    /// Include the broker's internal topics (names starting `__`).
    #[arg(long)]
    internal: bool,
}

pub fn run(client: &Client, args: StatsArgs) -> anyhow::Result<()> {
    let interval = Duration::from_millis(args.interval_ms);
    let mut before = (client.stats()?, Instant::now());
    let mut shown = 0u64;
    loop {
        std::thread::sleep(interval);
        let now = (client.stats()?, Instant::now());
        let text = render(&before.0, &now.0, now.1 - before.1, args.internal);
        if args.watch {
            // Home the cursor and clear the screen, then draw: refreshed in place.
            print!("\x1b[H\x1b[2J{text}");
        } else {
            print!("{text}");
        }
        use std::io::Write as _;
        std::io::stdout().flush()?;
        shown += 1;
        if !args.watch || args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        before = now;
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn per_sec(delta: u64, over: Duration) -> f64 {
    delta as f64 / over.as_secs_f64().max(1e-3)
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Left-aligned columns, widths from the widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

/// The tables, rates from `before` to `now`, `over` apart.
pub fn render(
    before: &StatsResponse,
    now: &StatsResponse,
    over: Duration,
    internal: bool,
) -> String {
    let mut out = String::new();
    let connections: u32 = now.shards.iter().map(|s| s.connections).sum();
    let pct = now.memory_used as f64 * 100.0 / now.memory_max.max(1) as f64;
    let _ = writeln!(
        out,
        "broker: up {}, memory {} of {} ({pct:.1}%), {connections} connection(s), rates over {:.1}s",
        duration(now.uptime_ms),
        bytes(now.memory_used),
        bytes(now.memory_max),
        over.as_secs_f64()
    );
    out.push('\n');

    let prev: HashMap<u16, _> = before.shards.iter().map(|s| (s.shard, s)).collect();
    let rows: Vec<Vec<String>> = now
        .shards
        .iter()
        .map(|s| {
            let p = prev.get(&s.shard).copied().unwrap_or(s);
            let rate = |a: u64, b: u64| per_sec(a.saturating_sub(b), over);
            vec![
                s.shard.to_string(),
                if s.up { "up" } else { "DOWN" }.to_string(),
                s.connections.to_string(),
                format!("{:.0}", rate(s.requests, p.requests)),
                format!("{:.0}", rate(s.records_in, p.records_in)),
                format!("{}/s", bytes(rate(s.bytes_in, p.bytes_in) as u64)),
                format!("{:.0}", rate(s.records_out, p.records_out)),
                format!("{}/s", bytes(rate(s.bytes_out, p.bytes_out) as u64)),
                s.backlog_throttled.to_string(),
                s.backlog_rejected.to_string(),
                s.backlog_dropped_segments.to_string(),
                s.quota_throttled.to_string(),
                s.throttle_ms.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "SHARD",
            "STATE",
            "CONNS",
            "REQ/S",
            "IN MSG/S",
            "IN",
            "OUT MSG/S",
            "OUT",
            "BACKLOG-THROTTLED",
            "BACKLOG-REJECTED",
            "DROPPED-SEGMENTS",
            "QUOTA-THROTTLED",
            "THROTTLE-MS",
        ],
        &rows,
    );
    out.push('\n');

    let prev: HashMap<(&str, u32), u64> = before
        .partitions
        .iter()
        .map(|p| ((p.topic.as_str(), p.partition), p.next))
        .collect();
    let rows: Vec<Vec<String>> = now
        .partitions
        .iter()
        .filter(|p| internal || !p.topic.starts_with("__"))
        .map(|p| {
            let was = prev
                .get(&(p.topic.as_str(), p.partition))
                .copied()
                .unwrap_or(p.next);
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.earliest.to_string(),
                p.next.to_string(),
                p.durable.to_string(),
                bytes(p.size_bytes),
                format!("{:.0}", per_sec(p.next.saturating_sub(was), over)),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no topics\n");
    } else {
        table(
            &mut out,
            &[
                "TOPIC",
                "PARTITION",
                "START",
                "END",
                "DURABLE",
                "SIZE",
                "IN MSG/S",
            ],
            &rows,
        );
    }
    out.push('\n');

    let prev: HashMap<(&str, &str, u32), u64> = before
        .groups
        .iter()
        .map(|g| {
            (
                (g.group.as_str(), g.topic.as_str(), g.partition),
                g.committed,
            )
        })
        .collect();
    let rows: Vec<Vec<String>> = now
        .groups
        .iter()
        .filter(|g| internal || !g.topic.starts_with("__"))
        .map(|g| {
            let was = prev
                .get(&(g.group.as_str(), g.topic.as_str(), g.partition))
                .copied()
                .unwrap_or(g.committed);
            vec![
                g.group.clone(),
                g.topic.clone(),
                g.partition.to_string(),
                g.committed.to_string(),
                g.lag.to_string(),
                format!("{:.0}", per_sec(g.committed.saturating_sub(was), over)),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no committed offsets\n");
    } else {
        table(
            &mut out,
            &[
                "GROUP",
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "LAG",
                "COMMIT MSG/S",
            ],
            &rows,
        );
    }
    out
}
