//! `GET /metrics` (Prometheus text format) and `GET /healthz` on the metrics listener.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded request size, a
//! read deadline, `Connection: close`. Metrics read the shards' counters (atomics) and never touch
//! a log. Health asks every shard to answer a no-op within a deadline, so a stalled or dead shard
//! shows as such: `200` with one `shard N ok` line per shard when all answer, `503` otherwise.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;
use crate::runtime::{self, TcpListener};
use crate::shard::Shard;
use crate::storage::Io;

/// Largest request head read.
const REQUEST_BYTES_MAX: usize = 8192;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shard may take to answer a health probe.
const HEALTH_DEADLINE: Duration = Duration::from_secs(1);

pub(crate) async fn serve<I: Io>(listener: TcpListener, shard: Rc<Shard<I>>, shared: Arc<Shared>) {
    loop {
        let Ok(mut stream) = listener.accept().await else {
            runtime::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (shard, shared) = (shard.clone(), shared.clone());
        runtime::spawn_isolated("metrics request", async move {
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let mut n = 0;
            while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match runtime::until(deadline, stream.read(&mut buf[n..])).await {
                    Some(Ok(m)) if m > 0 => n += m,
                    _ => return,
                }
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/healthz" => health(&shard).await,
                "/metrics" => ("200 OK", render(&shared)),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = runtime::until(deadline, stream.write_all(response.as_bytes())).await;
            let _ = stream.close().await;
        });
    }
}

async fn health<I: Io>(shard: &Rc<Shard<I>>) -> (&'static str, String) {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let mut body = String::new();
    let mut all = true;
    for id in 0..shard.shards {
        let probe = shard.on_owner(id, |_| std::future::ready(()));
        let ok = matches!(runtime::until(deadline, probe).await, Some(Ok(())));
        all &= ok;
        let _ = writeln!(body, "shard {id} {}", if ok { "ok" } else { "stalled" });
    }
    (
        if all {
            "200 OK"
        } else {
            "503 Service Unavailable"
        },
        body,
    )
}

/// A metric's name, help text and how to read it from one shard's counters.
type Counter = (&'static str, &'static str, fn(&crate::shard::Stats) -> u64);

fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let counters: [Counter; 11] = [
        ("levee_records_in_total", "Records appended.", |s| {
            s.records_in.load(Ordering::Relaxed)
        }),
        ("levee_bytes_in_total", "Bytes of records appended.", |s| {
            s.bytes_in.load(Ordering::Relaxed)
        }),
        (
            "levee_bytes_out_total",
            "Bytes of records served to consumers.",
            |s| s.bytes_out.load(Ordering::Relaxed),
        ),
        ("levee_requests_total", "Requests handled.", |s| {
            s.requests.load(Ordering::Relaxed)
        }),
        (
            "levee_forwarded_total",
            "Operations run on another shard.",
            |s| s.forwarded.load(Ordering::Relaxed),
        ),
        (
            "levee_panics_total",
            "Requests or operations that panicked and were answered Internal.",
            |s| s.panics.load(Ordering::Relaxed),
        ),
        ("levee_connections", "Open client connections.", |s| {
            s.connections.load(Ordering::Relaxed) as u64
        }),
        (
            "levee_partitions_open",
            "Partitions whose log is open.",
            |s| s.partitions_open.load(Ordering::Relaxed) as u64,
        ),
        (
            "levee_backlog_throttled_total",
            "Produce blocks answered Throttled because their partition's backlog was full (policy block).",
            |s| s.backlog_throttled.load(Ordering::Relaxed),
        ),
        (
            "levee_backlog_rejected_total",
            "Produce blocks answered QueueFull because their partition's backlog was full (policy reject).",
            |s| s.backlog_rejected.load(Ordering::Relaxed),
        ),
        (
            "levee_backlog_dropped_segments_total",
            "Segments deleted to keep a backlog within its bound (policy drop-oldest).",
            |s| s.backlog_dropped_segments.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, stats) in shared.stats.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(stats));
        }
    }
    let topics = shared.catalog.snapshot();
    let gauges: [(&str, &str, u64); 5] = [
        (
            "levee_topics",
            "Topics in the catalog.",
            topics.len() as u64,
        ),
        (
            "levee_partitions",
            "Partitions over all topics.",
            topics.partitions(),
        ),
        (
            "levee_topics_quarantined",
            "Topic directories moved aside at start-up because their metadata was damaged.",
            shared.catalog.quarantined().len() as u64,
        ),
        (
            "levee_memory_used_bytes",
            "Bytes of the connection memory budget in use.",
            shared.budget.used() as u64,
        ),
        (
            "levee_memory_max_bytes",
            "The connection memory budget (memory_bytes_max).",
            shared.budget.max() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}
